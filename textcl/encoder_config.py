"""EncoderConfig: the settings that turn token states into sentence vectors.

Plain data (no model): what ``textcl_config.json`` holds, what the sentence-transformers
format module reads and writes, and what the model card renders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textcl.pooling import check_head_mode, check_pooling_name
from textcl.prompt import DEFAULT_PROMPT_TEMPLATE, check_template

TEXTCL_CONFIG_NAME = "textcl_config.json"
HEAD_WEIGHTS_NAME = "textcl_head.safetensors"
CONFIG_FORMAT = 1
"""The ``format`` version of ``textcl_config.json`` this textcl writes and reads."""

_FIELD_TYPES: dict[str, tuple[str, tuple[type, ...], bool]] = {
    # field: (what it must be, JSON types allowed, null allowed)
    "pooling": ("a string", (str,), False),
    "head_mode": ("a string", (str,), False),
    "max_length": ("an integer", (int,), True),
    "normalize": ("true or false", (bool,), False),
    "truncate_dim": ("an integer", (int,), True),
    "prompts": ("an object of name: text", (dict,), False),
    "default_prompt_name": ("a string", (str,), True),
    "include_prompt": ("true or false", (bool,), False),
    "prompt_template": ("a string", (str,), True),
    "prompt_denoise": ("true or false", (bool,), False),
    "textcl_version": ("a string", (str,), False),
    "format": ("an integer", (int,), False),
    "dense_modules": ("a list of folder names", (list,), False),
}
"""The JSON type of every field of ``textcl_config.json`` (a bool is not an integer, a
string is not a bool, lists only where declared)."""


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a bool"
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def check_config_types(data: Any, source: str) -> None:
    """``ValueError`` naming ``source`` and the field when ``data`` (the JSON of a
    ``textcl_config.json``) is not an object, a field has the wrong JSON type, or its
    ``format`` is not :data:`CONFIG_FORMAT`. Unknown fields are :meth:`EncoderConfig.from_dict`'s
    to refuse."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object, got {_type_name(data)}")
    for key, (what, types, nullable) in _FIELD_TYPES.items():
        if key not in data:
            continue
        value = data[key]
        if value is None and nullable:
            continue
        # A bool is an int to isinstance: refuse it where no bool is declared.
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise ValueError(
                f"{source}: field {key!r} must be {what}, got {_type_name(value)} {value!r:.80}"
            )
    if "format" in data and data["format"] != CONFIG_FORMAT:
        raise ValueError(
            f"{source}: field 'format' is {data['format']!r}: this textcl reads format "
            f"{CONFIG_FORMAT} only (the folder was written by another textcl version: "
            "upgrade textcl)"
        )
    dense = data.get("dense_modules") or []
    if not all(isinstance(d, str) and d for d in dense):
        raise ValueError(
            f"{source}: field 'dense_modules' must list folder names, got {dense!r:.80}"
        )
    prompts = data.get("prompts") or {}
    bad = [k for k, v in prompts.items() if not isinstance(v, str)]
    if bad:
        raise ValueError(f"{source}: field 'prompts': prompt {bad[0]!r} is not a string")


@dataclass
class EncoderConfig:
    """How a :class:`SentenceEncoder` turns token states into sentence vectors.

    Saved as ``textcl_config.json`` beside the model weights.
    """

    pooling: str = "mean"
    head_mode: str = "none"
    max_length: int | None = None
    normalize: bool = False
    truncate_dim: int | None = None
    """Keep the first ``truncate_dim`` dimensions (Matryoshka); normalisation comes after."""
    prompts: dict[str, str] = field(default_factory=dict)
    """Named prompts prepended to the text (``encode(prompt_name=...)``)."""
    default_prompt_name: str | None = None
    """The prompt used when ``encode`` gets neither ``prompt`` nor ``prompt_name``."""
    include_prompt: bool = True
    """Whether prompt tokens take part in the pooling (sentence-transformers'
    ``Pooling(include_prompt=...)``); ``False``: the model sees them, the pooling does not."""
    prompt_template: str | None = None
    """``prompt`` pooling (PromptBERT): the template, with ``[X]`` for the sentence and
    ``[MASK]`` for the mask token (default :data:`textcl.prompt.DEFAULT_PROMPT_TEMPLATE`)."""
    prompt_denoise: bool = True
    """``prompt`` pooling: subtract the template-only ``[MASK]`` state (template denoising) at
    inference (PromptBERT's supervised recipe; its unsupervised one denoises in training only)."""

    def __post_init__(self) -> None:
        check_pooling_name(self.pooling)
        if self.pooling == "prompt":
            if self.prompt_template is None:
                self.prompt_template = DEFAULT_PROMPT_TEMPLATE
            check_template(self.prompt_template)
        elif self.prompt_template is not None:
            raise ValueError(
                f"prompt_template is set but pooling is {self.pooling!r}: it needs pooling 'prompt'"
            )
        for name in ("prompt_denoise", "normalize", "include_prompt"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_head_mode(self.head_mode)
        if self.max_length is not None and (
            isinstance(self.max_length, bool)
            or not isinstance(self.max_length, int)
            or self.max_length < 2
        ):
            raise ValueError(f"max_length must be an integer >= 2 or None, got {self.max_length!r}")
        if self.truncate_dim is not None and (
            isinstance(self.truncate_dim, bool)
            or not isinstance(self.truncate_dim, int)
            or self.truncate_dim < 1
        ):
            raise ValueError(
                f"truncate_dim must be a positive integer or None, got {self.truncate_dim!r}"
            )
        if not isinstance(self.prompts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.prompts.items()
        ):
            raise ValueError(f"prompts must map names to strings, got {self.prompts!r:.200}")
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(
                f"default_prompt_name {self.default_prompt_name!r} is not one of the prompts "
                f"{sorted(self.prompts)}"
            )

    @property
    def default_prompt(self) -> str | None:
        """The text of the default prompt (None: no default prompt)."""
        if self.default_prompt_name is None:
            return None
        return self.prompts.get(self.default_prompt_name)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> EncoderConfig:
        """The config of ``data`` (a ``textcl_config.json``'s JSON), strictly typed
        (:func:`check_config_types`); ``ValueError`` naming ``source`` and the field."""
        check_config_types(data, source)
        known = {
            "pooling",
            "head_mode",
            "max_length",
            "normalize",
            "truncate_dim",
            "prompts",
            "default_prompt_name",
            "include_prompt",
            "prompt_template",
            "prompt_denoise",
        }
        unknown = set(data) - known - {"textcl_version", "format", "dense_modules"}
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {sorted(unknown)}")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
