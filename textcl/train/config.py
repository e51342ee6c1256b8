"""One dataclass per training run, saved as JSON beside every checkpoint."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from textcl.errors import InputError
from textcl.io import write_json
from textcl.matryoshka import check_matryoshka
from textcl.pooling import HEAD_MODES, POOLING_STRATEGIES
from textcl.prompt import DEFAULT_PROMPT_TEMPLATE, SECOND_PROMPT_TEMPLATE, check_template

OBJECTIVES = ("unsup", "sup")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
REPORT_TO = ("auto", "none", "tensorboard", "wandb")
SEED_MAX = 2**32 - 1
"""The largest seed (numpy's seeds are 32-bit)."""

OPERATIONAL_FIELDS = ("overwrite",)
"""Fields that act on the run folder once (what to do with an old run), not on the recipe:
never saved in ``config.json`` (a saved run re-used as ``--config`` must not wipe itself)
and refused in a config file when set (:func:`check_config_file_values`); give them as
flags."""

COMMAND_LINE_ONLY = {
    "overwrite": "--overwrite",
    "resume": "--resume",
    "resume_from_checkpoint": "--resume",
}
"""Config-file keys refused by :func:`check_config_file_values` and the flag to use."""


class FieldError(InputError):
    """A config field's value is refused (exit 2); ``field`` names it, so the command line
    can point at the flag or at the config file's line that gave it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class TrainConfig:
    """Everything that defines a training run.

    Defaults are the unsupervised SimCSE BERT-base recipe (Gao et al. 2021): ``cls`` pooling
    with an MLP head at training time only, temperature 0.05, lr 3e-5, batch 64, max length
    32, one epoch, STS-B dev evaluation every 125 steps keeping the best checkpoint.
    """

    model: str = ""
    """Hub id or local folder of the starting encoder."""
    train_file: str = ""
    """Text file (one sentence a line), JSONL/CSV/TSV/parquet file, folder, saved dataset or hub
    id (unsup: the ``text_column``); CSV/TSV/JSONL/parquet file or dataset (sup: ``columns``)."""
    output_dir: str = ""
    """Run folder: config.json, metrics.jsonl, checkpoints/, best/, final/, results.json."""
    objective: str = "unsup"
    """``unsup`` (raw sentences, two views) or ``sup`` (pairs/triples)."""
    columns: list[str] = field(default_factory=lambda: ["sent0", "sent1", "hard_neg"])
    """Supervised columns: anchor, positive[, hard negative]."""
    text_column: str = "text"
    """Text column (field) of a JSONL/CSV/TSV/parquet file or ``datasets`` source (unsup);
    a plain text file is one sentence a line."""
    split: str = "train"
    """Split of a ``datasets`` source (unsup)."""
    stream: bool = False
    """Unsup training text from a hub dataset: stream the text column row by row (``datasets``
    streaming, as ``textcl encode`` does) instead of downloading the dataset files first."""
    skip_bad_rows: bool = False
    """Supervised data: skip malformed rows (and report how many) instead of stopping."""
    view_a: str = "dropout"
    """View of the first side: a name, ``name:rate``, or views composed with ``+``."""
    view_b: str = "dropout"
    """View of the second side (and of hard negatives), e.g. ``feature_cutoff:0.2``."""
    pooling: str = "cls"
    """How token vectors become one sentence vector."""
    head: str = "train"
    """Projection head: ``none``, ``train`` (SimCSE: MLP at training time only), ``always``."""
    temperature: float = 0.05
    """InfoNCE temperature: cosine similarities are divided by it."""
    symmetric: bool = False
    """Also score positives against anchors (b -> a) and average both directions."""
    hard_negative_weight: float = 0.0
    """Logit offset for each anchor's own hard negative (SimCSE's log alpha; triples)."""
    lr: float = 3e-5
    """Peak AdamW learning rate (linear warmup, then linear decay to 0)."""
    weight_decay: float = 0.0
    """AdamW weight decay (never on biases and norm weights)."""
    warmup_ratio: float = 0.0
    """Fraction of the total steps spent warming the learning rate up linearly."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value; 0: no clipping."""
    batch_size: int = 64
    """Sentences per step: the global batch over all processes (each of N ranks takes
    batch_size / N), not a per-device batch."""
    epochs: int = 1
    """Passes over the training data (``max_steps`` overrides it)."""
    max_steps: int | None = None
    """Stop after this many steps (overrides ``epochs``)."""
    max_length: int = 32
    """Truncate training sentences to this many tokens."""
    seed: int = 42
    """Seed of the data order, the views and a new head's initial weights."""
    precision: str = "auto"
    """``auto`` (bf16 on GPUs that support it, else fp16 + grad scaler; on CPU bf16 autocast
    with native bf16 (AMX / AVX512-BF16), else fp32)."""
    device: str | None = None
    """``cpu``, ``cuda``, ``cuda:1``; default: the (local rank's) GPU if present, else CPU."""
    eval_steps: int = 125
    """Evaluate on STS-B dev every N steps and at the end; 0: only at the end; -1: never."""
    eval_at_start: bool = False
    """Also evaluate the starting model (step 0): the "before" of a before/after table."""
    eval_batch_size: int = 128
    """Sentences per forward pass during the STS-B dev evaluation."""
    data_dir: str | None = None
    """Evaluation data root (``sts/`` inside); default: ``$TEXTCL_DATA``, else the hub."""
    save_steps: int | None = None
    """Checkpoint every N steps (default: at every evaluation)."""
    save_total_limit: int = 2
    """Keep only the newest N step checkpoints (``best/`` and ``final/`` are kept apart)."""
    logging_steps: int = 10
    """Log loss, learning rate and sentences/s every N steps."""
    grad_cache_chunk: int | None = None
    """Gradient cache (Gao et al. 2021): embed the batch in chunks of this many sentences."""
    dropout: float | None = None
    """Set every dropout layer of the transformer to this rate (ConSERT: 0); None: keep."""
    compile: bool = False
    """``torch.compile`` the transformer (opt-in)."""
    num_workers: int = 0
    """DataLoader worker processes that tokenize and apply the token-level views (0: in the
    training process)."""
    drop_last: bool = False
    """Drop each epoch's last incomplete batch (always on with several processes)."""
    group_by_length: bool = False
    """Length-grouped batching: batches of sentences of similar length (character count of
    the first text), drawn at random from buckets of 50 batches (less padding; negatives
    still random within a bucket); deterministic in seed and epoch."""
    overwrite: bool = False
    """Start a new run in a folder that holds another run (without it, such a folder is
    refused): once the new run is checked, the old one's checkpoints, best/, final/ and logs
    are set aside, removed after the new run's first checkpoint, restored if it fails first.
    Command line only: never saved in config.json, refused in a config file."""
    # --- momentum queue and false-negative control (issue 17) ---
    queue_size: int = 0
    """Momentum contrast: a FIFO queue of this many past key embeddings (sentences) as extra
    negatives of every anchor (0: off). ESimCSE: 160 at batch 64 (2.5x); MoCoSE: 512."""
    momentum: float = 0.995
    """EMA rate of the key encoder ``theta_k <- m theta_k + (1 - m) theta_q`` that embeds the
    positive view for the queue (ESimCSE 0.995; MoCoSE 0.85); 0: the online encoder's
    detached embeddings are the keys (no EMA copy). Used only with ``queue_size > 0``."""
    fn_margin: float | None = None
    """False-negative control, relative (GISTEmbed-style): mask every negative (in-batch,
    hard, queued) whose cosine to the anchor exceeds the positive's minus this margin."""
    fn_threshold: float | None = None
    """False-negative control, absolute: mask every negative whose cosine to the anchor
    exceeds this threshold (excludes ``fn_margin``)."""
    guide_model: str | None = None
    """A frozen guide encoder (local folder) whose cosines decide the false negatives
    (GISTEmbed, Solatorio 2024); needs ``fn_margin`` or ``fn_threshold``."""
    # --- end momentum queue / false-negative control ---
    report_to: str = "auto"
    """Experiment tracker: ``auto`` (TensorBoard when installed), ``tensorboard``,
    ``wandb`` (offline with ``WANDB_MODE=offline``) or ``none``."""
    # --- PromptBERT and Matryoshka (issue 17) ---
    prompt_templates: list[str] | None = None
    """``prompt`` pooling (PromptBERT, Jiang et al. 2022): the templates of view a and view b,
    ``[X]`` the sentence and ``[MASK]`` the mask token (one template: both views use it). The
    first is the saved model's template (and the one of every column with ``sup``). Default
    (``null``): PromptBERT's BERT templates, ``This sentence of "[X]" means [MASK] .`` then
    ``This sentence : "[X]" means [MASK] .`` (``unsup``), the first alone (``sup``)."""
    prompt_denoise: str = "train"
    """``prompt`` pooling: template denoising (subtract the template-only [MASK] state):
    ``train`` (in the training loss only; the saved model does not denoise: PromptBERT's
    unsupervised recipe), ``always`` (training and the saved model: its supervised recipe)
    or ``none``."""
    matryoshka_dims: list[int] | None = None
    """Matryoshka (Kusupati et al. 2022): also apply the loss to these embedding prefixes,
    e.g. ``[768, 512, 256, 128, 64]``; the loss is ``sum_k w_k * InfoNCE(z[:, :d_k])``."""
    matryoshka_weights: list[float] | None = None
    """One weight per ``matryoshka_dims`` entry (default 1 each)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse a field of the wrong type (a bool is not an int; a list only where one is
        declared) or out of range: :class:`FieldError` naming the field."""

        def bad(name: str, why: str) -> FieldError:
            return FieldError(name, f"config field {name!r}: {why} (got {getattr(self, name)!r})")

        # the command line gives "768,512,..." as strings
        self.matryoshka_dims = _numbers(self.matryoshka_dims, int)
        self.matryoshka_weights = _numbers(self.matryoshka_weights, float)
        for f in fields(self):
            why = _type_error(getattr(self, f.name), _field_types()[f.name])
            if why:
                raise bad(f.name, why)
        if not 0 <= self.seed <= SEED_MAX:
            raise bad("seed", f"must be an integer in [0, {SEED_MAX}]")
        if self.objective not in OBJECTIVES:
            raise bad("objective", f"expected one of {', '.join(OBJECTIVES)}")
        if self.pooling not in POOLING_STRATEGIES:
            raise bad("pooling", f"expected one of {', '.join(POOLING_STRATEGIES)}")
        if self.head not in HEAD_MODES:
            raise bad("head", f"expected one of {', '.join(HEAD_MODES)}")
        if self.report_to not in REPORT_TO:
            raise bad("report_to", f"expected one of {', '.join(REPORT_TO)}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"expected one of {', '.join(PRECISIONS)}")
        if not self.temperature > 0:
            raise bad("temperature", "must be > 0")
        if not self.lr > 0:
            raise bad("lr", "must be > 0")
        if self.weight_decay < 0:
            raise bad("weight_decay", "must be >= 0")
        if not 0 <= self.warmup_ratio < 1:
            raise bad("warmup_ratio", "must be in [0, 1)")
        if not self.max_grad_norm >= 0:
            raise bad("max_grad_norm", "must be >= 0 (0: no clipping)")
        for name in ("batch_size",):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 2:
                raise bad(name, "must be an integer >= 2 (in-batch negatives)")
        for name in ("epochs", "max_length", "logging_steps", "eval_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "must be a positive integer")
        for name in ("max_steps", "save_steps", "grad_cache_chunk"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise bad(name, "must be a positive integer or null")
        if not isinstance(self.eval_steps, int) or self.eval_steps < -1:
            raise bad("eval_steps", "must be an integer >= -1")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise bad("dropout", "must be in [0, 1) or null")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise bad("num_workers", "must be an integer >= 0")
        if self.save_total_limit < 1:
            raise bad("save_total_limit", "must be >= 1")
        self._validate_negatives(bad)
        self._validate_prompt_matryoshka(bad)
        if self.matryoshka_dims and (
            self.queue_size > 0 or self.fn_margin is not None or self.fn_threshold is not None
        ):
            raise bad(
                "matryoshka_dims",
                "cannot be combined with queue_size or false-negative control (yet)",
            )
        if self.objective == "sup" and len(self.columns) not in (2, 3):
            raise bad("columns", "supervised data needs 2 (anchor, positive) or 3 columns")

    def _validate_negatives(self, bad: Any) -> None:
        """The momentum queue and false-negative control fields."""
        if isinstance(self.queue_size, bool) or not isinstance(self.queue_size, int):
            raise bad("queue_size", "must be an integer >= 0 (0: no queue)")
        if self.queue_size < 0:
            raise bad("queue_size", "must be an integer >= 0 (0: no queue)")
        if not isinstance(self.momentum, int | float) or not 0 <= self.momentum <= 1:
            raise bad("momentum", "must be in [0, 1] (0: online detached keys)")
        for name in ("fn_margin", "fn_threshold"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int | float) or not math.isfinite(value)
            ):
                raise bad(name, "must be a finite number or null")
        if self.fn_margin is not None and self.fn_threshold is not None:
            raise bad(
                "fn_threshold",
                "fn_margin (relative) and fn_threshold (absolute) exclude each other; give one",
            )
        if self.guide_model is not None and self.fn_margin is None and self.fn_threshold is None:
            raise bad(
                "guide_model", "a guide judges false negatives: set fn_margin or fn_threshold"
            )

    def _validate_prompt_matryoshka(self, bad: Any) -> None:
        if self.prompt_templates is not None:
            if self.pooling != "prompt":
                raise bad("prompt_templates", "needs pooling 'prompt'")
            if not isinstance(self.prompt_templates, list) or len(self.prompt_templates) not in (
                1,
                2,
            ):
                raise bad("prompt_templates", "must be a list of 1 or 2 templates")

            for t in self.prompt_templates:
                try:
                    check_template(t)
                except ValueError as e:
                    raise bad("prompt_templates", str(e)) from None
        if self.prompt_denoise not in ("none", "train", "always"):
            raise bad("prompt_denoise", "expected one of none, train, always")
        if self.matryoshka_dims is not None or self.matryoshka_weights is not None:
            if self.matryoshka_dims is None:
                raise bad("matryoshka_weights", "needs matryoshka_dims")
            try:
                check_matryoshka(self.matryoshka_dims, self.matryoshka_weights)
            except ValueError as e:
                raise bad("matryoshka_dims", str(e)) from None

    def resolved_prompt_templates(self) -> list[str]:
        """The templates of view a and view b (``prompt`` pooling; see ``prompt_templates``)."""

        if self.prompt_templates:
            t = list(self.prompt_templates)
            return t if len(t) == 2 else [t[0], t[0]]
        if self.objective == "unsup":  # PromptBERT's unsup-bert: "of" (also at inference), ":"
            return [SECOND_PROMPT_TEMPLATE, DEFAULT_PROMPT_TEMPLATE]
        return [SECOND_PROMPT_TEMPLATE, SECOND_PROMPT_TEMPLATE]  # its sup-bert template

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(
        cls,
        data: dict[str, Any],
        source: str = "config",
        locate: Callable[[str], str] | None = None,
    ) -> TrainConfig:
        """The config of ``data``; errors name ``source``, or ``locate(field)`` (e.g. a
        file's line or a flag) for a refused field."""
        where = locate or (lambda _name: source)
        if not isinstance(data, dict):
            raise InputError(f"{source}: a config must be a mapping of field -> value")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names, key=str)
        if unknown:
            raise FieldError(
                str(unknown[0]), f"{where(str(unknown[0]))}: unknown config field(s) {unknown}"
            )
        try:
            return cls(**data)
        except FieldError as e:
            raise FieldError(e.field, f"{where(e.field)}: {e}") from None
        except TypeError as e:
            raise InputError(f"{source}: {e}") from None

    def save(self, path: str | os.PathLike[str], **extra: Any) -> None:
        """Write the config (plus ``extra`` keys such as step and metrics) as JSON; the
        operational fields (:data:`OPERATIONAL_FIELDS`) are left out."""

        recipe = {k: v for k, v in self.to_dict().items() if k not in OPERATIONAL_FIELDS}
        write_json(path, {"config": recipe, **extra})


_TYPES: dict[str, Any] = {}


def _field_types() -> dict[str, Any]:
    """Each TrainConfig field's declared type (resolved once)."""
    if not _TYPES:
        _TYPES.update(typing.get_type_hints(TrainConfig))
    return _TYPES


_ITEMS = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}


def _type_name(kind: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        kind, getattr(kind, "__name__", str(kind))
    )


def _type_error(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit the declared type ``hint`` (None: it fits). Strict: a bool
    is not a number, an integer fits a float field, a list only where one is declared."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType):  # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
        optional = " or null"
    else:
        optional = ""
    if typing.get_origin(hint) is list:
        item = args[0]
        items = _ITEMS.get(item, "values")
        if not isinstance(value, list):
            return f"expected a list of {items}{optional}"
        for v in value:
            if _type_error(v, item):
                return f"expected a list of {items}{optional}; {v!r} is not one"
        return None
    fits = (
        isinstance(value, bool)
        if hint is bool
        else not isinstance(value, bool)
        and isinstance(value, hint if hint is not float else (int, float))
    )
    if fits:
        return None
    why = f"expected {_type_name(hint)}{optional}"
    if hint is float and isinstance(value, str) and re.fullmatch(r"[-+]?\d+e[-+]?\d+", value):
        why += "; YAML reads a number like 3e-5 as text: write 3.0e-5"
    return why


def field_docs(cls: type = TrainConfig) -> dict[str, str]:
    """The attribute docstrings of a dataclass's fields (the string literal right below each
    field), read from its source with :mod:`ast`; whitespace collapsed, markup kept.

    The CLI builds every ``textcl train`` flag's help from these; a field without a docstring
    is simply absent (the CLI test requires one for every field)."""
    import ast
    import inspect
    import textwrap

    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source shipped (e.g. a frozen build)
        return {}
    docs: dict[str, str] = {}
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    for node, after in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _numbers(values: list[Any] | None, kind: type) -> list[Any] | None:
    """``values`` with numeric strings converted to ``kind`` (others left for validation)."""
    if not isinstance(values, list):
        return values
    out = []
    for v in values:
        if isinstance(v, str):
            with contextlib.suppress(ValueError):
                v = kind(v)
        out.append(v)
    return out


def config_line(path: str | os.PathLike[str], name: str) -> int | None:
    """The line of a JSON/YAML config file where key ``name`` is set (None: not found)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    key = re.compile(rf"\s*[\"']?{re.escape(name)}[\"']?\s*:")
    return next((i for i, line in enumerate(lines, 1) if key.match(line)), None)


def check_config_file_values(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Refuse what a config file may not carry: the command-line-only keys
    (:data:`COMMAND_LINE_ONLY`: ``overwrite`` set, ``resume``), naming the file, its line and
    the flag to give instead; ``overwrite: false`` (as older runs saved it) is dropped."""
    for name, flag in COMMAND_LINE_ONLY.items():
        if name not in data:
            continue
        if name in OPERATIONAL_FIELDS and data[name] is False:
            del data[name]  # the default: no effect
            continue
        line = config_line(path, name)
        raise FieldError(
            name,
            f"{path}{f':{line}' if line else ''}: config field {name!r} acts on the run folder "
            f"and is taken from the command line only: remove it from the file and give "
            f"{flag} when you mean it",
        )


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a JSON/YAML config file; a saved ``config.json`` (with a ``config``
    key, as written beside checkpoints) is accepted too."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{p}: reading YAML needs PyYAML (pip install pyyaml)") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML: {e}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{e.lineno}: not valid JSON: {e.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a config file must hold a mapping of field -> value")
    return data
