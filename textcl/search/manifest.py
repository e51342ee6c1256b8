"""The manifest of an embedding index folder: what was encoded, how, and where it lies.

An index folder written by :func:`textcl.search.encode_corpus` holds::

    manifest.json                 this manifest (written atomically after every shard)
    shard-00000.npy               (rows, dim) embeddings: float32, float16, int8, uint8, or
                                  (rows, dim / 8) packed bits for binary / ubinary
    shard-00000.jsonl             one {"id": ..., "text": ...} line per embedding row
    shard-00000.offsets.npy       int64 byte offset of each line of the .jsonl (random access)
    shard-00000.rescore.npy       rescoring rows of a quantized index (float32 or int8;
                                  :mod:`textcl.search.quantize`)
    encode_log.jsonl              one JSON line per written shard (rows, seconds, sentences/s)
    faiss-<kind>.index            optional FAISS indexes (``textcl index build``)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from textcl.errors import CorruptFileError, InputError
from textcl.io import atomic_write_text, path_overlap, read_json_object
from textcl.search.quantize import QUANTIZED_DTYPES, check_quantization

MANIFEST_NAME = "manifest.json"
SET_ASIDE_NAME = ".replaced"
"""Subfolder of an index folder holding the old index while ``textcl encode --overwrite``
replaces it (see :mod:`textcl.search.encode`)."""
FORMAT_VERSION = 1
DTYPES: tuple[str, ...] = ("float32", "float16", *QUANTIZED_DTYPES)
PROBE_SENTENCES: tuple[str, ...] = (
    "A man is playing a guitar.",
    "The stock market fell sharply on Monday.",
    "Scientists discovered a new species of frog in the rainforest.",
)
"""Encoded into the manifest as a fingerprint of the model (see :attr:`Manifest.probe`)."""


def inside(folder: Path, name: Any, where: str) -> Path:
    """``folder / name`` for a file name read from a manifest, refusing anything that could
    lead outside ``folder`` (absolute paths, ``..``, backslashes, a symlink pointing out)
    with :class:`~textcl.errors.CorruptFileError`."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        raise CorruptFileError(f"{where}: bad file name {name!r} (expected a file name)")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name or name.startswith("~"):
        raise CorruptFileError(
            f"{where}: file name {name!r} points outside the index folder; a manifest may "
            "only name files inside its folder"
        )
    path = folder / name
    root = folder.resolve()
    if not path.resolve().is_relative_to(root):
        raise CorruptFileError(
            f"{where}: {name!r} is a link to {path.resolve()}, outside the index folder {root}"
        )
    return path


def check_apart(
    folder: Path, flag: str, others: list[tuple[str, Path]], noun: str = "the index folder"
) -> None:
    """Raise :class:`~textcl.errors.InputError` when the output ``folder`` (given as
    ``flag``; ``noun``: what it is) equals, is inside or holds one of ``others`` (``(what,
    path)``: the model folder, the input): an output written there would mix with, or
    overwrite, what it is made from."""
    for what, path in others:
        overlap = path_overlap(folder, path)
        if overlap is None:
            continue
        relation = {"is": "is", "inside": "is inside", "holds": "holds"}[overlap]
        raise InputError(
            f"{flag} {folder}: {noun} {relation} the {what} {path}; an output must be "
            f"written apart from its model and input: choose another {flag.split('/')[-1]}"
        )


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
    offsets_sha256: str = ""
    bytes: int = -1
    texts_bytes: int = -1
    offsets_bytes: int = -1
    """File sizes, checked on every open (``-1``: not recorded by an older textcl)."""
    rescore: str = ""
    rescore_sha256: str = ""
    rescore_bytes: int = -1
    """The rescoring rows of a quantized index (``""``: none)."""

    def files(self) -> tuple[tuple[str, str, int, str], ...]:
        """``(role, name, size, sha256)`` of the shard's three files (four with rescoring
        rows)."""
        files: tuple[tuple[str, str, int, str], ...] = (
            ("embeddings", self.embeddings, self.bytes, self.sha256),
            ("texts", self.texts, self.texts_bytes, self.texts_sha256),
            ("offsets", self.offsets, self.offsets_bytes, self.offsets_sha256),
        )
        if self.rescore:
            files += (("rescore", self.rescore, self.rescore_bytes, self.rescore_sha256),)
        return files

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ShardInfo:
        if not isinstance(data, dict):
            raise CorruptFileError(f"{where}: a shard entry must be an object, got {data!r:.80}")
        try:
            shard = cls(**data)
        except TypeError as e:
            raise CorruptFileError(f"{where}: bad shard entry ({e})") from None
        for key in (
            "index",
            "start",
            "rows",
            "skipped",
            "bytes",
            "texts_bytes",
            "offsets_bytes",
            "rescore_bytes",
        ):
            value = getattr(shard, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise CorruptFileError(f"{where}: {key} must be an integer, got {value!r:.40}")
        if shard.rows < 1 or shard.start < 0 or shard.skipped < 0:
            raise CorruptFileError(f"{where}: bad rows/start/skipped {shard.rows}/{shard.start}")
        for key in ("sha256", "texts_sha256", "offsets_sha256", "rescore", "rescore_sha256"):
            if not isinstance(getattr(shard, key), str):
                raise CorruptFileError(f"{where}: {key} must be a string")
        return shard


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
    model_hash: str = ""
    """:func:`textcl.search.model.model_weights_hash` of the model (weights + configs),
    checked on resume ("" in indexes written before it was recorded)."""
    count: int = 0
    skipped: int = 0
    shards: list[ShardInfo] = field(default_factory=list)
    complete: bool = False
    faiss: dict[str, dict[str, Any]] = field(default_factory=dict)
    format: int = FORMAT_VERSION
    textcl_version: str = ""
    precision: str = ""
    """The inference precision the embeddings were computed at (fp32, bf16, fp16, qint8; ""
    in indexes written before it was recorded: fp32)."""
    quantization: dict[str, Any] = field(default_factory=dict)
    """int8 ranges, calibration and rescoring dtype of a quantized index ({} for float
    indexes): see :mod:`textcl.search.quantize`."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def normalized(self) -> bool:
        return bool(self.encoder.get("normalize", False))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    def save(self, folder: Path) -> None:
        atomic_write_text(folder / MANIFEST_NAME, self.to_json())

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Manifest:
        """Read and validate ``folder/manifest.json``: a damaged or crafted one (bad JSON,
        fields, counts, or file names leading outside ``folder``) raises
        :class:`~textcl.errors.CorruptFileError` naming what is wrong."""
        path = Path(folder) / MANIFEST_NAME
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: no such index folder")
        if not path.is_file() and (Path(folder) / SET_ASIDE_NAME).is_dir():
            raise InputError(
                f"{path}: missing: an interrupted `textcl encode --overwrite` set the old index "
                f"aside in {Path(folder) / SET_ASIDE_NAME}; rerun `textcl encode` on {folder} "
                "to restore it (or to finish the new one with --overwrite)"
            )
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing; is {folder} an index folder written by `textcl encode`?"
            )
        inside(Path(folder), MANIFEST_NAME, str(path))  # a link leading out is refused
        data = read_json_object(path, "index manifest")
        fmt = data.get("format")
        if fmt != FORMAT_VERSION:
            raise CorruptFileError(
                f"{path}: manifest format {fmt!r} is not supported (this textcl reads "
                f"format {FORMAT_VERSION})"
            )
        required = ("model", "encoder", "dimension", "dtype", "shard_size", "source", "probe")
        missing = [k for k in required if k not in data]
        if missing:
            raise CorruptFileError(f"{path}: corrupt manifest, missing field(s) {missing}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise CorruptFileError(f"{path}: corrupt manifest, unknown field(s) {sorted(unknown)}")
        raw_shards = data.pop("shards", []) or []
        if not isinstance(raw_shards, list):
            raise CorruptFileError(f"{path}: corrupt manifest, shards must be a list")
        shards = [ShardInfo.from_dict(s, f"{path} shards[{i}]") for i, s in enumerate(raw_shards)]
        try:
            manifest = cls(**data, shards=shards)
        except (TypeError, ValueError) as e:
            raise CorruptFileError(f"{path}: corrupt manifest ({e})") from None
        if not isinstance(manifest.probe, list) or not all(
            isinstance(row, list) and all(isinstance(x, int | float) for x in row)
            for row in manifest.probe
        ):
            raise CorruptFileError(f"{path}: corrupt manifest, probe must be lists of numbers")
        if (
            isinstance(manifest.dimension, bool)
            or not isinstance(manifest.dimension, int)
            or manifest.dimension < 1
        ):
            raise CorruptFileError(
                f"{path}: corrupt manifest, bad dimension {manifest.dimension!r}"
            )
        total = sum(s.rows for s in shards)
        if total != manifest.count:
            raise CorruptFileError(
                f"{path}: corrupt manifest, count {manifest.count} != sum of shard rows {total}"
            )
        for key in ("count", "skipped", "shard_size"):
            value = getattr(manifest, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CorruptFileError(f"{path}: corrupt manifest, bad {key} {value!r:.40}")
        if manifest.precision not in ("", "fp32", "bf16", "fp16", "qint8"):
            raise CorruptFileError(
                f"{path}: corrupt manifest, bad precision {manifest.precision!r:.40}"
            )
        if not isinstance(manifest.source, dict) or not isinstance(manifest.encoder, dict):
            raise CorruptFileError(f"{path}: corrupt manifest, source/encoder must be objects")
        folder_path = Path(folder)
        check_quantization(manifest.quantization, manifest.dtype, manifest.dimension, str(path))
        rescored = manifest.quantization.get("rescore_dtype", "none") != "none"
        for i, shard in enumerate(shards):
            if shard.index != i:
                raise CorruptFileError(f"{path}: shards[{i}] has index {shard.index}")
            if bool(shard.rescore) != rescored:
                raise CorruptFileError(
                    f"{path}: shards[{i}] {'lacks' if rescored else 'has'} a rescoring file "
                    f"(quantization rescore_dtype {manifest.quantization.get('rescore_dtype')!r})"
                )
            for _, name, _, _ in shard.files():
                inside(folder_path, name, f"{path} shards[{i}]")
        if not isinstance(manifest.faiss, dict):
            raise CorruptFileError(f"{path}: corrupt manifest, faiss must be an object")
        for kind, entry in manifest.faiss.items():
            if not isinstance(entry, dict):
                raise CorruptFileError(f"{path}: faiss[{kind!r}] must be an object")
            inside(folder_path, entry.get("file"), f"{path} faiss[{kind!r}]")
        return manifest
