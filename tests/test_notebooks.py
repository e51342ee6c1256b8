"""The notebooks: each ``.ipynb`` matches its jupytext ``.py`` source (the source of truth),
is committed without outputs, and executes top to bottom (slow: real MiniLM, a short
training run)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import data_root

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PAIRS = sorted(NOTEBOOKS.glob("*.py"))

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")


def _cells(nb: Any) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


def test_every_notebook_has_a_source() -> None:
    ipynbs = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert ipynbs, "no notebooks found"
    assert [p.with_suffix(".py") for p in ipynbs] == PAIRS


@pytest.mark.parametrize("source", PAIRS, ids=lambda p: p.name)
def test_ipynb_in_sync_with_py(source: Path) -> None:
    """Regenerate the notebook from the .py and compare cell by cell: run
    ``jupytext --to ipynb notebooks/NAME.py`` after editing the source."""
    expected = jupytext.read(source)
    committed = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    assert _cells(committed) == _cells(expected), (
        f"{source.with_suffix('.ipynb').name} is out of date: run `jupytext --to ipynb {source}`"
    )
    assert committed.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("source", PAIRS, ids=lambda p: p.name)
def test_ipynb_committed_without_outputs(source: Path) -> None:
    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"cell {i} has outputs: strip them before committing"
            assert cell.execution_count is None, f"cell {i} has an execution count"


def _stdout(nb: Any) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream" and o.get("name") == "stdout":
                out.append(o["text"])
    return "".join(out)


@pytest.mark.slow
def test_quickstart_executes(
    minilm_dir: Path, sts_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Run quickstart.ipynb in a fresh kernel; any cell error fails the test
    (``CellExecutionError`` names the cell). Several minutes on a 2-core CPU."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    from nbclient import NotebookClient

    root = data_root()
    assert root is not None  # sts_dir found it
    monkeypatch.setenv("TEXTCL_DATA", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")  # as CI sets it: the notebook must still draw inline
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's scratch folder lands here
    nb = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4)
    client = NotebookClient(
        nb,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start

    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    text = _stdout(nb)
    # The STS-B table and the before/after rows are printed with real numbers.
    m = re.search(r"^MiniLM\s+(\d+\.\d+)\s", text, re.M)
    after = re.search(r"^\+ SimCSE \d+ steps\s+(\d+\.\d+)\s", text, re.M)
    assert m and after, text[-2000:]
    assert 80.0 < float(m.group(1)) < 95.0  # all-MiniLM-L6-v2 on STS-B dev is ~86.7
    assert 0.0 < float(after.group(1)) <= 100.0
    assert "indexed" in text and "query:" in text
    # Figures were drawn: heatmap, STS scatter, training curves, alignment-uniformity.
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4
    print(f"quickstart.ipynb executed in {elapsed:.0f} s")
