"""SentenceEncoder: a Hugging Face encoder + tokenizer + pooling (+ optional head).

The class owns the model: tokenization, the forward pass, :meth:`SentenceEncoder.encode`
and saving / loading. Folder formats live in :mod:`textcl.st_format`, hub downloads in
:mod:`textcl.hub`, precision choices in :mod:`textcl.precision`, token batches in
:mod:`textcl.tokens`, the model card in :mod:`textcl.model_card`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from textcl.encoder_config import EncoderConfig
from textcl.errors import InputError
from textcl.export.runtime import ExportedTransformer, load_model
from textcl.hub import model_folder, quiet_transformers
from textcl.inference import (
    AUTO,
    check_loop_options,
    compiled_model,
    encode_sorted,
    eval_mode,
    length_sorted_batches,
    resolve_max_tokens,
    resolve_streams,
)
from textcl.io import atomic_dir, atomic_write_text
from textcl.model_card import CardModel, DenseInfo, render_model_card
from textcl.pooling import (
    HEAD_MODES,
    POOLING_STRATEGIES,
    DenseLayer,
    Pooling,
    ProjectionHead,
    check_head_mode,
)
from textcl.precision import (
    inference_copy,
    optimizer_steps,
    resolve_inference_precision,
)
from textcl.prompt import TEMPLATE_KEY, PromptTemplate, template_state
from textcl.st_format import read_model_folder, write_model_folder
from textcl.tokens import (
    MODEL_INPUT_KEYS,
    TokenBatch,
    batch_tensors,
    check_texts,
    max_positions,
    padded_position_ids,
    padding_position_offset,
    tokenize_texts,
)

logger = logging.getLogger(__name__)

PROGRESS_LOGGER = "textcl"
"""The logger whose INFO level turns :meth:`SentenceEncoder.encode`'s progress bar on by
default (sentence-transformers' convention: bars when logging at INFO or DEBUG)."""
SHOW_PROGRESS_MIN_BATCHES = 32
"""With the ``textcl`` logger at INFO, ``encode`` shows a progress bar by default only from
this many batches on."""
VOCAB_MIN_FRACTION_DIVISOR = 2
"""A tokenizer with fewer than ``1 / VOCAB_MIN_FRACTION_DIVISOR`` of the model's embedding
rows as tokens is refused (see ``_check_tokenizer_matches_model``)."""

Output = Literal["numpy", "torch"]

IGNORED_ENCODE_KWARGS_LOG = "encode(): ignoring keyword argument(s) %s (not used by textcl)"
"""Debug line for unknown keywords MTEB / sentence-transformers callers pass."""


def default_show_progress(n_batches: int) -> bool:
    """Whether :meth:`SentenceEncoder.encode` draws a bar when the caller did not say: only
    when the ``textcl`` logger is enabled for INFO and there are at least
    :data:`SHOW_PROGRESS_MIN_BATCHES` batches. Library callers (evaluation, search) thus
    draw none by default; the CLI asks for bars explicitly."""
    return (
        logging.getLogger(PROGRESS_LOGGER).isEnabledFor(logging.INFO)
        and n_batches >= SHOW_PROGRESS_MIN_BATCHES
    )


def check_max_length(model: Any, value: int | None, what: str = "max_length") -> int | None:
    """``value`` when it is a valid truncation length for ``model`` (an integer >= 2, at
    most :func:`textcl.tokens.max_positions`), else :class:`~textcl.errors.InputError`
    naming ``what`` and the model's limit: a longer sequence fails in the position
    embeddings at the first long sentence."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise InputError(f"{what} must be an integer >= 2, got {value!r}")
    limit = max_positions(model)
    if limit is not None and value > limit:
        raise InputError(
            f"{what} {value} is more than the model's limit of {limit} tokens (its position "
            f"embeddings): choose {what} <= {limit}"
        )
    return value


class SentenceEncoder(nn.Module):
    """A transformer encoder with pooling that maps sentences to vectors.

    Args:
        model: any Hugging Face ``PreTrainedModel`` that returns ``last_hidden_state``.
        tokenizer: its tokenizer (a fast tokenizer is recommended).
        pooling: a name from :data:`textcl.pooling.POOLING_STRATEGIES` or a :class:`Pooling`.
        head_mode: ``none``, ``train`` (MLP head at training time only) or ``always``.
        max_length: truncate sentences to this many tokens (default: the model's limit).
        normalize: L2-normalise the output of :meth:`encode` by default.
        dense: ``Dense`` layers applied after pooling and head (from sentence-transformers
            folders).
        truncate_dim: keep the first ``truncate_dim`` output dimensions (before normalising).
        prompts / default_prompt_name: named prompts prepended to texts by :meth:`encode`.

    ``forward(batch)`` maps a :data:`TokenBatch` to ``(B, H)`` embeddings with autograd (the
    training path); :meth:`encode` maps a list of strings to embeddings for inference.
    """

    model: Any  # a transformers PreTrainedModel (typed loosely: its API is duck-typed here)
    tokenizer: Any
    bf16_inference: str = "weights"
    """How :meth:`encode` runs bf16: ``weights`` (a bf16 copy of the transformer; pooling,
    head, normalisation in fp32) or ``autocast``. Weights: measured faster than autocast
    (benchmarks/RESULTS.md, "Inference precision")."""
    precision: str = "auto"
    """Default precision of :meth:`encode` (see :func:`resolve_inference_precision`); set it
    to ``"fp32"`` to force full precision everywhere (evaluation, indexing)."""
    last_precision: str | None = None
    """The precision (and bf16 mode) the last :meth:`encode` call ran at, e.g. ``bf16
    (weights)``."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        pooling: str | Pooling = "mean",
        head_mode: str = "none",
        max_length: int | None = None,
        normalize: bool = False,
        *,
        dense: Sequence[DenseLayer] | None = None,
        truncate_dim: int | None = None,
        prompts: Mapping[str, str] | None = None,
        default_prompt_name: str | None = None,
        include_prompt: bool = True,
        prompt_template: str | None = None,
        prompt_denoise: bool = True,
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
            truncate_dim=truncate_dim,
            prompts=dict(prompts or {}),
            default_prompt_name=default_prompt_name,
            include_prompt=include_prompt,
            prompt_template=prompt_template,
            prompt_denoise=prompt_denoise,
        )
        self.prompt_template = config.prompt_template
        self.prompt_denoise = config.prompt_denoise
        self._prompt: PromptTemplate | None = None  # for ``prompt`` pooling
        if self.pooling.strategy == "prompt":
            self._prompt = PromptTemplate(str(self.prompt_template), tokenizer)
        self.max_length = self.check_max_length(config.max_length)
        self.include_prompt = bool(include_prompt)
        self.normalize = normalize
        self.truncate_dim = config.truncate_dim
        self.prompts = config.prompts
        self.default_prompt_name = config.default_prompt_name
        self.head: ProjectionHead | None = (
            ProjectionHead(self.hidden_size) if head_mode != "none" else None
        )
        self.dense = nn.ModuleList(list(dense or []))
        width = self.hidden_size
        for i, layer in enumerate(self.dense):
            if not isinstance(layer, DenseLayer) or layer.in_features != width:
                raise ValueError(
                    f"dense[{i}] must be a DenseLayer taking {width} features, got {layer!r}"
                )
            width = layer.out_features
        if self.truncate_dim is not None and self.truncate_dim > width:
            raise ValueError(
                f"truncate_dim {self.truncate_dim} is larger than the embedding size {width}"
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
            truncate_dim=self.truncate_dim,
            prompts=dict(self.prompts),
            default_prompt_name=self.default_prompt_name,
            include_prompt=self.include_prompt,
            prompt_template=self.prompt_template,
            prompt_denoise=self.prompt_denoise,
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
    def full_embedding_dim(self) -> int:
        """Dimension of the vectors before ``truncate_dim`` (hidden size or last Dense's)."""
        width = self.hidden_size
        for layer in self.dense:
            assert isinstance(layer, DenseLayer)
            width = layer.out_features
        return width

    @property
    def embedding_dim(self) -> int:
        """Dimension of the sentence vectors :meth:`encode` returns by default."""
        return self.truncate_dim or self.full_embedding_dim

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

    def check_max_length(self, value: int | None, what: str = "max_length") -> int | None:
        """``value`` when it is a valid truncation length for this model, else
        :class:`~textcl.errors.InputError` naming ``what`` and the model's limit (see
        :func:`check_max_length`). Every caller that truncates with a length of its own
        (encode, evaluation, training's ``max_length``) checks it here, before any work."""
        return check_max_length(self.model, value, what)

    def _check_tokenizer_matches_model(self) -> None:
        get_emb = getattr(self.model, "get_input_embeddings", None)
        if get_emb is None:
            raise TypeError(
                f"{type(self.model).__name__} has no get_input_embeddings(): not a Hugging Face encoder"
            )
        n_rows = get_emb().num_embeddings
        n_tokens = len(self.tokenizer)
        if n_tokens > n_rows:
            raise InputError(
                f"tokenizer/model mismatch: the tokenizer has {n_tokens} tokens but the model's "
                f"embedding table has only {n_rows} rows; load the tokenizer that belongs to this model"
            )
        if n_tokens * VOCAB_MIN_FRACTION_DIVISOR < n_rows:
            # Embedding tables are padded by a few rows at most; a tokenizer covering less
            # than half of them is another model's, or a default one built from no files.
            raise InputError(
                f"tokenizer/model mismatch: the tokenizer has only {n_tokens} tokens but the "
                f"model's embedding table has {n_rows} rows; the tokenizer does not belong to "
                "this model (a folder without tokenizer files loads a default tokenizer of a "
                "few special tokens): load the tokenizer that belongs to this model"
            )
        if self.tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token; set tokenizer.pad_token before building the encoder"
            )

    # ------------------------------------------------------------------ tokenization
    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> TokenBatch:
        """Tokenize, truncate and pad ``texts`` into a :data:`TokenBatch` (with
        ``special_tokens_mask``). With ``prompt`` pooling each text is wrapped in the
        encoder's template (:meth:`textcl.prompt.PromptTemplate.tokenize`)."""
        self.check_max_length(max_length)
        if self._prompt is not None:
            return self.tokenize_prompted(texts, max_length)
        return tokenize_texts(self.tokenizer, texts, max_length or self.effective_max_length)

    def tokenize_prompted(
        self, texts: Sequence[str], max_length: int | None = None, template: Any = None
    ) -> TokenBatch:
        """``prompt`` pooling: ``texts`` wrapped in ``template`` (a
        :class:`textcl.prompt.PromptTemplate`; default: the encoder's), with the
        template-only sequence for denoising when the encoder denoises."""
        tpl = template if template is not None else self._prompt
        if tpl is None:
            raise ValueError(
                f"tokenize_prompted needs pooling 'prompt', not {self.pooling.strategy!r}"
            )
        return tpl.tokenize(
            texts, max_length or self.effective_max_length, denoise=self.prompt_denoise
        )

    # ------------------------------------------------------------------ forward
    def forward(self, batch: TokenBatch) -> Tensor:
        """Embed a token batch: ``(B, L)`` ids -> ``(B, H)`` sentence vectors (not normalised).

        Applies ``embedding_mask`` to the word embeddings (passed as ``inputs_embeds``) and
        the projection head according to ``head_mode`` and the training flag.
        """
        return self._embed(batch, self.model)

    def _embed(self, batch: TokenBatch, model: Any) -> Tensor:
        """:meth:`forward` through ``model`` (the transformer or a bf16/qint8 copy of it);
        hidden states are promoted to fp32 before pooling, head and dense layers."""
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
            words = model.get_input_embeddings()(ids)
            kwargs["inputs_embeds"] = words * embedding_mask.to(
                device=words.device, dtype=words.dtype
            )
            padding_idx = padding_position_offset(self.model)
            if padding_idx is not None and "position_ids" not in kwargs:
                kwargs["position_ids"] = padded_position_ids(ids, padding_idx)
        out = model(
            **kwargs,
            output_hidden_states=self.pooling.needs_hidden_states,
            return_dict=True,
        )
        if self.pooling.strategy == "prompt" and "pooling_mask" not in tensors:
            raise ValueError(
                "prompt pooling needs batches built by SentenceEncoder.tokenize (the template's "
                "[MASK] slot in 'pooling_mask')"
            )
        last, hidden = out.last_hidden_state, out.hidden_states
        if model is not self.model and last.dtype != torch.float32:
            last = last.float()
            hidden = tuple(h.float() for h in hidden) if hidden is not None else None
        pooled = self.pooling(
            last,
            batch.get("pooling_mask", batch["attention_mask"]),
            hidden if self.pooling.needs_hidden_states else None,
        )
        # prompt pooling: denoise batches that carry the template (tokenize() adds it when
        # the encoder denoises; the trainer's collator when training denoises).
        if self.pooling.strategy == "prompt" and (TEMPLATE_KEY in tensors or self.prompt_denoise):
            pooled = pooled - template_state(self.model, self.tokenizer, tensors)
        if self.head is not None and (self.head_mode == "always" or self.training):
            pooled = self.head(pooled)
        for layer in self.dense:
            pooled = layer(pooled)
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
        sentence) and a lazy iterator of CPU batches (see
        :func:`textcl.inference.length_sorted_batches`).
        """
        self.check_max_length(max_length)
        order, bounds, make = length_sorted_batches(
            self, texts, batch_size, max_length or self.effective_max_length, max_tokens
        )
        return order, (make(start, stop) for start, stop in bounds)

    def _inference_model(self, precision: str) -> Any:
        """The transformer :meth:`encode` runs at ``precision``: the model itself, or a
        cached bf16 (``bf16_inference == "weights"``) / qint8 copy of it; an exported model's
        graph with its float parts at ``precision`` (:meth:`ExportedTransformer.at_precision`).

        The copy is rebuilt when any weight changed since (parameter identity, storage and
        in-place version counters: ``load_state_dict`` or an in-place edit invalidates it; any
        optimizer step in the process, fused ones included, which leave the version counters
        alone: :func:`~textcl.precision.optimizer_steps`), or the device changed. The copy is
        not a submodule: not saved, not trained.
        """
        if isinstance(self.model, ExportedTransformer):  # int8 or not, as exported
            return self.model.at_precision(precision)
        if precision not in ("bf16", "qint8") or (
            precision == "bf16" and self.bf16_inference == "autocast"
        ):
            return self.model
        params = list(self.model.parameters())
        key = (
            precision,
            str(self.device),
            optimizer_steps(),
            tuple((id(q), q.data_ptr(), q._version) for q in params),
        )
        cached = self.__dict__.get("_inference_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        self.__dict__.pop("_inference_cache", None)  # free the old copy first
        twin = inference_copy(self.model, precision)
        self.__dict__["_inference_cache"] = (key, twin)
        return twin

    @overload
    def encode(
        self,
        texts: str | Iterable[str],
        *,
        output: Literal["torch"],
        convert_to_tensor: bool = ...,
        convert_to_numpy: bool = ...,
        **kwargs: Any,
    ) -> Tensor: ...

    @overload
    def encode(
        self,
        texts: str | Iterable[str],
        *,
        output: Output = ...,
        convert_to_tensor: Literal[True],
        convert_to_numpy: bool = ...,
        **kwargs: Any,
    ) -> Tensor: ...

    @overload
    def encode(
        self,
        texts: str | Iterable[str],
        *,
        output: Output = ...,
        convert_to_tensor: bool = ...,
        convert_to_numpy: Literal[False],
        **kwargs: Any,
    ) -> Tensor: ...

    @overload
    def encode(
        self,
        texts: str | Iterable[str],
        *,
        output: Literal["numpy"] = ...,
        convert_to_tensor: Literal[False] = ...,
        convert_to_numpy: Literal[True] = ...,
        **kwargs: Any,
    ) -> np.ndarray: ...

    @overload
    def encode(
        self,
        texts: str | Iterable[str],
        *,
        output: Output = ...,
        convert_to_tensor: bool = ...,
        convert_to_numpy: bool = ...,
        **kwargs: Any,
    ) -> np.ndarray | Tensor: ...

    def encode(
        self,
        texts: str | Iterable[str],
        *,
        batch_size: int = 64,
        normalize: bool | None = None,
        max_length: int | None = None,
        device: str | torch.device | None = None,
        output: Output = "numpy",
        precision: str | None = None,
        show_progress: bool | None = None,
        max_tokens: int | str | None = AUTO,
        prefetch: bool | None = None,
        compile: bool = False,
        streams: int | str = AUTO,
        prompt_name: str | None = None,
        prompt: str | None = None,
        truncate_dim: int | None = None,
        normalize_embeddings: bool | None = None,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        output_value: str | None = "sentence_embedding",
        **kwargs: Any,
    ) -> np.ndarray | Tensor:
        """Encode sentences to a ``(N, D)`` float32 array (``(D,)`` for a single string).

        Sentences are sorted by token length and batched (less padding), results come back
        in input order. Runs under ``torch.inference_mode`` in eval mode; the module's
        train/eval mode is restored afterwards. The keywords of
        ``SentenceTransformer.encode`` are accepted, so sentence-transformers and MTEB callers
        work unchanged; other keywords (MTEB's ``task_name``, ``prompt_type``, ...) are
        ignored with a debug log line.

        Args:
            texts: a string or any iterable of strings (list, tuple, 1-D numpy array,
                generator); empty strings are valid.
            batch_size: sentences per forward pass.
            normalize: L2-normalise (after ``truncate_dim``); default: the encoder's
                ``normalize`` setting. ``normalize_embeddings`` is sentence-transformers'
                name for it (``True`` forces it on, like there).
            max_length: truncation in tokens; default: :attr:`effective_max_length`.
            device: run on this device (the module is moved there); default: where it is.
            output: ``"numpy"`` or ``"torch"`` (a CPU tensor). ``convert_to_tensor=True`` or
                ``convert_to_numpy=False`` (sentence-transformers' names) also give a tensor.
            precision: ``auto`` (bf16 on hardware with native bf16, else fp32; see
                :func:`resolve_inference_precision`), ``fp32`` (alias ``float32``: full
                precision), ``bf16`` (weights cast to bf16, or autocast, see
                :attr:`bf16_inference`; pooling and normalisation stay fp32), ``fp16``
                (autocast, CUDA only) or ``qint8`` (dynamic int8 quantization of the linear
                layers, CPU only; float32 embeddings). Default: :attr:`precision` (``auto``). The choice is logged and
                kept in :attr:`last_precision`. sentence-transformers' quantised embedding
                precisions (binary, ...) are refused.
            show_progress: progress bar (alias ``show_progress_bar``); default
                (:func:`default_show_progress`): only when the ``textcl`` logger is enabled
                for INFO and from :data:`SHOW_PROGRESS_MIN_BATCHES` batches on, so library
                callers draw no bars unless asked (sentence-transformers' convention).
            max_tokens: token-budget batching: also cap each batch at this many padded
                tokens (see :meth:`length_sorted_batches`); ``None``: ``batch_size`` only;
                ``"auto"`` (default): :data:`~textcl.inference.CPU_MAX_TOKENS` on CPU,
                ``None`` elsewhere (:func:`~textcl.inference.resolve_max_tokens`).
            prefetch: build the next batch in a background thread while the current one
                runs (same batches, identical embeddings); ``False``: one thread;
                ``None`` (default): on, except for an exported model, whose runtime already
                keeps every core busy (the thread beside it cost OpenVINO 7-13%).
            compile / streams: ``torch.compile`` the transformer; CPU row slices per batch
                side by side (same embeddings): :mod:`textcl.inference`, docs/inference.md.
            prompt_name: prepend the prompt of this name (from :attr:`prompts`).
            prompt: prepend this text (wins over ``prompt_name``); default: the prompt named
                ``default_prompt_name`` if set.
            truncate_dim: keep the first dimensions; default: the encoder's ``truncate_dim``.
            output_value: only ``"sentence_embedding"`` (or ``None``) is supported.
        """
        if kwargs:
            logger.debug(IGNORED_ENCODE_KWARGS_LOG, sorted(kwargs))
        if output_value not in (None, "sentence_embedding"):
            raise ValueError(
                f"output_value={output_value!r} is not supported: textcl returns sentence "
                "embeddings only"
            )
        requested = self.precision if precision is None else precision
        resolve_inference_precision(requested, self.device if device is None else device)
        if show_progress is None:
            show_progress = show_progress_bar
        if normalize_embeddings is not None:
            if normalize is False and normalize_embeddings:
                raise ValueError("normalize=False and normalize_embeddings=True disagree")
            # sentence-transformers: False means "no extra normalisation" (a Normalize module
            # still applies); True normalises.
            normalize = True if normalize_embeddings else normalize
        as_tensor = output == "torch" or convert_to_tensor or not convert_to_numpy
        single = isinstance(texts, str)
        items = check_texts([texts] if single else texts)
        text_prompt = self._resolve_prompt(prompt, prompt_name)
        prompt_length = 0
        if text_prompt:
            items = [text_prompt + t for t in items]
            if not self.include_prompt:
                prompt_length = self.prompt_length(text_prompt)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.check_max_length(max_length)
        check_loop_options(max_tokens, prefetch, compile, streams, str(requested))
        if output not in ("numpy", "torch"):
            raise ValueError(f"output must be 'numpy' or 'torch', got {output!r}")
        dim = self.full_embedding_dim
        trunc = self.truncate_dim if truncate_dim is None else truncate_dim
        if trunc is not None:
            if isinstance(trunc, bool) or not isinstance(trunc, int) or trunc < 1:
                raise ValueError(f"truncate_dim must be a positive integer, got {trunc!r}")
            dim = min(dim, trunc)
        if device is not None:
            self.to(device)
        dev = self.device
        precision = resolve_inference_precision(requested, dev)
        model = self._inference_model(precision)
        # An exported graph runs in its runtime: its precision, streams and threads, not torch's.
        exported = isinstance(model, ExportedTransformer)
        mode = model.run_label if exported else precision
        if precision == "bf16" and not exported:
            mode = "bf16 (weights)" if model is not self.model else "bf16 (autocast)"
        if mode != self.last_precision:
            logger.info("encode precision: %s (requested %s, device %s)", mode, requested, dev)
        self.last_precision = mode
        plain = model is self.model and precision != "qint8" and not exported
        autocast = precision if plain else "fp32"
        if compile and not exported:
            model = compiled_model(self.__dict__, model)
        norm = self.normalize if normalize is None else normalize
        budget = resolve_max_tokens(max_tokens, dev)
        if prefetch is None:
            prefetch = not exported
        n_streams = 1 if exported else resolve_streams(streams, dev, torch.get_num_threads())
        lengths = max_length or self.effective_max_length
        n_batches = (len(items) + batch_size - 1) // batch_size
        show = default_show_progress(n_batches) if show_progress is None else bool(show_progress)
        with eval_mode(self):
            result = encode_sorted(
                self,
                model,
                items,
                dim=dim,
                normalize=norm,
                batch_size=batch_size,
                max_length=lengths,
                max_tokens=budget,
                prompt_length=prompt_length,
                device=dev,
                autocast=autocast,
                show_progress=show,
                prefetch=prefetch,
                streams=n_streams,
            )
        out = result[0] if single else result
        return out if as_tensor else out.numpy()

    def prompt_length(self, prompt: str) -> int:
        """Tokens a prompt occupies at the start of a sequence, leading special tokens
        included, a trailing special token (``[SEP]``, EOS) excluded (sentence-transformers'
        rule)."""
        ids: list[int] = self.tokenizer([prompt], truncation=True)["input_ids"][0]
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        return len(ids) - 1 if ids and ids[-1] in special else len(ids)

    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        """sentence-transformers' rule: ``prompt``, else ``prompts[prompt_name]``, else the
        default prompt."""
        if prompt is not None:
            if prompt_name is not None:
                logger.warning("encode(): both prompt and prompt_name given; using prompt")
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(
                    f"prompt_name {prompt_name!r} is not one of this encoder's prompts "
                    f"{sorted(self.prompts)}"
                )
            return self.prompts[prompt_name]
        if self.default_prompt_name is not None:
            return self.prompts.get(self.default_prompt_name)
        return None

    # ------------------------------------------------------------------ save / load
    def card_model(self) -> CardModel:
        """What the model card (:mod:`textcl.model_card`) says about this encoder: its
        config and a few derived sizes, as plain data."""
        default_prompt = self.config.default_prompt
        return CardModel(
            config=self.config,
            max_length=self.effective_max_length,
            embedding_dim=self.embedding_dim,
            prompt_tokens=self.prompt_length(default_prompt) if default_prompt else 0,
            dense=tuple(
                DenseInfo(type(layer.activation_function).__name__, bool(layer.bias))
                for layer in self.dense
            ),
        )

    def save(self, path: str | os.PathLike[str], *, card: Mapping[str, Any] | None = None) -> Path:
        """Write the encoder to a folder, atomically (:func:`textcl.io.atomic_dir`).

        The folder loads with :meth:`load`, with plain ``transformers.AutoModel`` /
        ``AutoTokenizer.from_pretrained`` and with ``sentence_transformers.SentenceTransformer``
        (``modules.json``: Transformer, Pooling, a ``Dense`` for the head when
        ``head_mode="always"``, the ``Dense`` layers read from a sentence-transformers
        folder, Normalize when the encoder normalises). ``textcl_config.json`` (read first by
        textcl) holds pooling, head mode, max length, normalisation, prompts and
        ``truncate_dim``; ``textcl_head.safetensors`` the head weights. ``README.md`` is a
        hub model card (:mod:`textcl.model_card`) built from ``card``: the training recipe,
        scores and the base model, as the trainer passes them.

        ``first_last_avg`` / ``last2_avg`` pooling has no sentence-transformers equivalent:
        the folder then says ``mean`` to sentence-transformers, a warning is logged and the
        model card says so.
        """
        target = Path(path)
        notes: list[str] = []
        with quiet_transformers(), atomic_dir(target) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            notes = write_model_folder(
                tmp,
                self.config,
                max_length=self.effective_max_length,
                hidden_size=self.hidden_size,
                head=self.head,
                dense=[layer for layer in self.dense if isinstance(layer, DenseLayer)],
            )
            card_text = render_model_card(self.card_model(), card or {}, notes=notes)
            atomic_write_text(tmp / "README.md", card_text)
        for note in notes:
            logger.warning("%s: %s", target, note)
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
        prompt_template: str | None = None,
        prompt_denoise: bool | None = None,
        **model_kwargs: Any,
    ) -> SentenceEncoder:
        """Load from a local folder or a Hugging Face hub id.

        Settings come, by priority: the arguments given here; the folder's
        ``textcl_config.json``; a sentence-transformers folder's ``modules.json`` (pooling,
        ``max_seq_length``, Dense, Normalize) and ``config_sentence_transformers.json``
        (prompts, default prompt, ``truncate_dim``); unsupported modules raise
        ``ValueError`` naming them; defaults (``mean`` pooling, no head, the model's
        max length, no normalisation). ``model_kwargs`` go to ``AutoModel.from_pretrained``.
        """
        for name, value, allowed in (
            ("pooling", pooling, POOLING_STRATEGIES),
            ("head_mode", head_mode, HEAD_MODES),
        ):
            if value is not None and value not in allowed:
                raise ValueError(f"unknown {name} {value!r}: expected one of {', '.join(allowed)}")
        folder = read_model_folder(model_folder(name_or_path))
        settings = dict(folder.settings)
        overrides: tuple[tuple[str, object], ...] = (
            ("pooling", pooling),
            ("head_mode", head_mode),
            ("max_length", max_length),
            ("normalize", normalize),
            ("prompt_template", prompt_template),
            ("prompt_denoise", prompt_denoise),
        )
        for key, given in overrides:
            if given is not None:
                settings[key] = given
        if settings.get("pooling", "mean") != "prompt" and prompt_template is None:
            settings.pop("prompt_template", None)  # a saved template, pooling overridden
        config = EncoderConfig(**settings)
        model, tokenizer = load_model(folder.model_dir, model_kwargs)  # exported or not
        check_max_length(
            model,
            config.max_length,
            "max_length" if max_length is not None else f"{name_or_path}: saved max_length",
        )
        encoder = cls(
            model,
            tokenizer,
            pooling=config.pooling,
            head_mode=config.head_mode,
            max_length=config.max_length,
            normalize=config.normalize,
            dense=folder.dense,
            truncate_dim=config.truncate_dim,
            prompts=config.prompts,
            default_prompt_name=config.default_prompt_name,
            include_prompt=config.include_prompt,
            prompt_template=config.prompt_template,
            prompt_denoise=config.prompt_denoise,
        )
        head_file = folder.head_file
        if encoder.head is not None and head_file is not None and head_file.is_file():
            encoder.head.load_state_dict(load_file(str(head_file)))
        elif encoder.head is not None:
            logger.info("%s: no saved projection head; initialised a new one", name_or_path)
        if device is not None:
            encoder.to(device)
        return encoder
