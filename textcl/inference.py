"""The inference loop behind :meth:`SentenceEncoder.encode`: length-sorted token batches,
the forward passes, pooling and normalisation, results back in input order.

:class:`~textcl.encoder.SentenceEncoder` validates the arguments and resolves precision and
prompts; :func:`encode_sorted` runs the loop. Two knobs decide the speed on CPU
(``docs/inference.md``, "Where the time goes"; ``python -m benchmarks encode_stages``):

- ``max_tokens`` (token-budget batching, :func:`textcl.tokens.batch_bounds`): ``"auto"``
  (the default of ``encode``) caps batches at :data:`CPU_MAX_TOKENS` padded tokens on CPU
  and leaves other devices at ``batch_size`` only (:func:`resolve_max_tokens`).
- ``prefetch``: build the next batch (pad it; tokenize it, for ``prompt`` pooling) in a
  background thread while the current one runs through the model. The batches are the same,
  so the embeddings are identical to the serial loop.

- ``streams``: on CPU, each batch is cut into ``streams`` row slices that run at the same
  time in their own threads, each with ``threads // streams`` torch threads
  (:func:`resolve_streams`; ``"auto"``: 2 streams of ``threads // 2`` threads once torch has
  2 or more threads). Each small operation (layer norm, GELU, the adds, a 1,024-token
  matmul) then runs on one core without the barrier of a 2-thread OpenMP region; rows are
  independent in the encoder, so the embeddings are the one-stream loop's.

A third, opt-in: ``compile=True`` runs the transformer through ``torch.compile`` (inductor,
dynamic shapes; :func:`compile_transformer`), which fuses the bias adds, GELU, residual adds
and layer norms the eager model runs as separate passes over memory. It pays from a few
thousand sentences on (the first batches wait for the compilation; docs/inference.md).

Everything here is plain inference: ``torch.inference_mode``, eval mode (restored after),
one preallocated ``(N, D)`` float32 result.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from textcl.precision import autocast_context
from textcl.tokens import (
    TokenBatch,
    as_token_batch,
    batch_bounds,
    batch_tensors,
    exclude_prompt_from_mask,
    pad_token_ids,
    token_ids,
)

AUTO = "auto"
"""``max_tokens="auto"``: a token budget where it helps (:func:`resolve_max_tokens`)."""
CPU_MAX_TOKENS = 2048
"""The token budget ``max_tokens="auto"`` picks on CPU: all-MiniLM-L6-v2 over Wikipedia +
STS-B sentences ran fastest with it at batch size 64 among ``None`` and budgets from 512 to
8192 (benchmarks/RESULTS.md, "Encoding: where the time goes"; docs/inference.md): long sentences come in
smaller batches, whose activations stay in cache, and attention (quadratic in length) does
not grow with the batch."""


_MODE_LOCK = threading.Lock()
_EVAL_DEPTH: dict[int, tuple[int, bool]] = {}
"""``id(module)``: (encode calls inside :func:`eval_mode`, its training flag before the first)."""


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode inside the block, its train/eval mode restored after.

    Thread-safe for concurrent blocks on one module (a server calling ``encode`` from several
    threads at once): the first block in switches to eval, the last one out restores. With a
    plain save-and-restore, one thread's restore turned dropout back on under another
    thread's forward pass (wrong embeddings from a training-mode encoder)."""
    key = id(module)
    with _MODE_LOCK:
        depth, was_training = _EVAL_DEPTH.get(key, (0, module.training))
        if depth == 0:
            module.eval()
        _EVAL_DEPTH[key] = (depth + 1, was_training)
    try:
        yield
    finally:
        with _MODE_LOCK:
            depth, was_training = _EVAL_DEPTH.pop(key)
            if depth > 1:
                _EVAL_DEPTH[key] = (depth - 1, was_training)
            else:
                module.train(was_training)


class EncodesBatches(Protocol):
    """What :func:`encode_sorted` needs of an encoder (a :class:`SentenceEncoder`)."""

    tokenizer: Any
    _prompt: Any

    def _embed(self, batch: TokenBatch, model: Any) -> Tensor: ...

    def tokenize_prompted(
        self, texts: list[str], max_length: int | None = None, template: Any = None
    ) -> TokenBatch: ...


def resolve_max_tokens(max_tokens: object, device: torch.device) -> int | None:
    """The token budget for ``max_tokens`` on ``device``: ``None`` (``batch_size`` only), a
    positive integer, or ``"auto"``: :data:`CPU_MAX_TOKENS` on CPU, ``None`` elsewhere (on a
    GPU larger batches are faster and attention memory is not the limit at these lengths).
    Anything else: ``ValueError`` naming the value."""
    if max_tokens == AUTO and isinstance(max_tokens, str):
        return CPU_MAX_TOKENS if device.type == "cpu" else None
    if max_tokens is None:
        return None
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(
            f"max_tokens must be a positive integer, 'auto' or None, got {max_tokens!r}"
        )
    return max_tokens


_POOLS_LOCK = threading.Lock()
_POOLS: dict[tuple[int, int, int], ThreadPoolExecutor] = {}
"""The stream pools, by (process id, streams, torch threads per stream): made once each."""


def stream_pool(streams: int, per_stream: int) -> ThreadPoolExecutor:
    """``streams`` long-lived threads ("textcl-stream-N") running torch ops on
    ``per_stream`` threads each, made on first use in this process and reused.

    ``torch.set_num_threads`` sets the calling thread's count and the default every thread
    takes on its first operation. Lowering it for the length of each ``encode`` call left
    that default lowered for good when calls overlapped (a server's threads; a thread
    started meanwhile then ran on one core). So the count is set once, in each pool thread
    as it starts, and the default is put back as soon as all of them have, under a lock."""
    key = (os.getpid(), streams, per_stream)  # a forked child makes its own threads
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            default = torch.get_num_threads()
            started = threading.Barrier(streams)

            def start() -> None:
                torch.get_num_threads()  # this thread takes the current default first ...
                torch.set_num_threads(per_stream)  # ... then its own count, kept from now on

            pool = ThreadPoolExecutor(
                max_workers=streams,
                thread_name_prefix=f"textcl-stream{per_stream}",
                initializer=start,
            )
            list(pool.map(lambda _: started.wait(), range(streams)))  # all threads now
            torch.set_num_threads(default)  # the default other threads take, as it was
            _POOLS[key] = pool
    return pool


def resolve_streams(streams: object, device: torch.device, threads: int) -> int:
    """Row slices per batch run side by side (see the module doc): ``"auto"``: 2 on a CPU
    with ``threads >= 2`` torch threads, else 1; a positive integer (at most ``threads``
    on CPU; 1 on other devices, whatever asked). Anything else: ``ValueError``."""
    if streams == AUTO and isinstance(streams, str):
        return 2 if device.type == "cpu" and threads >= 2 else 1
    if isinstance(streams, bool) or not isinstance(streams, int) or streams < 1:
        raise ValueError(f"streams must be a positive integer or 'auto', got {streams!r}")
    return max(1, min(streams, threads)) if device.type == "cpu" else 1


def row_slices(rows: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of at most ``parts`` near-equal contiguous slices of ``rows`` rows
    (the streams' share of a batch, here and in the exported runtimes)."""
    k = max(1, min(parts, rows))
    cuts = [round(i * rows / k) for i in range(k + 1)]
    return list(itertools.pairwise(cuts))


def split_rows(batch: TokenBatch, parts: int) -> list[TokenBatch]:
    """``batch`` cut into :func:`row_slices` (views; every entry of a batch has the
    sentences on its first axis)."""
    tensors = batch_tensors(batch)
    return [
        as_token_batch({key: v[a:b] for key, v in tensors.items()})
        for a, b in row_slices(int(batch["input_ids"].shape[0]), parts)
    ]


def check_compile(compile: object, precision: str) -> bool:
    """``compile`` when it is a bool usable at ``precision``; ``TypeError`` for a non-bool,
    ``ValueError`` for qint8 (its dynamic-quantized linear layers do not compile)."""
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be True or False, got {compile!r}")
    if compile and precision == "qint8":
        raise ValueError("compile=True does not apply to precision qint8 (use fp32 or bf16)")
    return compile


def compile_transformer(model: torch.nn.Module) -> Any:
    """``torch.compile`` of ``model`` for :func:`encode_sorted`: inductor, ``dynamic=True``
    (one graph for every batch shape; a batch of one sentence, or of one-token sentences,
    compiles a second one) and no weight freezing, so the compiled model reads the module's
    current weights (training it afterwards needs no recompilation)."""
    return torch.compile(model, dynamic=True)


def compiled_model(cache: dict[str, Any], model: torch.nn.Module) -> Any:
    """``model`` compiled by :func:`compile_transformer`, kept in ``cache`` (the encoder's
    ``__dict__``: not a submodule, not saved) while ``model`` is the same object (the
    transformer, or its bf16 copy until that is rebuilt). ``encode(compile=True)``; not
    for qint8 (:func:`check_compile`)."""
    cached = cache.get("_compiled_cache")
    if cached is not None and cached[0] is model:
        return cached[1]
    compiled = compile_transformer(model)
    cache["_compiled_cache"] = (model, compiled)
    return compiled


def check_loop_options(
    max_tokens: object, prefetch: object, compile: object, streams: object, precision: str
) -> None:
    """Validate ``encode``'s loop options before any work (the errors of
    :func:`resolve_max_tokens`, :func:`check_prefetch`, :func:`check_compile`,
    :func:`resolve_streams`)."""
    resolve_max_tokens(max_tokens, torch.device("cpu"))
    check_prefetch(prefetch)
    check_compile(compile, precision)
    resolve_streams(streams, torch.device("cpu"), 1)


def check_prefetch(prefetch: object) -> bool | None:
    """``prefetch`` when it is a bool or None (the default: decided per model), else
    ``TypeError`` (``"no"`` would read as true)."""
    if prefetch is not None and not isinstance(prefetch, bool):
        raise TypeError(f"prefetch must be True, False or None, got {prefetch!r}")
    return prefetch


def length_sorted_batches(
    encoder: EncodesBatches,
    texts: list[str],
    batch_size: int,
    max_length: int,
    max_tokens: int | None = None,
) -> tuple[list[int], list[tuple[int, int]], Callable[[int, int], TokenBatch]]:
    """Tokenize ``texts`` once (truncated to ``max_length``), order them longest first and
    cut the order into batches (:func:`textcl.tokens.batch_bounds`).

    Returns the order (``order[k]`` is the input index of the k-th sorted sentence), the
    ``[start, stop)`` bounds of each batch in that order and ``make(start, stop)``, which
    builds one padded CPU batch (``prompt`` pooling: tokenizes the texts in the template).
    """
    ids = token_ids(encoder.tokenizer, texts, max_length)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    bounds = batch_bounds([len(ids[i]) for i in order], batch_size, max_tokens)

    def make(start: int, stop: int) -> TokenBatch:
        if encoder._prompt is not None:  # ordered by sentence length; wrapped per batch
            return encoder.tokenize_prompted([texts[i] for i in order[start:stop]], max_length)
        return pad_token_ids(encoder.tokenizer, [ids[i] for i in order[start:stop]])

    return order, bounds, make


def _batches(
    make: Callable[[int, int], TokenBatch], bounds: list[tuple[int, int]], prefetch: bool
) -> Iterator[TokenBatch]:
    """The batches of ``bounds`` in order; with ``prefetch`` the next one is built in a
    background thread while the caller works on the current one (the fast tokenizer and
    torch release the GIL)."""
    if not prefetch or len(bounds) < 2:
        for start, stop in bounds:
            yield make(start, stop)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="textcl-prefetch") as pool:
        pending: Future[TokenBatch] = pool.submit(make, *bounds[0])
        for k in range(len(bounds)):
            batch = pending.result()
            if k + 1 < len(bounds):
                pending = pool.submit(make, *bounds[k + 1])
            yield batch


def encode_sorted(
    encoder: EncodesBatches,
    model: Any,
    items: list[str],
    *,
    dim: int,
    normalize: bool,
    batch_size: int,
    max_length: int,
    max_tokens: int | None,
    prompt_length: int,
    device: torch.device,
    autocast: str,
    show_progress: bool,
    prefetch: bool,
    streams: int = 1,
) -> Tensor:
    """Embed ``items`` with ``model`` (the encoder's transformer or its bf16/qint8 copy):
    ``(N, dim)`` float32 on CPU, in input order. The caller has validated every argument,
    put the encoder in eval mode and resolved ``max_tokens`` (an integer or None) and
    ``streams`` (:func:`resolve_streams`; ``prompt`` pooling runs one)."""
    order, bounds, make = length_sorted_batches(encoder, items, batch_size, max_length, max_tokens)
    result = torch.empty((len(items), dim), dtype=torch.float32)
    order_t = torch.tensor(order, dtype=torch.long)
    if encoder._prompt is not None:  # prompt pooling's batches carry the template: 1 stream
        streams = 1

    def embed(batch: TokenBatch) -> Tensor:
        # inference mode and autocast are per thread: entered again in each stream
        with torch.inference_mode(), autocast_context(device, autocast):
            return encoder._embed(batch, model).float()[:, :dim]

    pool = stream_pool(streams, max(1, torch.get_num_threads() // streams)) if streams > 1 else None
    with (
        torch.inference_mode(),
        autocast_context(device, autocast),
        tqdm(total=len(items), disable=not show_progress, desc="encode", unit="sent") as bar,
    ):
        done = 0
        for batch in _batches(make, bounds, prefetch):
            if prompt_length and encoder._prompt is None:
                batch["pooling_mask"] = exclude_prompt_from_mask(
                    batch["attention_mask"], prompt_length
                )
            if device.type != "cpu":
                batch = as_token_batch(
                    {k: v.to(device, non_blocking=True) for k, v in batch_tensors(batch).items()}
                )
            if pool is not None:
                emb = torch.cat(list(pool.map(embed, split_rows(batch, streams))))
            else:
                emb = encoder._embed(batch, model).float()[:, :dim]
            if normalize:
                emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
            n = emb.shape[0]
            result[order_t[done : done + n]] = emb.cpu()
            done += n
            bar.update(n)
    return result
