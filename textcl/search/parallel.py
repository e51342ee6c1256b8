"""Shard-parallel ``textcl encode``: many processes (torchrun ranks, ``--devices``, Ray actors)
writing one index folder, identical to what one process writes.

Shard ``i`` is the ``i``-th block of ``shard_size`` non-blank records in source order
(:class:`ShardScanner`), so any worker that reads the (checked, unchanged) source can write
any shard: the same rows, ids, start and skipped count as :func:`~textcl.search.encode_corpus`
in one process, encoded by the same :func:`~textcl.search.encode.write_shard`.

One process, the *driver* (rank 0, or the Ray driver), runs everything
:func:`~textcl.search.encode_corpus_with` runs before the first shard (option, device, model
and folder checks, the folder lock held to the end, the ``--overwrite`` set-aside, the scan
of every input record, the resume and conflict checks) and then hands a :class:`RunPlan`
(the started manifest, the options with the precision resolved, the run's identity, the
shards already done) to every worker. A worker reads the source forward once, encodes the
shards it is given, and writes each one's three files atomically and then a completion
record ``shard-NNNNN.done.json`` (the run identity and the shard's :class:`ShardInfo`).

Only the driver writes ``manifest.json``: it lists shards in order, a shard once it and all
the shards before it are done (sizes and sha256 of their files checked against the record),
and marks the index complete once all are listed, the source rows are accounted for and the
input file is unchanged; the completion records are then deleted. After a kill -9 of any
worker or of the driver, the next run (one process or many) resumes: shards listed in the
manifest, and shards whose completion record matches the run identity and whose files
check, are not encoded again.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from textcl import errors
from textcl.errors import CorruptFileError, InputError
from textcl.io import atomic_write_text, read_json, sha256_file
from textcl.search.encode import (
    DONE_SUFFIX,
    EncodeOptions,
    clear_done_records,
    write_shard,
)
from textcl.search.manifest import Manifest, ShardInfo
from textcl.search.sources import CorpusSource, Record, open_source

logger = logging.getLogger(__name__)


@dataclass
class ShardBlock:
    """The records of one shard: ``texts`` (non-blank) and their ``ids`` from source row
    ``start``, ``skipped`` blank rows among them."""

    index: int
    start: int
    ids: list[str]
    texts: list[str]
    skipped: int


class ShardScanner:
    """Cut a record stream into shards exactly as the one-process encoder does.

    :meth:`blocks` yields the shards ``want(index)`` selects (the others are counted, their
    texts not kept); once the stream is exhausted, :attr:`rows` is the number of source rows
    and :attr:`shards` the number of shards. ``want`` is asked when a shard begins, so it may
    change between blocks (the Ray actor asks for one shard at a time)."""

    def __init__(self, shard_size: int, want: Callable[[int], bool]) -> None:
        self.shard_size = shard_size
        self.want = want
        self.rows = 0
        self.shards = 0

    def blocks(self, records: Iterator[Record]) -> Iterator[ShardBlock]:
        index = start = skipped = count = 0
        ids: list[str] = []
        texts: list[str] = []
        keep = self.want(0)
        position = 0
        for rec_id, text in records:
            if count == 0 and skipped == 0:
                start = position
            position += 1
            self.rows = position
            if text is None or not text.strip():
                skipped += 1
                continue
            count += 1
            if keep:
                ids.append(rec_id)
                texts.append(text)
            if count == self.shard_size:
                self.shards = index + 1
                if keep:
                    yield ShardBlock(index, start, ids, texts, skipped)
                index += 1
                ids, texts, count, skipped = [], [], 0, 0
                keep = self.want(index)
        if count:
            self.shards = index + 1
            if keep:
                yield ShardBlock(index, start, ids, texts, skipped)


def run_identity(manifest: Manifest) -> str:
    """What a shard written by one worker must share with the run that lists it: every
    manifest field except the shard list, counts, completion, FAISS entries, the version
    and the input's path and row count (a quantizing run's calibration included)."""
    data = asdict(manifest)
    for key in ("shards", "count", "skipped", "complete", "faiss", "textcl_version", "probe"):
        data.pop(key, None)
    data["source"] = {k: v for k, v in data["source"].items() if k not in ("path", "rows")}
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def done_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}{DONE_SUFFIX}"


def write_done(folder: Path, info: ShardInfo, identity: str) -> None:
    """Record that shard ``info.index`` is written (after its three files)."""
    atomic_write_text(
        done_path(folder, info.index), json.dumps({"identity": identity, "shard": asdict(info)})
    )


def shard_files_ok(folder: Path, info: ShardInfo) -> bool:
    """Whether the shard's three files exist with the recorded sizes and sha256."""
    for _, name, size, digest in info.files():
        path = folder / name
        if not path.is_file() or (size >= 0 and path.stat().st_size != size):
            return False
        if sha256_file(path) != digest:
            return False
    return True


def read_done(folder: Path, index: int, identity: str) -> ShardInfo | None:
    """Shard ``index``'s completion record when it belongs to this run (``identity``) and
    its files check; ``None`` (with a log line for a bad one) otherwise."""
    path = done_path(folder, index)
    if not path.is_file():
        return None
    try:
        data = read_json(path, "shard completion record")
        if not isinstance(data, dict) or data.get("identity") != identity:
            logger.info("%s: from another run; shard %d is encoded again", path, index)
            return None
        info = ShardInfo.from_dict(data.get("shard"), str(path))
    except CorruptFileError as e:
        logger.warning("%s; shard %d is encoded again", e, index)
        return None
    if info.index != index or not shard_files_ok(folder, info):
        logger.warning("%s: its shard files do not check; shard %d is encoded again", path, index)
        return None
    return info


@dataclass
class RunPlan:
    """What the driver hands every worker (pickled once per worker)."""

    manifest: Manifest
    options: EncodeOptions
    identity: str
    done: frozenset[int]
    model: Any
    source: str
    checksum: str
    stat: tuple[int, int, int] | None
    folder: str
    shards: int = -1
    """Number of shards (``-1`` for a streamed hub dataset: known at the end)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def open_source(self) -> CorpusSource:
        """The corpus, unscanned, checked against the driver's scan before each shard."""
        corpus = open_source(
            self.source,
            text_column=self.options.text_column,
            id_column=self.options.id_column,
            split=self.options.split,
            scan=False,
        )
        corpus.checksum, corpus.stat = self.checksum, self.stat
        return corpus


class Collector:
    """The driver's side: lists finished shards in order in the manifest (and saves it),
    deletes an ``--overwrite`` set-aside once the first is listed, and finalises."""

    def __init__(self, manifest: Manifest, folder: Path, identity: str, aside: Path | None):
        self.manifest = manifest
        self.folder = folder
        self.identity = identity
        self.aside = aside
        self.known: dict[int, ShardInfo] = {}

    def recorded(self, upto: int) -> set[int]:
        """Shards below ``upto`` (``-1``: any) with a valid completion record on disk,
        adopted; the manifest's prefix is extended over them."""
        found: set[int] = set()
        for path in sorted(self.folder.glob("shard-*" + DONE_SUFFIX)):
            stem = path.name[len("shard-") : -len(DONE_SUFFIX)]
            if not stem.isdigit():
                continue
            k = int(stem)
            if k < len(self.manifest.shards) or k in self.known or (upto >= 0 and k >= upto):
                continue
            info = read_done(self.folder, k, self.identity)
            if info is not None:
                self.known[k] = info
                found.add(k)
        self.extend()
        return found

    def add(self, info: ShardInfo, *, check: bool = True) -> None:
        """A shard a worker reports done (its files checked unless ``check`` is false)."""
        if check and not shard_files_ok(self.folder, info):
            raise CorruptFileError(
                f"{self.folder / info.embeddings}: shard {info.index} does not match what its "
                "worker reported (size or sha256); rerun to encode it again"
            )
        self.known[info.index] = info
        self.extend()

    def extend(self) -> None:
        m = self.manifest
        changed = False
        while (info := self.known.pop(len(m.shards), None)) is not None:
            m.shards.append(info)
            m.count += info.rows
            m.skipped += info.skipped
            changed = True
        if changed:
            m.save(self.folder)
            if self.aside is not None and self.aside.is_dir():
                shutil.rmtree(self.aside)

    def finish(self, rows: int, shards: int) -> Manifest:
        """All ``shards`` done over ``rows`` source rows: list any not yet listed (from
        their records), credit trailing blank rows to the last shard, mark complete."""
        m = self.manifest
        if len(m.shards) < shards:
            self.recorded(shards)
        if len(m.shards) != shards:
            missing = [k for k in range(len(m.shards), shards) if k not in self.known][:5]
            raise RuntimeError(
                f"{self.folder}: shard(s) {missing} were not written by any worker; rerun "
                "the same command to resume"
            )
        if not shards:
            raise InputError(f"{self.folder}: empty corpus, nothing to encode")
        last = m.shards[-1]
        last.skipped = rows - last.start - last.rows
        m.skipped = sum(s.skipped for s in m.shards)
        m.complete = True
        m.save(self.folder)
        clear_done_records(self.folder)
        if self.aside is not None and self.aside.is_dir():
            shutil.rmtree(self.aside)
        return m


def start_plan(
    model: Any,
    corpus: CorpusSource,
    manifest: Manifest,
    folder: Path,
    options: EncodeOptions,
    aside: Path | None,
) -> tuple[RunPlan, Collector]:
    """The driver's plan once the folder is checked and locked: adopt the completion
    records of this run left by a killed one, and list what is done."""
    identity = run_identity(manifest)
    collector = Collector(manifest, folder, identity, aside)
    collector.recorded(-1)
    done = set(range(len(manifest.shards))) | set(collector.known)
    if corpus.count is not None and corpus.count >= 0:
        shards = -(-corpus.count // manifest.shard_size)
    else:
        shards = -1
    if done:
        logger.info("%s: %d shard(s) already done; resuming the others", folder, len(done))
    plan = RunPlan(
        manifest=manifest,
        options=options,
        identity=identity,
        done=frozenset(done),
        model=manifest.model if not _is_encoder(model) else model,
        source=corpus.path,
        checksum=corpus.checksum,
        stat=corpus.stat,
        folder=str(folder),
        shards=shards,
    )
    return plan, collector


def _is_encoder(model: Any) -> bool:
    return not isinstance(model, (str, os.PathLike))


def encode_assigned(
    encoder: Any,
    corpus: CorpusSource,
    plan: RunPlan,
    assigned: Callable[[int], bool],
    *,
    on_shard: Callable[[ShardInfo], None] | None = None,
    digest: Any = None,
    progress: Callable[[int], Any] | None = None,
) -> ShardScanner:
    """A worker: read the source forward once and write every shard ``assigned`` selects
    that the plan does not list as done (the input file checked unchanged before each)."""
    folder = Path(plan.folder)
    scanner = ShardScanner(plan.manifest.shard_size, lambda k: assigned(k) and k not in plan.done)
    for block in scanner.blocks(corpus.records(digest=digest)):
        corpus.check_unchanged()
        info = write_shard(
            encoder,
            plan.manifest,
            folder,
            block.index,
            block.start,
            block.ids,
            block.texts,
            block.skipped,
            options=plan.options,
            progress=progress,
        )
        write_done(folder, info, plan.identity)
        if on_shard is not None:
            on_shard(info)
    return scanner


def describe_error(e: BaseException) -> tuple[str, str]:
    """``(class name, message)`` of an error, to raise again in another process: the name of
    its nearest class among :mod:`textcl.errors` and the builtins (so the CLI's exit code
    is the same)."""
    for cls in type(e).__mro__:
        name = cls.__name__
        if getattr(errors, name, None) is cls or getattr(builtins, name, None) is cls:
            return name, str(e)
    return type(e).__name__, str(e)


def rebuild_error(name: str, message: str, where: str) -> BaseException:
    """The error ``(name, message)`` of another process (:func:`describe_error`) as the
    same class, its message prefixed with ``where``."""
    cls = getattr(errors, name, None) or getattr(builtins, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return RuntimeError(f"{where}: {name}: {message}")
    return cls(f"{where}: {message}")
