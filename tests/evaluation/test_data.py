"""STS loaders: SentEval folders, malformed input, published counts, hub path."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.evaluation._synth import patch_counts, write_sick, write_stsb, write_year
from textcl.evaluation import data
from textcl.evaluation.data import (
    expand_tasks,
    load_local_task,
    load_sts_task,
    read_senteval_pairs,
    read_sick_file,
    read_stsb_file,
    resolve_sts_dir,
)


# ---------------------------------------------------------------------- readers
def test_senteval_pairs_skip_empty_gold(tmp_path: Path) -> None:
    truth = write_year(tmp_path, "STS12-en-test", {"A": 7})
    d = tmp_path / "STS12-en-test"
    sub = read_senteval_pairs(d / "STS.input.A.txt", d / "STS.gs.A.txt", name="A")
    s1, s2, scores = truth["A"]
    assert sub.sentences1 == s1 and sub.sentences2 == s2
    np.testing.assert_array_equal(sub.scores, scores)
    n_lines = len((d / "STS.gs.A.txt").read_text().splitlines())
    assert sub.n_pairs == 7 < n_lines  # empty gold lines were skipped


def test_senteval_extra_columns_and_unicode_separators(tmp_path: Path) -> None:
    inp, gold = tmp_path / "in.txt", tmp_path / "gs.txt"
    # U+2028 / U+0085 inside a sentence must not split the line; CRLF is accepted.
    inp.write_text("a\u2028b\tc d\tsrc1\tsrc2\r\ne\x85f\tg\tsrc1\tsrc2\r\n", encoding="utf-8")
    gold.write_text("1.5\r\n4\r\n", encoding="utf-8")
    sub = read_senteval_pairs(inp, gold, columns=(2, 4))
    assert sub.sentences1 == ["a\u2028b", "e\x85f"]
    assert sub.sentences2 == ["c d", "g"]
    assert sub.scores.tolist() == [1.5, 4.0]


def test_senteval_wrong_column_count(tmp_path: Path) -> None:
    inp, gold = tmp_path / "in.txt", tmp_path / "gs.txt"
    inp.write_text("a\tb\nonly one column\n", encoding="utf-8")
    gold.write_text("1\n2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{inp}:2") + ".*columns, got 1"):
        read_senteval_pairs(inp, gold)


def test_senteval_non_numeric_score(tmp_path: Path) -> None:
    inp, gold = tmp_path / "in.txt", tmp_path / "gs.txt"
    inp.write_text("a\tb\nc\td\ne\tf\n", encoding="utf-8")
    gold.write_text("1\n\nhigh\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{gold}:3") + ".*'high' is not a number"):
        read_senteval_pairs(inp, gold)
    gold.write_text("1\nnan\n2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{gold}:2")):
        read_senteval_pairs(inp, gold)


def test_senteval_line_count_mismatch_names_both_files(tmp_path: Path) -> None:
    inp, gold = tmp_path / "in.txt", tmp_path / "gs.txt"
    inp.write_text("a\tb\nc\td\n", encoding="utf-8")
    gold.write_text("1\n2\n3\n", encoding="utf-8")
    with pytest.raises(ValueError) as err:
        read_senteval_pairs(inp, gold)
    assert str(inp) in str(err.value) and str(gold) in str(err.value)
    assert "2 lines" in str(err.value) and "has 3" in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        read_senteval_pairs(tmp_path / "nope.txt", tmp_path / "gs.txt")


def test_stsb_unquoted_with_extra_columns(tmp_path: Path) -> None:
    s1, s2, scores = write_stsb(tmp_path, "sts-test.csv", 5)
    sub = read_stsb_file(tmp_path / "STSBenchmark" / "sts-test.csv")
    assert sub.sentences1 == s1 and sub.sentences2 == s2  # the " survives: no CSV quoting
    assert all('"' in s for s in sub.sentences1)
    np.testing.assert_array_equal(sub.scores, scores)


def test_stsb_malformed(tmp_path: Path) -> None:
    p = tmp_path / "sts-dev.csv"
    p.write_text("g\tf\t2012\t1\t2.5\ta\tb\ng\tf\t2012\t2\tx\ta\tb\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{p}:2") + ".*'x' is not a number"):
        read_stsb_file(p)
    p.write_text("g\tf\t2012\t1\t2.5\ta\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{p}:1") + ".*got 6"):
        read_stsb_file(p)


def test_sick_crlf_and_header(tmp_path: Path) -> None:
    s1, s2, scores = write_sick(tmp_path, "SICK_trial.txt", 4)
    sub = read_sick_file(tmp_path / "SICK" / "SICK_trial.txt")
    assert sub.sentences1 == s1 and sub.sentences2 == s2
    np.testing.assert_array_equal(sub.scores, scores)
    bad = tmp_path / "bad.txt"
    bad.write_text("id\ta\tb\tscore\n1\tx\ty\t3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{bad}:1") + ".*header"):
        read_sick_file(bad)


# ---------------------------------------------------------------------- counts, folders
def test_count_mismatch_is_an_error(tmp_path: Path) -> None:
    write_stsb(tmp_path, "sts-test.csv", 3)
    with pytest.raises(ValueError, match=r"stsb test .*3 scored pairs, expected 1379"):
        load_local_task("stsb", "test", tmp_path)


def test_subset_count_mismatch_is_an_error(tmp_path: Path) -> None:
    write_year(tmp_path, "STS13-en-test", {"FNWN": 2, "headlines": 3, "OnWN": 4})
    with pytest.raises(ValueError, match=r"sts13 subset FNWN .*2 scored pairs, expected 189"):
        load_local_task("sts13", "test", tmp_path)


def test_local_task_with_patched_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    subs = {"FNWN": 2, "headlines": 3, "OnWN": 4}
    truth = write_year(tmp_path, "STS13-en-test", subs)
    patch_counts(monkeypatch, {("sts13", "test"): 9}, {"sts13": subs})
    task = load_local_task("sts13", "dev", tmp_path)  # STS12-16 ignore the split: test only
    assert task.split == "test" and [s.name for s in task.subsets] == list(subs)
    assert task.sentences1 == [x for n in subs for x in truth[n][0]]
    np.testing.assert_array_equal(task.scores, np.concatenate([truth[n][2] for n in subs]))


def test_sickr_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"train": ("SICK_train.txt", 5), "dev": ("SICK_trial.txt", 2)}
    files["test"] = ("SICK_test_annotated.txt", 3)
    for i, (f, n) in enumerate(files.values()):
        write_sick(tmp_path, f, n, seed=i)
    patch_counts(monkeypatch, {("sickr", "train"): 5, ("sickr", "dev"): 2, ("sickr", "test"): 3})
    monkeypatch.setitem(data.EXPECTED_PAIRS, ("sickr", "all"), 10)
    assert load_local_task("sickr", "dev", tmp_path).n_pairs == 2
    every = load_local_task("sickr", "all", tmp_path)
    assert [s.n_pairs for s in every.subsets] == [5, 2, 3]
    write_stsb(tmp_path, "sts-test.csv", 4)
    monkeypatch.setitem(data.EXPECTED_PAIRS, ("stsb", "test"), 4)
    stsb_all = load_local_task("stsb", "all", tmp_path)  # MTEB's protocol: STS-B test
    assert stsb_all.split == "test" and stsb_all.n_pairs == 4
    with pytest.raises(ValueError, match="unknown split"):
        load_local_task("stsb", "validation", tmp_path)


def test_resolve_sts_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sts = tmp_path / "root" / "sts"
    (sts / "STSBenchmark").mkdir(parents=True)
    monkeypatch.delenv("TEXTCL_DATA", raising=False)
    assert resolve_sts_dir(None) is None
    assert resolve_sts_dir(tmp_path / "root") == sts  # data root holding sts/
    assert resolve_sts_dir(sts) == sts  # the sts folder itself
    monkeypatch.setenv("TEXTCL_DATA", str(tmp_path / "root"))
    assert resolve_sts_dir(None) == sts
    monkeypatch.setenv("TEXTCL_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="TEXTCL_DATA"):
        resolve_sts_dir(None)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_sts_dir(tmp_path / "missing")


def test_expand_tasks() -> None:
    assert expand_tasks("all") == list(data.TASKS)
    assert expand_tasks("STS-B, sts12,stsb") == ["stsb", "sts12"]
    assert expand_tasks(["sick-r", "all"])[0] == "sickr"
    with pytest.raises(ValueError, match="unknown STS task 'sts17'"):
        expand_tasks("sts12,sts17")
    with pytest.raises(ValueError, match="no STS task"):
        expand_tasks(" , ")


# ---------------------------------------------------------------------- the shared data
def _manifest_counts(manifest: Path) -> dict[tuple[str, str], int]:
    """Counts from the MANIFEST tables (an oracle independent of EXPECTED_PAIRS)."""
    text = manifest.read_text(encoding="utf-8")
    out: dict[tuple[str, str], int] = {}
    for year in (12, 13, 14, 15, 16):
        m = re.search(rf"^\| STS{year} \|.*\| (\d+) \|$", text, re.M)
        assert m, f"STS{year} row not found in {manifest}"
        out[(f"sts{year}", "test")] = int(m.group(1))
    for split in ("train", "dev", "test"):
        m = re.search(rf"sts-{split}\.csv (\d+)", text)
        assert m
        out[("stsb", split)] = int(m.group(1))
    for split, f in (
        ("train", "SICK_train"),
        ("dev", "SICK_trial"),
        ("test", "SICK_test_annotated"),
    ):
        m = re.search(rf"\| SICK/{f}\.txt \| (\d+) \|", text)
        assert m
        out[("sickr", split)] = int(m.group(1))
    return out


def test_shared_data_counts_match_manifest(sts_dir: Path) -> None:
    expected = _manifest_counts(sts_dir / "MANIFEST.md")
    for (task, split), n in expected.items():
        loaded = load_sts_task(task, split, sts_dir)
        assert loaded.n_pairs == n, (task, split)
        assert loaded.source == f"local:{sts_dir}"
        assert all(len(s) > 0 for s in loaded.sentences1[:50])
    sick_all = load_sts_task("sickr", "all", sts_dir.parent)  # a data root with sts/ works too
    assert sick_all.n_pairs == sum(n for (t, _), n in expected.items() if t == "sickr")


# ---------------------------------------------------------------------- hub
def _fake_hub(calls: list, n: int) -> object:
    def fake(path: str, revision: str, split: str) -> object:
        from datasets import Dataset

        calls.append((path, revision, split))
        rng = np.random.default_rng(len(calls))
        return Dataset.from_dict(
            {
                "sentence1": [f"first {i}" for i in range(n)],
                "sentence2": [f"second {i}" for i in range(n)],
                "score": rng.uniform(1, 5, n).tolist(),  # in every task's range (SICK: 1-5)
            }
        )

    return fake


def test_hub_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEXTCL_DATA", raising=False)
    calls: list = []
    monkeypatch.setattr(data, "_hub_load", _fake_hub(calls, 6))
    patch_counts(monkeypatch, {("stsb", "dev"): 6, ("sts14", "test"): 6, ("sickr", "all"): 6})
    stsb = load_sts_task("stsb", "dev")
    assert calls[-1] == ("mteb/stsbenchmark-sts", data.HUB_DATASETS["stsb"][1], "validation")
    assert stsb.n_pairs == 6 and stsb.sentences1[0] == "first 0"
    assert stsb.source.startswith("hub:mteb/stsbenchmark-sts@")
    sts14 = load_sts_task("sts14", "test")
    assert calls[-1][0] == "mteb/sts14-sts" and calls[-1][2] == "test"
    assert not sts14.has_subsets
    assert load_sts_task("sickr", "all").n_pairs == 6
    assert calls[-1][:1] == ("mteb/sickr-sts",) and calls[-1][2] == "test"
    n_calls = len(calls)
    with pytest.raises(ValueError, match="sickr test: not available from the hub"):
        load_sts_task("sickr", "test")
    assert len(calls) == n_calls


def test_hub_count_mismatch_and_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEXTCL_DATA", raising=False)
    monkeypatch.setattr(data, "_hub_load", _fake_hub([], 5))
    with pytest.raises(ValueError, match=r"stsb test .*5 scored pairs, expected 1379"):
        load_sts_task("stsb", "test")

    def offline(path: str, revision: str, split: str) -> object:
        raise ConnectionError("no network")

    monkeypatch.setattr(data, "_hub_load", offline)
    with pytest.raises(ValueError, match=r"set data_dir or TEXTCL_DATA.*ConnectionError"):
        load_sts_task("sts12", "test")
