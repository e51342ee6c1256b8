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
        if not isinstance(self.prompt_denoise, bool):
            raise ValueError(f"prompt_denoise must be true or false, got {self.prompt_denoise!r}")
        check_head_mode(self.head_mode)
        if self.max_length is not None and (
            not isinstance(self.max_length, int) or self.max_length < 2
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
        return cls(**{k: v for k, v in data.items() if k in known})
