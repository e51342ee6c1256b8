"""``textcl index quantize``: convert a float index folder into a new quantized one.

The source folder is only read. The output is a new folder holding the same rows: per
shard, the quantized embeddings and rescoring rows (:func:`~textcl.search.quantize.shard_arrays`)
written atomically, and the texts and offsets files hard-linked from the source (the source
never rewrites a file in place: ``textcl encode`` replaces files by rename, so a link keeps
the old content), or copied atomically across filesystems, each checked against the source
manifest's sha256 first.

int8 ranges are calibrated on the first ``calibration_size`` rows of the source (its first
non-blank texts: the same sample ``textcl encode --dtype int8`` calibrates on, so both give
the same ranges). The manifest is the source's with the new dtype, ``quantization`` (which
records the source folder and its manifest's sha256) and shards, saved after every shard:
a killed conversion resumes at the next shard on a rerun with the same arguments; an output
folder holding anything else (another index, other files) is refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from textcl.errors import FolderConflictError, InputError
from textcl.io import FolderLock, atomic_write_bytes, remove_stale_tmp, sha256_file
from textcl.search.encode import npy_bytes, rescore_name, shard_names
from textcl.search.index import EmbeddingIndex, open_index
from textcl.search.manifest import MANIFEST_NAME, Manifest, check_apart, inside
from textcl.search.quantize import (
    DEFAULT_CALIBRATION_SIZE,
    QUANTIZED_DTYPES,
    calibration_ranges,
    check_dtype_options,
    needs_ranges,
    shard_arrays,
)

logger = logging.getLogger(__name__)

_ALLOWED = {MANIFEST_NAME, ".textcl.lock"}


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (copied when linking fails), placed atomically."""
    tmp = dst.with_name(f".{dst.name}.tmp-link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        atomic_write_bytes(dst, src.read_bytes())
        return
    os.replace(tmp, dst)


def _check_output(folder: Path, expected: dict[str, Any]) -> Manifest | None:
    """The unfinished (or finished) conversion ``folder`` holds, or None for an empty
    folder; FolderConflictError for anything else."""
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.exists():
        others = [
            p.name
            for p in folder.iterdir()
            if p.name not in _ALLOWED
            and not (p.name.startswith(".") and ".tmp" in p.name)
            and not p.name.startswith("shard-")
        ]
        if others:
            raise FolderConflictError(
                f"{folder}: the output folder is not empty ({', '.join(sorted(others)[:5])}); "
                "choose a new or empty --output"
            )
        return None
    old = Manifest.load(folder)
    q = old.quantization
    mine = {k: q.get(k) for k in expected}
    if mine != expected:
        raise FolderConflictError(
            f"{folder} holds another index ({old.dtype}, quantization {mine}); this conversion "
            f"is {expected}: choose another --output"
        )
    return old


def quantize_index(
    source: str | os.PathLike[str] | EmbeddingIndex,
    output: str | os.PathLike[str],
    dtype: str,
    *,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    rescore_dtype: str | None = None,
) -> Manifest:
    """Write a ``dtype`` (int8 / uint8 / binary / ubinary) copy of the float index
    ``source`` into the new folder ``output`` (see the module doc); returns its manifest."""
    src = open_index(source)
    m = src.manifest
    if m.dtype in QUANTIZED_DTYPES:
        raise InputError(
            f"{src.folder}: the index is already {m.dtype}; quantize a float32 / float16 index"
        )
    if dtype not in QUANTIZED_DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(QUANTIZED_DTYPES)}, got {dtype!r}")
    if isinstance(calibration_size, bool) or not isinstance(calibration_size, int):
        raise InputError(f"--calibration-size must be an integer, got {calibration_size!r}")
    if calibration_size < 1:
        raise InputError(f"--calibration-size must be >= 1, got {calibration_size}")
    rescore = check_dtype_options(dtype, rescore_dtype, m.dimension)
    folder = Path(output).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: the output exists and is a file; choose another --output")
    others = [("source index", src.folder)]
    if Path(m.model).is_dir():
        others.append(("model folder", Path(m.model)))
    check_apart(folder, "--output", others)
    source_sha = sha256_file(src.folder / MANIFEST_NAME)
    expected = {
        "rescore_dtype": rescore,
        "source_manifest_sha256": source_sha,
        "calibration_size": calibration_size if needs_ranges(dtype, rescore) else None,
    }
    folder.mkdir(parents=True, exist_ok=True)
    with FolderLock(folder, "index"):
        remove_stale_tmp(folder, recursive=False)
        old = _check_output(folder, expected)
        if old is not None and old.dtype != dtype:
            raise FolderConflictError(
                f"{folder} holds a {old.dtype} conversion; this one is {dtype}: choose another "
                "--output"
            )
        if old is not None and old.complete:
            logger.info("%s: already complete; nothing to do", folder)
            return old
        out = (
            old
            if old is not None
            else _new_manifest(src, dtype, rescore, expected, calibration_size)
        )
        for i in range(len(out.shards), len(m.shards)):
            _convert_shard(src, out, folder, i)
        out.complete = True
        out.save(folder)
        return out


def _new_manifest(
    src: EmbeddingIndex, dtype: str, rescore: str, expected: dict[str, Any], size: int
) -> Manifest:
    m = src.manifest
    quantization: dict[str, Any] = {
        "ranges": None,
        "calibration_rows": 0,
        "calibration": "",
        "rescore_dtype": rescore,
        "source_index": str(src.folder.resolve()),
        "source_manifest_sha256": expected["source_manifest_sha256"],
        "calibration_size": expected["calibration_size"],
    }
    if needs_ranges(dtype, rescore):
        sample = src.vectors(0, size)
        quantization.update(
            ranges=calibration_ranges(sample).tolist(),
            calibration_rows=len(sample),
            calibration=f"first {len(sample)} rows of {src.folder} (--calibration-size {size})",
        )
    return replace(
        m,
        dtype=dtype,
        quantization=quantization,
        shards=[],
        count=0,
        skipped=0,
        complete=False,
        faiss={},
        encoder=dict(m.encoder),
        source=dict(m.source),
    )


def _convert_shard(src: EmbeddingIndex, out: Manifest, folder: Path, i: int) -> None:
    """Quantize shard ``i`` of ``src`` into ``folder`` and list it in ``out``."""
    shard = src.manifest.shards[i]
    src._load_offsets(i)  # checks the texts and offsets files against their sha256
    floats = np.asarray(src.shards[i], dtype=np.float32)  # sha256-checked on first use
    stored, rescore_rows = shard_arrays(floats, out.dtype, out.quantization)
    emb_name, texts_name, offsets_name = shard_names(i)
    where = str(src.folder / MANIFEST_NAME)
    _link_or_copy(inside(src.folder, shard.texts, where), folder / texts_name)
    _link_or_copy(inside(src.folder, shard.offsets, where), folder / offsets_name)
    emb_bytes = npy_bytes(stored)
    atomic_write_bytes(folder / emb_name, emb_bytes)
    info = replace(
        shard,
        embeddings=emb_name,
        texts=texts_name,
        offsets=offsets_name,
        sha256=hashlib.sha256(emb_bytes).hexdigest(),
        bytes=len(emb_bytes),
    )
    if rescore_rows is not None:
        data = npy_bytes(rescore_rows)
        atomic_write_bytes(folder / rescore_name(i), data)
        info = replace(
            info,
            rescore=rescore_name(i),
            rescore_sha256=hashlib.sha256(data).hexdigest(),
            rescore_bytes=len(data),
        )
    out.shards.append(info)
    out.count += shard.rows
    out.skipped += shard.skipped
    out.save(folder)
