"""Training data: raw text (unsupervised) and sentence pairs/triples (supervised)."""

from __future__ import annotations

from textcl.data.text import TextCorpus, plan_epoch

__all__ = ["TextCorpus", "plan_epoch"]
