"""Encoding, stage by stage: where `SentenceEncoder.encode`'s time goes, and its % of the fp32 matmul roof.

all-MiniLM-L6-v2 over a held-out mix of sentences (by default 3,000: the last 1,500 lines of
the shared Wikipedia file and 1,500 STS-B sentences drawn at random, seed 0). In one process:

1. **A/B of the encode settings** (``--variants``), alternating inside each repeat, medians:
   ``before`` (``max_tokens=None, prefetch=False, streams=1``: the loop of textcl <= 0.x), token budgets, ``streams``, ``compile``,
   ``prefetch``, ``eager`` attention instead of SDPA, ``after`` (``encode``'s defaults). Each
   checks its embeddings against ``before`` (max abs difference).
2. **The fp32 roof**, measured between the repeats: ``torch.mm`` at the FFN shape
   (``--roof-tokens`` x hidden @ hidden x intermediate, into a preallocated output), same
   threads, the fastest of 20 products per measurement, median over the measurements.
3. **FLOP accounting** (issue 24): 2 x the transformer layers' parameters per real token plus
   attention (``4 * L^2 * hidden`` per layer and sentence of L real tokens); % of roof =
   useful FLOP / encode wall time / roof.
4. **A per-stage table** of the ``before`` and ``after`` loops, replayed stage by stage with
   timers (tokenization, sorting/bucketing, padding, the forward pass, pooling and
   normalisation, the copy into the result) and the forward pass split by a
   ``torch.profiler`` pass into op families (embedding, QKV/output projections, FFN
   matmuls, attention, layer norm, GELU, other ops); "Python and dispatch" is the forward
   wall time the ops do not account for.

Run::

    TEXTCL_CPU_BF16=0 python -m benchmarks encode_stages                  # fp32, defaults
    python -m benchmarks encode_stages --sentences 600 --repeats 1       # quick look
    python -m benchmarks encode_stages --precision bf16 --variants before,after
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    CORPUS,
    add_common_args,
    data_root,
    machine_info,
    model_path,
    parser_for,
    set_threads,
    sts_data_dir,
    write_result,
)

DEFAULT_VARIANTS = "before,streams1,after,after+mt4096,after+compile,after+streams1+compile"
"""Encode settings compared by default (see :func:`variant_kwargs`)."""


def variant_kwargs(name: str) -> dict[str, Any]:
    """``encode`` keywords of a setting name: ``before`` (``max_tokens=None,
    prefetch=False``: the loop before issue 24), ``after`` (encode's defaults), or ``+``-joined
    parts applied to the defaults: ``mtN`` / ``mtnone`` (max_tokens), ``bsN`` (batch size),
    ``serial`` / ``prefetch``, ``eager`` / ``sdpa`` (attention implementation, key ``attn``),
    ``streamsN`` (row slices run side by side), ``compile`` (torch.compile), ``onnx`` /
    ``openvino`` (the model's fp32 export to that format, made in this run, key ``export``)."""
    kw: dict[str, Any] = {}
    for part in name.split("+"):
        if part == "before":
            kw.update(max_tokens=None, prefetch=False, streams=1)
        elif part == "after":
            pass
        elif part.startswith("mt"):
            kw["max_tokens"] = None if part == "mtnone" else int(part[2:])
        elif part.startswith("streams"):
            kw["streams"] = int(part[7:])
        elif part == "compile":
            kw["compile"] = True
        elif part.startswith("bs"):
            kw["batch_size"] = int(part[2:])
        elif part in ("serial", "prefetch"):
            kw["prefetch"] = part == "prefetch"
        elif part in ("eager", "sdpa"):
            kw["attn"] = part
        elif part in ("onnx", "openvino"):
            kw["export"] = part
        else:
            raise SystemExit(f"--variants: unknown setting {part!r} in {name!r}")
    return kw


def held_out_sentences(n: int, data: str | None) -> list[str]:
    """``n // 2`` Wikipedia sentences (the file's last lines) and ``n - n // 2`` STS-B
    sentences (random, seed 0)."""
    from benchmarks.encode_throughput import sts_sentences

    wiki_file = data_root(data, contains=CORPUS) / CORPUS
    wiki = [s.strip() for s in wiki_file.read_text(encoding="utf-8").splitlines() if s.strip()]
    sts = sts_data_dir(data)
    if sts is None:
        raise SystemExit("no STS data (TEXTCL_DATA or --data)")
    stsb = sts_sentences(sts, "stsb")
    pick = np.random.default_rng(0).choice(len(stsb), size=n - n // 2, replace=False)
    return wiki[len(wiki) - n // 2 :] + [stsb[i] for i in sorted(pick)]


def roof_gflops(tokens: int, hidden: int, inner: int, reps: int = 20) -> tuple[float, float]:
    """fp32 ``torch.mm`` GFLOP/s at the FFN shape, into a preallocated output: per wall
    second (the fastest of ``reps`` products: a roof is what the kernel can do) and per
    process CPU second (all ``reps``). A fresh output per call measured up to 15% lower in
    some processes (new pages; docs/export.md, "The roofs")."""
    x, w, out = torch.randn(tokens, hidden), torch.randn(hidden, inner), torch.empty(tokens, inner)
    for _ in range(3):
        torch.mm(x, w, out=out)
    times = []
    c0 = time.process_time()
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(x, w, out=out)
        times.append(time.perf_counter() - t0)
    flop = 2 * tokens * hidden * inner
    return flop / min(times) / 1e9, flop * reps / (time.process_time() - c0) / 1e9


def layer_params(model: Any) -> int:
    """Parameters of the transformer layers (embeddings and pooler left out)."""
    return sum(p.numel() for n, p in model.named_parameters() if ".layer." in f".{n}")


def categorize(name: str, shapes: list[Any], inner: int) -> str:
    """The op family of a profiler event (its name and input shapes)."""
    if name in ("aten::embedding", "aten::index_select"):
        return "embedding layer"
    if name in ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul") and not any(
        isinstance(s, list) and len(s) >= 3 for s in shapes
    ):
        flat = [d for s in shapes if isinstance(s, list) for d in s]
        return "FFN matmuls" if inner in flat else "QKV + output projections"
    if "attention" in name or name in ("aten::softmax", "aten::_softmax", "aten::bmm"):
        return "attention (scores, softmax, values)"
    if "matmul" in name or "baddbmm" in name:
        return "attention (scores, softmax, values)"
    if "layer_norm" in name:
        return "layer norm"
    if "gelu" in name:
        return "GELU"
    return "other ops (bias copies, residual adds, masks, reshapes)"


def profile_forward(encoder: Any, batches: list[Any], inner: int) -> dict[str, float]:
    """Self time (s) per op family over the forward passes of ``batches``."""
    from torch.profiler import ProfilerActivity, profile

    with (
        torch.inference_mode(),
        profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof,
    ):
        for b in batches:
            encoder.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    families: dict[str, float] = {}
    for ev in prof.key_averages(group_by_input_shape=True):
        if not ev.key.startswith("aten::"):
            continue
        fam = categorize(ev.key, list(ev.input_shapes or []), inner)
        families[fam] = families.get(fam, 0.0) + ev.self_cpu_time_total / 1e6
    return families


def replay_stages(
    encoder: Any,
    texts: list[str],
    batch_size: int,
    max_tokens: int | None,
    repeats: int,
    streams: int = 1,
) -> tuple[dict[str, float], list[Any], dict[str, int]]:
    """The encode loop with a timer per stage (medians over ``repeats``); also the padded
    batches (for the profiler) and token counts. ``streams > 1``: each forward pass runs as
    that many row slices side by side, one torch thread each (as ``encode`` does)."""
    from concurrent.futures import ThreadPoolExecutor

    from textcl.inference import length_sorted_batches, split_rows
    from textcl.tokens import batch_bounds, token_ids

    def forward(b: Any) -> Any:
        with torch.inference_mode():
            return encoder.model(
                input_ids=b["input_ids"], attention_mask=b["attention_mask"]
            ).last_hidden_state

    stream_pool = ThreadPoolExecutor(max_workers=streams)
    threads = torch.get_num_threads()

    tok, max_len = encoder.tokenizer, encoder.effective_max_length
    runs: dict[str, list[float]] = {}
    batches: list[Any] = []
    counts: dict[str, int] = {}
    for _ in range(repeats):
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        ids = token_ids(tok, texts, max_len)
        t["tokenization"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        bounds = batch_bounds([len(ids[i]) for i in order], batch_size, max_tokens)
        t["sorting and bucketing"] = time.perf_counter() - t0
        _, bounds, make = length_sorted_batches(encoder, texts, batch_size, max_len, max_tokens)
        t0 = time.perf_counter()
        batches = [make(a, b) for a, b in bounds]
        t["padding (building batches)"] = time.perf_counter() - t0
        result = torch.empty((len(texts), encoder.embedding_dim))
        order_t = torch.tensor(order)
        fwd = pool = copy = 0.0
        if streams > 1:
            torch.set_num_threads(max(1, threads // streams))
        with torch.inference_mode():
            done = 0
            for b in batches:
                t0 = time.perf_counter()
                if streams > 1:
                    hidden = torch.cat(list(stream_pool.map(forward, split_rows(b, streams))))
                else:
                    hidden = forward(b)
                t1 = time.perf_counter()
                emb = encoder.pooling(hidden, b["attention_mask"], None)
                emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
                t2 = time.perf_counter()
                n = emb.shape[0]
                result[order_t[done : done + n]] = emb
                done += n
                t3 = time.perf_counter()
                fwd, pool, copy = fwd + t1 - t0, pool + t2 - t1, copy + t3 - t2
        torch.set_num_threads(threads)
        t["forward pass"] = fwd
        t["pooling and normalisation"] = pool
        t["copy into the result"] = copy
        t0 = time.perf_counter()
        result.numpy()
        t["to numpy"] = time.perf_counter() - t0
        for k, v in t.items():
            runs.setdefault(k, []).append(v)
        counts = {
            "real": sum(len(x) for x in ids),
            "padded": sum(int(b["input_ids"].numel()) for b in batches),
            "batches": len(batches),
        }
    stream_pool.shutdown()
    return {k: statistics.median(v) for k, v in runs.items()}, batches, counts


def attention_flop(lengths: list[int], layers: int, hidden: int) -> float:
    return float(sum(4 * n * n * hidden * layers for n in lengths))


def main(argv: list[str] | None = None) -> int:
    p = parser_for("encode_stages", __doc__)
    add_common_args(p)
    p.add_argument("--sentences", type=int, default=3000, help="held-out sentences (default 3000)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="fp32", help="encode precision (default fp32)")
    p.add_argument("--roof-tokens", type=int, default=2048, help="rows of the roof's torch.mm")
    p.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help="comma-separated settings to compare: before, after, or +-joined parts "
        "mtN/mtnone, bsN, serial/prefetch, eager/sdpa, streamsN, compile, onnx/openvino (the "
        f"fp32 export run through that runtime) (default {DEFAULT_VARIANTS})",
    )
    p.add_argument("--no-stages", action="store_true", help="skip the per-stage replay")
    p.add_argument("--stage-repeats", type=int, default=1, help="replays per stage table")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "before" not in names:
        raise SystemExit("--variants: 'before' is required (the reference)")
    kwargs = {n: variant_kwargs(n) for n in names}

    from textcl import SentenceEncoder
    from textcl.export.exporter import export_model
    from textcl.inference import CPU_MAX_TOKENS, resolve_streams

    set_threads(args.threads)
    texts = held_out_sentences(args.sentences, args.data)
    enc = SentenceEncoder.from_pretrained(model_path(args.model), device="cpu")
    cfg = enc.model.config
    hidden, inner, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    lengths = [len(x) for x in enc.tokenizer(texts, truncation=True)["input_ids"]]
    params = layer_params(enc.model)
    useful = 2.0 * params * sum(lengths) + attention_flop(lengths, layers, hidden)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    print(
        f"{len(texts)} sentences, {sum(lengths)} real tokens; {params} layer parameters; "
        f"useful work {useful / 1e12:.3f} TFLOP; {torch.get_num_threads()} threads; "
        f"attention: {cfg._attn_implementation}; load {load}",
        flush=True,
    )

    exports = {}
    for fmt in sorted({kw["export"] for kw in kwargs.values() if "export" in kw}):
        folder = Path(tempfile.mkdtemp(prefix="textcl-stages-")) / fmt
        export_model(model_path(args.model), folder, fmt)
        exports[fmt] = SentenceEncoder.load(folder)
        print(f"{fmt}: fp32 export in {folder}", flush=True)

    def run(name: str) -> Callable[[], np.ndarray]:
        kw = dict(kwargs[name])
        attn = kw.pop("attn", "sdpa")
        encoder = exports[kw.pop("export")] if "export" in kw else enc

        def go() -> np.ndarray:
            enc.model.set_attn_implementation(attn)
            try:
                out = encoder.encode(texts, precision=args.precision, show_progress=False, **kw)
            finally:
                enc.model.set_attn_implementation("sdpa")
            return np.asarray(out)

        return go

    fns = {n: run(n) for n in names}
    enc.encode(texts[:256], precision=args.precision, show_progress=False)  # warm-up
    compile_s: dict[str, float] = {}
    for n in names:  # the compiled variants: the first call compiles (timed, reported)
        if kwargs[n].get("compile"):
            t0 = time.perf_counter()
            fns[n]()
            compile_s[n] = time.perf_counter() - t0
            print(f"{n}: first call (compilation + one pass) {compile_s[n]:.1f} s", flush=True)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    roofs: list[float] = []
    cpu_roofs: list[float] = []
    emb: dict[str, np.ndarray] = {}
    for r in range(args.repeats):
        roof_w, roof_c = roof_gflops(args.roof_tokens, hidden, inner)
        roofs.append(roof_w)
        cpu_roofs.append(roof_c)
        for n in names if r % 2 == 0 else names[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            emb[n] = fns[n]()
            wall[n].append(time.perf_counter() - t0)
            cpu[n].append(time.process_time() - c0)
            print(f"repeat {r + 1} {n:>18}: {wall[n][-1]:.2f} s wall", flush=True)
    roof_w, roof_c = roof_gflops(args.roof_tokens, hidden, inner)
    roofs.append(roof_w)
    cpu_roofs.append(roof_c)
    roof, cpu_roof = statistics.median(roofs), statistics.median(cpu_roofs)
    ref = emb["before"]
    rows = []
    for n in names:
        w = statistics.median(wall[n])
        rows.append(
            [
                n,
                f"{len(texts) / w:.1f}",
                f"{statistics.median(wall['before']) / w:.3f}",
                f"{useful / w / 1e9:.1f}",
                f"{100 * useful / w / 1e9 / roof:.1f}",
                f"{len(texts) / statistics.median(cpu[n]):.1f}",
                f"{100 * useful / statistics.median(cpu[n]) / 1e9 / cpu_roof:.1f}",
                f"{float(np.abs(emb[n] - ref).max()):.1e}",
            ]
        )
    headers = [
        "setting",
        "sent/s wall",
        "x before",
        "GFLOP/s",
        "% of roof",
        "sent/CPU-s",
        "% of roof (CPU s)",
        "max abs diff",
    ]
    print(
        f"roof (torch.mm {args.roof_tokens}x{hidden} @ {hidden}x{inner}): {roof:.1f} GFLOP/s "
        f"wall, {cpu_roof:.1f} GFLOP per CPU-second"
    )
    print("| " + " | ".join(headers) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")

    tables = []
    stage_data: dict[str, Any] = {}
    if not args.no_stages:
        stage_rows: dict[str, dict[str, float]] = {}
        after_streams = resolve_streams("auto", torch.device("cpu"), torch.get_num_threads())
        for label, budget, streams in (
            ("before", None, 1),
            ("after", CPU_MAX_TOKENS, after_streams),
        ):
            stages, batches, counts = replay_stages(
                enc, texts, args.batch_size, budget, max(1, args.stage_repeats), streams
            )
            fams = profile_forward(enc, batches, inner)
            fwd = stages.pop("forward pass")
            ops = sum(fams.values())
            merged = {"tokenization": stages.pop("tokenization")}
            merged.update({k: stages.pop(k) for k in ("sorting and bucketing",)})
            merged["padding (building batches)"] = stages.pop("padding (building batches)")
            for fam in sorted(fams, key=lambda f: -fams[f]):
                merged[f"forward: {fam}"] = fams[fam] * fwd / max(ops, fwd)
            merged["forward: Python and dispatch"] = max(0.0, fwd - ops)
            merged.update(stages)
            stage_rows[label] = merged
            stage_data[label] = {"stages": merged, "counts": counts, "ops_s": fams, "fwd_s": fwd}
            print(
                f"{label}: {counts['batches']} batches, padded/real tokens "
                f"{counts['padded'] / counts['real']:.3f}",
                flush=True,
            )
        keys = list(dict.fromkeys([*stage_rows["before"], *stage_rows["after"]]))
        tot = {k: sum(v.values()) for k, v in stage_rows.items()}
        srows = []
        for k in keys:
            b, a = stage_rows["before"].get(k, 0.0), stage_rows["after"].get(k, 0.0)
            srows.append(
                [
                    k,
                    f"{1e3 * b:.1f}",
                    f"{100 * b / tot['before']:.1f}",
                    f"{1e3 * a:.1f}",
                    f"{100 * a / tot['after']:.1f}",
                ]
            )
        srows.append(
            ["total", f"{1e3 * tot['before']:.1f}", "100", f"{1e3 * tot['after']:.1f}", "100"]
        )
        sheaders = ["stage", "before ms", "before %", "after ms", "after %"]
        print("| " + " | ".join(sheaders) + " |")
        for row in srows:
            print("| " + " | ".join(row) + " |")
        tables.append({"rows": srows, "headers": sheaders})
    from benchmarks.common import table

    write_result(
        "encode_stages",
        rows,
        args.json,
        section="Encoding: where the time goes (issue 24)",
        title=f"{args.precision}, {torch.get_num_threads()} thread(s), load {' '.join(load)}",
        headers=headers,
        tables=[table(t["rows"], t["headers"]) for t in tables],
        notes=[
            f"{len(texts)} sentences ({sum(lengths)} real tokens), useful work "
            f"{useful / 1e12:.3f} TFLOP; fp32 roof {roof:.1f} GFLOP/s wall, {cpu_roof:.1f} "
            f"GFLOP per CPU-second (torch.mm "
            f"{args.roof_tokens}x{hidden} @ {hidden}x{inner}, {torch.get_num_threads()} "
            f"threads); precision {args.precision}; load {load}."
        ],
        data={
            "wall_s": wall,
            "cpu_s": cpu,
            "roof_gflops": roofs,
            "roof_gflop_per_cpu_s": cpu_roofs,
            "stages": stage_data,
            "first_call_s": compile_s,
            "machine": machine_info(),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
