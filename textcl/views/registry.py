"""Build views from short names, as the CLI and configs spell them.

Grammar: ``name[:rate]`` joined by ``+`` for a composition, e.g. ``dropout``, ``mask:0.15``,
``shuffle+feature_cutoff:0.2``. View modules register their classes with
:func:`register_view`; a view class takes its rate (if any) as the ``rate`` keyword and a
``seed`` keyword.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

from textcl.views.base import Compose, Dropout, View, ViewContext

T = TypeVar("T")

VIEW_REGISTRY: dict[str, Callable[..., View]] = {}
"""name -> factory(rate=..., seed=...) (``rate`` passed only when the spec gives one)."""

_TAKES_SEED: set[str] = set()


def register_view(name: str, *, takes_seed: bool = True) -> Callable[[T], T]:
    """Class decorator: make a view constructible as ``name`` in view specs."""

    def decorate(cls: T) -> T:
        if name in VIEW_REGISTRY:
            raise ValueError(f"view name {name!r} is registered twice")
        VIEW_REGISTRY[name] = cls  # type: ignore[assignment]
        if takes_seed:
            _TAKES_SEED.add(name)
        return cls

    return decorate


register_view("dropout", takes_seed=False)(Dropout)


def available_views() -> list[str]:
    return sorted(VIEW_REGISTRY)


def _parameters(factory: Callable[..., View]) -> list[str]:
    """The keyword parameters ``factory`` accepts (its constructor's, for a class)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
    ]


def build_view(spec: str, seed: int | None = None, context: ViewContext | None = None) -> View:
    """Build a view from a spec like ``"shuffle+feature_cutoff:0.2"``.

    Each part of a composition gets its own seed (``seed``, ``seed + 1``, ...) so that
    identical parts do not draw identical noise. ``context`` (e.g.
    ``ViewContext.from_encoder(encoder)``) gives each view the encoder facts its constructor
    accepts (hidden size, pad and mask token ids, position limit).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"view spec must be a non-empty string, got {spec!r}")
    parts = [p.strip() for p in spec.split("+")]
    views: list[View] = []
    for i, part in enumerate(parts):
        name, _, rate_text = part.partition(":")
        name = name.strip()
        if name not in VIEW_REGISTRY:
            raise ValueError(
                f"unknown view {name!r} in {spec!r}: expected one of {', '.join(available_views())}"
            )
        kwargs: dict[str, Any] = {}
        if rate_text:
            try:
                kwargs["rate"] = float(rate_text)
            except ValueError:
                raise ValueError(
                    f"view {name!r} in {spec!r}: rate {rate_text!r} is not a number"
                ) from None
        factory = VIEW_REGISTRY[name]
        accepted = _parameters(factory)
        if rate_text and "rate" not in accepted:
            shown = ", ".join(accepted) if accepted else "none"
            raise ValueError(
                f"view {name!r} in {spec!r} takes no rate (':{rate_text}'); write {name!r} "
                f"alone (its parameters: {shown})"
            )
        if name in _TAKES_SEED:
            kwargs["seed"] = None if seed is None else seed + i
        if context is not None:
            kwargs.update(
                {k: v for k, v in asdict(context).items() if k in accepted and v is not None}
            )
        try:
            views.append(factory(**kwargs))
        except TypeError as e:
            raise ValueError(
                f"view {name!r} in {spec!r}: {e} (its parameters: {', '.join(accepted)})"
            ) from None
    return views[0] if len(views) == 1 else Compose(views)
