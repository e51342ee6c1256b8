"""Fixtures for search tests: a small corpus file and the tiny model folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import TINY_SENTENCES

EXTRA = (
    "Rain is expected over the weekend in the north.",
    "The museum opens a new exhibition of modern art.",
    "A cat is chasing a mouse in the kitchen.",
    "The team won the final after extra time.",
    "Engineers are repairing the old bridge.",
    "A woman is playing the violin on stage.",
    "The bakery sells fresh bread every morning.",
)
CORPUS: tuple[str, ...] = TINY_SENTENCES + EXTRA
"""23 distinct sentences."""


@pytest.fixture
def corpus_txt(tmp_path: Path) -> Path:
    """CORPUS one a line, with a blank and a whitespace-only line in between (skipped)."""
    lines = [*CORPUS[:5], "", *CORPUS[5:11], "   ", *CORPUS[11:]]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
