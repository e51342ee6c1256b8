"""``textcl encode --engine ray``: the shards of :mod:`textcl.search.parallel` encoded by a
Ray Data actor pool.

The driver (this process) does what one-process ``encode`` does before the first shard
(checks, lock, scan, resume, set-aside) and lists finished shards in the manifest. The shard
numbers still to encode become a dataset (``ray.data.from_items``) mapped by
``map_batches`` over a pool of ``num_workers`` actors (:class:`ShardEncoderActor`): each
loads the encoder once, reads the input forward (shared storage on a cluster: the input
and the index folder must be at the same path on every node), and writes its shards with
the same :func:`~textcl.search.encode.write_shard` as every other engine, so the folder is
the one a single process writes.

Without ``address`` Ray starts locally, sized by the flags (``num_workers *
cpus_per_worker`` CPUs), with no dashboard, no usage stats, a small object store and its
temp folder under the system temp; it is shut down at the end. ``address`` joins a running
cluster (``ray://host:port`` or ``host:port``): one that does not answer within
``connect_timeout`` seconds is an :class:`~textcl.errors.InputError`.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textcl.errors import InputError
from textcl.search.encode import EncodeOptions, encode_corpus_with, write_shard
from textcl.search.manifest import Manifest, ShardInfo
from textcl.search.model import load_encoder
from textcl.search.parallel import (
    RunPlan,
    ShardBlock,
    ShardScanner,
    describe_error,
    rebuild_error,
    start_plan,
    write_done,
)
from textcl.search.sources import CorpusSource

logger = logging.getLogger(__name__)

OBJECT_STORE_BYTES = 128 * 1024**2
"""Object store of a local Ray (only shard numbers and small records go through it)."""


def import_ray() -> Any:
    """``ray`` (and ``ray.data``), or an InputError naming the ``textcl[ray]`` extra."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray = importlib.import_module("ray")  # lazy: optional extra textcl[ray]
        importlib.import_module("ray.data")
    except ImportError as e:
        raise InputError(
            f"--engine ray needs Ray Data, which is not installed ({e}); install the extra: "
            "pip install 'textcl[ray]'"
        ) from None
    return ray


def check_address(address: str, timeout: float) -> None:
    """Raise InputError unless a gRPC (HTTP/2) server, a Ray GCS or Ray Client server,
    answers at ``host:port`` of ``address`` within ``timeout`` seconds: a closed port fails
    at once, a port that accepts but does not speak HTTP/2 after ``timeout`` (``ray.init``
    itself would retry for minutes). ``auto`` / ``local`` are left to Ray."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray-address {address!r}: expected host:port or ray://host:port")
    hint = "start one (ray start --head) or leave --ray-address out for local mode"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(_H2_PREFACE)
            reply = conn.recv(9)
    except OSError as e:
        raise InputError(
            f"--ray-address {address}: no Ray cluster answers there within {timeout:g} s "
            f"({e}); {hint}"
        ) from None
    if len(reply) < 4 or reply[3] != 0x04:  # an HTTP/2 SETTINGS frame: a gRPC server
        raise InputError(
            f"--ray-address {address}: the port is open but no Ray (gRPC) server answers "
            f"there; {hint}"
        )


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
"""The HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS or
client server) answers with its own SETTINGS frame."""


class ShardEncoderActor:
    """A Ray Data callable class: loads the encoder once, then writes the shards whose
    numbers it is given (reading the input forward, from the start again only when asked
    for an earlier shard)."""

    def __init__(self, plan: RunPlan, device: str | None, threads: int) -> None:
        torch.set_num_threads(max(1, threads))
        self.plan = plan
        self.encoder = load_encoder(plan.model, device)
        self.corpus: CorpusSource = plan.open_source()
        self.target = -1
        self.last = -1
        self.blocks: Any = None

    def _block(self, index: int) -> ShardBlock:
        if self.blocks is None or index <= self.last:
            scanner = ShardScanner(self.plan.manifest.shard_size, lambda k: k == self.target)
            self.blocks = scanner.blocks(self.corpus.records())
        self.target = index
        for block in self.blocks:
            self.last = block.index
            if block.index == index:
                return block
        raise InputError(f"{self.corpus.path}: shard {index} is past the end of the input")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Write the batch's shards; a shard's error is returned as data (class name and
        message, :func:`~textcl.search.parallel.describe_error`), for the driver to raise
        as the same error (Ray's own wrappers would lose it)."""
        folder = Path(self.plan.folder)
        infos, failures = [], []
        for k in batch["shard"]:
            info, failure = "", ""
            try:
                block = self._block(int(k))
                self.corpus.check_unchanged()
                shard = write_shard(
                    self.encoder,
                    self.plan.manifest,
                    folder,
                    block.index,
                    block.start,
                    block.ids,
                    block.texts,
                    block.skipped,
                    options=self.plan.options,
                )
                write_done(folder, shard, self.plan.identity)
                info = json.dumps(asdict(shard))
            except Exception as e:
                failure = json.dumps(describe_error(e))
            infos.append(info)
            failures.append(failure)
        return {
            "shard": np.asarray(batch["shard"]),
            "info": np.asarray(infos, dtype=object),
            "error": np.asarray(failures, dtype=object),
        }


def _init_ray(
    ray: Any, address: str | None, workers: int, cpus: float, gpus: float, timeout: float
) -> bool:
    """Connect to ``address`` or start a local Ray; returns whether this call started it."""
    if ray.is_initialized():
        return False
    if address:
        check_address(address, timeout)
        ray.init(address=address, log_to_driver=False)
        return True
    temp = Path(tempfile.gettempdir()) / "ray-textcl"
    ray.init(
        num_cpus=max(1, round(workers * cpus)),
        num_gpus=int(np.ceil(workers * gpus)) if gpus else 0,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        _temp_dir=str(temp),
        log_to_driver=False,
        configure_logging=False,
    )
    return True


def encode_with_ray(
    model: Any,
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: EncodeOptions,
    *,
    address: str | None = None,
    num_workers: int = 2,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    connect_timeout: float = 10.0,
) -> Manifest:
    """Encode ``source`` into the index folder ``output`` with a Ray Data actor pool (see
    the module docstring); the same folder, resume and checks as
    :func:`~textcl.search.encode_corpus_with`."""
    ray = import_ray()
    if not isinstance(model, (str, os.PathLike)):
        raise InputError("--engine ray needs a model folder or hub id, not an in-memory encoder")
    for name, value, low in (
        ("--num-workers", num_workers, 1),
        ("--cpus-per-worker", cpus_per_worker, 0),
        ("--gpus-per-worker", gpus_per_worker, 0),
    ):
        if (
            isinstance(value, bool)
            or value < low
            or (name == "--num-workers" and value != int(value))
        ):
            raise InputError(
                f"{name} must be {'a positive integer' if low else '>= 0'}, got {value!r}"
            )
    if address:  # fail fast, before the input is scanned
        check_address(address, connect_timeout)
    device = "cuda" if gpus_per_worker > 0 else "cpu"

    def runner(
        encoder: Any,
        corpus: CorpusSource,
        manifest: Manifest,
        folder: Path,
        options: EncodeOptions,
        aside: Path | None = None,
    ) -> Manifest:
        if corpus.kind == "hub":
            raise InputError(
                f"{corpus.path}: --engine ray reads local inputs (files or datasets folders "
                "on storage every worker sees), not a streamed hub dataset"
            )
        plan, collector = start_plan(model, corpus, manifest, folder, options, aside)
        todo = [k for k in range(plan.shards) if k not in plan.done]
        if todo:
            started = _init_ray(
                ray, address, num_workers, cpus_per_worker, gpus_per_worker, connect_timeout
            )
            try:
                _run_pool(
                    ray,
                    plan,
                    todo,
                    collector,
                    num_workers,
                    cpus_per_worker,
                    gpus_per_worker,
                    device,
                    options.show_progress,
                )
            finally:
                if started:
                    ray.shutdown()
        corpus.check_unchanged()
        assert corpus.rows is not None
        return collector.finish(corpus.rows, plan.shards)

    return encode_corpus_with(model, source, output, options, runner=runner)


def _run_pool(
    ray: Any,
    plan: RunPlan,
    todo: list[int],
    collector: Any,
    workers: int,
    cpus: float,
    gpus: float,
    device: str,
    progress: bool,
) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(progress)
    workers = min(workers, len(todo))
    ds = ray.data.from_items([{"shard": k} for k in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(
        ShardEncoderActor,
        fn_constructor_kwargs={
            "plan": plan,
            "device": device,
            "threads": max(1, int(cpus)),
        },
        batch_size=1,
        batch_format="numpy",
        concurrency=workers,
        num_cpus=cpus,
        num_gpus=gpus,
    )
    for row in ds.iter_rows():
        if row["error"]:
            name, message = json.loads(row["error"])
            raise rebuild_error(name, message, where=f"--engine ray worker, shard {row['shard']}")
        collector.add(ShardInfo(**json.loads(row["info"])))
