"""Momentum contrast for any objective: a FIFO queue of past key embeddings as extra negatives,
the keys from a momentum (EMA) copy of the encoder, and a frozen guide encoder for
false-negative control.

* :class:`MomentumQueue`: a ``(K, D)`` ring buffer with a pointer (enqueue, wrap-around,
  ``state_dict`` of tensors).
* :class:`MomentumEncoder`: the EMA copy ``theta_k <- m * theta_k + (1 - m) * theta_q``
  (MoCo, He et al. 2020), frozen (``requires_grad`` False), dropout off.
* :class:`GuideEncoder`: a frozen encoder whose similarities decide the false negatives
  (GISTEmbed, Solatorio 2024).
* :class:`MomentumContrast`: the training objective (a :class:`~textcl.objective.LossStep`,
  plain or with the gradient cache) that runs :class:`~textcl.losses.ExtendedInfoNCE` with the
  queue as extra negatives and enqueues the step's keys after the backward.

Step order (as MoCo/ESimCSE): EMA update from the online weights of the previous step, keys =
momentum encoder's embeddings of the positive view (``inputs[1]``; with ``momentum == 0`` the
online encoder's detached embeddings of that view, no extra forward), loss over anchors vs
``[in-batch positives; hard negatives; queue]`` and backward, then enqueue the keys. Under
torchrun the keys of all ranks are gathered (rank order) and the global batch is enqueued once,
so every rank holds the same queue. A step whose loss (on any rank) or keys are not finite
enqueues nothing (the trainer applies no update for it either); its EMA update stays, being a
blend with the previous step's valid online weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from textcl.distributed import as_dist_env, gather_sizes, gather_with_grad
from textcl.encoder import SentenceEncoder
from textcl.gradcache import CachedLoss
from textcl.objective import AutocastFactory, Embed, Inputs, LossStep, Scaler
from textcl.tokens import TokenBatch, as_token_batch, batch_tensors

__all__ = ["GuideEncoder", "MomentumContrast", "MomentumEncoder", "MomentumQueue"]


class MomentumQueue:
    """A FIFO queue of ``size`` key embeddings: a ``(size, D)`` float32 buffer and a pointer.

    :meth:`enqueue` writes the new rows at the pointer, wrapping around and overwriting the
    oldest; :meth:`negatives` returns the rows held, oldest first. ``D`` and the device come
    from the first enqueued keys. Keys are stored detached: no gradient flows into them.
    """

    def __init__(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"queue size must be a positive integer, got {size!r}")
        self.size = size
        self.buffer: Tensor | None = None
        self.ptr = 0
        self.filled = 0

    def __len__(self) -> int:
        return self.filled

    def __repr__(self) -> str:
        return f"MomentumQueue(size={self.size}, filled={self.filled}, ptr={self.ptr})"

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Append ``keys`` ``(n, D)``; with ``n > size`` only the newest ``size`` rows stay."""
        if keys.dim() != 2:
            raise ValueError(f"keys must be (n, dim), got {tuple(keys.shape)}")
        keys = keys.detach().float()
        if self.buffer is None:
            self.buffer = torch.zeros(self.size, keys.shape[1], device=keys.device)
        elif keys.shape[1] != self.buffer.shape[1]:
            raise ValueError(f"keys have dim {keys.shape[1]}, the queue {self.buffer.shape[1]}")
        n = keys.shape[0]
        if n == 0:
            return
        if n > self.size:
            keys, n = keys[-self.size :], self.size
        idx = (self.ptr + torch.arange(n, device=self.buffer.device)) % self.size
        self.buffer[idx] = keys.to(self.buffer.device)
        self.ptr = (self.ptr + n) % self.size
        self.filled = min(self.size, self.filled + n)

    def negatives(self) -> Tensor | None:
        """The held keys ``(filled, D)``, oldest first (a copy), or None when empty."""
        if self.buffer is None or self.filled == 0:
            return None
        if self.filled < self.size:
            return self.buffer[: self.filled].clone()
        return torch.cat([self.buffer[self.ptr :], self.buffer[: self.ptr]])

    def state_dict(self) -> dict[str, Tensor]:
        buffer = self.buffer if self.buffer is not None else torch.zeros(0, 0)
        return {
            "buffer": buffer.detach().clone(),
            "ptr": torch.tensor(self.ptr, dtype=torch.long),
            "filled": torch.tensor(self.filled, dtype=torch.long),
            "size": torch.tensor(self.size, dtype=torch.long),
        }

    def load_state_dict(self, state: dict[str, Tensor], device: torch.device | None = None) -> None:
        size = int(state["size"])
        if size != self.size:
            raise ValueError(f"the saved queue holds {size} keys, this one {self.size}")
        buffer = state["buffer"]
        ptr, filled = int(state["ptr"]), int(state["filled"])
        if not (0 <= ptr < size and 0 <= filled <= size):
            raise ValueError(f"bad queue pointer {ptr} / fill {filled} for size {size}")
        if buffer.numel() == 0:
            if filled:
                raise ValueError("the saved queue has keys but no buffer")
            self.buffer = None
        else:
            if buffer.dim() != 2 or buffer.shape[0] != size:
                raise ValueError(f"saved queue buffer has shape {tuple(buffer.shape)}")
            self.buffer = buffer.float().clone().to(device or buffer.device)
        self.ptr, self.filled = ptr, filled


class MomentumEncoder(nn.Module):
    """A frozen EMA copy of ``online``: :meth:`update` sets every parameter to
    ``m * theta_k + (1 - m) * theta_q`` (MoCo, He et al. 2020; ESimCSE m = 0.995; MoCoSE 0.85)
    and copies the buffers.

    The copy embeds with dropout off (deterministic keys, no draws from the RNG) but in the
    online encoder's training mode otherwise (a ``head="train"`` projection head applies), so
    the keys live in the space the loss compares.
    """

    def __init__(self, online: nn.Module, momentum: float) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        self.encoder = copy.deepcopy(online)
        for p in self.encoder.parameters():
            p.requires_grad_(False)
            p.grad = None

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        m = self.momentum
        for (name, p_k), (other, p_q) in zip(
            self.encoder.named_parameters(), online.named_parameters(), strict=True
        ):
            if name != other:
                raise ValueError(f"momentum encoder parameter {name} != online {other}")
            p_k.mul_(m).add_(p_q.detach(), alpha=1.0 - m)
        for b_k, b_q in zip(self.encoder.buffers(), online.buffers(), strict=True):
            b_k.copy_(b_q)

    @torch.no_grad()
    def forward(self, batch: TokenBatch) -> Tensor:
        # Training mode for the head; the transformer in eval mode (attention dropout reads
        # the attention module's own flag), every dropout layer off.
        self.encoder.train()
        transformer = getattr(self.encoder, "model", None)
        if isinstance(transformer, nn.Module):
            transformer.eval()
        for module in self.encoder.modules():
            if isinstance(module, nn.Dropout):
                module.eval()
        return self.encoder(batch)


class GuideEncoder:
    """A frozen guide encoder (GISTEmbed): embeds the trained model's token batches with no
    gradient, in eval mode. When its vocabulary differs from the trained model's, the token
    ids are decoded with ``tokenizer`` (special tokens dropped) and re-tokenized."""

    def __init__(self, guide: Any, tokenizer: Any, max_length: int) -> None:
        self.guide = guide.eval()
        for p in guide.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.same_vocab = _vocab(guide.tokenizer) == _vocab(tokenizer)

    @classmethod
    def load(cls, path: str, tokenizer: Any, max_length: int, device: torch.device) -> GuideEncoder:
        return cls(SentenceEncoder.from_pretrained(path).to(device), tokenizer, max_length)

    @torch.no_grad()
    def __call__(self, batch: TokenBatch) -> Tensor:
        if self.same_vocab:
            return self.guide(batch)
        ids = batch_tensors(batch)["input_ids"]
        texts = self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
        tokens = self.guide.tokenize(texts, max_length=self.max_length)
        device = ids.device
        moved = as_token_batch({k: v.to(device) for k, v in batch_tensors(tokens).items()})
        return self.guide(moved)


def _vocab(tokenizer: Any) -> dict[str, int] | None:
    try:
        return dict(tokenizer.get_vocab())
    except (AttributeError, NotImplementedError):
        return None


class MomentumContrast(LossStep):
    """The objective of momentum contrast (and of guided false-negative control).

    ``loss`` is an :class:`~textcl.losses.ExtendedInfoNCE`; ``queue_size`` keys (0: no queue),
    ``momentum`` of the EMA key encoder (0: the online encoder's detached embeddings of the
    positive view are the keys); ``online`` is the plain encoder (not its DDP wrapper) the EMA
    follows; ``chunk_size``: the gradient cache (:class:`~textcl.gradcache.CachedLoss`) when
    given; ``guide``: a :class:`GuideEncoder` whose embeddings of every role (and of the
    queued keys' rows, kept in a second queue) decide the false negatives.

    Called like :class:`~textcl.objective.LossStep`; see the module docstring for the order.
    The keys are computed without gradient, so the gradient cache's chunking leaves them
    alone (with ``momentum == 0`` they are the cached, detached embeddings of the view).
    """

    def __init__(
        self,
        loss: Any,
        *,
        queue_size: int = 0,
        momentum: float = 0.995,
        online: nn.Module | None = None,
        chunk_size: int | None = None,
        guide: GuideEncoder | None = None,
        dist: Any = None,
        key_input: int = 1,
    ) -> None:
        super().__init__(loss)
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {queue_size!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.dist = as_dist_env(dist)
        self.queue = MomentumQueue(queue_size) if queue_size else None
        self.guide = guide
        self.guide_queue = MomentumQueue(queue_size) if queue_size and guide else None
        self.momentum = float(momentum)
        self.key_encoder: MomentumEncoder | None = None
        if self.queue is not None and self.momentum > 0:
            if online is None:
                raise ValueError("momentum > 0 needs the online encoder (online=)")
            self.key_encoder = MomentumEncoder(online, self.momentum)
        self.online = online
        self.key_input = key_input
        self.inner: LossStep = (
            CachedLoss(self._criterion, chunk_size) if chunk_size else LossStep(self._criterion)
        )
        self._keys: Tensor | None = None
        self._guide_reps: list[Tensor] | None = None

    def _criterion(self, *reps: Tensor) -> Tensor:
        extra = self.queue.negatives() if self.queue is not None else None
        if self.queue is not None and self.key_encoder is None:
            self._keys = reps[self.key_input].detach()
        guide = None
        if self.guide is not None:
            if self._guide_reps is None:
                raise RuntimeError("guided false-negative control: call the step, not the loss")
            g = self._guide_reps
            g_extra = self.guide_queue.negatives() if self.guide_queue is not None else None
            guide = (g[0], g[1], g[2] if len(g) > 2 else None, g_extra)
        z_neg = reps[2] if len(reps) > 2 else None
        return self.loss(reps[0], reps[1], z_neg, extra_negatives=extra, guide=guide)

    def step(
        self, embed: Embed, inputs: Inputs, autocast: AutocastFactory, scaler: Scaler
    ) -> Tensor:
        self._keys = None
        if self.key_encoder is not None and self.online is not None:
            self.key_encoder.update(self.online)
            with autocast():
                self._keys = self.key_encoder(inputs[self.key_input]).float()
        if self.guide is not None:
            with autocast():
                self._guide_reps = [self.guide(b).float() for b in inputs]
        try:
            loss = self.inner.step(embed, inputs, autocast, scaler)
            if self.queue is not None:
                if self._keys is None:
                    raise RuntimeError("no keys were computed for the queue")
                keys = self._gather(self._keys)
                guide_keys = (
                    self._gather(self._guide_reps[self.key_input])
                    if self.guide_queue is not None and self._guide_reps is not None
                    else None
                )
                # A step whose loss is not finite (on any rank) is not applied by the trainer:
                # its keys stay out of the queue too, or NaN keys would poison every later
                # step. The decision is the same on every rank (keys are gathered, the loss
                # flag is reduced), so the queues stay identical.
                if self._all_finite(loss, keys):
                    self.queue.enqueue(keys)
                    if self.guide_queue is not None and guide_keys is not None:
                        self.guide_queue.enqueue(guide_keys)
        finally:
            self._keys, self._guide_reps = None, None
        return loss

    def _all_finite(self, loss: Tensor, keys: Tensor) -> bool:
        """Whether this rank's loss and the gathered keys are finite on every rank."""
        ok = torch.isfinite(loss.detach()).all() & torch.isfinite(keys).all()
        if self.dist.is_distributed:
            import torch.distributed as tdist

            flag = ok.to(torch.int32).reshape(1)
            tdist.all_reduce(flag, op=tdist.ReduceOp.MIN, group=self.dist.group)
            return bool(flag.item())
        return bool(ok)

    def _gather(self, keys: Tensor) -> Tensor:
        """The global batch's keys, rank order (the same on every rank)."""
        if not self.dist.is_distributed:
            return keys.detach()
        sizes = gather_sizes(keys.shape[0], keys.device, self.dist)
        with torch.no_grad():
            return gather_with_grad(keys.detach().contiguous(), self.dist, sizes)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Queue(s) and EMA weights, as tensors (for the trainer's safetensors checkpoint)."""
        state: dict[str, Any] = {}
        if self.queue is not None:
            state["queue"] = self.queue.state_dict()
        if self.guide_queue is not None:
            state["guide_queue"] = self.guide_queue.state_dict()
        if self.key_encoder is not None:
            state["ema"] = {
                k: v.detach().clone() for k, v in self.key_encoder.encoder.state_dict().items()
            }
        return state

    def load_state_dict(self, state: dict[str, Any], device: torch.device | None = None) -> None:
        for name, queue in (("queue", self.queue), ("guide_queue", self.guide_queue)):
            if queue is not None:
                queue.load_state_dict(state[name], device)
        if self.key_encoder is not None:
            self.key_encoder.encoder.load_state_dict(state["ema"])

    def __repr__(self) -> str:
        return (
            f"MomentumContrast({self.loss!r}, queue={self.queue!r}, momentum={self.momentum}, "
            f"inner={type(self.inner).__name__}, guide={self.guide is not None})"
        )
