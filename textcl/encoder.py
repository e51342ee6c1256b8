"""SentenceEncoder: a Hugging Face encoder + tokenizer + pooling (+ optional head)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Required, TypedDict, cast

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from textcl.pooling import (
    HEAD_MODES,
    POOLING_STRATEGIES,
    Pooling,
    ProjectionHead,
    check_head_mode,
    check_pooling_name,
)

logger = logging.getLogger(__name__)


class TokenBatch(TypedDict, total=False):
    """A padded token batch, as :meth:`SentenceEncoder.tokenize` returns and views map.

    ``input_ids`` and ``attention_mask`` ``(B, L)`` always; ``token_type_ids`` and
    ``position_ids`` ``(B, L)`` are passed to the model; ``special_tokens_mask`` ``(B, L)``
    (1 for special tokens and padding) is read by views, never passed to the model;
    ``embedding_mask`` (a float multiplier broadcastable to ``(B, L, H)``, set by cutoff
    views) scales the word embeddings, which the model then gets as ``inputs_embeds``.
    """

    input_ids: Required[Tensor]
    attention_mask: Required[Tensor]
    token_type_ids: Tensor
    position_ids: Tensor
    special_tokens_mask: Tensor
    embedding_mask: Tensor


def as_token_batch(tensors: Mapping[str, Tensor]) -> TokenBatch:
    """``tensors`` typed as a :class:`TokenBatch` (a new dict; keys are not checked)."""
    return cast(TokenBatch, dict(tensors))


def batch_tensors(batch: TokenBatch) -> dict[str, Tensor]:
    """``batch`` typed as a plain ``dict[str, Tensor]`` (the same object), for code that
    walks its keys generically (slicing, moving, per-token keys)."""
    return cast(dict[str, Tensor], batch)


def padding_position_offset(model: Any) -> int | None:
    """``padding_idx`` of models that number positions from ``padding_idx + 1`` and give
    padding the position ``padding_idx`` (RoBERTa, XLM-R, CamemBERT, MPNet, ...: their
    embeddings module has a ``padding_idx``); ``None`` for models counting from 0 (BERT)."""
    idx = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return idx if isinstance(idx, int) and not isinstance(idx, bool) else None


def max_positions(model: Any) -> int | None:
    """Longest sequence ``model``'s position embeddings allow: ``max_position_embeddings``,
    less the ``padding_idx + 1`` reserved slots of RoBERTa-style models (None: unknown)."""
    pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(pos, int) or pos <= 0:
        return None
    idx = padding_position_offset(model)
    return pos - (idx + 1 if idx is not None else 0)


def padded_position_ids(input_ids: Tensor, padding_idx: int) -> Tensor:
    """The position ids a RoBERTa-style model derives from ``input_ids``: real tokens
    ``padding_idx + 1, +2, ...`` in order, padding ``padding_idx`` (either padding side)."""
    real = input_ids.ne(padding_idx).long()
    return torch.cumsum(real, dim=1) * real + padding_idx


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> TokenBatch:
    """Tokenize, truncate to ``max_length`` and pad ``texts`` into a :data:`TokenBatch` with
    ``special_tokens_mask`` (1 for special tokens and padding). Needs only the tokenizer,
    so DataLoader workers can run it."""
    texts = check_texts(texts)
    enc = tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
        return_special_tokens_mask=True,
    )
    batch = as_token_batch({k: v for k, v in enc.items() if isinstance(v, Tensor)})
    # Padding counts as "special" for views: neither may be altered.
    batch["special_tokens_mask"] = (
        batch["special_tokens_mask"].bool() | ~batch["attention_mask"].bool()
    ).long()
    return batch


MODEL_INPUT_KEYS: tuple[str, ...] = ("attention_mask", "token_type_ids", "position_ids")

TEXTCL_CONFIG_NAME = "textcl_config.json"
HEAD_WEIGHTS_NAME = "textcl_head.safetensors"
SHOW_PROGRESS_MIN_BATCHES = 32
"""``encode`` shows a progress bar by default only from this many batches on."""

Output = Literal["numpy", "torch"]
Precision = Literal["fp32", "bf16", "fp16"]


@dataclass
class EncoderConfig:
    """How a :class:`SentenceEncoder` turns token states into sentence vectors.

    Saved as ``textcl_config.json`` beside the model weights.
    """

    pooling: str = "mean"
    head_mode: str = "none"
    max_length: int | None = None
    normalize: bool = False

    def __post_init__(self) -> None:
        check_pooling_name(self.pooling)
        check_head_mode(self.head_mode)
        if self.max_length is not None and (
            not isinstance(self.max_length, int) or self.max_length < 2
        ):
            raise ValueError(f"max_length must be an integer >= 2 or None, got {self.max_length!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> EncoderConfig:
        known = {"pooling", "head_mode", "max_length", "normalize"}
        unknown = set(data) - known - {"textcl_version", "format"}
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {sorted(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in known})


def check_texts(texts: object, what: str = "texts") -> list[str]:
    """Validate a list of sentences; return it as a list.

    Raises ``ValueError`` for an empty list and ``TypeError`` naming the first non-string item.
    Empty strings are valid sentences.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"{what} must be a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError(f"{what} is empty: nothing to encode")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] is {type(t).__name__}, not str: {t!r:.80}")
    return out


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_context(device: torch.device, precision: str) -> Any:
    """An autocast context for ``precision`` on ``device`` (a no-op for fp32 / CPU fp16)."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"unknown precision {precision!r}: expected fp32, bf16 or fp16")
    if precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type != "cuda" and precision == "fp16":
        raise ValueError("fp16 autocast needs a CUDA device; use bf16 or fp32 on CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


def batch_bounds(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None = None
) -> list[tuple[int, int]]:
    """Split sentences sorted longest first into ``[start, stop)`` batches.

    Each batch has at most ``batch_size`` sentences and, with ``max_tokens``, at most
    ``max_tokens`` padded tokens (``size * lengths[start]``, the first being the longest);
    a single sentence longer than ``max_tokens`` forms a batch of its own.
    """
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise ValueError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
    bounds: list[tuple[int, int]] = []
    start, n = 0, len(lengths)
    while start < n:
        size = batch_size
        if max_tokens is not None:
            size = min(size, max(1, max_tokens // max(1, lengths[start])))
        stop = min(n, start + size)
        bounds.append((start, stop))
        start = stop
    return bounds


def _is_sentence_transformers_folder(path: Path) -> bool:
    return (path / "modules.json").is_file()


def _read_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None


def _sentence_transformers_settings(path: Path) -> tuple[Path, dict[str, Any]]:
    """Read a sentence-transformers folder: (transformer subfolder, EncoderConfig fields)."""
    modules = _read_json(path / "modules.json")
    if not isinstance(modules, list):
        raise ValueError(f"{path / 'modules.json'}: expected a list of modules")
    model_dir = path
    settings: dict[str, Any] = {}
    for module in modules:
        kind = str(module.get("type", ""))
        sub = path / str(module.get("path", ""))
        if kind.endswith(".Transformer"):
            model_dir = sub
            cfg_file = sub / "sentence_bert_config.json"
            if cfg_file.is_file():
                st_cfg = _read_json(cfg_file)
                if st_cfg.get("max_seq_length"):
                    settings["max_length"] = int(st_cfg["max_seq_length"])
        elif kind.endswith(".Pooling"):
            pool_cfg = _read_json(sub / "config.json")
            settings["pooling"] = _st_pooling_name(pool_cfg, sub / "config.json")
        elif kind.endswith(".Normalize"):
            settings["normalize"] = True
        else:
            raise ValueError(
                f"{path / 'modules.json'}: module type {kind!r} is not supported by textcl "
                "(supported: Transformer, Pooling, Normalize)"
            )
    return model_dir, settings


def _st_pooling_name(cfg: dict[str, Any], where: Path) -> str:
    if isinstance(cfg.get("pooling_mode"), str):
        mode = {"cls": "cls", "mean": "mean", "max": "max"}.get(cfg["pooling_mode"])
        if mode is None:
            raise ValueError(f"{where}: pooling_mode {cfg['pooling_mode']!r} is not supported")
        return mode
    chosen = [
        name
        for key, name in (
            ("pooling_mode_cls_token", "cls"),
            ("pooling_mode_mean_tokens", "mean"),
            ("pooling_mode_max_tokens", "max"),
        )
        if cfg.get(key)
    ]
    others = [
        k
        for k in (
            "pooling_mode_mean_sqrt_len_tokens",
            "pooling_mode_weightedmean_tokens",
            "pooling_mode_lasttoken",
        )
        if cfg.get(k)
    ]
    if len(chosen) != 1 or others:
        raise ValueError(f"{where}: only a single cls/mean/max pooling mode is supported")
    return chosen[0]


def _hub_snapshot(name: str) -> Path:
    from huggingface_hub import snapshot_download

    # Skip other frameworks' weights and exported formats: textcl needs config, tokenizer
    # and PyTorch weights (plus sentence-transformers' small JSON files).
    return Path(
        snapshot_download(
            name,
            ignore_patterns=[
                "*.onnx",
                "onnx/*",
                "openvino/*",
                "*.h5",
                "*.msgpack",
                "*.ot",
                "tf_model*",
                "flax_model*",
                "rust_model*",
                "*.tflite",
            ],
        )
    )


class SentenceEncoder(nn.Module):
    """A transformer encoder with pooling that maps sentences to vectors.

    Args:
        model: any Hugging Face ``PreTrainedModel`` that returns ``last_hidden_state``.
        tokenizer: its tokenizer (a fast tokenizer is recommended).
        pooling: a name from :data:`textcl.pooling.POOLING_STRATEGIES` or a :class:`Pooling`.
        head_mode: ``none``, ``train`` (MLP head at training time only) or ``always``.
        max_length: truncate sentences to this many tokens (default: the model's limit).
        normalize: L2-normalise the output of :meth:`encode` by default.

    ``forward(batch)`` maps a :data:`TokenBatch` to ``(B, H)`` embeddings with autograd (the
    training path); :meth:`encode` maps a list of strings to embeddings for inference.
    """

    model: Any  # a transformers PreTrainedModel (typed loosely: its API is duck-typed here)
    tokenizer: Any

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        pooling: str | Pooling = "mean",
        head_mode: str = "none",
        max_length: int | None = None,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling if isinstance(pooling, Pooling) else Pooling(pooling)
        self.head_mode = check_head_mode(head_mode)
        config = EncoderConfig(
            pooling=self.pooling.strategy,
            head_mode=head_mode,
            max_length=max_length,
            normalize=normalize,
        )
        self.max_length = config.max_length
        self.normalize = normalize
        self.head: ProjectionHead | None = (
            ProjectionHead(self.hidden_size) if head_mode != "none" else None
        )
        self._check_tokenizer_matches_model()

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> EncoderConfig:
        return EncoderConfig(
            pooling=self.pooling.strategy,
            head_mode=self.head_mode,
            max_length=self.max_length,
            normalize=self.normalize,
        )

    @property
    def hidden_size(self) -> int:
        cfg = getattr(self.model, "config", None)
        size = getattr(cfg, "hidden_size", None) or getattr(cfg, "d_model", None)
        if size is None:
            emb = self.model.get_input_embeddings()
            size = emb.embedding_dim
        return int(size)

    @property
    def embedding_dim(self) -> int:
        """Dimension of the sentence vectors."""
        return self.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def effective_max_length(self) -> int:
        """Truncation length: ``max_length`` or the smaller of tokenizer and model limits."""
        if self.max_length is not None:
            return self.max_length
        limits = [512]
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 100_000:
            limits.append(tok_max)
        pos = max_positions(self.model)
        if pos is not None:
            limits.append(pos)
        return min(limits)

    def _check_tokenizer_matches_model(self) -> None:
        get_emb = getattr(self.model, "get_input_embeddings", None)
        if get_emb is None:
            raise TypeError(
                f"{type(self.model).__name__} has no get_input_embeddings(): not a Hugging Face encoder"
            )
        n_rows = get_emb().num_embeddings
        n_tokens = len(self.tokenizer)
        if n_tokens > n_rows:
            raise ValueError(
                f"tokenizer/model mismatch: the tokenizer has {n_tokens} tokens but the model's "
                f"embedding table has only {n_rows} rows; load the tokenizer that belongs to this model"
            )
        if self.tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token; set tokenizer.pad_token before building the encoder"
            )

    # ------------------------------------------------------------------ tokenization
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> TokenBatch:
        """Tokenize, truncate and pad ``texts`` into a :data:`TokenBatch` (with
        ``special_tokens_mask``)."""
        return tokenize_texts(self.tokenizer, texts, max_length or self.effective_max_length)

    def _token_ids(self, texts: list[str], max_length: int) -> list[list[int]]:
        enc = self.tokenizer(
            texts,
            padding=False,
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
        )
        ids: list[list[int]] = enc["input_ids"]
        return ids

    def _pad(self, seqs: list[list[int]]) -> TokenBatch:
        longest = max(len(s) for s in seqs)
        pad_id = int(self.tokenizer.pad_token_id)
        input_ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for i, s in enumerate(seqs):
            n = len(s)
            if left:
                input_ids[i, longest - n :] = torch.tensor(s, dtype=torch.long)
                mask[i, longest - n :] = 1
            else:
                input_ids[i, :n] = torch.tensor(s, dtype=torch.long)
                mask[i, :n] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    # ------------------------------------------------------------------ forward
    def forward(self, batch: TokenBatch) -> Tensor:
        """Embed a token batch: ``(B, L)`` ids -> ``(B, H)`` sentence vectors (not normalised).

        Applies ``embedding_mask`` to the word embeddings (passed as ``inputs_embeds``) and
        the projection head according to ``head_mode`` and the training flag.
        """
        tensors = batch_tensors(batch)
        kwargs: dict[str, Any] = {k: tensors[k] for k in MODEL_INPUT_KEYS if k in tensors}
        embedding_mask = batch.get("embedding_mask")
        if embedding_mask is None:
            kwargs["input_ids"] = batch["input_ids"]
        else:
            # Embedding-level features (cutoff): the model gets its word embeddings scaled
            # by the mask as inputs_embeds and adds positions and token types itself. Models
            # that derive position ids from input_ids past padding_idx (RoBERTa, MPNet) would
            # number every slot from inputs_embeds, padding too: give them the ids they
            # derive from input_ids (equal for right padding; left padding differs).
            ids = batch["input_ids"]
            words = self.model.get_input_embeddings()(ids)
            kwargs["inputs_embeds"] = words * embedding_mask.to(
                device=words.device, dtype=words.dtype
            )
            padding_idx = padding_position_offset(self.model)
            if padding_idx is not None and "position_ids" not in kwargs:
                kwargs["position_ids"] = padded_position_ids(ids, padding_idx)
        out = self.model(
            **kwargs,
            output_hidden_states=self.pooling.needs_hidden_states,
            return_dict=True,
        )
        pooled = self.pooling(
            out.last_hidden_state,
            batch["attention_mask"],
            out.hidden_states if self.pooling.needs_hidden_states else None,
        )
        if self.head is not None and (self.head_mode == "always" or self.training):
            pooled = self.head(pooled)
        return pooled

    # ------------------------------------------------------------------ encode
    def length_sorted_batches(
        self,
        texts: list[str],
        batch_size: int,
        max_length: int | None = None,
        max_tokens: int | None = None,
    ) -> tuple[list[int], Iterator[TokenBatch]]:
        """Tokenize ``texts``, order them longest first (by token count) and yield padded
        batches.

        A batch holds at most ``batch_size`` sentences and, when ``max_tokens`` is given, at
        most ``max_tokens`` padded tokens (``len(batch) * longest``; token-budget batching:
        many short sentences or few long ones per batch, a sentence longer than the budget
        alone). Returns the order (``order[k]`` is the input index of the k-th sorted
        sentence) and a lazy iterator of CPU batches.
        """
        ids = self._token_ids(texts, max_length or self.effective_max_length)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        bounds = batch_bounds([len(ids[i]) for i in order], batch_size, max_tokens)

        def gen() -> Iterator[TokenBatch]:
            for start, stop in bounds:
                yield self._pad([ids[i] for i in order[start:stop]])

        return order, gen()

    def encode(
        self,
        texts: Sequence[str] | str,
        *,
        batch_size: int = 64,
        normalize: bool | None = None,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        output: Output = "numpy",
        precision: Precision = "fp32",
        show_progress: bool | None = None,
        max_tokens: int | None = None,
    ) -> np.ndarray | Tensor:
        """Encode sentences to a ``(N, D)`` float32 array (``(D,)`` for a single string).

        Sentences are sorted by token length and batched (less padding), results come back
        in input order. Runs under ``torch.inference_mode`` in eval mode; the module's
        train/eval mode is restored afterwards.

        Args:
            texts: sentences (empty strings are valid).
            batch_size: sentences per forward pass.
            normalize: L2-normalise; default: the encoder's ``normalize`` setting.
            max_length: truncation in tokens; default: :attr:`effective_max_length`.
            device: run on this device (the module is moved there); default: where it is.
            output: ``"numpy"`` or ``"torch"`` (a CPU tensor).
            precision: ``fp32``, or ``bf16``/``fp16`` autocast (fp16 on CUDA only).
            show_progress: progress bar; default: on from
                :data:`SHOW_PROGRESS_MIN_BATCHES` batches.
            max_tokens: token-budget batching: also cap each batch at this many padded
                tokens (see :meth:`length_sorted_batches`); ``None``: ``batch_size`` only.
        """
        single = isinstance(texts, str)
        items = check_texts([texts] if single else texts)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if output not in ("numpy", "torch"):
            raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")
        if device is not None:
            self.to(device)
        dev = self.device
        norm = self.normalize if normalize is None else normalize
        order, batches = self.length_sorted_batches(items, batch_size, max_length, max_tokens)
        n_batches = (len(items) + batch_size - 1) // batch_size
        show = n_batches >= SHOW_PROGRESS_MIN_BATCHES if show_progress is None else show_progress

        result = torch.empty((len(items), self.embedding_dim), dtype=torch.float32)
        order_t = torch.tensor(order, dtype=torch.long)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), autocast_context(dev, precision):
                done = 0
                with tqdm(total=len(items), disable=not show, desc="encode", unit="sent") as bar:
                    for batch in batches:
                        batch = as_token_batch(
                            {
                                k: v.to(dev, non_blocking=True)
                                for k, v in batch_tensors(batch).items()
                            }
                        )
                        emb = self.forward(batch).float()
                        if norm:
                            emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
                        n = emb.shape[0]
                        result[order_t[done : done + n]] = emb.cpu()
                        done += n
                        bar.update(n)
        finally:
            self.train(was_training)
        out = result[0] if single else result
        return out.numpy() if output == "numpy" else out

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the encoder to a folder, atomically (temp folder + rename).

        The folder loads with :meth:`load` and with plain ``transformers.AutoModel`` /
        ``AutoTokenizer.from_pretrained``; ``textcl_config.json`` holds pooling, head mode,
        max length and normalisation, ``textcl_head.safetensors`` the head weights.
        """
        from safetensors.torch import save_file

        from textcl import __version__

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            if self.head is not None:
                state = {
                    k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()
                }
                save_file(state, str(tmp / HEAD_WEIGHTS_NAME))
            cfg = {"format": 1, "textcl_version": __version__, **asdict(self.config)}
            (tmp / TEXTCL_CONFIG_NAME).write_text(
                json.dumps(cfg, indent=2) + "\n", encoding="utf-8"
            )
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                target.rename(old)
                tmp.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> SentenceEncoder:
        """Load a folder written by :meth:`save` (alias of :meth:`from_pretrained`)."""
        return cls.from_pretrained(path, **overrides)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        pooling: str | None = None,
        head_mode: str | None = None,
        max_length: int | None = None,
        normalize: bool | None = None,
        device: str | torch.device | None = None,
        **model_kwargs: Any,
    ) -> SentenceEncoder:
        """Load from a local folder or a Hugging Face hub id.

        Settings come, by priority: the arguments given here; the folder's
        ``textcl_config.json``; a sentence-transformers folder's ``modules.json`` (pooling,
        ``max_seq_length``, Normalize); defaults (``mean`` pooling, no head, the model's
        max length, no normalisation). ``model_kwargs`` go to ``AutoModel.from_pretrained``.
        """
        from transformers import AutoModel, AutoTokenizer

        for name, value, allowed in (
            ("pooling", pooling, POOLING_STRATEGIES),
            ("head_mode", head_mode, HEAD_MODES),
        ):
            if value is not None and value not in allowed:
                raise ValueError(f"unknown {name} {value!r}: expected one of {', '.join(allowed)}")

        from textcl.sources import resolve_source

        src = resolve_source(name_or_path, role="model")  # local folder or hub id, decided once
        settings: dict[str, Any] = {}
        head_file: Path | None = None
        if src.path is not None:
            local = src.path
            model_dir = local
            if (local / TEXTCL_CONFIG_NAME).is_file():
                settings = asdict(
                    EncoderConfig.from_dict(
                        _read_json(local / TEXTCL_CONFIG_NAME), str(local / TEXTCL_CONFIG_NAME)
                    )
                )
                head_file = local / HEAD_WEIGHTS_NAME
            elif _is_sentence_transformers_folder(local):
                model_dir, settings = _sentence_transformers_settings(local)
            if not (model_dir / "config.json").is_file():
                raise ValueError(
                    f"{model_dir} is not a model folder: it has no config.json "
                    "(expected a folder written by save_pretrained / SentenceEncoder.save)"
                )
        else:
            try:
                snapshot = _hub_snapshot(str(src.hub_id))
            except Exception as e:  # network, auth or missing repo
                raise src.hub_error(e) from e
            return cls.from_pretrained(
                snapshot,
                pooling=pooling,
                head_mode=head_mode,
                max_length=max_length,
                normalize=normalize,
                device=device,
                **model_kwargs,
            )

        overrides: tuple[tuple[str, object], ...] = (
            ("pooling", pooling),
            ("head_mode", head_mode),
            ("max_length", max_length),
            ("normalize", normalize),
        )
        for key, given in overrides:
            if given is not None:
                settings[key] = given
        config = EncoderConfig(**settings)

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        except Exception as e:
            raise ValueError(
                f"{model_dir}: could not load a tokenizer ({type(e).__name__}: {e})"
            ) from e
        try:
            model = AutoModel.from_pretrained(str(model_dir), **model_kwargs)
        except Exception as e:
            raise ValueError(
                f"{model_dir}: could not load a model ({type(e).__name__}: {e})"
            ) from e

        encoder = cls(
            model,
            tokenizer,
            pooling=config.pooling,
            head_mode=config.head_mode,
            max_length=config.max_length,
            normalize=config.normalize,
        )
        if encoder.head is not None and head_file is not None and head_file.is_file():
            from safetensors.torch import load_file

            encoder.head.load_state_dict(load_file(str(head_file)))
        elif encoder.head is not None:
            logger.info("%s: no saved projection head; initialised a new one", src.spec)
        if device is not None:
            encoder.to(device)
        return encoder
