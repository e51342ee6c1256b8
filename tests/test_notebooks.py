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


ROW = r"\s+(-?\d+\.\d+)\s+(-?\d+\.\d+)\s+(-?\d+\.\d+)$"


def check_before_after(text: str, scratch: Path) -> dict[str, float]:
    """The notebook's before/after table against the run it made: the "after" row is the
    run's own final evaluation (its metrics.jsonl), the printed change is after - before,
    and the run improved the model as SimCSE does: STS-B dev Spearman up and uniformity
    down (measured: 86.72 -> 86.96 and -3.8487 -> -3.8651; alignment 0.2360 -> 0.2454, not
    asserted: SimCSE trades a little alignment for uniformity)."""
    before = re.search(r"^MiniLM" + ROW, text, re.M)
    after = re.search(r"^\+ SimCSE (\d+) steps" + ROW, text, re.M)
    change = re.search(r"^change in STS-B dev Spearman: ([+-]\d+\.\d+)$", text, re.M)
    assert before and after and change, text[-2000:]
    sp0, al0, un0 = map(float, before.groups())
    steps, sp1, al1, un1 = int(after.group(1)), *map(float, after.groups()[1:])
    assert 80.0 < sp0 < 95.0  # all-MiniLM-L6-v2 on STS-B dev is ~86.7
    assert float(change.group(1)) == pytest.approx(sp1 - sp0, abs=0.011)
    logs = list(scratch.glob("textcl-quickstart-*/run/metrics.jsonl"))
    assert len(logs) == 1, logs
    import json

    records = [json.loads(line) for line in logs[0].read_text().splitlines()]
    final = [r for r in records if r["event"] == "eval"][-1]
    assert final["step"] == steps == 30
    assert final["stsb_dev_spearman"] == pytest.approx(sp1, abs=0.005)
    assert final["alignment"] == pytest.approx(al1, abs=5e-5)
    assert final["uniformity"] == pytest.approx(un1, abs=5e-5)
    print(f"before {sp0:.2f} {al0:.4f} {un0:.4f} | after {sp1:.2f} {al1:.4f} {un1:.4f}")
    assert sp1 > sp0, f"the SimCSE run did not improve STS-B dev: {sp0} -> {sp1}"
    assert un1 < un0, f"the SimCSE run did not improve uniformity: {un0} -> {un1}"
    return {"sp0": sp0, "sp1": sp1, "al0": al0, "al1": al1, "un0": un0, "un1": un1}


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
    check_before_after(text, tmp_path)
    assert "indexed" in text and "query:" in text
    # Figures were drawn: heatmap, STS scatter, training curves, alignment-uniformity.
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4
    print(f"quickstart.ipynb executed in {elapsed:.0f} s")


TABLE = """model                  STS-B dev alignment uniformity
MiniLM                     86.72    0.2360    -3.8487
+ SimCSE 30 steps          {sp1:.2f}    0.2454    {un1:.4f}
change in STS-B dev Spearman: {change:+.2f}
"""


@pytest.mark.parametrize(
    ("sp1", "un1", "change", "logged", "ok"),
    [
        (86.96, -3.8651, 0.24, 86.96, True),
        (86.72, -3.8651, 0.00, 86.72, False),  # no improvement (e.g. lr 0)
        (86.50, -3.8651, -0.22, 86.50, False),  # worse
        (86.96, -3.8400, 0.24, 86.96, False),  # uniformity worse
        (86.96, -3.8651, 0.30, 86.96, False),  # printed change is not after - before
        (86.96, -3.8651, 0.24, 85.00, False),  # "after" is not the run's evaluation
    ],
)
def test_before_after_check_can_fail(
    tmp_path: Path, sp1: float, un1: float, change: float, logged: float, ok: bool
) -> None:
    """The notebook check against its broken variants (the real run takes minutes)."""
    import json

    run = tmp_path / "textcl-quickstart-x" / "run"
    run.mkdir(parents=True)
    record = {"event": "eval", "step": 30, "stsb_dev_spearman": logged}
    record.update(alignment=0.2454, uniformity=un1)
    (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    text = TABLE.format(sp1=sp1, un1=un1, change=change)
    if ok:
        check_before_after(text, tmp_path)
    else:
        with pytest.raises(AssertionError):
            check_before_after(text, tmp_path)
