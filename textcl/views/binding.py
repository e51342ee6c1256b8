"""Bind views to an encoder: give them what only the model knows (hidden size, pad id)."""

from __future__ import annotations

from typing import Any

from textcl.views.base import Compose, View


def bind_view(view: View, encoder: Any) -> View:
    """Call ``bind(encoder)`` on ``view`` and, for a :class:`Compose`, on every part.

    Views that need model facts define ``bind``: feature cutoff takes the hidden size, word
    repetition the pad id and the position limit. Others are left alone. Returns ``view``.
    """
    parts = view.views if isinstance(view, Compose) else [view]
    for part in parts:
        if isinstance(part, Compose):
            bind_view(part, encoder)
            continue
        bind = getattr(part, "bind", None)
        if callable(bind):
            bind(encoder)
    return view
