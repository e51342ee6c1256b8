"""``textcl encode`` over many processes on one machine, without Ray: torchrun ranks or
``--devices`` (one spawned process per listed device).

Rank ``r`` of ``world`` encodes the shards ``i`` with ``i % world == r``
(:mod:`textcl.search.parallel`); rank 0 is also the driver (folder lock, checks, manifest).
The ranks talk over a ``gloo`` process group (CPU only, so it works for CPU and GPU ranks
alike): rank 0 broadcasts the run plan (or the error that stopped it, or "nothing to do")
and gathers every rank's outcome at the end. A rank that fails reports its error to rank 0,
which raises it naming the rank; a rank that dies (kill -9) breaks the group's sockets, so
the others fail at once instead of waiting (torchrun and ``--devices`` also stop the other
ranks when one exits with an error); nothing waits longer than ``timeout`` seconds.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from textcl.errors import InputError
from textcl.io import read_json, write_json
from textcl.precision import check_device
from textcl.search.encode import EncodeOptions, encode_corpus_with
from textcl.search.manifest import Manifest, ShardInfo
from textcl.search.model import load_encoder
from textcl.search.parallel import (
    RunPlan,
    describe_error,
    encode_assigned,
    rebuild_error,
    start_plan,
)
from textcl.search.sources import CorpusSource

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 6 * 3600
"""Seconds a rank waits for another at the start (rank 0 scans the input) and the end."""


def torchrun_world() -> tuple[int, int, int] | None:
    """``(rank, world, local_rank)`` under torchrun (``WORLD_SIZE`` > 1), else ``None``."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    rank = int(os.environ.get("RANK", "0"))
    return rank, world, int(os.environ.get("LOCAL_RANK", str(rank)))


def rank_device(device: Any, local_rank: int) -> Any:
    """A rank's device under torchrun: ``cuda`` (or no device on a CUDA machine) becomes
    ``cuda:LOCAL_RANK``; anything else is used as given."""
    if device is None and torch.cuda.is_available():
        device = "cuda"
    if isinstance(device, str) and device == "cuda":
        return f"cuda:{local_rank}"
    return device


def _cpu_threads(device: Any, ranks_here: int) -> None:
    if str(device or "cpu").startswith("cpu") and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, ranks_here)))


def encode_distributed(
    model: Any,
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: EncodeOptions,
    *,
    rank: int,
    world: int,
    init_method: str = "env://",
    timeout: float = DEFAULT_TIMEOUT,
    ranks_here: int | None = None,
) -> Manifest | None:
    """Run rank ``rank`` of ``world`` (``options.device``: this rank's device). Rank 0
    returns the final manifest, the others ``None``; every rank raises the run's error."""
    import torch.distributed as dist  # lazy: only multi-process runs need it

    if world == 1:
        return _rank0(model, source, output, options, world, None)
    _cpu_threads(options.device, ranks_here or world)
    dist.init_process_group(
        "gloo",
        init_method=init_method,
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout),
    )
    try:
        if rank == 0:
            return _rank0(model, source, output, options, world, dist)
        _rank_worker(rank, world, options, dist)
        return None
    finally:
        dist.destroy_process_group()


def _rank0(
    model: Any,
    source: Any,
    output: Any,
    options: EncodeOptions,
    world: int,
    dist: Any,
) -> Manifest:
    sent = False

    def send(message: Any) -> None:
        nonlocal sent
        if dist is not None and not sent:
            dist.broadcast_object_list([message], src=0)
        sent = True

    def runner(
        encoder: Any,
        corpus: CorpusSource,
        manifest: Manifest,
        folder: Path,
        options: EncodeOptions,
        aside: Path | None = None,
    ) -> Manifest:
        plan, collector = start_plan(model, corpus, manifest, folder, options, aside)
        send(("plan", plan))
        digest = hashlib.sha256() if corpus.stat is not None else None

        def on_shard(info: ShardInfo) -> None:
            collector.add(info, check=False)
            collector.recorded(-1)  # the other ranks' shards finished meanwhile

        error: BaseException | None = None
        try:
            scanner = encode_assigned(
                encoder, corpus, plan, lambda k: k % world == 0, on_shard=on_shard, digest=digest
            )
        except BaseException as e:  # still tell the others, then raise
            error = e
        outcomes: list[Any] = [None] * world
        if dist is not None:
            dist.all_gather_object(outcomes, describe_error(error) if error else None)
        if error is not None:
            raise error
        for r, outcome in enumerate(outcomes):
            if outcome is not None:
                raise rebuild_error(outcome[0], outcome[1], where=f"encode rank {r} of {world}")
        corpus.check_unchanged(digest)
        return collector.finish(scanner.rows, scanner.shards)

    try:
        result = encode_corpus_with(model, source, output, options, runner=runner)
    except BaseException as e:
        send(("error", describe_error(e)))
        raise
    send(("done", None))  # already complete: nothing for the others to do
    return result


def _rank_worker(rank: int, world: int, options: EncodeOptions, dist: Any) -> None:
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0)
    kind, payload = box[0]
    if kind == "done":
        return
    if kind == "error":
        raise rebuild_error(
            payload[0], payload[1], where=f"encode rank 0 of {world} (rank {rank} waited)"
        )
    plan: RunPlan = payload
    error: BaseException | None = None
    try:
        check_device(options.device)
        encoder = load_encoder(plan.model, options.device)
        encode_assigned(encoder, plan.open_source(), plan, lambda k: k % world == rank)
    except Exception as e:
        error = e
    dist.all_gather_object([None] * world, describe_error(error) if error else None)
    if error is not None:
        raise error


def _spawned(
    rank: int,
    world: int,
    init_method: str,
    devices: list[str],
    model: Any,
    source: str,
    output: str,
    options: EncodeOptions,
    timeout: float,
    errors_dir: str,
) -> None:
    try:
        encode_distributed(
            model,
            source,
            output,
            EncodeOptions(**{**options.__dict__, "device": devices[rank]}),
            rank=rank,
            world=world,
            init_method=init_method,
            timeout=timeout,
            ranks_here=sum(1 for d in devices if d.startswith("cpu")),
        )
    except BaseException as e:
        write_json(Path(errors_dir) / f"rank-{rank}.json", list(describe_error(e)))
        raise


def parse_devices(spec: str) -> list[str]:
    """``cpu,cpu`` / ``cuda:0,cuda:1`` -> the list, each checked (``cpu*N``: N times)."""
    devices: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            raise InputError(f"--devices {spec!r}: an empty entry (use e.g. cpu,cpu)")
        name, _, times = part.partition("*")
        if times and not times.isdigit():
            raise InputError(f"--devices {spec!r}: bad repeat {part!r} (use e.g. cpu*4)")
        devices += [name] * (int(times) if times else 1)
    for device in devices:
        check_device(device)
    return devices


def encode_on_devices(
    model: Any,
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: EncodeOptions,
    devices: list[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> Manifest:
    """Encode with one spawned process per entry of ``devices`` (rank ``r`` on
    ``devices[r]``); returns the final manifest. When one process fails the others are
    stopped and its error is raised here, naming its rank and device."""
    import torch.multiprocessing as mp  # lazy: only --devices spawns

    if not isinstance(model, (str, os.PathLike)):
        raise InputError("--devices needs a model folder or hub id, not an in-memory encoder")
    for device in devices:
        check_device(device)
    options.check()
    if len(devices) == 1:
        result = encode_distributed(
            model,
            source,
            output,
            EncodeOptions(**{**options.__dict__, "device": devices[0]}),
            rank=0,
            world=1,
        )
        assert result is not None
        return result
    work = Path(tempfile.mkdtemp(prefix="textcl-devices-"))
    try:
        ctx = mp.start_processes(
            _spawned,
            args=(
                len(devices),
                f"file://{work / 'store'}",
                devices,
                str(model),
                str(source),
                str(output),
                options,
                timeout,
                str(work),
            ),
            nprocs=len(devices),
            join=False,
            start_method="spawn",
        )
        try:
            while not ctx.join():
                pass
        except Exception as e:  # ProcessRaisedException / ProcessExitedException
            raise _first_error(work, devices, e) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Manifest.load(output)


def _first_error(work: Path, devices: list[str], e: Exception) -> BaseException:
    """The run's error: rank 0's (it gathers the others' and names the failing rank), else
    that of the rank that wrote one."""
    found = sorted(work.glob("rank-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    if not found:
        rank = getattr(e, "error_index", "?")
        return RuntimeError(f"encode: process {rank} died ({type(e).__name__}: {e})")
    path = found[0]
    rank = int(path.stem.split("-")[1])
    name, message = read_json(path, "rank error")
    where = f"--devices {','.join(devices)}"
    if rank != 0:
        where += f": encode rank {rank} ({devices[rank]})"
    return rebuild_error(name, message, where=where)
