"""Synthetic SentEval-layout STS folders for the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

WORDS = ("cat", "dog", "man", "woman", "car", "tree", "house", "river", "guitar", "onion")


SHARED = ("a man plays the guitar", "the cat sleeps", "two dogs run")


def sentence(rng: np.random.Generator) -> str:
    """Random words; one time in four a sentence shared by all files (repeats to de-duplicate)."""
    if rng.random() < 0.25:
        return str(rng.choice(SHARED))
    return " ".join(rng.choice(WORDS, size=int(rng.integers(2, 6))))


def write_year(root: Path, folder: str, subsets: dict[str, int], seed: int = 0) -> dict:
    """Write STS.input/STS.gs files; every third gold line is empty (no score).
    Returns {subset: (s1, s2, scores)} of the scored pairs (the oracle)."""
    rng = np.random.default_rng(seed)
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    truth = {}
    for name, n_scored in subsets.items():
        lines, gold, s1s, s2s, scores = [], [], [], [], []
        i = 0
        while len(scores) < n_scored:
            a, b = sentence(rng), sentence(rng)
            lines.append(f"{a}\t{b}")
            if i % 3 == 2:
                gold.append("")
            else:
                sc = round(float(rng.uniform(0, 5)), 3)
                gold.append(f"{sc:.3f}")
                s1s.append(a)
                s2s.append(b)
                scores.append(sc)
            i += 1
        (d / f"STS.input.{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (d / f"STS.gs.{name}.txt").write_text("\n".join(gold) + "\n", encoding="utf-8")
        truth[name] = (s1s, s2s, np.array(scores))
    return truth


def write_stsb(root: Path, split_file: str, n: int, seed: int = 1) -> tuple:
    rng = np.random.default_rng(seed)
    d = root / "STSBenchmark"
    d.mkdir(parents=True, exist_ok=True)
    rows, s1s, s2s, scores = [], [], [], []
    for i in range(n):
        a, b = sentence(rng) + ' "quoted', sentence(rng)
        sc = round(float(rng.uniform(0, 5)), 2)
        extra = "\tsrc1\tsrc2" if i % 2 else ""
        rows.append(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{sc}\t{a}\t{b}{extra}")
        s1s.append(a)
        s2s.append(b)
        scores.append(sc)
    (d / split_file).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return s1s, s2s, np.array(scores)


def write_sick(root: Path, file: str, n: int, seed: int = 2) -> tuple:
    rng = np.random.default_rng(seed)
    d = root / "SICK"
    d.mkdir(parents=True, exist_ok=True)
    rows = ["pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"]
    s1s, s2s, scores = [], [], []
    for i in range(n):
        a, b = sentence(rng), sentence(rng)
        sc = round(float(rng.uniform(1, 5)), 1)
        rows.append(f"{i + 1}\t{a}\t{b}\t{sc}\tNEUTRAL")
        s1s.append(a)
        s2s.append(b)
        scores.append(sc)
    (d / file).write_text("\r\n".join(rows) + "\r\n", encoding="utf-8")
    return s1s, s2s, np.array(scores)


def patch_counts(
    monkeypatch: pytest.MonkeyPatch, counts: dict, subsets: dict | None = None
) -> None:
    """Make the published-count check accept the synthetic sizes."""
    from textcl.evaluation import data

    for key, value in counts.items():
        monkeypatch.setitem(data.EXPECTED_PAIRS, key, value)
    for task, subs in (subsets or {}).items():
        folder, _, cols = data.YEAR_TASKS[task]
        monkeypatch.setitem(data.YEAR_TASKS, task, (folder, subs, cols))
