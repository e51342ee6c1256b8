"""The manifest of an embedding index folder: what was encoded, how, and where it lies.

An index folder written by :func:`textcl.search.encode_corpus` holds::

    manifest.json                 this manifest (written atomically after every shard)
    shard-00000.npy               (rows, dim) embeddings, float32 or float16
    shard-00000.jsonl             one {"id": ..., "text": ...} line per embedding row
    shard-00000.offsets.npy       int64 byte offset of each line of the .jsonl (random access)
    encode_log.jsonl              one JSON line per written shard (rows, seconds, sentences/s)
    faiss-<kind>.index            optional FAISS indexes (``textcl index build``)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
DTYPES: tuple[str, ...] = ("float32", "float16")
PROBE_SENTENCES: tuple[str, ...] = (
    "A man is playing a guitar.",
    "The stock market fell sharply on Monday.",
    "Scientists discovered a new species of frog in the rainforest.",
)
"""Encoded into the manifest as a fingerprint of the model (see :attr:`Manifest.probe`)."""


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte pieces (memory bounded)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder + ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class ShardInfo:
    """One shard: ``rows`` embeddings for source records ``start .. start + rows - 1``."""

    index: int
    start: int
    rows: int
    embeddings: str
    texts: str
    offsets: str
    sha256: str
    texts_sha256: str
    skipped: int = 0
    """Source rows skipped inside this shard's run (blank / whitespace-only texts)."""

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ShardInfo:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: a shard entry must be an object, got {data!r:.80}")
        try:
            return cls(**data)
        except TypeError as e:
            raise ValueError(f"{where}: bad shard entry ({e})") from None


@dataclass
class Manifest:
    """Everything needed to check, resume and search an index folder."""

    model: str
    encoder: dict[str, Any]
    dimension: int
    dtype: str
    shard_size: int
    source: dict[str, Any]
    probe: list[list[float]]
    """fp32 embeddings of :data:`PROBE_SENTENCES` by the index's model: a content
    fingerprint of the model, compared when a different ``--model`` encodes queries."""
    count: int = 0
    skipped: int = 0
    shards: list[ShardInfo] = field(default_factory=list)
    complete: bool = False
    faiss: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: int = FORMAT_VERSION
    textcl_version: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def normalized(self) -> bool:
        return bool(self.encoder.get("normalize", False))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    def save(self, folder: Path) -> None:
        atomic_write_bytes(folder / MANIFEST_NAME, self.to_json().encode("utf-8"))

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Manifest:
        """Read and validate ``folder/manifest.json``; ``ValueError`` names what is wrong."""
        path = Path(folder) / MANIFEST_NAME
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: no such index folder")
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing; is {folder} an index folder written by `textcl encode`?"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: corrupt manifest, not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: corrupt manifest, expected a JSON object")
        fmt = data.get("format")
        if fmt != FORMAT_VERSION:
            raise ValueError(
                f"{path}: manifest format {fmt!r} is not supported (this textcl reads "
                f"format {FORMAT_VERSION})"
            )
        required = ("model", "encoder", "dimension", "dtype", "shard_size", "source", "probe")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"{path}: corrupt manifest, missing field(s) {missing}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: corrupt manifest, unknown field(s) {sorted(unknown)}")
        shards = [
            ShardInfo.from_dict(s, f"{path} shards[{i}]")
            for i, s in enumerate(data.pop("shards", []) or [])
        ]
        try:
            manifest = cls(**data, shards=shards)
        except TypeError as e:
            raise ValueError(f"{path}: corrupt manifest ({e})") from None
        if not isinstance(manifest.dimension, int) or manifest.dimension < 1:
            raise ValueError(f"{path}: corrupt manifest, bad dimension {manifest.dimension!r}")
        total = sum(s.rows for s in shards)
        if total != manifest.count:
            raise ValueError(
                f"{path}: corrupt manifest, count {manifest.count} != sum of shard rows {total}"
            )
        return manifest
