"""GPU training throughput: tokens/s, peak memory and MFU of SimCSE steps, with and without the
gradient cache, bf16 autocast, for batch sizes 64 ... 4096.

    python -m benchmarks gpu_train /path/to/all-MiniLM-L6-v2            # a local model folder
    python -m benchmarks gpu_train --model MODEL --batch-sizes 64,256,1024 --json out.json
    python -m benchmarks gpu_train --cpu-smoke --batch-sizes 8 --steps 1  # check the script

Exits 0 with a message when no CUDA device is present.

One step = two dropout views of ``B`` sentences padded to exactly ``--max-length`` tokens,
InfoNCE over them, backward, AdamW step. ``tokens/s = 2 * B * max_length / step time``
(padded tokens: all of them are computed). Peak memory is ``torch.cuda.max_memory_allocated``
over the timed steps (model, gradients and AdamW state included).

MFU (model FLOPs utilisation) = model FLOPs per second / the GPU's dense bf16 peak. Model FLOPs
per token of a training step follow the PaLM paper (Chowdhery et al. 2022, appendix B):
``6 * N + 12 * n_layers * L * d`` with ``N`` the parameters of the transformer layers (token,
position and type embeddings and the unused pooler excluded), ``L`` the sequence length and
``d`` the hidden size; the second term counts attention scores and the weighted sum (forward
``4 * n_layers * L * d``, times 3 for forward + backward). The gradient cache runs one more
forward (about 4/3 of the hardware FLOPs) but MFU counts *model* FLOPs, so its MFU shows the
price of the recomputation. Peaks: :data:`PEAK_BF16_TFLOPS` (dense, no sparsity) by device
name, or ``--peak-tflops``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from benchmarks.common import add_common_args, data_root, model_path, parser_for, write_result

PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    # (substring of torch.cuda.get_device_name(), dense bf16 TFLOP/s); first match wins.
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("A6000", 155.0),  # RTX A6000 (Ampere): 154.8 with FP32 accumulation
)


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a device by name (first matching entry), or None if unknown."""
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def model_flops_per_token(model: Any, seq_len: int) -> tuple[float, int]:
    """Training FLOPs per token (``6N + 12 * n_layers * L * d``) and ``N`` (see module doc)."""
    n = sum(
        p.numel()
        for name, p in model.named_parameters()
        if "embeddings" not in name and "pooler" not in name
    )
    cfg = model.config
    return 6.0 * n + 12.0 * cfg.num_hidden_layers * seq_len * cfg.hidden_size, n


def _sentences(n: int) -> list[str]:
    try:
        paths = sorted((data_root() / "corpus").glob("wiki_sentences_*.txt"))
    except FileNotFoundError:
        paths = []
    pool: list[str] = []
    for path in paths:
        pool += [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not pool:
        words = ["the", "a", "cat", "dog", "runs", "over", "field", "river", "bright", "old"]
        pool = [" ".join(words[(i + j) % len(words)] for j in range(40)) for i in range(997)]
    return [pool[i % len(pool)] for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = parser_for("gpu_train", __doc__)
    parser.add_argument(
        "model_folder", nargs="?", default=None, help="local model folder (same as --model)"
    )
    add_common_args(parser, data=False, threads=False)
    parser.add_argument(
        "--batch-sizes", default="64,128,256,512,1024,2048,4096", help="comma-separated"
    )
    parser.add_argument("--chunk", type=int, default=256, help="grad cache chunk size")
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the peak")
    parser.add_argument(
        "--attn",
        default="sdpa",
        help="transformers attention implementation: sdpa (default), eager, flash_attention_2",
    )
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="run the loop on CPU (a check of the script only)"
    )
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("gpu_train: no CUDA device available; skipping the GPU benchmark.")
        return 0
    model_dir = model_path(args.model_folder or args.model)
    if not (model_dir / "config.json").is_file() and not (model_dir / "modules.json").is_file():
        print(f"gpu_train: {model_dir} is not a local model folder (no config.json)")
        return 2
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if not batch_sizes or min(batch_sizes) < 1 or args.chunk < 1:
        print("gpu_train: batch sizes and --chunk must be positive integers")
        return 2

    from textcl import SentenceEncoder
    from textcl.gradcache import grad_cache_backward
    from textcl.losses import InfoNCE

    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    name = "cpu (smoke test)" if args.cpu_smoke else torch.cuda.get_device_name(device)
    on_gpu = device.type == "cuda"
    peak = args.peak_tflops or peak_tflops(name)
    encoder = SentenceEncoder.from_pretrained(
        model_dir, pooling="mean", device=device, attn_implementation=args.attn
    )
    encoder.train()
    flops_per_token, n_params = model_flops_per_token(encoder.model, args.max_length)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-5, fused=on_gpu)
    criterion = InfoNCE(temperature=0.05)
    attn = getattr(encoder.model.config, "_attn_implementation", "?")
    print(
        f"device {name}; bf16 peak {peak or 'unknown'} TFLOP/s; model {model_dir.name} "
        f"({n_params / 1e6:.1f}M layer params, attention {attn}); max_length {args.max_length}; "
        f"torch {torch.__version__}"
    )

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def loss_fn(z: Any) -> torch.Tensor:
        return criterion(z[0], z[1])

    results: list[dict[str, Any]] = []
    header = f"{'batch':>6} {'mode':<14}{'tokens/s':>12}{'ms/step':>9}{'peak GiB':>10}{'MFU %':>7}"
    print(header)
    for batch_size in batch_sizes:
        enc = encoder.tokenizer(
            _sentences(batch_size),
            padding="max_length",
            truncation=True,
            max_length=args.max_length,
            return_tensors="pt",
        )
        batch = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        views = [batch, batch]
        tokens = 2 * batch_size * args.max_length
        for mode in ("plain", f"gradcache {args.chunk}"):

            def step(mode: str = mode, views: list[dict[str, Any]] = views) -> None:
                optimizer.zero_grad(set_to_none=True)
                if mode == "plain":
                    with autocast():
                        loss = loss_fn([encoder(v) for v in views])
                    loss.backward()
                else:
                    grad_cache_backward(encoder, views, loss_fn, args.chunk, autocast=autocast)
                optimizer.step()

            row: dict[str, Any] = {"batch": batch_size, "mode": mode, "device": name}
            try:
                for _ in range(args.warmup):
                    step()
                if on_gpu:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                if on_gpu:
                    torch.cuda.synchronize()
                seconds = (time.perf_counter() - start) / args.steps
                row["tokens_per_s"] = tokens / seconds
                row["ms_per_step"] = seconds * 1e3
                row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0.0
                row["mfu"] = tokens * flops_per_token / seconds / (peak * 1e12) if peak else None
                mfu = f"{100 * row['mfu']:.1f}" if row["mfu"] is not None else "n/a"
                print(
                    f"{batch_size:>6} {mode:<14}{row['tokens_per_s']:>12,.0f}"
                    f"{row['ms_per_step']:>9.1f}{row['peak_gib']:>10.2f}{mfu:>7}"
                )
            except torch.cuda.OutOfMemoryError:
                row["oom"] = True
                print(f"{batch_size:>6} {mode:<14}{'out of memory':>38}")
            finally:
                optimizer.zero_grad(set_to_none=True)
                if on_gpu:
                    torch.cuda.empty_cache()
            results.append(row)
            sys.stdout.flush()
    write_result(
        "gpu_train",
        [
            [
                r["batch"],
                r["mode"],
                "out of memory" if r.get("oom") else f"{r['tokens_per_s']:,.0f}",
                f"{r['ms_per_step']:.1f}" if "ms_per_step" in r else "-",
                f"{r['peak_gib']:.2f}" if "peak_gib" in r else "-",
                f"{100 * r['mfu']:.1f}" if r.get("mfu") is not None else "n/a",
            ]
            for r in results
        ],
        args.json,
        headers=["batch", "mode", "tokens/s", "ms/step", "peak GiB", "MFU %"],
        notes=[f"device {name}; bf16 peak {peak or 'unknown'} TFLOP/s; attention {attn}"],
        data={"device": name, "peak_tflops": peak, "results": results},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
