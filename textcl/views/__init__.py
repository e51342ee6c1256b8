"""View generators (see :mod:`textcl.views.base` for the contract every view keeps)."""

from __future__ import annotations

from textcl.views.base import Compose, Dropout, RandomView, View, check_rate, editable_mask

__all__ = ["Compose", "Dropout", "RandomView", "View", "check_rate", "editable_mask"]
