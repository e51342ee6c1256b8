"""``encode_corpus``: stream a corpus through an encoder into a resumable, sharded index folder.

The corpus is read one record at a time; every ``shard_size`` non-blank texts are encoded
(sorted by token length inside the shard, see :meth:`SentenceEncoder.encode`) and written as
one shard: ``shard-NNNNN.npy`` (``(rows, dim)`` embeddings, memory-mappable),
``shard-NNNNN.jsonl`` (id and text of every row) and ``shard-NNNNN.offsets.npy`` (byte offset
of each ``.jsonl`` line). Every file is written to a temporary name and renamed into place;
the manifest is rewritten (atomically) after each shard, so a shard exists only once the
manifest lists it. An interrupted run resumes after its last listed shard; a finished run is
a no-op.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from textcl.encoder import batch_bounds
from textcl.search.manifest import (
    DTYPES,
    MANIFEST_NAME,
    PROBE_SENTENCES,
    Manifest,
    ShardInfo,
    atomic_write_bytes,
)
from textcl.search.sources import CorpusSource, open_source

logger = logging.getLogger(__name__)

ENCODE_LOG_NAME = "encode_log.jsonl"
DEFAULT_SHARD_SIZE = 50_000
ENCODE_CHUNK = 4096
"""Sentences handed to ``SentenceEncoder.encode`` at a time inside a shard (progress grain)."""
_INDEX_FILE = re.compile(r"^(shard-\d{5}(\.npy|\.jsonl|\.offsets\.npy)|faiss-\w+\.index)$")


def shard_names(index: int) -> tuple[str, str, str]:
    """File names of shard ``index``: embeddings, texts, offsets."""
    stem = f"shard-{index:05d}"
    return f"{stem}.npy", f"{stem}.jsonl", f"{stem}.offsets.npy"


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


def model_probe(encoder: Any) -> list[list[float]]:
    """fp32 embeddings of :data:`PROBE_SENTENCES` (the model's fingerprint), rounded."""
    emb = encoder.encode(list(PROBE_SENTENCES), batch_size=8, show_progress=False)
    return [[round(float(x), 6) for x in row] for row in np.asarray(emb)]


def model_name(model: Any) -> str:
    """How the manifest names ``model``: a resolved folder path, a hub id, or for an
    in-memory encoder its model's ``name_or_path``."""
    from textcl.encoder import SentenceEncoder

    if isinstance(model, SentenceEncoder):
        cfg = getattr(model.model, "config", None)
        name = str(getattr(cfg, "_name_or_path", "") or "")
        local = Path(name).expanduser() if name else None
        if local is not None and local.exists():
            return str(local.resolve())
        return name or "<SentenceEncoder object>"
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"model must be a SentenceEncoder, a folder or a hub id, got {type(model).__name__}"
        )
    local = Path(model).expanduser()
    return str(local.resolve()) if local.exists() else str(model)


def load_encoder(model: Any, device: Any = None) -> Any:
    """``model`` as a :class:`~textcl.SentenceEncoder` (loaded when a folder or hub id)."""
    from textcl.encoder import SentenceEncoder

    if isinstance(model, SentenceEncoder):
        if device is not None:
            model.to(device)
        return model
    model_name(model)  # type check
    return SentenceEncoder.from_pretrained(str(model), device=device)


def _chunks(records: Iterator[tuple[str, str | None]], size: int) -> Iterator[list[Any]]:
    while block := list(itertools.islice(records, size)):
        yield block


def _clear_index_files(folder: Path) -> None:
    for p in folder.iterdir():
        if p.name in (MANIFEST_NAME, ENCODE_LOG_NAME) or _INDEX_FILE.match(p.name):
            p.unlink()


def _check_resume(old: Manifest, new: Manifest, folder: Path) -> None:
    """Raise ``ValueError`` when ``folder``'s unfinished job was started with other settings."""
    diffs = []
    for key in ("model", "dimension", "dtype", "shard_size", "encoder"):
        if getattr(old, key) != getattr(new, key):
            diffs.append(f"{key}: index has {getattr(old, key)!r}, now {getattr(new, key)!r}")
    for key in ("checksum", "text_column", "id_column", "split"):
        if old.source.get(key) != new.source.get(key):
            diffs.append(
                f"source {key}: index has {old.source.get(key)!r}, now {new.source.get(key)!r}"
            )
    if diffs:
        raise ValueError(
            f"{folder} holds an index built with other settings ({'; '.join(diffs)}); "
            "choose another --output or pass --overwrite to start again"
        )
    for shard in old.shards:
        for name in (shard.embeddings, shard.texts, shard.offsets):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder / name}: missing shard file listed in {folder / MANIFEST_NAME}; "
                    "pass --overwrite to start again"
                )


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
    max_tokens: int | None = None,
    normalize: bool = True,
    precision: str = "fp32",
    device: Any = None,
    overwrite: bool = False,
    show_progress: bool = True,
) -> Manifest:
    """Encode a corpus into an index folder (see the module docstring for the layout).

    Args:
        model: a :class:`~textcl.SentenceEncoder`, a model folder or a hub id.
        source: a ``.txt`` (one text a line), ``.jsonl`` or ``.parquet`` file, a folder
            written by ``datasets``' ``save_to_disk``, or a hub dataset id (streamed).
        output: the index folder (created if needed).
        text_column / id_column: field names for ``.jsonl`` / parquet / datasets; ids default
            to the 1-based line number (text files) or the 0-based row index (tables).
        split: the split of a datasets folder or hub dataset.
        dtype: ``float32`` or ``float16`` shards (float16 halves the disk and RAM footprint;
            search promotes chunks back to float32).
        shard_size: texts per shard (and the resume grain).
        batch_size / max_tokens: sentences and padded tokens per forward pass.
        normalize: store L2-normalised embeddings (cosine search); recorded in the manifest.
        precision: ``fp32``, or ``bf16``/``fp16`` autocast on CUDA.
        overwrite: delete an existing index in ``output`` and start again.

    Returns:
        The final :class:`Manifest` (``complete`` is true). Blank or whitespace-only texts
        are skipped and counted in ``manifest.skipped``.

    Raises:
        ValueError: an empty corpus (no non-blank text), bad arguments, or an unfinished
            index in ``output`` built with other settings.
        FileNotFoundError: a missing corpus file or a missing shard of an unfinished index.
    """
    from textcl import __version__

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    for name, value in (("shard_size", shard_size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    batch_bounds([], batch_size, max_tokens)  # validates max_tokens
    folder = Path(output).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder")
    corpus = open_source(source, text_column=text_column, id_column=id_column, split=split)
    folder.mkdir(parents=True, exist_ok=True)

    old: Manifest | None = None
    if (folder / MANIFEST_NAME).exists():
        if overwrite:
            _clear_index_files(folder)
        else:
            old = Manifest.load(folder)
            if (
                old.complete
                and old.source.get("checksum") == corpus.checksum
                and old.model == model_name(model)
                and old.dtype == dtype
                and old.shard_size == shard_size
                and old.normalized == bool(normalize)
            ):
                logger.info(
                    "%s: already complete (%d embeddings); nothing to do", folder, old.count
                )
                return old

    encoder = load_encoder(model, device)
    encoder_cfg = asdict(encoder.config)
    encoder_cfg["normalize"] = bool(normalize)
    encoder_cfg["max_length"] = encoder.effective_max_length
    encoder_cfg["embedding_dim"] = encoder.embedding_dim
    manifest = Manifest(
        model=model_name(model),
        encoder=encoder_cfg,
        dimension=encoder.embedding_dim,
        dtype=dtype,
        shard_size=shard_size,
        source=corpus.describe(),
        probe=model_probe(encoder),
        textcl_version=__version__,
    )
    if old is not None:
        _check_resume(old, manifest, folder)
        manifest.shards, manifest.count, manifest.skipped = old.shards, old.count, old.skipped
        manifest.faiss = {}
    return _encode_shards(
        encoder,
        corpus,
        manifest,
        folder,
        batch_size=batch_size,
        max_tokens=max_tokens,
        normalize=normalize,
        precision=precision,
        show_progress=show_progress,
    )


def _encode_shards(
    encoder: Any,
    corpus: CorpusSource,
    manifest: Manifest,
    folder: Path,
    *,
    batch_size: int,
    max_tokens: int | None,
    normalize: bool,
    precision: str,
    show_progress: bool,
) -> Manifest:
    from tqdm.auto import tqdm

    done_rows = sum(s.rows + s.skipped for s in manifest.shards)
    if manifest.shards:
        logger.info(
            "%s: resuming after shard %d (%d source rows done)",
            folder,
            len(manifest.shards) - 1,
            done_rows,
        )
    records = itertools.islice(corpus.records(), done_rows, None)
    bar = tqdm(
        total=corpus.rows,
        initial=done_rows,
        disable=not show_progress,
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
        _write_shard(
            encoder,
            manifest,
            folder,
            pending_start,
            pending_ids,
            pending_texts,
            pending_skipped,
            bar=bar,
            batch_size=batch_size,
            max_tokens=max_tokens,
            normalize=normalize,
            precision=precision,
        )

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
        raise ValueError(
            f"{corpus.path}: empty corpus, no non-blank text in column/field "
            f"{corpus.text_column!r} ({position} rows read); nothing to encode"
        )
    manifest.complete = True
    manifest.save(folder)
    return manifest


def _write_shard(
    encoder: Any,
    manifest: Manifest,
    folder: Path,
    start: int,
    ids: list[str],
    texts: list[str],
    skipped: int,
    *,
    bar: Any,
    batch_size: int,
    max_tokens: int | None,
    normalize: bool,
    precision: str,
) -> None:
    """Encode one shard's texts, write its three files atomically, then the manifest."""
    t0 = time.perf_counter()
    parts = []
    for lo in range(0, len(texts), ENCODE_CHUNK):
        emb = encoder.encode(
            texts[lo : lo + ENCODE_CHUNK],
            batch_size=batch_size,
            max_tokens=max_tokens,
            normalize=normalize,
            precision=precision,
            show_progress=False,
        )
        parts.append(np.asarray(emb, dtype=np.float32))
        bar.update(len(parts[-1]) + (skipped if lo == 0 else 0))
    embeddings = np.concatenate(parts).astype(manifest.dtype)
    seconds = time.perf_counter() - t0
    if not np.isfinite(embeddings).all():
        raise ValueError(
            f"shard {len(manifest.shards)} (source rows from {start}): the encoder produced "
            f"NaN or infinite values (dtype {manifest.dtype}; float16 overflows above 65504)"
        )

    index = len(manifest.shards)
    emb_name, texts_name, offsets_name = shard_names(index)
    emb_bytes = npy_bytes(embeddings)
    lines, offsets = texts_jsonl(ids, texts)
    atomic_write_bytes(folder / emb_name, emb_bytes)
    atomic_write_bytes(folder / texts_name, lines)
    atomic_write_bytes(folder / offsets_name, npy_bytes(offsets))
    manifest.shards.append(
        ShardInfo(
            index=index,
            start=start,
            rows=len(ids),
            embeddings=emb_name,
            texts=texts_name,
            offsets=offsets_name,
            sha256=hashlib.sha256(emb_bytes).hexdigest(),
            texts_sha256=hashlib.sha256(lines).hexdigest(),
            skipped=skipped,
        )
    )
    manifest.count += len(ids)
    manifest.skipped += skipped
    manifest.save(folder)
    with (folder / ENCODE_LOG_NAME).open("a", encoding="utf-8") as log:
        log.write(
            json.dumps(
                {
                    "shard": index,
                    "rows": len(ids),
                    "seconds": round(seconds, 3),
                    "sentences_per_s": round(len(ids) / max(seconds, 1e-9), 1),
                }
            )
            + "\n"
        )
