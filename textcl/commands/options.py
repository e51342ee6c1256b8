"""Options dataclasses from parsed flags: one helper for the commands whose flags are the
fields of an options object (``textcl encode`` -> :class:`~textcl.search.encode.EncodeOptions`,
``textcl mine`` -> :class:`~textcl.search.mine.MineOptions`)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def options_from_args(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """``cls`` (a dataclass) with each field taken from the flag of the same name
    (``--max-tokens`` -> ``max_tokens``) or from ``given`` (the fields whose flag differs in
    name or sense: ``show_progress=not args.no_progress``). ``TypeError`` for a field with
    neither (a new field must be wired on purpose) and for ``given`` naming no field (a typo
    would be lost)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(given) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}")
    unwired = sorted(n for n in names - set(given) if not hasattr(args, n))
    if unwired:
        raise TypeError(f"{cls.__name__} field(s) {unwired}: no flag of that name and not given")
    values = {n: getattr(args, n) for n in names - set(given)}
    return cls(**values, **given)
