"""torch.distributed helpers: process-group setup from ``torchrun``, an all-gather that keeps
gradients (used by :class:`textcl.losses.InfoNCE`) and batch sharding. Gradients are averaged
over ranks by torch's ``DistributedDataParallel`` (the trainer wraps the encoder in it).

Launch with ``torchrun --nproc_per_node N -m textcl train ...``; each process calls
:func:`init_distributed` once. Without torchrun's environment everything degrades to a single
process (``world_size == 1``, no process group), so the same training code runs both ways.

Gradient identity (why a distributed step equals a single-process step over the global batch):
every rank ``r`` holds ``B_r`` local anchors and computes ``L_r``, the mean InfoNCE of its anchors
against the *global* candidates, scaled by ``W * B_r / N`` (``N = sum B_r``; the factor is 1 when
all ranks hold the same batch size). The global loss is ``L = (1/W) sum_r L_r``.
:func:`gather_with_grad` is an all-gather whose backward *sums* the gradient of every rank's
loss with respect to each rank's embeddings (an all-reduce of the gathered gradient), so rank
``r``'s parameter gradient is ``dL_sum/dtheta`` restricted to the paths through rank ``r``'s own
inputs, where ``L_sum = sum_s L_s``. Averaging over ranks (DDP)
gives ``(1/W) sum_r dL_sum/dtheta|_r = d((1/W) L_sum)/dtheta = dL/dtheta``. A plain all-gather
whose backward drops the other ranks' gradient terms would *not* give this.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

T = TypeVar("T")

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""Variables ``torchrun`` sets for each process (read by :func:`init_distributed`)."""

DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job.

    ``backend`` is ``None`` when no process group is used (single process).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    group: Any = field(default=None, compare=False, repr=False)
    """The process group of the collectives (``None``: the default group)."""

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside [0, world_size={self.world_size})")
        if self.local_rank < 0:
            raise ValueError(f"local_rank must be >= 0, got {self.local_rank}")

    @property
    def is_distributed(self) -> bool:
        """True when collectives are needed (``world_size > 1``)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0: the process that writes logs and checkpoints."""
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        if default is None:
            raise ValueError(f"environment variable {name} is not set (launch with torchrun)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _device_for(device: str | torch.device | None, local_rank: int) -> torch.device:
    if device is None:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for but CUDA is not available")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {dev} does not exist: {torch.cuda.device_count()} CUDA device(s) visible "
                f"(LOCAL_RANK={local_rank}; use --nproc_per_node <= number of GPUs)"
            )
    return dev


def init_distributed(
    device: str | torch.device | None = None,
    *,
    backend: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> DistEnv:
    """Set up this process from ``torchrun``'s environment and return its :class:`DistEnv`.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and, through ``init_method="env://"``,
    ``MASTER_ADDR``/``MASTER_PORT``). Without ``WORLD_SIZE`` or with ``WORLD_SIZE=1`` no process
    group is created and a single-process env is returned.

    Args:
        device: ``None`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; ``"cuda"``
            means ``cuda:LOCAL_RANK``. On CUDA the process's current device is set to it.
        backend: default ``nccl`` on CUDA, ``gloo`` on CPU.
        timeout_s: collective timeout.

    Reuses an already initialised default process group (its rank and size win).
    """
    import torch.distributed as dist

    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank if world_size > 1 else 0)
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    dev = _device_for(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size == 1 and not (dist.is_available() and dist.is_initialized()):
        return DistEnv(rank=0, world_size=1, local_rank=local_rank, device=dev, backend=None)
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    if not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name):
                raise ValueError(
                    f"WORLD_SIZE={world_size} but environment variable {name} is not set "
                    "(launch with torchrun, which sets it)"
                )
        chosen = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(
            backend=chosen,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
    return DistEnv(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        device=dev,
        backend=str(dist.get_backend()),
    )


def _active(env: DistEnv | None) -> bool:
    return env is not None and env.is_distributed


def is_main(env: DistEnv | None) -> bool:
    """True on rank 0 or without distribution."""
    return env is None or env.is_main


def barrier(env: DistEnv | None) -> None:
    """Wait for every rank (no-op in a single process)."""
    if _active(env):
        import torch.distributed as dist

        dist.barrier()


def cleanup() -> None:
    """Destroy the default process group if one exists (call once at the end)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj: T, env: DistEnv | None, src: int = 0) -> T:
    """Return rank ``src``'s ``obj`` on every rank (pickled; for small objects like configs)."""
    if not _active(env):
        return obj
    import torch.distributed as dist

    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: T, env: DistEnv | None) -> list[T]:
    """Every rank's ``obj`` in rank order (pickled; e.g. per-rank RNG states for a checkpoint
    that rank 0 writes). ``[obj]`` without distribution."""
    if not _active(env):
        return [obj]
    import torch.distributed as dist

    assert env is not None
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(value: float | Tensor, env: DistEnv | None) -> float:
    """Mean of a scalar over ranks (e.g. the logged loss); a plain float without distribution."""
    if isinstance(value, Tensor):
        value = float(value.detach().float().item())
    if not _active(env):
        return float(value)
    import torch.distributed as dist

    assert env is not None
    buf = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(env))
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return float(buf.item()) / env.world_size


def _comm_device(env: DistEnv) -> torch.device:
    # nccl communicates CUDA tensors only; gloo CPU tensors (it also accepts CUDA ones).
    return env.device if env.backend == "nccl" else torch.device("cpu")


def wrap_ddp(module: nn.Module, env: DistEnv) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` for training under torchrun.

    DDP copies rank 0's parameters and buffers to every rank at construction (e.g. a freshly
    initialised head) and averages gradients over ranks in backward, bucketed and overlapped
    with it. Settings:

    * ``find_unused_parameters=True``: parameters outside the forward (BERT's pooler under
      mean pooling, a head used only at inference) get no gradient, and DDP must not wait
      for them; they keep ``grad=None`` on every rank, as in one process.
    * no buffer broadcast in forward: ranks may run different numbers of forward passes per
      step (same-shaped inputs are merged into one pass, and shapes differ per rank), and a
      collective inside forward would then deadlock. The buffers (position/token-type ids)
      are constants, synchronised once at construction.
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel).parameters
    # torch >= 2.13 renamed the switch (broadcast_buffers warns there); older: broadcast_buffers.
    no_buffer_sync: dict[str, Any] = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in params
        else {"broadcast_buffers": False}
    )
    return DistributedDataParallel(
        module,
        device_ids=[env.device] if env.device.type == "cuda" else None,
        process_group=env.group,
        find_unused_parameters=True,
        **no_buffer_sync,
    )


def shard_batch(items: Sequence[T], env: DistEnv | None) -> list[T]:
    """Rank ``r``'s share of a global batch: rows ``[r*B, (r+1)*B)`` with ``B = len/W``.

    Every rank builds the same global batch (same seed), so the shards are disjoint and cover
    the batch. Raises ``ValueError`` if ``len(items)`` is not divisible by the world size.
    """
    world = 1 if env is None else env.world_size
    rank = 0 if env is None else env.rank
    n = len(items)
    if n % world != 0:
        raise ValueError(
            f"global batch of {n} items is not divisible by world size {world}: "
            f"use a batch size that is a multiple of {world}"
        )
    per = n // world
    return list(items[rank * per : (rank + 1) * per])


# ---------------------------------------------------------------------- gather with gradients
def gather_sizes(n: int, device: torch.device, env: DistEnv) -> list[int]:
    """Every rank's row count ``n`` in rank order (``[n]`` without distribution)."""
    if not _active(env):
        return [n]
    import torch.distributed as dist

    local = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(local) for _ in range(env.world_size)]
    dist.all_gather(out, local, group=env.group)
    return [int(s.item()) for s in out]


class _GatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's rows (padded to the largest, then trimmed).
    Backward: sum the incoming gradient over ranks and return this rank's slice."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, sizes: list[int], rank: int, group: Any) -> Tensor:
        import torch.distributed as dist

        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        longest = max(sizes)
        local = t.contiguous()
        if local.shape[0] < longest:
            pad = local.new_zeros((longest - local.shape[0], *local.shape[1:]))
            local = torch.cat([local, pad])
        parts = [torch.empty_like(local) for _ in sizes]
        dist.all_gather(parts, local, group=group)
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor, None, None, None]:
        import torch.distributed as dist

        total = grads[0].contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return total[start : start + ctx.sizes[ctx.rank]], None, None, None


def gather_with_grad(t: Tensor, env: DistEnv | None, sizes: Sequence[int] | None = None) -> Tensor:
    """All-gather ``(B_r, ...)`` tensors from every rank into ``(sum B_r, ...)`` in rank order.

    Differentiable: in backward, the gradient of the gathered tensor is summed over ranks and
    each rank keeps its own rows, so its local slice receives the gradient of *every* rank's
    loss (needed for the gradient identity in the module docstring). Every rank must call it
    (and, if the result enters the loss, run backward). Ranks may hold different ``B_r``
    (``sizes``, when known, saves one small all-gather). Returns ``t`` without distribution.
    """
    if not _active(env):
        return t
    assert env is not None
    if t.dim() < 1:
        raise ValueError("gather_with_grad needs a tensor with a batch dimension")
    if sizes is None:
        sizes = gather_sizes(t.shape[0], t.device, env)
    sizes = [int(s) for s in sizes]
    if len(sizes) != env.world_size or sizes[env.rank] != t.shape[0]:
        raise ValueError(
            f"sizes {sizes} do not match world size {env.world_size} / local rows {t.shape[0]}"
        )
    out: Tensor = _GatherWithGrad.apply(t, sizes, env.rank, env.group)
    return out


def as_dist_env(dist_context: DistEnv | Any | None) -> DistEnv:
    """A :class:`DistEnv` from ``None`` (one process), a ``DistEnv`` or a
    ``torch.distributed`` process group (its rank and size in that group)."""
    if dist_context is None:
        return DistEnv()
    if isinstance(dist_context, DistEnv):
        return dist_context
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            f"dist={dist_context!r}: expected a DistEnv or a process group, and no process "
            "group is initialised"
        )
    try:
        rank = dist.get_rank(dist_context)
        world = dist.get_world_size(dist_context)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"dist={dist_context!r} is not a DistEnv or a process group: {e}"
        ) from None
    return DistEnv(
        rank=rank, world_size=world, backend=str(dist.get_backend(dist_context)), group=dist_context
    )
