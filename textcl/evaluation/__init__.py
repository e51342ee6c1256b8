"""Evaluation of sentence encoders: the STS benchmark suite (STS12-16, STS-B, SICK-R)."""

from __future__ import annotations

from textcl.evaluation.data import (
    EXPECTED_PAIRS,
    TASKS,
    STSSubset,
    STSTask,
    expand_tasks,
    load_sts_task,
    resolve_sts_dir,
)
from textcl.evaluation.sts import (
    SIMILARITIES,
    aggregate_subsets,
    correlations,
    evaluate_sts,
    format_sts_table,
    pair_similarity,
)

__all__ = [
    "EXPECTED_PAIRS",
    "SIMILARITIES",
    "TASKS",
    "STSSubset",
    "STSTask",
    "aggregate_subsets",
    "correlations",
    "evaluate_sts",
    "expand_tasks",
    "format_sts_table",
    "load_sts_task",
    "pair_similarity",
    "resolve_sts_dir",
]
