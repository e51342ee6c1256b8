"""``textcl mine``: hard negatives against a brute-force numpy oracle, the negative controls
(the positive, the anchor and duplicates are never chosen), the output read back by the
reader of ``textcl train``, bad input, and sentence-transformers' ``mine_hard_negatives``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import CORPUS, build_tiny_bert
from textcl import SentenceEncoder
from textcl.cli import main
from textcl.data.pairs import DEFAULT_COLUMNS, PairDataset
from textcl.errors import FolderConflictError, InputError
from textcl.search import encode_corpus
from textcl.search.mine import (
    MineOptions,
    mine_hard_negatives,
    mine_to_file,
    select_negatives,
)

# Anchors (with one anchor given two positives) over CORPUS sentences.
PAIRS: list[tuple[str, str]] = [
    (CORPUS[0], CORPUS[7]),
    (CORPUS[1], CORPUS[4]),
    (CORPUS[2], CORPUS[15]),
    (CORPUS[3], CORPUS[13]),
    (CORPUS[0], CORPUS[10]),  # CORPUS[0] has two positives
    (CORPUS[5], CORPUS[14]),
    (CORPUS[6], CORPUS[3]),  # a positive that is another row's anchor
    (CORPUS[8], CORPUS[9]),
    (CORPUS[11], CORPUS[17]),
    (CORPUS[12], CORPUS[16]),
    (CORPUS[18], CORPUS[19]),
    (CORPUS[20], CORPUS[21]),
    (CORPUS[22], CORPUS[2]),
    (CORPUS[9], CORPUS[8]),
]


def pairs_csv(
    path: Path, pairs: list[tuple[str, str]] = PAIRS, header: str = "sent0,sent1"
) -> Path:
    lines = [header] + [f'"{a}","{p}"' for a, p in pairs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def oracle(
    encoder: SentenceEncoder, pairs: list[tuple[str, str]], o: MineOptions
) -> dict[tuple[str, str], list[str]]:
    """Brute force: the full score matrix of every distinct anchor against every distinct
    positive, the rules as boolean masks, a stable sort, the window, the top."""
    anchors = list(dict.fromkeys(a for a, _ in pairs))
    corpus = list(dict.fromkeys(p for _, p in pairs))
    pos_of = {a: {p for b, p in pairs if b == a} for a in anchors}
    qa = encoder.encode(anchors, normalize=True, precision="fp32")
    ca = encoder.encode(corpus, normalize=True, precision="fp32")
    s = qa @ ca.T  # (A, C)
    text = np.array(corpus, dtype=object)
    max_pos = max(len(v) for v in pos_of.values())
    lo, hi, _ = o.window(max_pos)
    out: dict[str, list[str]] = {}
    for i, a in enumerate(anchors):
        ps = min(float(s[i, corpus.index(p)]) for p in pos_of[a])
        ok = (text != a) & ~np.isin(text, list(pos_of[a]))
        if o.absolute_margin is not None:
            ok &= s[i] + o.absolute_margin <= ps
        if o.relative_margin is not None:
            ok &= s[i] <= ps - abs(ps) * o.relative_margin
        if o.max_score is not None:
            ok &= s[i] <= o.max_score
        if o.min_score is not None:
            ok &= s[i] >= o.min_score
        order = np.lexsort((np.arange(len(corpus)), -s[i]))
        kept = [j for j in order if ok[j]]
        out[a] = [corpus[j] for j in kept[lo:hi][: o.num_negatives]]
    return {(a, p): out[a] for a, p in pairs}


def by_pair(triples: list[tuple[str, str, str]]) -> dict[tuple[str, str], list[str]]:
    got: dict[tuple[str, str], list[str]] = {}
    for a, p, n in triples:
        got.setdefault((a, p), []).append(n)
    return got


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path) -> SentenceEncoder:
    return SentenceEncoder.from_pretrained(tiny_model_dir, pooling="mean")


@pytest.fixture(scope="module")
def score_range(encoder: SentenceEncoder) -> tuple[float, float, float]:
    """Quantiles (25, 50, 75 %) of anchor-corpus scores of the tiny model (to set rules that
    act on some candidates and not on all)."""
    qa = encoder.encode([a for a, _ in PAIRS], normalize=True)
    ca = encoder.encode([p for _, p in PAIRS], normalize=True)
    q = np.quantile(qa @ ca.T, [0.25, 0.5, 0.75])
    return float(q[0]), float(q[1]), float(q[2])


RULE_CASES: dict[str, Any] = {
    "top1": {},
    "top3": {"num_negatives": 3},
    "absolute_margin": {"num_negatives": 2, "absolute_margin": "spread"},
    "relative_margin": {"num_negatives": 2, "relative_margin": 0.01},
    "range": {"num_negatives": 2, "range_min": 2, "range_max": 6},
    "max_score": {"num_negatives": 2, "max_score": "q50"},
    "min_score": {"num_negatives": 4, "min_score": "q75"},
    "all": {"num_negatives": 2, "range_min": 1, "max_score": "q75", "absolute_margin": 0.0},
}


def resolve(case: dict[str, Any], q: tuple[float, float, float]) -> dict[str, Any]:
    values = {"q25": q[0], "q50": q[1], "q75": q[2], "spread": (q[2] - q[0]) / 4}
    return {k: values.get(v, v) if isinstance(v, str) else v for k, v in case.items()}


@pytest.mark.parametrize("case", list(RULE_CASES))
def test_mining_matches_a_brute_force_oracle(
    encoder: SentenceEncoder, score_range: Any, case: str, one_thread: None
) -> None:
    o = MineOptions(precision="fp32", show_progress=False, **resolve(RULE_CASES[case], score_range))
    data = PairDataset(PAIRS, ("sent0", "sent1"))
    result = mine_hard_negatives(data, encoder, options=o)
    want = oracle(encoder, PAIRS, o)
    got = by_pair(result.triples)
    assert {k: v for k, v in want.items() if v} == got
    # Rows come back in input order, one per negative, each pair's negatives best first.
    assert [(a, p) for a, p, _ in result.triples] == [pair for pair in PAIRS for _ in want[pair]]
    s = result.summary
    assert s["pairs"] == len(PAIRS) and s["anchors"] == len(PAIRS) - 1
    assert s["triples"] == len(result.triples) == sum(len(v) for v in want.values())
    assert s["pairs_without_negative"] == sum(1 for v in want.values() if not v)
    # The rules under test act: a score rule skips some candidates, yet negatives remain.
    rules = [
        r
        for r in ("absolute_margin", "relative_margin", "max_score", "min_score")
        if getattr(o, r) is not None
    ]
    for rule in rules:
        assert s["skipped_candidates"][rule] > 0, rule
    assert s["triples"] > 0
    assert s["skipped_candidates"]["positive"] > 0


def test_select_negatives_rules_in_order() -> None:
    o = MineOptions(num_negatives=2, absolute_margin=0.1, max_score=0.5, range_min=1)
    scores = [0.95, 0.9, 0.85, 0.7, 0.55, 0.45, 0.4, 0.3, 0.3, 0.2]
    texts = ["anchor", "pos", "x", "x", "y", "z", "w", "z", "v", None]
    sel = select_negatives(scores, texts, "anchor", {"pos"}, 0.8, o, (1, 10))
    # 0.95 anchor; 0.9 positive; 0.85 "x": 0.85 + 0.1 > 0.8, the margin; 0.7 "x" (not a
    # duplicate: the first "x" was not taken) passes the margin, max_score drops it; 0.55
    # max_score; 0.45 "z" and 0.4 "w" kept; 0.3 "z" duplicate; 0.3 "v" kept; None: no hit.
    assert sel.skipped == {
        "anchor": 1,
        "positive": 1,
        "duplicate": 1,
        "absolute_margin": 1,
        "relative_margin": 0,
        "max_score": 2,
        "min_score": 0,
    }
    assert sel.kept == 3  # z 0.45, w 0.4, v 0.3
    assert [texts[c] for c, _ in sel.chosen] == ["w", "v"]  # range_min 1 skips z
    sampled = select_negatives(
        scores,
        texts,
        "anchor",
        {"pos"},
        0.8,
        MineOptions(num_negatives=2, sampling="random"),
        (0, 10),
    )
    assert len(sampled.chosen) == 2 and sampled.chosen[0][1] >= sampled.chosen[1][1]


def test_positive_anchor_and_duplicates_never_chosen_from_an_index(
    tiny_model_dir: Path, encoder: SentenceEncoder, tmp_path: Path, one_thread: None
) -> None:
    """Negative control: an index holding the anchor, the positive and the other texts twice
    each: the raw top hits are the anchor and its positive (the rules have work to do), yet
    neither nor any repeated text is ever chosen."""
    corpus = list(CORPUS) + list(CORPUS)  # every text twice
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(corpus) + "\n", encoding="utf-8")
    index = tmp_path / "idx"
    encode_corpus(tiny_model_dir, src, index, shard_size=10, show_progress=False)
    o = MineOptions(num_negatives=4, top_k=30, precision="fp32", show_progress=False)
    result = mine_hard_negatives(
        pairs_csv(tmp_path / "pairs.csv"), tiny_model_dir, index=index, options=o
    )
    got = by_pair(result.triples)
    assert set(got) == set(PAIRS)
    positives: dict[str, set[str]] = {}
    for a, p in PAIRS:
        positives.setdefault(a, set()).add(p)
    for (a, _), negs in got.items():
        assert a not in negs and not positives[a] & set(negs)
        assert len(negs) == len(set(negs)) == 4
    s = result.summary
    assert s["skipped_candidates"]["anchor"] >= 2 * (len(PAIRS) - 1)  # both copies
    assert s["skipped_candidates"]["duplicate"] > 0
    assert s["corpus"] == {
        "kind": "index",
        "path": str(index),
        "size": 2 * len(CORPUS),
        "faiss": None,
    }

    # Same negatives as brute force over the distinct texts (anchors included in the corpus).
    q = encoder.encode([a for a, _ in PAIRS], normalize=True)
    c = encoder.encode(list(CORPUS), normalize=True)
    for i, (a, p) in enumerate(PAIRS):
        order = np.lexsort((np.arange(len(CORPUS)), -(q[i] @ c.T)))
        want = [CORPUS[j] for j in order if CORPUS[j] != a and CORPUS[j] not in positives[a]]
        assert got[(a, p)] == want[:4]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
def test_output_reads_back_with_the_train_reader(
    tiny_model_dir: Path, tmp_path: Path, fmt: str, one_thread: None
) -> None:
    pairs = pairs_csv(tmp_path / "pairs.csv")
    out = tmp_path / f"triples.{fmt}"
    o = MineOptions(num_negatives=2, precision="fp32", show_progress=False)
    summary = mine_to_file(pairs, out, tiny_model_dir, options=o, with_scores=fmt == "csv")
    assert summary["output"] == str(out) and summary["format"] == fmt
    back = PairDataset.from_source(out, columns=DEFAULT_COLUMNS)  # what `textcl train` reads
    direct = mine_hard_negatives(pairs, tiny_model_dir, options=o)
    assert back.rows == direct.triples and len(back) == summary["triples"] == 2 * len(PAIRS)
    assert not list(tmp_path.glob("*.tmp*"))


def test_cli_mine_and_seeded_random_sampling(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    pairs = pairs_csv(tmp_path / "p.csv", header="q,d")
    args = ["mine", "--pairs", str(pairs), "--model", str(tiny_model_dir), "--anchor-column", "q"]
    args += ["--positive-column", "d", "--num-negatives", "2", "--sampling", "random"]
    args += ["--range-max", "8", "--no-progress", "--precision", "fp32"]
    outs = []
    for name, seed in (("a.jsonl", "1"), ("b.jsonl", "1"), ("c.jsonl", "2")):
        assert main([*args, "--output", str(tmp_path / name), "--seed", seed]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["triples"] == 2 * len(PAIRS)
        outs.append((tmp_path / name).read_text(encoding="utf-8"))
    assert outs[0] == outs[1] and outs[0] != outs[2]
    # Every random pick lies inside the window of the top 8 candidates left.
    top = mine_hard_negatives(
        pairs,
        tiny_model_dir,
        options=MineOptions(
            anchor_column="q",
            positive_column="d",
            num_negatives=8,
            range_max=8,
            show_progress=False,
        ),
    )
    window = by_pair(top.triples)
    for line in outs[2].splitlines():
        row = json.loads(line)
        assert row["hard_neg"] in window[(row["sent0"], row["sent1"])]


# ---------------------------------------------------------------- bad input
def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["mine", "--no-progress", *args])
    return code, capsys.readouterr().err


def test_bad_input_gets_clear_errors(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    pairs = pairs_csv(tmp_path / "pairs.csv")
    model = ["--model", str(tiny_model_dir)]
    out = str(tmp_path / "out.csv")

    code, err = _run(
        capsys, "--pairs", str(pairs), "--output", out, *model, "--positive-column", "pos"
    )
    assert code == 2 and str(pairs) in err and "'pos'" in err and "'sent1'" in err

    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    code, err = _run(capsys, "--pairs", str(empty), "--output", out, *model)
    assert code == 2 and f"{empty}: the file is empty" in err

    code, err = _run(
        capsys,
        "--pairs",
        str(pairs),
        "--output",
        out,
        *model,
        "--num-negatives",
        "5",
        "--top-k",
        "4",
    )
    assert code == 2 and "--top-k: 4 candidates per anchor are too few" in err

    code, err = _run(
        capsys,
        "--pairs",
        str(pairs),
        "--output",
        out,
        *model,
        "--num-negatives",
        "5",
        "--range-max",
        "3",
    )
    assert code == 2 and "--num-negatives: cannot take 5 negatives" in err

    code, err = _run(capsys, "--pairs", str(pairs), "--output", str(pairs), *model, "--overwrite")
    assert code == 2 and "is the pairs file" in err
    assert pairs.read_text(encoding="utf-8").startswith("sent0,sent1\n")  # untouched

    code, err = _run(capsys, "--pairs", str(pairs), "--output", str(tmp_path / "out.txt"), *model)
    assert code == 2 and "--format" in err

    assert _run(capsys, "--pairs", str(pairs), "--output", out, *model)[0] == 0
    before = Path(out).read_bytes()
    code, err = _run(capsys, "--pairs", str(pairs), "--output", out, *model, "--num-negatives", "2")
    assert code == 4 and "the output file exists; pass --overwrite" in err
    assert Path(out).read_bytes() == before
    assert (
        _run(
            capsys,
            "--pairs",
            str(pairs),
            "--output",
            out,
            *model,
            "--num-negatives",
            "2",
            "--overwrite",
        )[0]
        == 0
    )
    assert Path(out).read_bytes() != before

    code, err = _run(capsys, "--pairs", str(pairs), "--output", str(tmp_path / "o2.csv"))
    assert code == 2 and "--model" in err

    code, err = _run(
        capsys,
        "--pairs",
        str(pairs),
        "--output",
        str(tmp_path / "o3.csv"),
        *model,
        "--faiss",
        "hnsw",
    )
    assert code == 2 and "pass --index too" in err


def test_index_of_another_model_is_refused(
    tiny_model_dir: Path,
    tmp_path: Path,
    tiny_tokenizer: Any,
    capsys: pytest.CaptureFixture[str],
    one_thread: None,
) -> None:
    other = tmp_path / "other-model"
    build_tiny_bert(len(tiny_tokenizer), seed=1).save_pretrained(other)
    tiny_tokenizer.save_pretrained(other)
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    index = tmp_path / "idx"
    encode_corpus(tiny_model_dir, src, index, show_progress=False)
    pairs = pairs_csv(tmp_path / "pairs.csv")
    out = tmp_path / "t.csv"
    code, err = _run(
        capsys,
        "--pairs",
        str(pairs),
        "--output",
        str(out),
        "--index",
        str(index),
        "--model",
        str(other),
    )
    assert code == 2 and "model mismatch" in err and not out.exists()
    # The index's own model (the manifest's, by default) mines.
    assert _run(capsys, "--pairs", str(pairs), "--output", str(out), "--index", str(index))[0] == 0
    with pytest.raises(InputError, match="is inside the index folder"):
        mine_to_file(pairs, index / "t.csv", index=index)
    with pytest.raises(FolderConflictError):
        mine_to_file(pairs, out, index=index)


# ---------------------------------------------------------------- the peer
def _st_compare(st_folder: Path, pairs: list[tuple[str, str]], settings: dict[str, Any]) -> float:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine

    st = SentenceTransformer(str(st_folder), device="cpu")
    data = Dataset.from_dict({"a": [a for a, _ in pairs], "p": [p for _, p in pairs]})
    out = st_mine(data, st, output_format="triplet", verbose=False, **settings)
    theirs = by_pair([(r["a"], r["p"], r["negative"]) for r in out])
    o = MineOptions(show_progress=False, precision="fp32", **settings)
    ours = by_pair(
        mine_hard_negatives(PairDataset(pairs, ("a", "p")), st_folder, options=o).triples
    )
    keys = set(ours) | set(theirs)
    jac = [
        len(set(ours.get(k, [])) & set(theirs.get(k, [])))
        / max(1, len(set(ours.get(k, [])) | set(theirs.get(k, []))))
        for k in keys
    ]
    return float(np.mean(jac))


@pytest.mark.parametrize(
    "settings",
    [
        {"num_negatives": 3},
        {"num_negatives": 2, "range_min": 1, "range_max": 6, "absolute_margin": 0.0},
    ],
)
def test_same_negatives_as_sentence_transformers_tiny(
    tiny_model_dir: Path, tmp_path: Path, settings: dict[str, Any], one_thread: None
) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    folder = tmp_path / "st"
    t = Transformer(str(tiny_model_dir), max_seq_length=64)
    SentenceTransformer(
        modules=[t, Pooling(t.get_embedding_dimension(), "mean")], device="cpu"
    ).save(str(folder))
    assert _st_compare(folder, PAIRS, settings) == pytest.approx(1.0)


@pytest.mark.slow
def test_same_negatives_as_sentence_transformers_minilm(minilm_dir: Path) -> None:
    from benchmarks.common import data_root

    try:
        root = data_root(contains="nli/snli_dev_triples_sent0_sent1_hardneg.csv")
    except FileNotFoundError:
        pytest.skip("SNLI triples not found: set TEXTCL_DATA")
    import csv

    with (root / "nli" / "snli_dev_triples_sent0_sent1_hardneg.csv").open(encoding="utf-8") as f:
        pairs = [
            (r["sent0"], r["sent1"]) for _, r in zip(range(300), csv.DictReader(f), strict=False)
        ]
    overlap = _st_compare(minilm_dir, pairs, {"num_negatives": 3, "relative_margin": 0.05})
    assert overlap >= 0.99
