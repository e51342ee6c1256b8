"""One answer to "is this a local file, a local folder or a Hugging Face hub id?".

Training text (:mod:`textcl.data.text`), pairs (:mod:`textcl.data.pairs`), search corpora
(:mod:`textcl.search.sources`) and models (:meth:`textcl.SentenceEncoder.from_pretrained`)
all take a *spec* that may be any of those (and read it with :mod:`textcl.data.readers`); :func:`resolve_source` decides once, with one
set of rules and one error type (:class:`SourceError`):

1. The spec must be a non-blank string or ``os.PathLike`` (``~`` is expanded).
2. An existing **file** is ``kind="file"`` (for ``role="model"``: an error, a model is a
   folder).
3. An existing **folder** is ``kind="dataset"`` when ``datasets``' ``save_to_disk`` wrote it
   (it holds ``dataset_info.json``, ``dataset_dict.json`` or ``state.json``), else
   ``kind="folder"`` (a folder of text files, or a model folder: the caller checks what it
   holds).
4. A spec that does not exist locally but **looks like a path** is an error, never a hub
   call: it starts with ``/``, ``.``, ``~`` or ``\\``, contains a backslash or more than one
   ``/``, is a Windows drive path, or ends with a data-file suffix (``.txt``, ``.jsonl``,
   ``.csv``, ``.parquet``, ``.gz``, ... see :data:`PATH_SUFFIXES`).
5. Anything else must be a valid hub id, ``name`` or ``owner/name`` (letters, digits, ``-``,
   ``_``, ``.``; no leading/trailing ``-``/``.``, no ``--``/``..``) and is ``kind="hub"``;
   the caller loads it (that is the only network access) and turns a failure into
   :meth:`Source.hub_error`.

Every error names the spec and what was tried, e.g. ``data/x.txt: no such file or folder
(tried: local path /abs/data/x.txt, not found; not tried as a hub id: it looks like a path)``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from textcl.errors import InputError

SourceKind = Literal["file", "folder", "dataset", "hub"]
Role = Literal["data", "model"]

SAVED_DATASET_MARKERS: tuple[str, ...] = ("dataset_info.json", "dataset_dict.json", "state.json")
"""Files by which a folder written by ``datasets``' ``save_to_disk`` is recognised."""

PATH_SUFFIXES: tuple[str, ...] = (
    ".txt",
    ".text",
    ".jsonl",
    ".ndjson",
    ".json",
    ".csv",
    ".tsv",
    ".tab",
    ".parquet",
    ".gz",
    ".arrow",
)
"""A missing spec ending with one of these is a missing file, not a hub id."""

_HUB_ID = re.compile(
    r"^(?:[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?/)?[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?$"
)


class SourceError(InputError):
    """A data or model source that is neither an existing local path nor a usable hub id
    (exit 2). The message names the spec and what was tried."""


@dataclass(frozen=True)
class Source:
    """What a spec resolved to: ``kind`` and either a local ``path`` or a ``hub_id``."""

    spec: str
    kind: SourceKind
    role: Role
    path: Path | None = None
    hub_id: str | None = None

    @property
    def is_local(self) -> bool:
        return self.kind != "hub"

    def hub_error(self, exc: BaseException) -> SourceError:
        """The error for a hub id whose download failed (``raise src.hub_error(e) from e``)."""
        what = "dataset" if self.role == "data" else "model"
        return SourceError(
            f"{self.spec}: no such file or folder here, and the Hugging Face hub download "
            f"failed (tried: local path {Path(self.spec).expanduser().absolute()}, not found; "
            f"hub {what} id {self.spec!r}: {type(exc).__name__}: {exc})"
        )


def looks_like_path(spec: str) -> bool:
    """Rule 4 of the module docstring: ``spec`` can only mean a local path."""
    s = spec.strip()
    return (
        s.startswith(("/", ".", "~", "\\"))
        or "\\" in s
        or s.count("/") > 1
        or bool(re.match(r"^[A-Za-z]:[\\/]", s))
        or s.lower().endswith(PATH_SUFFIXES)
    )


def is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` was written by ``datasets``' ``save_to_disk``."""
    return any((folder / name).is_file() for name in SAVED_DATASET_MARKERS)


def resolve_source(spec: str | os.PathLike[str], *, role: Role = "data") -> Source:
    """Decide what ``spec`` is (see the module docstring for the rules).

    Args:
        spec: a path or a hub id.
        role: ``"data"`` (a file, a folder, a ``save_to_disk`` folder or a hub dataset) or
            ``"model"`` (a folder or a hub model id; a file is an error).

    Raises:
        SourceError: blank or not a string/path; a file given as a model; a missing path;
            a missing spec that is not a valid hub id.
    """
    if not isinstance(spec, str | os.PathLike):
        raise SourceError(
            f"expected a path or a hub id (a string), got {type(spec).__name__}: {spec!r:.80}"
        )
    text = os.fspath(spec)
    if not isinstance(text, str) or not text.strip():
        raise SourceError(f"{text!r}: an empty path or hub id")
    path = Path(text).expanduser()
    noun = "file or folder" if role == "data" else "folder"
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as e:  # e.g. a name too long for the filesystem
        raise SourceError(f"{text}: not a usable path ({e.strerror or e})") from None
    if exists:
        if is_dir:
            kind: SourceKind = "dataset" if is_saved_dataset(path) else "folder"
            return Source(spec=text, kind=kind, role=role, path=path)
        if role == "model":
            raise SourceError(
                f"{path} is a file, not a model folder (a model is a folder written by "
                "save_pretrained / SentenceEncoder.save, or a hub id)"
            )
        return Source(spec=text, kind="file", role=role, path=path)
    tried = f"tried: local path {path.absolute()}, not found"
    if looks_like_path(text):
        raise SourceError(
            f"{text}: no such {noun} ({tried}; not tried as a hub id: it looks like a path)"
        )
    if not _HUB_ID.match(text):
        raise SourceError(
            f"{text}: no such {noun}, and not a hub id of the form name or owner/name ({tried})"
        )
    return Source(spec=text, kind="hub", role=role, hub_id=text)
