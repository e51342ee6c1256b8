"""Gradient cache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup"): a contrastive step over a batch far larger than fits in memory.

The loss couples every row of the batch, so it cannot be split like an ordinary mini-batch.
GradCache splits the *encoder* work instead:

1. embed every chunk of every input under ``no_grad`` (no activations kept), saving the RNG
   state before each chunk;
2. compute the loss over the detached embeddings (``requires_grad``) and backpropagate it
   to get ``dloss/dembedding`` for every row: only ``(N, D)`` tensors are alive;
3. for each chunk again: restore its RNG state (so dropout draws the same masks), re-embed it
   with autograd and call ``embedding.backward(cached_grad)``; parameter gradients
   accumulate chunk by chunk, with at most one chunk's activations in memory.

By the chain rule the accumulated gradients equal those of the plain step that embeds the
same chunks, in the same order, with autograd, concatenates them and backpropagates the loss.

Use it as a wrapper around a loss, :class:`CachedLoss` (``CachedLoss(InfoNCE(...), 64)``),
called like the plain :class:`textcl.objective.LossStep`; :func:`grad_cache_backward` is the
function behind it.

**RNG order.** Both passes walk ``for input in inputs: for chunk in input:``; the random draws of
chunk ``k`` of input ``i`` (dropout masks) therefore come from the same place in the RNG stream
as in a plain step that embeds in that order. With ``chunk_size >= batch size`` that is exactly
the ordinary ``[embed(x) for x in inputs]`` step. With smaller chunks, the masks equal those of a
plain step embedding chunk by chunk; they are *not* bit-identical to one full-batch forward (a
full batch draws layer 1's mask for all rows before layer 2's, a chunked one runs all layers
per chunk), but they are drawn from the same distribution, so the step is statistically the
same. After the call the RNG is left where the plain step would leave it (after the loss).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from textcl.objective import AutocastFactory, Embed, Inputs, LossStep, Scaler
from textcl.tokens import TokenBatch, as_token_batch, batch_tensors

__all__ = ["CachedLoss", "RngState", "batch_rows", "grad_cache_backward", "slice_batch"]


def batch_rows(batch: TokenBatch, where: str = "batch") -> int:
    """Number of rows of a token batch: dim 0 of ``input_ids`` (or of the first tensor).

    Every other tensor must have that many rows or one (broadcast, e.g. an ``embedding_mask``
    of shape ``(1, L, 1)``); raises ``ValueError`` naming the key otherwise.
    """
    if not isinstance(batch, dict) or not batch:
        raise TypeError(f"{where} must be a non-empty dict of tensors, got {type(batch).__name__}")
    for key, value in batch.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{where}[{key!r}] is {type(value).__name__}, not a Tensor")
        if value.dim() == 0:
            raise ValueError(f"{where}[{key!r}] is a scalar tensor: no batch dimension to chunk")
    tensors = batch_tensors(batch)
    first = "input_ids" if "input_ids" in tensors else next(iter(tensors))
    rows = int(tensors[first].shape[0])
    for key, value in tensors.items():
        if value.shape[0] not in (rows, 1):
            raise ValueError(
                f"{where}[{key!r}] has {value.shape[0]} rows but {where}[{first!r}] has {rows}"
            )
    return rows


def slice_batch(batch: TokenBatch, start: int, stop: int, rows: int | None = None) -> TokenBatch:
    """Rows ``[start, stop)`` of every tensor of ``batch`` (broadcast 1-row tensors kept whole)."""
    n = batch_rows(batch) if rows is None else rows
    return as_token_batch(
        {k: (v[start:stop] if v.shape[0] == n else v) for k, v in batch_tensors(batch).items()}
    )


class RngState:
    """The CPU RNG state and the CUDA RNG state of the devices in use, captured now.

    CUDA devices captured: the current device and the devices of ``tensors`` (only when CUDA
    is initialised, so a CPU-only run never initialises CUDA). The model must run on one of
    them: keep it on the current CUDA device (``torch.cuda.set_device``, done by
    :func:`textcl.distributed.init_distributed`) or on the device of the inputs.
    """

    def __init__(self, tensors: Sequence[Tensor] = ()) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda: dict[int, Tensor] = {}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            devices = {torch.cuda.current_device()}
            devices.update(
                t.device.index for t in tensors if t.is_cuda and t.device.index is not None
            )
            self.cuda = {d: torch.cuda.get_rng_state(d) for d in sorted(devices)}

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for device, state in self.cuda.items():
            torch.cuda.set_rng_state(state, device)


def _check_chunk_size(chunk_size: object) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return chunk_size


def grad_cache_backward(
    embed: Callable[[TokenBatch], Tensor],
    inputs: Sequence[TokenBatch],
    loss_fn: Callable[[Sequence[Tensor]], Tensor],
    chunk_size: int,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    *,
    check_replay: bool = False,
    replay_atol: float = 1e-4,
) -> Tensor:
    """Backpropagate a contrastive loss through ``embed`` with the gradient cache.

    Args:
        embed: maps a token batch ``(b, L)`` to embeddings ``(b, D)`` with autograd (e.g.
            ``encoder.forward``, or a DDP-wrapped encoder; see the note on DDP below).
        inputs: one token batch per role, e.g. ``[view_a, view_b]`` or
            ``[anchor, positive, hard_negative]``; each is chunked along dim 0 independently.
        loss_fn: maps the list of full embeddings ``[(N_0, D), (N_1, D), ...]`` (in ``inputs``
            order) to a scalar loss; may be a distributed :class:`textcl.losses.InfoNCE`
            (all ranks run it in lockstep).
        chunk_size: rows per re-embedded chunk (the memory bound); ``>= N`` means one chunk.
        autocast: a factory of the autocast context (e.g.
            ``lambda: textcl.precision.autocast_context(device, "bf16")``) entered around every
            ``embed`` call and around ``loss_fn``; ``None``: none.
        scaler: an fp16 ``GradScaler``; the loss is scaled before its backward, so the
            parameter gradients come out scaled as with ``scaler.scale(loss).backward()``.
        check_replay: compare the re-computed embeddings with the cached ones and raise
            ``RuntimeError`` if any differs by more than ``replay_atol`` (RNG replay broken).

    Gradients are *added* to the parameters' ``.grad`` as ``loss.backward()`` would (zero them
    before). Returns the loss, detached (unscaled). RNG order: see the module docstring.

    Distributed: when ``embed`` has a ``no_sync()`` context (a DDP-wrapped encoder), every
    chunk backward but the last runs inside it, so gradients accumulate locally and DDP
    averages the accumulated gradients over ranks once, in the last chunk's backward (instead
    of after every chunk).
    """
    chunk_size = _check_chunk_size(chunk_size)
    if len(inputs) == 0:
        raise ValueError("inputs is empty: pass at least one token batch")
    ctx = autocast if autocast is not None else contextlib.nullcontext
    no_sync: Callable[[], contextlib.AbstractContextManager[Any]] = getattr(
        embed, "no_sync", contextlib.nullcontext
    )
    rows = [batch_rows(b, f"inputs[{i}]") for i, b in enumerate(inputs)]
    bounds = [[(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)] for n in rows]

    # Pass 1: embeddings without graph, RNG state saved before each chunk.
    states: list[list[RngState]] = []
    reps: list[Tensor] = []
    with torch.no_grad():
        for batch, n, chunks in zip(inputs, rows, bounds, strict=True):
            input_states: list[RngState] = []
            parts: list[Tensor] = []
            for start, stop in chunks:
                part = slice_batch(batch, start, stop, n)
                input_states.append(RngState(list(batch_tensors(part).values())))
                with ctx():
                    parts.append(embed(part))
            states.append(input_states)
            reps.append(torch.cat(parts) if len(parts) > 1 else parts[0])
    for i, (r, n) in enumerate(zip(reps, rows, strict=True)):
        if r.dim() < 1 or r.shape[0] != n:
            raise ValueError(f"embed returned shape {tuple(r.shape)} for inputs[{i}] with {n} rows")

    # Loss over detached embeddings -> gradient cache.
    leaves = [r.detach().requires_grad_(True) for r in reps]
    with ctx():
        loss = loss_fn(leaves)
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError("loss_fn must return a scalar tensor")
    scaled = scaler.scale(loss) if scaler is not None else loss
    scaled.backward()
    end_state = RngState([r for r in reps])
    grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]
    del leaves

    # Pass 2: replay each chunk with graph and push its cached gradient through it.
    n_chunks = sum(len(c) for c in bounds)
    done = 0
    for i, (batch, n, chunks) in enumerate(zip(inputs, rows, bounds, strict=True)):
        for (start, stop), state in zip(chunks, states[i], strict=True):
            state.restore()
            part = slice_batch(batch, start, stop, n)
            done += 1
            # DDP: forward and backward of all chunks but the last without the all-reduce.
            sync = contextlib.nullcontext() if done == n_chunks else no_sync()
            with sync:
                _replay_chunk(
                    embed,
                    part,
                    grads[i][start:stop],
                    ctx,
                    reps[i][start:stop],
                    i,
                    start,
                    stop,
                    check_replay,
                    replay_atol,
                )
    end_state.restore()
    return loss.detach()


def _replay_chunk(
    embed: Callable[[TokenBatch], Tensor],
    part: TokenBatch,
    grad: Tensor,
    ctx: Callable[[], contextlib.AbstractContextManager[Any]],
    cached: Tensor,
    i: int,
    start: int,
    stop: int,
    check_replay: bool,
    replay_atol: float,
) -> None:
    with ctx():
        rep = embed(part)
    if check_replay:
        diff = (rep.detach().float() - cached.float()).abs().max()
        if float(diff) > replay_atol:
            raise RuntimeError(
                f"grad cache replay mismatch on inputs[{i}] rows [{start}, {stop}): "
                f"max |diff| {float(diff):.3g} > {replay_atol} (RNG state not restored "
                "on the device the model runs on, or a non-deterministic model)"
            )
    rep.backward(grad.to(rep.dtype))


class CachedLoss(LossStep):
    """A loss wrapped in the gradient cache: the same call as :class:`LossStep` (and the same
    loss and gradients), with at most ``chunk_size`` rows' activations in memory.

    ``CachedLoss(InfoNCE(...), chunk_size=64)(encoder, [view_a, view_b])`` runs
    :func:`grad_cache_backward`: embeds every chunk without graph, computes ``loss`` over the
    detached embeddings and backpropagates it to them, then replays each chunk with graph and
    pushes the cached embedding gradient through it. A DDP-wrapped ``embed`` synchronises
    once, after the last chunk.
    """

    def __init__(
        self, loss: Callable[..., Tensor], chunk_size: int, *, check_replay: bool = False
    ) -> None:
        super().__init__(loss)
        self.chunk_size = _check_chunk_size(chunk_size)
        self.check_replay = check_replay

    def step(
        self, embed: Embed, inputs: Inputs, autocast: AutocastFactory, scaler: Scaler
    ) -> Tensor:
        return grad_cache_backward(
            embed,
            inputs,
            self.compute,
            self.chunk_size,
            autocast,
            scaler,
            check_replay=self.check_replay,
        )

    def __repr__(self) -> str:
        return f"CachedLoss({self.loss!r}, chunk_size={self.chunk_size})"
