"""textcl: contrastive learning of sentence embeddings (SimCSE, ConSERT and successors)."""

from __future__ import annotations

__version__ = "0.1.0.dev0"

from textcl.encoder import EncoderConfig, SentenceEncoder, TokenBatch
from textcl.pooling import HEAD_MODES, POOLING_STRATEGIES, Pooling, ProjectionHead

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
