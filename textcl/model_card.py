"""Model cards: the ``README.md`` that :meth:`SentenceEncoder.save` writes into a model folder.

The card has Hugging Face hub front matter (library, tags, base model, pipeline tag, a
license placeholder), the encoder's settings, the training recipe and scores the trainer
passes as ``card`` data, notes on what other libraries cannot reproduce, and usage snippets
for textcl, sentence-transformers and plain transformers. The snippets are executed by the
test-suite (``tests/test_model_card.py``): each defines ``embeddings`` equal to textcl's.

Known ``card`` keys (all optional; other keys are listed in the recipe table as given):
``model_name``, ``base_model``, ``repo_id`` (used as the model path in the snippets),
``license``, ``language``, ``objective``, ``views``, ``temperature``, ``batch_size``,
``learning_rate``, ``steps``, ``data`` (source), ``data_size``, ``best_stsb_dev``,
``best_step``, ``eval_table`` (the table ``textcl eval`` prints).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from textcl.encoder_config import EncoderConfig
from textcl.pooling import ST_POOLING_MODES
from textcl.version import __version__

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MODEL_PATH_PLACEHOLDER = "path/to/this/model"
"""Model path the snippets use when the card has no ``repo_id``."""

SNIPPET_SENTENCES: tuple[str, ...] = (
    "A man is playing a guitar.",
    "Someone is playing an instrument.",
    "The weather is cold today.",
)

RECIPE_KEYS: tuple[tuple[str, str], ...] = (
    ("objective", "Objective"),
    ("views", "Views"),
    ("temperature", "Temperature"),
    ("batch_size", "Batch size (global)"),
    ("learning_rate", "Learning rate"),
    ("steps", "Steps"),
    ("data", "Training data"),
    ("data_size", "Training data size"),
)
_OTHER_KNOWN = {
    "model_name",
    "base_model",
    "repo_id",
    "license",
    "language",
    "best_stsb_dev",
    "best_step",
    "eval_table",
}


@dataclass(frozen=True)
class DenseInfo:
    """A Dense layer as the transformers snippet applies it."""

    activation: str
    """Class name of its ``torch.nn`` activation (``Tanh``, ``Identity``, ...)."""
    bias: bool


@dataclass(frozen=True)
class CardModel:
    """What the card says about the encoder: plain data, built by
    :meth:`SentenceEncoder.card_model` from its config and a few derived sizes."""

    config: EncoderConfig
    max_length: int
    """The truncation length the encoder uses (its ``effective_max_length``)."""
    embedding_dim: int
    prompt_tokens: int = 0
    """Tokens the default prompt occupies (0: no default prompt)."""
    dense: tuple[DenseInfo, ...] = ()

    @property
    def head_at_inference(self) -> bool:
        return self.config.head_mode == "always"


_POOL_LINES: dict[str, str] = {
    "cls": (
        "first = keep.argmax(dim=1)  # first real token ([CLS])\n"
        "embeddings = states[torch.arange(states.shape[0]), first]"
    ),
    "mean": "embeddings = (states * mask).sum(1) / mask.sum(1)",
    "max": "embeddings = states.masked_fill(mask == 0, float('-inf')).max(1).values",
    "mean_sqrt_len_tokens": "embeddings = (states * mask).sum(1) / mask.sum(1).sqrt()",
    "weightedmean": (
        "weights = mask.cumsum(1) * mask  # k-th real token has weight k\n"
        "embeddings = (states * weights).sum(1) / weights.sum(1)"
    ),
    "lasttoken": (
        "last = states.shape[1] - 1 - keep.flip(1).argmax(dim=1)\n"
        "embeddings = states[torch.arange(states.shape[0]), last]"
    ),
    "first_last_avg": (
        "layers = (out.hidden_states[1] + out.hidden_states[-1]) / 2\n"
        "embeddings = (layers * mask).sum(1) / mask.sum(1)"
    ),
    "last2_avg": (
        "layers = (out.hidden_states[-2] + out.hidden_states[-1]) / 2\n"
        "embeddings = (layers * mask).sum(1) / mask.sum(1)"
    ),
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar


def snippet_blocks(card_text: str) -> list[str]:
    """The ```` ```python ```` code blocks of a card, in order."""
    return re.findall(r"```python\n(.*?)```", card_text, flags=re.S)


def _textcl_snippet(path: str, sentences: str) -> str:
    return (
        "from textcl import SentenceEncoder\n\n"
        f"encoder = SentenceEncoder.load({path!r})\n"
        f"embeddings = encoder.encode({sentences})\n"
        "print(embeddings.shape)\n"
    )


def _st_snippet(model: CardModel, path: str, sentences: str) -> str:
    truncate_dim = model.config.truncate_dim
    extra = f", truncate_dim={truncate_dim}" if truncate_dim else ""
    return (
        "from sentence_transformers import SentenceTransformer\n\n"
        f"model = SentenceTransformer({path!r}{extra})\n"
        f"embeddings = model.encode({sentences})\n"
        "print(model.similarity(embeddings, embeddings))\n"
    )


def _transformers_snippet(model: CardModel, path: str, sentences: str) -> str:
    cfg = model.config
    lines = [
        "import os",
        "",
        "import torch",
        "from transformers import AutoModel, AutoTokenizer",
        "",
        f"model_path = {path!r}",
        f"sentences = {sentences}",
    ]
    default_prompt = cfg.default_prompt
    if default_prompt:
        lines.append(f"sentences = [{default_prompt!r} + s for s in sentences]  # default prompt")
    needs_files = model.head_at_inference or len(model.dense) > 0
    if needs_files:
        lines += [
            "",
            "from safetensors.torch import load_file",
            "",
            "",
            "def model_file(name):",
            "    local = os.path.join(model_path, name)",
            "    if os.path.exists(local):",
            "        return local",
            "    from huggingface_hub import hf_hub_download",
            "",
            "    return hf_hub_download(model_path, name)",
            "",
        ]
    lines += [
        "tokenizer = AutoTokenizer.from_pretrained(model_path)",
        "model = AutoModel.from_pretrained(model_path).eval()",
        "batch = tokenizer(",
        f"    sentences, padding=True, truncation=True, max_length={model.max_length},"
        ' return_tensors="pt"',
        ")",
        "with torch.no_grad():",
        "    out = model(**batch, output_hidden_states=True)",
        "states = out.last_hidden_state",
        "keep = batch['attention_mask']",
    ]
    if default_prompt and not cfg.include_prompt:
        n = model.prompt_tokens
        lines.append(
            f"keep = keep * (keep.cumsum(1) > {n})  # the {n} prompt tokens are not pooled"
        )
    lines += [
        "mask = keep.unsqueeze(-1).to(states.dtype)",
        f"# {cfg.pooling} pooling",
        _POOL_LINES[cfg.pooling],
    ]
    if model.head_at_inference:
        lines += [
            "# projection head (Linear + Tanh), applied at inference",
            "head = load_file(model_file('textcl_head.safetensors'))",
            "embeddings = torch.tanh(embeddings @ head['dense.weight'].T + head['dense.bias'])",
        ]
    first_dense = 2 + int(model.head_at_inference)
    for i, layer in enumerate(model.dense):
        name = layer.activation
        bias = " + w['linear.bias']" if layer.bias else ""
        lines += [
            f"w = load_file(model_file('{first_dense + i}_Dense/model.safetensors'))",
            f"embeddings = torch.nn.{name}()(embeddings @ w['linear.weight'].T{bias})",
        ]
    if cfg.truncate_dim:
        lines.append(f"embeddings = embeddings[:, :{cfg.truncate_dim}]")
    if cfg.normalize:
        lines.append("embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=-1)")
    lines.append("print(embeddings.shape)")
    return "\n".join(lines) + "\n"


def render_model_card(model: CardModel, card: Mapping[str, Any], notes: Sequence[str] = ()) -> str:
    """The ``README.md`` text for an encoder described by ``model`` saved with ``card`` data
    (see module doc)."""
    cfg = model.config
    base_model = card.get("base_model")
    path = str(card.get("repo_id") or MODEL_PATH_PLACEHOLDER)
    name = str(card.get("model_name") or card.get("repo_id") or "textcl sentence encoder")
    front = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity"]
    front += [
        "tags:",
        "- textcl",
        "- sentence-transformers",
        "- sentence-similarity",
        "- feature-extraction",
        "- contrastive-learning",
    ]
    if base_model and HUB_ID.match(str(base_model)):  # the hub takes repo ids only
        front.append(f"base_model: {_yaml_str(str(base_model))}")
    if card.get("language"):
        front.append(f"language: {_yaml_str(str(card['language']))}")
    license_ = card.get("license")
    if license_:
        front.append(f"license: {_yaml_str(str(license_))}")
    else:
        front.append("license: other  # placeholder: set the license of the base model and data")
    front.append("---")

    out = [*front, "", f"# {name}", ""]
    out.append(
        "A sentence encoder trained with textcl (contrastive sentence "
        "embeddings)"
        + (f", starting from `{base_model}`." if base_model else ".")
        + " It maps sentences to vectors for semantic similarity, search and clustering."
    )
    out += ["", "## Model", "", "| Setting | Value |", "|---|---|"]
    rows: list[tuple[str, Any]] = [
        ("Base model", f"`{base_model}`" if base_model else "unknown"),
        ("Pooling", cfg.pooling),
        ("Projection head", cfg.head_mode),
        ("Max sequence length", model.max_length),
        ("Embedding dimension", model.embedding_dim),
        ("Normalised", "yes" if cfg.normalize else "no"),
        ("Similarity", "cosine"),
    ]
    if cfg.truncate_dim:
        rows.append(("Truncated to", cfg.truncate_dim))
    if cfg.pooling == "prompt":
        rows.append(("Prompt template (PromptBERT)", f"`{cfg.prompt_template}`"))
        rows.append(("Template denoising", "yes" if cfg.prompt_denoise else "no"))
    if cfg.prompts:
        rows.append(("Prompts", cfg.prompts))
        rows.append(("Default prompt", cfg.default_prompt_name or "none"))
    rows.append(("textcl version", __version__))
    out += [f"| {k} | {_fmt(v)} |" for k, v in rows]

    recipe = [(label, card[key]) for key, label in RECIPE_KEYS if card.get(key) is not None]
    known = {k for k, _ in RECIPE_KEYS} | _OTHER_KNOWN
    recipe += [(k, v) for k, v in card.items() if k not in known and v is not None]
    if recipe:
        out += ["", "## Training recipe", "", "| | |", "|---|---|"]
        out += [f"| {k} | {_fmt(v)} |" for k, v in recipe]

    if card.get("best_stsb_dev") is not None or card.get("eval_table"):
        out += ["", "## Results", ""]
        if card.get("best_stsb_dev") is not None:
            step = f" (step {card['best_step']})" if card.get("best_step") is not None else ""
            out.append(
                f"Best STS-B dev Spearman ×100: **{float(card['best_stsb_dev']):.2f}**{step}."
            )
        if card.get("eval_table"):
            out += ["", "`textcl eval`:", "", "```text", str(card["eval_table"]).rstrip(), "```"]

    st_notes = list(notes)
    if cfg.pooling not in ST_POOLING_MODES and not st_notes:
        st_notes.append(f"pooling {cfg.pooling!r} has no sentence-transformers equivalent")
    if cfg.head_mode == "train":
        st_notes.append(
            "the projection head was used for training only: it is not part of the "
            "inference model (SimCSE's recipe)"
        )
    if st_notes:
        out += ["", "## Notes", ""]
        out += [f"- {n}" for n in st_notes]

    sentences = repr(list(SNIPPET_SENTENCES))
    out += ["", "## Usage", "", "### textcl", "", "```python"]
    out.append(_textcl_snippet(path, sentences).rstrip())
    out += ["```", "", "### sentence-transformers", ""]
    if cfg.pooling not in ST_POOLING_MODES:
        out += [
            f"**Warning**: sentence-transformers cannot express `{cfg.pooling}` "
            "pooling; it loads this folder with mean pooling and gives different embeddings. "
            "Use textcl or the transformers snippet.",
            "",
        ]
    out += ["```python", _st_snippet(model, path, sentences).rstrip(), "```"]
    out += ["", "### transformers", ""]
    if cfg.pooling == "prompt":
        out += [
            "The vector is the last hidden state of the template's mask token (sentence "
            f"wrapped in `{cfg.prompt_template}`"
            + (
                ", minus that of the template alone: template denoising"
                if cfg.prompt_denoise
                else ""
            )
            + "); use textcl (`SentenceEncoder.load`) to reproduce it exactly.",
            "",
        ]
        return "\n".join(out)
    out += ["```python"]
    out.append(_transformers_snippet(model, path, sentences).rstrip())
    out += ["```", ""]
    return "\n".join(out)
