"""Numeric precision: which precisions exist, whether this hardware runs bf16 natively, and
how inference (:meth:`SentenceEncoder.encode`) and training resolve ``auto``.

Both resolvers share one device check (:func:`check_precision_device`); autocast contexts
for a resolved precision come from :func:`autocast_context`.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
from torch.optim.optimizer import register_optimizer_step_post_hook

from textcl.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "qint8")
"""Inference precisions of :meth:`SentenceEncoder.encode` (``float32`` is an alias of fp32)."""
AUTOCAST_PRECISIONS = ("fp32", "bf16", "fp16")
"""Precisions an autocast context (and training) runs at."""
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
"""``/proc/cpuinfo`` flags of CPUs with native bf16 matrix instructions."""
CPU_BF16_ENV = "TEXTCL_CPU_BF16"
"""Environment variable overriding the CPU bf16 probe of :func:`native_bf16` (``0`` or ``1``)."""


def _cpuinfo_flags() -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def _torch_cpu_bf16() -> bool:
    """torch's own CPU probes (private helpers, looked up defensively): AMX tiles or
    AVX512-BF16."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is None:
            continue
        try:
            if fn():
                return True
        except Exception:  # a probe that fails means "unknown", not "no"
            continue
    return False


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` runs bf16 matrix products natively (so bf16 is faster than fp32).

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: AMX-BF16 or AVX512-BF16, from torch's CPU
    probes or the ``/proc/cpuinfo`` flags :data:`BF16_CPU_FLAGS`. Without them torch emulates
    bf16 on CPU, which is slower than fp32. Other devices: False.

    The environment variable :data:`CPU_BF16_ENV` (``TEXTCL_CPU_BF16``) overrides the CPU probe:
    ``0`` treats the CPU as having no native bf16 (``auto`` then stays fp32, e.g. for results
    that must not depend on the machine), ``1`` as having it.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"{CPU_BF16_ENV}={forced!r}: expected 0 or 1 (or unset)")
        return forced == "1"
    return _torch_cpu_bf16() or bool(_cpuinfo_flags() & set(BF16_CPU_FLAGS))


class QInt8DeprecationWarning(FutureWarning):
    """``qint8`` (dynamic int8 of the torch linear layers) is retired in favour of
    ``textcl export --quantize int8``."""


QINT8_DEPRECATION = (
    "precision qint8 (dynamic int8 quantization of the torch linear layers) is deprecated: "
    "it does not reach the int8 quality bar (min cosine to fp32 about 0.91-0.93 on "
    "all-MiniLM-L6-v2 sentences, STS-B dev -0.3; benchmarks/RESULTS.md); use a static int8 "
    "export instead: textcl export --model M --output DIR --format onnx --quantize int8 "
    "--calibration FILE, then --model DIR (docs/export.md)"
)


class EmulatedBF16Warning(UserWarning):
    """bf16 was asked for on a CPU where torch emulates it (slower than fp32)."""


def warn_if_emulated_bf16(precision: str, device: str | torch.device) -> None:
    """Warn when ``precision`` is an explicit ``bf16`` on a CPU without native bf16.

    torch then emulates bf16 matrix products, which is many times slower than fp32 (training
    steps 18-33x slower on 2-core CPUs without AMX / AVX512-BF16, benchmarks/RESULTS.md);
    ``auto`` never picks it there. Python's default warning filter shows it once per process
    for inference and once for training.
    """
    dev = torch.device(device)
    if precision == "bf16" and dev.type == "cpu" and not native_bf16(dev):
        warnings.warn(
            "precision bf16 on a CPU without native bf16 (no AMX / AVX512-BF16): torch "
            "emulates it, many times slower than fp32 (benchmarks/RESULTS.md); use precision "
            "auto or fp32 on this CPU",
            EmulatedBF16Warning,
            stacklevel=2,
        )


def check_precision_device(precision: str, device: torch.device) -> None:
    """Refuse a precision ``device`` cannot run: ``fp16`` needs CUDA (inference, training and
    autocast share this check)."""
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")


def resolve_inference_precision(precision: str | None, device: str | torch.device) -> str:
    """The precision :meth:`SentenceEncoder.encode` runs at on ``device``.

    ``auto`` (or None): bf16 where :func:`native_bf16` (CPUs with AMX/AVX512-BF16, CUDA GPUs
    with bf16), fp32 elsewhere. ``fp16`` needs CUDA; ``qint8`` (dynamic int8 quantization of
    the linear layers; the embeddings are still float32) runs on CPU only and is deprecated
    (:class:`QInt8DeprecationWarning`: ``textcl export --quantize int8`` instead).
    sentence-transformers' ``int8``/``uint8``/``binary``/``ubinary`` (quantised *embeddings*)
    are refused.
    """
    p = "fp32" if precision == "float32" else (precision or "auto")
    if p not in PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)} (textcl "
            "does not quantise embeddings: sentence-transformers' int8/uint8/binary/ubinary "
            "are not supported; qint8 computes float32 embeddings with int8 linear layers)"
        )
    dev = torch.device(device)
    if p == "auto":
        return "bf16" if native_bf16(dev) else "fp32"
    check_precision_device(p, dev)
    if p == "qint8" and dev.type != "cpu":
        raise ValueError("precision qint8 (dynamic int8 quantization) runs on CPU only")
    if p == "qint8":
        warnings.warn(QINT8_DEPRECATION, QInt8DeprecationWarning, stacklevel=2)
    warn_if_emulated_bf16(p, dev)
    return p


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision training runs at on ``device``.

    ``auto``: bf16 on GPUs that support it, fp16 on other GPUs; on CPU bf16 autocast where
    the CPU has native bf16 (AMX / AVX512-BF16, :func:`native_bf16`), else fp32.
    """
    if precision != "auto":
        check_precision_device(precision, device)
        warn_if_emulated_bf16(precision, device)
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and native_bf16(device) else "fp32"


def autocast_context(device: torch.device, precision: str) -> Any:
    """An autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision not in AUTOCAST_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected fp32, bf16 or fp16")
    if precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    check_precision_device(precision, device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


_optimizer_steps = 0
_step_hook: Any = None


def _count_optimizer_step(*_: Any) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


def optimizer_steps() -> int:
    """Optimizer steps taken in this process since the first call (a global post-step hook of
    ``torch.optim``, registered on first use, not at import): part of an inference copy's cache
    key, because fused optimizers (AdamW ``fused=True``, textcl's default on CPU and CUDA)
    update weights in place without bumping their version counters."""
    global _step_hook
    if _step_hook is None:
        _step_hook = register_optimizer_step_post_hook(_count_optimizer_step)
    return _optimizer_steps


def inference_copy(model: nn.Module, precision: str) -> nn.Module:
    """A copy of ``model`` to run inference at ``precision`` (in eval mode): its weights
    cast to bf16 (``bf16``), or its linear layers dynamically quantized to int8 (``qint8``,
    CPU)."""
    if precision not in ("bf16", "qint8"):
        raise ValueError(f"no inference copy for precision {precision!r}: expected bf16 or qint8")
    with torch.no_grad():
        if precision == "bf16":
            twin = copy.deepcopy(model).to(torch.bfloat16)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao's deprecation notice
                twin = quantize_dynamic(
                    copy.deepcopy(model), {nn.Linear: per_channel_dynamic_qconfig}
                )
    twin.eval()
    return twin


DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda", "mps")
"""Device kinds ``--device`` accepts (``cuda`` and ``mps`` only where present)."""


def check_device(device: Any, what: str = "--device") -> Any:
    """``device`` unchanged when this machine has it (``None``: the default device), else
    :class:`~textcl.errors.InputError` naming ``what`` (the flag or config field): a name torch does not know
    (``gpu0``), a kind textcl does not run on, CUDA or MPS absent, a CUDA index past the
    visible GPUs."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(
            f"{what} {device!r}: not a device name (expected cpu, cuda, cuda:N or mps)"
        ) from None
    if dev.type not in DEVICE_TYPES:
        raise InputError(
            f"{what} {device!r}: textcl runs on {', '.join(DEVICE_TYPES)}, not {dev.type!r}"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"{what} {device!r}: CUDA is not available on this machine (no GPU visible "
                "or a CPU-only torch); use --device cpu"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise InputError(
                f"{what} {device!r}: no such GPU, {count} CUDA device(s) visible "
                f"(cuda:0 .. cuda:{count - 1})"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{what} {device!r}: MPS is not available on this machine")
    return device
