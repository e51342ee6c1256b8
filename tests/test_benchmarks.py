"""The ``benchmarks`` package: its entry point lists every benchmark, RESULTS.md is what the
JSON result records render to, and a broken record is reported by file name. Fast: nothing
here runs a benchmark."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import render
from benchmarks.__main__ import NOT_BENCHMARKS, SCRIPTS, benchmarks, listing
from benchmarks.__main__ import main as bench_main
from benchmarks.common import make_result, markdown_table, table

BENCH = Path(render.__file__).resolve().parent


def _modules_with_main() -> set[str]:
    names = set()
    for path in BENCH.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if path.stem not in NOT_BENCHMARKS and any(
            isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body
        ):
            names.add(path.stem)
    return names


def test_listing_names_every_benchmark() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks"],
        cwd=BENCH.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    expected = _modules_with_main()
    assert expected >= {"encode_throughput", "train_throughput", "sts_eval", "gpu_train"}
    assert expected <= listed
    assert set(SCRIPTS) <= listed and "results" in listed
    assert "common" not in listed and "render" not in listed
    for name, line in benchmarks().items():
        assert line, f"benchmarks/{name}.py has no docstring line to list"
    assert listing() == out.rstrip("\n")


def test_unknown_benchmark_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["no_such_bench"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'no_such_bench'" in err and "encode_throughput" in err
    assert bench_main(["common"]) == 2  # infrastructure, not a benchmark


def test_results_md_is_generated_from_the_records() -> None:
    committed = (BENCH / "RESULTS.md").read_text(encoding="utf-8")
    assert committed == render.render_folder(), (
        "benchmarks/RESULTS.md differs from benchmarks/results/*.json: edit the records and "
        "run `python -m benchmarks results`"
    )


def test_every_record_names_a_listed_benchmark_or_none() -> None:
    names = set(benchmarks())
    for path, record in render.load():
        assert record.get("benchmark") in names | {None}, path.name


def test_malformed_record_names_the_file(tmp_path: Path) -> None:
    good = json.loads((BENCH / "results" / "000_machines.json").read_text(encoding="utf-8"))
    (tmp_path / "010_ok.json").write_text(json.dumps(good), encoding="utf-8")
    bad = tmp_path / "020_bad.json"
    bad.write_text(json.dumps({**good, "tables": [{"headers": ["a"], "rows": [["1", "2"]]}]}))
    with pytest.raises(render.ResultError, match=r"020_bad\.json.*rows\[0\] has 2 cells"):
        render.load(tmp_path)
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(render.ResultError, match=r"020_bad\.json.*not valid JSON"):
        render.load(tmp_path)
    bad.write_text(json.dumps({k: v for k, v in good.items() if k != "section"}))
    with pytest.raises(render.ResultError, match=r"020_bad\.json.*'section'"):
        render.load(tmp_path)
    out = tmp_path / "R.md"
    assert render.main(["--results", str(tmp_path), "--output", str(out)]) == 2
    assert not out.exists()


def test_check_mode_flags_a_hand_edit(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    assert render.main(["--output", str(out)]) == 0
    assert render.main(["--output", str(out), "--check"]) == 0
    out.write_text(out.read_text(encoding="utf-8").replace("82.03", "82.04"), encoding="utf-8")
    assert render.main(["--output", str(out), "--check"]) == 1


def test_a_new_run_record_renders(tmp_path: Path) -> None:
    """What ``--json OUT`` writes (``write_result``) drops into results/ and renders."""
    record = make_result(
        "sts_eval",
        [
            table([{"task": "stsb", "spearman": 82.03, "pairs": 1379}], digits=2),
            markdown_table("| a | b |\n|---|---:|\n| x | 1.5 |", notes=["a note"]),
        ],
        argv=["--no-peer"],
        notes=["ratio 1.2x"],
        data={"raw": [1, 2]},
    )
    assert record["command"] == ["python -m benchmarks sts_eval --no-peer"]
    assert record["machine"]["cores"] and "cpu_flags" in record["machine"]
    (tmp_path / "900_new.json").write_text(json.dumps(record), encoding="utf-8")
    text = render.render_folder(tmp_path)
    assert "## sts_eval" in text and "python -m benchmarks sts_eval --no-peer" in text
    assert "| stsb | 82.03 | 1379 |" in text and "|---|---:|---:|" in text
    assert "| x | 1.5 |" in text and "a note" in text and "ratio 1.2x" in text
    assert "raw" not in text  # data is kept, not rendered


def test_a_section_gets_one_heading_however_its_records_interleave() -> None:
    """Records of section A, then B, then A again (a later rerun numbered after B): one
    ``## A`` holding both A records in file order, then ``## B``."""
    recs = [
        {"section": s, "title": t, "tables": [], "notes": [n]}
        for s, t, n in (("A", "first", "a1"), ("B", None, "b1"), ("A", "rerun", "a2"))
    ]
    text = render.render(recs)
    assert text.count("## A") == 1 and text.count("## B") == 1
    assert text.index("## A") < text.index("a1") < text.index("### rerun") < text.index("a2")
    assert text.index("a2") < text.index("## B") < text.index("b1")


@pytest.mark.parametrize("name", sorted(_modules_with_main()))
def test_help_of_every_benchmark(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m benchmarks NAME --help`` parses for every benchmark, with the common flags."""
    with pytest.raises(SystemExit) as exit_:
        bench_main([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: python -m benchmarks {name}" in out
    assert "--json" in out
