"""View generators (see :mod:`textcl.views.base` for the contract every view keeps).

Importing this package registers every built-in view with :mod:`textcl.views.registry`.
"""

from __future__ import annotations

from textcl.views.base import (
    Compose,
    Dropout,
    RandomView,
    View,
    ViewContext,
    check_rate,
    editable_mask,
    reseed_view,
)

# View modules (each registers its views on import); one line per module.
from textcl.views.cutoff import FeatureCutoff, SpanCutoff, TokenCutoff
from textcl.views.masking import TokenMask
from textcl.views.registry import VIEW_REGISTRY, available_views, build_view, register_view
from textcl.views.repetition import WordRepetition
from textcl.views.shuffle import TokenShuffle

__all__ = [
    "VIEW_REGISTRY",
    "Compose",
    "Dropout",
    "FeatureCutoff",
    "RandomView",
    "SpanCutoff",
    "TokenCutoff",
    "TokenMask",
    "TokenShuffle",
    "View",
    "ViewContext",
    "WordRepetition",
    "available_views",
    "build_view",
    "check_rate",
    "editable_mask",
    "register_view",
    "reseed_view",
]
