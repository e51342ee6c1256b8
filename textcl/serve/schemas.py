"""Request bodies of ``textcl serve`` and its errors, in the shapes clients expect.

* ``POST /v1/embeddings``: OpenAI's request (:class:`OpenAIEmbeddingRequest`) and error body
  ``{"error": {"message", "type", "param", "code"}}``;
* ``POST /embed``: text-embeddings-inference's request (:class:`TEIEmbedRequest`) and error
  body ``{"error", "error_type"}`` (``Validation``, ``Overloaded``, ``Empty``, ...);
* ``POST /search``: :class:`SearchRequest`; errors in TEI's shape like every route outside
  ``/v1``.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ApiError(Exception):
    """An error answered as JSON: ``status``, a message, a TEI ``error_type`` (also OpenAI's
    ``type`` unless ``openai_type`` is given), the OpenAI ``param`` and ``code``."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str = "Validation",
        *,
        param: str | None = None,
        code: str | None = None,
        openai_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.openai_type = openai_type or OPENAI_TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def openai_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.openai_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def tei_body(self) -> dict[str, Any]:
        return {"error": self.message, "error_type": self.error_type}


OPENAI_TYPES = {
    401: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}
"""OpenAI error ``type`` by HTTP status."""


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI's ``POST /v1/embeddings`` body (``user`` and unknown fields are ignored)."""

    model_config = ConfigDict(extra="ignore")
    input: str | list[Any]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class TEIEmbedRequest(BaseModel):
    """text-embeddings-inference's ``POST /embed`` body."""

    model_config = ConfigDict(extra="forbid")
    inputs: str | list[Any]
    normalize: bool = True
    truncate: bool | None = None
    truncation_direction: Literal["Right", "Left", "right", "left"] = "Right"
    prompt_name: str | None = None
    dimensions: int | None = Field(default=None, ge=1)


class SearchRequest(BaseModel):
    """``POST /search``: one query or a list, ``top_k`` hits each."""

    model_config = ConfigDict(extra="forbid")
    query: str | list[str]
    top_k: int = Field(default=10, ge=1)
    prompt_name: str | None = None


def parse_body(model: type[BaseModel], body: Any, *, status: int = 422) -> Any:
    """``body`` validated as ``model``, else :class:`ApiError` (422) naming the field."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise ApiError(
            status,
            f"invalid request: {where}: {first.get('msg', 'invalid')}",
            "Validation",
            param=where,
            code="invalid_request",
        ) from None


def text_list(value: str | list[Any], field: str) -> list[str]:
    """A string or a list of strings as a list; token arrays (lists of integers) and other
    items are refused with a 422 naming ``field`` and the item."""
    if isinstance(value, str):
        return [value]
    out: list[str] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            out.append(item)
            continue
        if isinstance(item, int) or (
            isinstance(item, list) and all(isinstance(x, int) for x in item)
        ):
            raise ApiError(
                422,
                f"{field}[{i}]: token arrays are not supported by textcl serve; send the text",
                "Validation",
                param=field,
                code="unsupported_input",
            )
        raise ApiError(
            422,
            f"{field}[{i}]: expected a string, got {type(item).__name__}",
            "Validation",
            param=field,
            code="invalid_input",
        )
    return out


def finish_vectors(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Matryoshka truncation to ``dimensions`` (None: as given), then L2 normalisation."""
    out = vectors if dimensions is None else vectors[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(out, dtype=np.float32)


def encode_base64(vector: np.ndarray) -> str:
    """OpenAI's ``encoding_format="base64"``: the little-endian float32 bytes, base64."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
