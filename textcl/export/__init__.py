"""Exported models: ONNX / OpenVINO folders, fp32 or static int8 (``textcl export``).

* :mod:`textcl.export.runtime`: the ``textcl_export.json`` marker and
  :class:`~textcl.export.runtime.ExportedTransformer`, the transformer of an exported
  folder (what :meth:`SentenceEncoder.load` uses for one);
* :mod:`textcl.export.onnx`: the ONNX export, SmoothQuant and ONNX Runtime static int8;
* :mod:`textcl.export.exporter`: :func:`~textcl.export.exporter.export_model`, the whole
  folder (imported on its own: it sits above the encoder).
"""

from __future__ import annotations

from textcl.export.runtime import (
    EXPORT_CONFIG_NAME,
    FORMATS,
    ExportedTransformer,
    ExportInfo,
    MissingExtraError,
    is_exported_folder,
    load_exported,
)

__all__ = [
    "EXPORT_CONFIG_NAME",
    "FORMATS",
    "ExportInfo",
    "ExportedTransformer",
    "MissingExtraError",
    "is_exported_folder",
    "load_exported",
]
