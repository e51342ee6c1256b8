"""textcl: contrastive learning of sentence embeddings (SimCSE, ConSERT and successors)."""

from __future__ import annotations

from textcl.encoder import SentenceEncoder
from textcl.encoder_config import EncoderConfig
from textcl.pooling import HEAD_MODES, POOLING_STRATEGIES, Pooling, ProjectionHead
from textcl.tokens import TokenBatch
from textcl.version import __version__

__all__ = [
    "HEAD_MODES",
    "POOLING_STRATEGIES",
    "EncoderConfig",
    "Pooling",
    "ProjectionHead",
    "SentenceEncoder",
    "TokenBatch",
    "__version__",
]
