"""View generators (see :mod:`textcl.views.base` for the contract every view keeps).

Importing this package registers every built-in view with :mod:`textcl.views.registry`.
"""

from __future__ import annotations

from textcl.views.base import Compose, Dropout, RandomView, View, check_rate, editable_mask
from textcl.views.registry import VIEW_REGISTRY, available_views, build_view, register_view

# View modules (each registers its views on import); one line per module.

__all__ = [
    "VIEW_REGISTRY",
    "Compose",
    "Dropout",
    "RandomView",
    "View",
    "available_views",
    "build_view",
    "check_rate",
    "editable_mask",
    "register_view",
]
