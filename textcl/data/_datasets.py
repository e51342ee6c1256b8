"""Loading Hugging Face ``datasets`` from disk or the hub (downloaded or streamed).

:mod:`textcl.data.readers` (the one reader of training text, pairs and search corpora)
calls these through this module, so tests replace the download here, once, without the
network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_saved_dataset(path: Path, split: str) -> Any:
    """A folder written by ``save_to_disk``: the Dataset, or ``split`` of a DatasetDict."""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{path}: no split {split!r} (splits: {sorted(loaded)})")
        return loaded[split]
    return loaded


def load_hub_dataset(name: str, split: str) -> Any:  # pragma: no cover - needs the network
    """Download ``split`` of a dataset from the Hugging Face hub."""
    import datasets

    return datasets.load_dataset(name, split=split)


def stream_hub_dataset(name: str, split: str) -> Any:  # pragma: no cover - needs the network
    """Stream ``split`` of a hub dataset (``datasets`` streaming: rows arrive as dicts while
    downloading, nothing else of the repository is fetched)."""
    import datasets

    return datasets.load_dataset(name, split=split, streaming=True)
