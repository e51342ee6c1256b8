"""``encode_corpus``: stream a corpus through an encoder into a resumable, sharded index folder.

The corpus (:mod:`textcl.search.sources`) is opened once and read forward: one pass checks
every record and fingerprints the input, the next encodes it one record at a time; every ``shard_size`` non-blank texts are encoded
(sorted by token length inside the shard, see :meth:`SentenceEncoder.encode`) and written as
one shard: ``shard-NNNNN.npy`` (``(rows, dim)`` embeddings, memory-mappable),
``shard-NNNNN.jsonl`` (id and text of every row) and ``shard-NNNNN.offsets.npy`` (byte offset
of each ``.jsonl`` line). Every file is written to a temporary name and renamed into place;
the manifest is rewritten (atomically) after each shard, so a shard exists only once the
manifest lists it. An interrupted run resumes after its last listed shard; a finished run is
a no-op.

One owner per folder: the run holds the folder's :class:`~textcl.io.FolderLock` from start
to end (a second writer gets :class:`~textcl.errors.FolderBusyError` at once) and, holding
it, removes temp files a killed run left behind. A folder holding another corpus or model
is refused (:class:`~textcl.errors.FolderConflictError`), never mixed: resuming (or calling
a finished index "done") needs the same input identity (checksum, columns, split), model
name and model weights hash (:func:`~textcl.search.model.model_weights_hash`), dtype, shard size and encoder
settings. The whole input is read and checked (UTF-8, JSON, fields) before the first
shard is written, so a bad line fails before any work, naming the line.

Nothing in ``output`` is touched before the options, the device, the output's place (never
equal to, inside or around the model folder or the input), the input and the model have
been checked. ``overwrite`` then moves the old index's files into ``output/.replaced/``
(renames) and deletes them only once the new run's first shard is listed in the manifest;
a failure before that puts them back. After a kill -9 in between, the next run on the
folder (holding its lock) settles it before anything else: with no ``manifest.json`` in
``output`` the new run never wrote a shard and the old index is restored from
``.replaced/``; with one, the new (resumable) index wins and ``.replaced/`` is deleted.

The corpus file is checked against the one scanned (size, modification time, inode) before
every shard is written and, with the sha256 of everything read, at the end: an input
rewritten during encoding is an :class:`~textcl.errors.InputError` naming the file, and
the index is never marked complete. Shards written before a size/time change stay
resumable; when only the re-hash differs, the manifest records the checksum of what was
read, so only that same content resumes (any other needs ``--overwrite``).

Many processes can write one index (:mod:`textcl.search.parallel`: ``--devices`` and
torchrun ranks in :mod:`textcl.search.distributed`, Ray actors in
:mod:`textcl.search.ray_engine`): everything above runs once in a driver, which passes its
own ``runner`` to :func:`encode_corpus_with`; workers write shards with the same
:func:`write_shard` and a completion record ``shard-NNNNN.done.json`` each, and the driver
lists them in the manifest, so the folder is the one a single process writes.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textcl.encoder import SentenceEncoder
from textcl.errors import FolderConflictError, InputError
from textcl.inference import AUTO, resolve_max_tokens
from textcl.io import FolderLock, append_text, atomic_write_bytes, remove_stale_tmp
from textcl.precision import check_device, resolve_inference_precision
from textcl.search.manifest import (
    DTYPES,
    MANIFEST_NAME,
    SET_ASIDE_NAME,
    Manifest,
    ShardInfo,
    check_apart,
)
from textcl.search.model import (
    load_encoder,
    model_folder,
    model_name,
    model_probe,
    model_weights_hash,
)
from textcl.search.quantize import (
    DEFAULT_CALIBRATION_SIZE,
    QUANTIZED_DTYPES,
    calibrate,
    check_dtype_options,
    needs_ranges,
    shard_arrays,
)
from textcl.search.sources import CorpusSource, open_source
from textcl.version import __version__

logger = logging.getLogger(__name__)

ENCODE_LOG_NAME = "encode_log.jsonl"
DEFAULT_SHARD_SIZE = 50_000
ENCODE_CHUNK = 4096
"""Sentences handed to ``SentenceEncoder.encode`` at a time inside a shard (progress grain)."""
_INDEX_FILE = re.compile(
    r"^(shard-\d{5}(\.npy|\.jsonl|\.offsets\.npy|\.rescore\.npy|\.done\.json)|faiss-[\w-]+\.index)$"
)
DONE_SUFFIX = ".done.json"
"""Per-shard completion record of a parallel run (:mod:`textcl.search.parallel`)."""
ShardRunner = Callable[..., Manifest]
"""``(encoder, corpus, manifest, folder, options, aside=...) -> Manifest``: writes the shards
of a checked, locked index folder (:func:`_encode_shards`, or a parallel engine's)."""


def shard_names(index: int) -> tuple[str, str, str]:
    """File names of shard ``index``: embeddings, texts, offsets."""
    stem = f"shard-{index:05d}"
    return f"{stem}.npy", f"{stem}.jsonl", f"{stem}.offsets.npy"


def rescore_name(index: int) -> str:
    """File name of shard ``index``'s rescoring rows (a quantized index)."""
    return f"shard-{index:05d}.rescore.npy"


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` serialised as a ``.npy`` file (what ``np.save`` writes)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def texts_jsonl(ids: list[str], texts: list[str]) -> tuple[bytes, np.ndarray]:
    """One ``{"id", "text"}`` JSON line per row, and the int64 byte offset of each line."""
    lines = [
        (json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n").encode("utf-8")
        for i, t in zip(ids, texts, strict=True)
    ]
    offsets = np.zeros(len(lines), dtype=np.int64)
    if lines:
        offsets[1:] = np.cumsum([len(b) for b in lines[:-1]])
    return b"".join(lines), offsets


def _chunks(records: Iterator[tuple[str, str | None]], size: int) -> Iterator[list[Any]]:
    while block := list(itertools.islice(records, size)):
        yield block


def clear_done_records(folder: Path) -> None:
    """Delete the per-shard completion records (``shard-NNNNN.done.json``) of a parallel
    run: once the manifest lists every shard they say nothing more."""
    for p in folder.glob("shard-*" + DONE_SUFFIX):
        p.unlink(missing_ok=True)


def _clear_index_files(folder: Path) -> None:
    for p in folder.iterdir():
        if _is_index_file(p.name):
            p.unlink()


def _set_aside(folder: Path) -> Path:
    """Move the index files of ``folder`` into ``folder/.replaced/`` (the manifest first, so
    a partly moved index is never taken for a new one) and return that folder."""
    aside = folder / SET_ASIDE_NAME
    aside.mkdir()
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and _is_index_file(p.name))
    names.sort(key=lambda n: n != MANIFEST_NAME)
    for name in names:
        os.replace(folder / name, aside / name)
    return aside


def _is_index_file(name: str) -> bool:
    return name in (MANIFEST_NAME, ENCODE_LOG_NAME) or bool(_INDEX_FILE.match(name))


def _restore(folder: Path, aside: Path, *, clear: bool) -> None:
    """Move the old index back from ``aside`` (``clear``: first delete the new run's files,
    known to be all of ``folder``'s index files)."""
    if clear:
        _clear_index_files(folder)
    for p in aside.iterdir():
        os.replace(p, folder / p.name)
    aside.rmdir()


def _settle_set_aside(folder: Path) -> None:
    """After a killed ``overwrite`` (see the module docstring): restore the old index when
    the new run wrote no manifest, else delete the set-aside copy."""
    aside = folder / SET_ASIDE_NAME
    if not aside.is_dir():
        return
    if (folder / MANIFEST_NAME).exists():
        logger.warning("%s: deleting the old index an interrupted --overwrite set aside", folder)
        shutil.rmtree(aside)
    else:
        logger.warning("%s: restoring the old index an interrupted --overwrite set aside", folder)
        clear_done_records(folder)  # the new run's, never listed
        _restore(folder, aside, clear=False)


def check_output_apart(folder: Path, model: Any, corpus: CorpusSource) -> None:
    """Raise :class:`~textcl.errors.InputError` when the index folder equals, is inside or
    holds the model folder or the input file/folder (:func:`check_apart`)."""
    others: list[tuple[str, Path]] = []
    local = None if isinstance(model, SentenceEncoder) else model_folder(model)
    if local is not None:
        others.append(("model folder", local))
    if corpus.kind != "hub":
        others.append(("input", Path(corpus.path)))
    check_apart(folder, "--output", others)


def _settings_diffs(old: Manifest, new: Manifest) -> list[str]:
    """The fields of ``old`` (in the folder) that ``new`` (this run) does not match."""
    diffs = []
    if old.model_hash and new.model_hash and old.model_hash != new.model_hash:
        diffs.append(
            f"model_hash: the model's weights/configs changed since the index was built "
            f"(index has {old.model_hash[:18]}..., now {new.model_hash[:18]}...)"
        )
    for key in ("model", "dimension", "dtype", "shard_size", "encoder"):
        if getattr(old, key) != getattr(new, key):
            diffs.append(f"{key}: index has {getattr(old, key)!r}, now {getattr(new, key)!r}")
    # Indexes written before the precision was recorded were encoded in fp32.
    if (old.precision or "fp32") != (new.precision or "fp32"):
        diffs.append(
            f"precision: index was encoded at {old.precision or 'fp32'!r}, now "
            f"{new.precision!r} (pass --precision {old.precision or 'fp32'} to resume)"
        )
    for key in ("checksum", "text_column", "id_column", "split"):
        if old.source.get(key) != new.source.get(key):
            diffs.append(
                f"source {key}: index has {old.source.get(key)!r}, now {new.source.get(key)!r}"
            )
    return diffs


def _conflict(folder: Path, diffs: list[str]) -> FolderConflictError:
    return FolderConflictError(
        f"{folder} holds an index of another corpus, model or settings ({'; '.join(diffs)}); "
        "use --overwrite or another folder"
    )


def _check_resume(old: Manifest, new: Manifest, folder: Path) -> None:
    """Raise FolderConflictError when ``folder``'s index was started with other settings."""
    diffs = _settings_diffs(old, new)
    if diffs:
        raise _conflict(folder, diffs)
    if not old.model_hash:
        logger.warning(
            "%s: the index records no model weights hash (written by an older textcl); "
            "resuming on the model name and probe only",
            folder,
        )
    for shard in old.shards:
        for name in (shard.embeddings, shard.texts, shard.offsets):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder / name}: missing shard file listed in {folder / MANIFEST_NAME}; "
                    "pass --overwrite to start again"
                )


@dataclass(frozen=True)
class EncodeOptions:
    """How :func:`encode_corpus` reads the corpus and encodes it (its keyword arguments, in
    one object built once and handed down): see :func:`encode_corpus` for each field."""

    text_column: str = "text"
    id_column: str | None = None
    split: str = "train"
    dtype: str = "float32"
    shard_size: int = DEFAULT_SHARD_SIZE
    batch_size: int = 64
    max_tokens: int | str | None = AUTO
    normalize: bool = True
    precision: str = "auto"
    device: Any = None
    overwrite: bool = False
    show_progress: bool = True
    calibration_size: int = DEFAULT_CALIBRATION_SIZE
    rescore_dtype: str | None = None
    compile: bool = False

    def check(self) -> None:
        """Raise :class:`~textcl.errors.InputError` for a bad dtype, size or token budget."""
        if self.dtype not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check_dtype_options(self.dtype, self.rescore_dtype, None)
        size = self.calibration_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InputError(f"calibration_size must be a positive integer, got {size!r}")
        for name, value in (("shard_size", self.shard_size), ("batch_size", self.batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        try:
            resolve_max_tokens(self.max_tokens, torch.device("cpu"))
        except ValueError as e:
            raise InputError(str(e)) from e
        if not isinstance(self.compile, bool):
            raise InputError(f"compile must be True or False, got {self.compile!r}")


def encode_corpus(
    model: Any,
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    text_column: str = "text",
    id_column: str | None = None,
    split: str = "train",
    dtype: str = "float32",
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = 64,
    max_tokens: int | str | None = AUTO,
    normalize: bool = True,
    precision: str = "auto",
    device: Any = None,
    overwrite: bool = False,
    show_progress: bool = True,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    rescore_dtype: str | None = None,
    compile: bool = False,
) -> Manifest:
    """Encode a corpus into an index folder (see the module docstring for the layout).

    Args:
        model: a :class:`~textcl.SentenceEncoder`, a model folder or a hub id.
        source: a ``.txt`` (one text a line), ``.jsonl``/``.json``, ``.csv``/``.tsv`` (those
            optionally ``.gz``) or ``.parquet`` file, a folder written by ``datasets``'
            ``save_to_disk``, or a hub dataset id (streamed); read by
            :mod:`textcl.data.readers`.
        output: the index folder (created if needed).
        text_column / id_column: column (field) names for jsonl / csv / tsv / parquet /
            datasets; ids default to the 1-based line number (text and JSON-lines files) or
            the 0-based row index (tables).
        split: the split of a datasets folder or hub dataset.
        dtype: ``float32`` or ``float16`` shards (float16 halves the disk and RAM footprint;
            search promotes chunks back to float32), or quantized: ``int8`` / ``uint8``
            (ranges calibrated on the first ``calibration_size`` non-blank texts before any
            shard is written, stored in the manifest) / ``binary`` / ``ubinary`` (packed
            sign bits); see :mod:`textcl.search.quantize`.
        calibration_size: texts the int8 ranges are calibrated on (default 10,000).
        rescore_dtype: rescoring shards of a quantized index: ``float32``, ``int8``
            (binary indexes) or ``none``; default int8 for binary, float32 for int8.
        shard_size: texts per shard (and the resume grain).
        batch_size / max_tokens: sentences and padded tokens per forward pass
            (``max_tokens="auto"``, the default: :data:`~textcl.inference.CPU_MAX_TOKENS`
            on CPU, no budget elsewhere; see :meth:`SentenceEncoder.encode`).
        normalize: store L2-normalised embeddings (cosine search); recorded in the manifest.
        precision: ``auto`` (bf16 on hardware with native bf16, else fp32), ``fp32``,
            ``bf16``, ``fp16`` (CUDA) or ``qint8`` (CPU); see
            :func:`~textcl.precision.resolve_inference_precision`. The resolved precision is
            recorded in the manifest; resuming with another one is refused.
        overwrite: delete an existing index in ``output`` and start again.
        compile: encode through ``torch.compile`` (:meth:`SentenceEncoder.encode`'s
            ``compile``): faster on large corpora, a compilation wait at the start.

    These keyword arguments become one :class:`EncodeOptions`
    (:func:`encode_corpus_with` takes one directly).

    Returns:
        The final :class:`Manifest` (``complete`` is true). Blank or whitespace-only texts
        are skipped and counted in ``manifest.skipped``.

    Raises:
        InputError / ValueError: an empty corpus (no non-blank text), a bad line of the
            input (found before any shard is written), a missing column
            (:class:`~textcl.data.readers.MissingColumnError`), bad arguments, an output
            that is a file.
        SourceError: a missing corpus file (or a hub id that does not load).
        FolderBusyError: another process is writing ``output``.
        FolderConflictError: ``output`` holds an index of another corpus, model (weights
            hash) or settings.
        FileNotFoundError: a missing shard of an unfinished index.
    """
    options = EncodeOptions(
        text_column=text_column,
        id_column=id_column,
        split=split,
        dtype=dtype,
        shard_size=shard_size,
        batch_size=batch_size,
        max_tokens=max_tokens,
        normalize=normalize,
        precision=precision,
        device=device,
        overwrite=overwrite,
        show_progress=show_progress,
        calibration_size=calibration_size,
        rescore_dtype=rescore_dtype,
        compile=compile,
    )
    return encode_corpus_with(model, source, output, options)


def encode_corpus_with(
    model: Any,
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: EncodeOptions,
    *,
    runner: ShardRunner | None = None,
    on_ready: Callable[[], None] | None = None,
) -> Manifest:
    """:func:`encode_corpus` with its settings in one :class:`EncodeOptions`.

    ``runner`` (default: this process, one shard after another) writes the shards once
    everything is checked and the folder is locked; :mod:`textcl.search.parallel` passes
    its own. ``on_ready`` is called once the run holds the folder's lock."""
    options.check()
    check_device(options.device)
    folder = Path(output).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InputError(
            f"{folder}: the output exists and is a file, not a folder; choose another --output"
        )
    corpus = open_source(
        source,
        text_column=options.text_column,
        id_column=options.id_column,
        split=options.split,
        scan=False,
    )
    check_output_apart(folder, model, corpus)
    folder.mkdir(parents=True, exist_ok=True)
    with FolderLock(folder, "index"):
        removed = remove_stale_tmp(folder, recursive=False)
        if removed:
            logger.info("%s: removed %d temp file(s) left by a killed run", folder, len(removed))
        _settle_set_aside(folder)
        if on_ready is not None:
            on_ready()
        return _encode_locked(model, corpus, folder, options, runner or _encode_shards)


def _same_complete(
    old: Manifest, corpus: CorpusSource, name: str, model_hash: str, options: EncodeOptions
) -> bool:
    """Whether the finished index ``old`` is exactly what this run would write
    (``options.precision`` resolved)."""
    return (
        old.complete
        and old.source.get("checksum") == corpus.checksum
        and all(
            old.source.get(k) == v
            for k, v in corpus.describe().items()
            if k != "rows" and k != "path"
        )
        and old.model == name
        and old.model_hash == model_hash
        and old.dtype == options.dtype
        and old.shard_size == options.shard_size
        and old.normalized == bool(options.normalize)
        and (old.precision or "fp32") == options.precision
        and _same_quantization(old, options)
    )


def _same_quantization(old: Manifest, options: EncodeOptions) -> bool:
    """Whether ``old``'s quantization settings are what ``options`` ask for."""
    if old.dtype not in QUANTIZED_DTYPES:
        return not old.quantization
    q = old.quantization
    want = check_dtype_options(options.dtype, options.rescore_dtype, None)
    if q.get("rescore_dtype") != want:
        return False
    return not needs_ranges(old.dtype, want) or q.get("calibration_size") in (
        None,
        options.calibration_size,
    )


def _encode_locked(
    model: Any, corpus: CorpusSource, folder: Path, options: EncodeOptions, runner: ShardRunner
) -> Manifest:
    """Holding the folder's lock: check the input, then start, resume or skip the index."""
    old: Manifest | None = None
    replace_old = (folder / MANIFEST_NAME).exists() and options.overwrite
    if (folder / MANIFEST_NAME).exists() and not options.overwrite:
        old = Manifest.load(folder)
    name = model_name(model)
    pre_hash: str | None = None
    local = None if isinstance(model, SentenceEncoder) else model_folder(model)
    if isinstance(model, SentenceEncoder) or local is not None:
        pre_hash = model_weights_hash(model if local is None else local)
    run_device = options.device
    if run_device is None:
        run_device = model.device if isinstance(model, SentenceEncoder) else "cpu"
    planned = replace(options, precision=resolve_inference_precision(options.precision, run_device))
    # One forward pass over the whole input: its checksum, and every record checked
    # before any shard is written.
    corpus.scan()
    if (
        old is not None
        and pre_hash is not None
        and _same_complete(old, corpus, name, pre_hash, planned)
    ):
        logger.info("%s: already complete (%d embeddings); nothing to do", folder, old.count)
        return old

    encoder = load_encoder(model, options.device)
    options = replace(
        options, precision=resolve_inference_precision(options.precision, encoder.device)
    )
    logger.info("%s: encoding at precision %s", folder, options.precision)
    if pre_hash is None:
        local = model_folder(model, encoder)
        pre_hash = model_weights_hash(local if local is not None else encoder)
    encoder_cfg = asdict(encoder.config)
    encoder_cfg["normalize"] = bool(options.normalize)
    encoder_cfg["max_length"] = encoder.effective_max_length
    encoder_cfg["embedding_dim"] = encoder.embedding_dim
    manifest = Manifest(
        model=name,
        encoder=encoder_cfg,
        dimension=encoder.embedding_dim,
        dtype=options.dtype,
        shard_size=options.shard_size,
        source=corpus.describe(),
        probe=model_probe(encoder),
        model_hash=pre_hash,
        textcl_version=__version__,
        precision=options.precision,
    )
    if options.dtype in QUANTIZED_DTYPES:
        check_dtype_options(options.dtype, options.rescore_dtype, encoder.embedding_dim)
    if old is not None:
        if _same_complete(old, corpus, name, pre_hash, options):
            logger.info("%s: already complete (%d embeddings); nothing to do", folder, old.count)
            return old
        _check_resume(old, manifest, folder)
        if not _same_quantization(old, options):
            raise _conflict(
                folder,
                [
                    f"quantization: index has {old.quantization.get('rescore_dtype')!r} rescoring "
                    f"/ calibration, now {options.rescore_dtype!r} / {options.calibration_size}"
                ],
            )
        manifest.shards, manifest.count, manifest.skipped = old.shards, old.count, old.skipped
        manifest.quantization = old.quantization
        manifest.faiss = {}
    if options.dtype in QUANTIZED_DTYPES and not manifest.quantization:
        manifest.quantization = calibrate(
            lambda texts: encoder.encode(
                texts,
                batch_size=options.batch_size,
                max_tokens=options.max_tokens,
                normalize=options.normalize,
                precision=options.precision,
                show_progress=False,
            ),
            (text for _, text in corpus.records()),
            options.dtype,
            options.rescore_dtype,
            options.calibration_size,
            encoder.embedding_dim,
        )
    if not replace_old:
        return runner(encoder, corpus, manifest, folder, options)
    # Everything is checked: only now is the old index moved aside (see the module doc).
    aside = _set_aside(folder)
    try:
        return runner(encoder, corpus, manifest, folder, options, aside=aside)
    except BaseException:
        if aside.is_dir():
            _restore(folder, aside, clear=True)
        raise


def _encode_shards(
    encoder: Any,
    corpus: CorpusSource,
    manifest: Manifest,
    folder: Path,
    options: EncodeOptions,
    *,
    aside: Path | None = None,
) -> Manifest:
    """Read the corpus forward from the first row not yet in a shard, writing a shard every
    ``shard_size`` non-blank texts (the corpus file checked unchanged before each); once the
    first is listed, the old index set aside in ``aside`` (if any) is deleted."""
    from tqdm.auto import tqdm

    done_rows = sum(s.rows + s.skipped for s in manifest.shards)
    if manifest.shards:
        logger.info(
            "%s: resuming after shard %d (%d source rows done)",
            folder,
            len(manifest.shards) - 1,
            done_rows,
        )
    digest = hashlib.sha256() if corpus.stat is not None else None
    records = itertools.islice(corpus.records(digest=digest), done_rows, None)
    bar = tqdm(
        total=corpus.rows,
        initial=done_rows,
        disable=not options.show_progress,
        desc="encode",
        unit=" sentences",
        dynamic_ncols=True,
    )
    position = done_rows
    pending_ids: list[str] = []
    pending_texts: list[str] = []
    pending_start = position
    pending_skipped = 0

    def flush() -> None:
        corpus.check_unchanged()  # every row of this shard was read before this check
        info = write_shard(
            encoder,
            manifest,
            folder,
            len(manifest.shards),
            pending_start,
            pending_ids,
            pending_texts,
            pending_skipped,
            options=options,
            progress=bar.update,
        )
        manifest.shards.append(info)
        manifest.count += info.rows
        manifest.skipped += info.skipped
        manifest.save(folder)
        if aside is not None and aside.is_dir():
            shutil.rmtree(aside)

    with bar:
        for block in _chunks(records, ENCODE_CHUNK):
            for rec_id, text in block:
                if not pending_ids and not pending_skipped:
                    pending_start = position
                position += 1
                if text is None or not text.strip():
                    pending_skipped += 1
                    continue
                pending_ids.append(rec_id)
                pending_texts.append(text)
                if len(pending_ids) == manifest.shard_size:
                    flush()
                    pending_ids, pending_texts, pending_skipped = [], [], 0
        if pending_ids:
            flush()
        elif pending_skipped and manifest.shards:
            # Trailing blank rows: credit them to the last shard so the row count adds up.
            manifest.shards[-1].skipped += pending_skipped
            manifest.skipped += pending_skipped
        bar.update(position - bar.n)
    if manifest.count == 0:
        raise InputError(
            f"{corpus.path}: empty corpus, no non-blank text in column/field "
            f"{corpus.text_column!r} ({position} rows read); nothing to encode"
        )
    try:
        corpus.check_unchanged(digest)
    except InputError:
        read = None if digest is None else "sha256:" + digest.hexdigest()
        if read is not None and read != corpus.checksum and manifest.shards:
            # The shards hold what was read, not the scanned content: record that, so a
            # resume goes on only over that very content (a resumed run mixes both: never).
            checksum = read if done_rows == 0 else f"mixed:{read}"
            manifest.source = {**manifest.source, "checksum": checksum}
            manifest.save(folder)
        raise
    manifest.complete = True
    manifest.save(folder)
    clear_done_records(folder)
    return manifest


def write_shard(
    encoder: Any,
    manifest: Manifest,
    folder: Path,
    index: int,
    start: int,
    ids: list[str],
    texts: list[str],
    skipped: int,
    *,
    options: EncodeOptions,
    progress: Callable[[int], Any] | None = None,
) -> ShardInfo:
    """Encode shard ``index`` (source rows from ``start``: ``texts`` and their ``ids``,
    ``skipped`` blank rows among them) and write its three files atomically; return its
    :class:`ShardInfo` for the caller to list (the manifest is not touched).

    The one place a shard is written, by every engine (one process, ``--devices`` /
    torchrun ranks, Ray actors): ``manifest`` and ``options`` are the run's, the same in
    every worker. ``progress`` is called with the source rows done."""
    t0 = time.perf_counter()
    parts = []
    for lo in range(0, len(texts), ENCODE_CHUNK):
        emb = encoder.encode(
            texts[lo : lo + ENCODE_CHUNK],
            batch_size=options.batch_size,
            max_tokens=options.max_tokens,
            normalize=options.normalize,
            precision=options.precision,
            show_progress=False,
            compile=options.compile,
        )
        parts.append(np.asarray(emb, dtype=np.float32))
        if progress is not None:
            progress(len(parts[-1]) + (skipped if lo == 0 else 0))
    floats = np.concatenate(parts)
    embeddings, rescore_rows = shard_arrays(floats, manifest.dtype, manifest.quantization)
    seconds = time.perf_counter() - t0
    if not np.isfinite(floats).all() or not np.isfinite(embeddings).all():
        raise ValueError(
            f"shard {index} (source rows from {start}): the encoder produced "
            f"NaN or infinite values (dtype {manifest.dtype}; float16 overflows above 65504)"
        )

    emb_name, texts_name, offsets_name = shard_names(index)
    emb_bytes = npy_bytes(embeddings)
    lines, offsets = texts_jsonl(ids, texts)
    offsets_bytes = npy_bytes(offsets)
    atomic_write_bytes(folder / emb_name, emb_bytes)
    atomic_write_bytes(folder / texts_name, lines)
    atomic_write_bytes(folder / offsets_name, offsets_bytes)
    rescore: dict[str, Any] = {}
    if rescore_rows is not None:
        rescore_bytes = npy_bytes(rescore_rows)
        atomic_write_bytes(folder / rescore_name(index), rescore_bytes)
        rescore = {
            "rescore": rescore_name(index),
            "rescore_sha256": hashlib.sha256(rescore_bytes).hexdigest(),
            "rescore_bytes": len(rescore_bytes),
        }
    info = ShardInfo(
        index=index,
        start=start,
        rows=len(ids),
        embeddings=emb_name,
        texts=texts_name,
        offsets=offsets_name,
        sha256=hashlib.sha256(emb_bytes).hexdigest(),
        texts_sha256=hashlib.sha256(lines).hexdigest(),
        skipped=skipped,
        offsets_sha256=hashlib.sha256(offsets_bytes).hexdigest(),
        bytes=len(emb_bytes),
        texts_bytes=len(lines),
        offsets_bytes=len(offsets_bytes),
        **rescore,
    )
    entry = {
        "shard": index,
        "rows": len(ids),
        "seconds": round(seconds, 3),
        "sentences_per_s": round(len(ids) / max(seconds, 1e-9), 1),
    }
    append_text(folder / ENCODE_LOG_NAME, json.dumps(entry) + "\n")
    return info
