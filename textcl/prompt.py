"""Prompt-based sentence representations (PromptBERT, Jiang et al. 2022, "PromptBERT:
Improving BERT Sentence Embeddings with Prompts", arXiv:2201.04337).

A sentence ``x`` is wrapped in a template such as ``This sentence : "[X]" means [MASK] .``
and its vector is the last hidden state of the template's ``[MASK]`` token (``prompt``
pooling). *Template denoising* subtracts the ``[MASK]`` state of the template alone (the
sentence left out) computed with the position ids the template tokens have in the full
input, so that the vector keeps what the sentence adds, not the template's own bias:

    h = h_[MASK](template(x)) - h_[MASK](template(""), same positions)

For unsupervised contrastive training the two views of a sentence are two different
templates (PromptBERT's "different templates" denoising), with dropout noise as in SimCSE.

As in the PromptBERT reference code, the template pieces and the sentence are tokenized
separately and concatenated (``[CLS] prefix sentence suffix [SEP]``); only the sentence is
truncated. Template tokens are marked in ``special_tokens_mask``, so token-level views
never alter them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from textcl.tokens import TokenBatch, as_token_batch, check_texts, padding_position_offset

SENTENCE_SLOT = "[X]"
MASK_SLOT = "[MASK]"
DEFAULT_PROMPT_TEMPLATE = 'This sentence : "[X]" means [MASK] .'
"""PromptBERT's manual template for BERT (Jiang et al. 2022, Table 1): the encoder's default."""
SECOND_PROMPT_TEMPLATE = 'This sentence of "[X]" means [MASK] .'
"""The other BERT template of PromptBERT's reference recipes: view a (and the inference
template) of its unsupervised BERT run, ``DEFAULT_PROMPT_TEMPLATE`` being view b."""

TEMPLATE_KEY = "prompt_template"
"""Batch key of the template-only sequence used for denoising: ``(B, T, 2)`` long, ``[..., 0]``
the template's token ids (special tokens included, sentence left out), ``[..., 1]`` 1 for the
tokens that come after the sentence slot (their position ids shift by the sentence length).
3-D, so views never take it for a per-token key."""


def check_template(template: str) -> str:
    """Return ``template`` if it holds ``[X]`` and ``[MASK]`` exactly once each."""
    if not isinstance(template, str):
        raise ValueError(f"prompt template must be a string, got {type(template).__name__}")
    for slot in (SENTENCE_SLOT, MASK_SLOT):
        if template.count(slot) != 1:
            raise ValueError(
                f"prompt template {template!r} must contain {slot} exactly once "
                f"(found {template.count(slot)}); e.g. {DEFAULT_PROMPT_TEMPLATE!r}"
            )
    return template


def tokenizer_name(tokenizer: Any) -> str:
    """``ClassName('name_or_path')`` for error messages."""
    return f"{type(tokenizer).__name__}({getattr(tokenizer, 'name_or_path', '')!r})"


def require_mask_token(tokenizer: Any) -> int:
    """The tokenizer's mask token id; ``ValueError`` naming the tokenizer if it has none."""
    mask_id = getattr(tokenizer, "mask_token_id", None)
    if mask_id is None:
        raise ValueError(
            f"prompt pooling needs a tokenizer with a mask token; {tokenizer_name(tokenizer)} "
            "has none (PromptBERT works with masked-language-model encoders: BERT, RoBERTa, "
            "MPNet, ...)"
        )
    return int(mask_id)


class PromptTemplate:
    """A template with ``[X]`` (the sentence) and ``[MASK]`` (the tokenizer's mask token),
    tokenized once for a tokenizer.

    Attributes:
        prefix / suffix: token ids before / after the sentence (no special tokens); the mask
            token is in one of them.
        lead: special tokens the tokenizer puts before the text ([CLS]: 1).
        n_special: special tokens it adds in all ([CLS] ... [SEP]: 2).
    """

    def __init__(self, template: str, tokenizer: Any) -> None:
        self.template = check_template(template)
        self.tokenizer = tokenizer
        self.mask_id = require_mask_token(tokenizer)
        before, after = template.split(SENTENCE_SLOT)
        self.prefix = self._piece_ids(before)
        self.suffix = self._piece_ids(after)
        n_masks = (self.prefix + self.suffix).count(self.mask_id)
        if n_masks != 1:
            raise ValueError(
                f"prompt template {template!r} gives {n_masks} mask tokens with "
                f"{tokenizer_name(tokenizer)}; expected exactly one"
            )
        # The special tokens the tokenizer wraps a text in: those around a lone mask token.
        probe = list(tokenizer(str(tokenizer.mask_token), add_special_tokens=True)["input_ids"])
        if probe.count(self.mask_id) != 1:
            raise ValueError(
                f"{tokenizer_name(tokenizer)} does not keep its mask token "
                f"{tokenizer.mask_token!r} as one token; prompt pooling cannot use it"
            )
        self.lead = probe.index(self.mask_id)
        self.before_ids = probe[: self.lead]
        self.after_ids = probe[self.lead + 1 :]
        self.n_special = len(probe) - 1
        self.template_only = self._with_specials(self.prefix + self.suffix)
        self.after_slot = [0] * (self.lead + len(self.prefix)) + [1] * (
            len(self.template_only) - self.lead - len(self.prefix)
        )

    def _with_specials(self, ids: Sequence[int]) -> list[int]:
        return [*self.before_ids, *ids, *self.after_ids]

    def _piece_ids(self, text: str) -> list[int]:
        """Token ids of a template piece, ``[MASK]`` mapped to the mask token id."""
        ids: list[int] = []
        parts = text.split(MASK_SLOT)
        for i, part in enumerate(parts):
            if part.strip():
                ids.extend(self.tokenizer(part.strip(), add_special_tokens=False)["input_ids"])
            if i < len(parts) - 1:
                ids.append(self.mask_id)
        return ids

    @property
    def overhead(self) -> int:
        """Tokens the template and the special tokens add to a sentence."""
        return len(self.prefix) + len(self.suffix) + self.n_special

    def sentence_budget(self, max_length: int) -> int:
        budget = max_length - self.overhead
        if budget < 1:
            raise ValueError(
                f"max_length {max_length} leaves no room for the sentence: the prompt template "
                f"{self.template!r} takes {self.overhead} tokens"
            )
        return budget

    def wrap_ids(self, sentence_ids: Sequence[int]) -> tuple[list[int], int]:
        """``[CLS] prefix sentence suffix [SEP]`` and the index of its mask token."""
        ids = self._with_specials(self.prefix + list(sentence_ids) + self.suffix)
        if self.mask_id in self.prefix:
            pos = self.lead + self.prefix.index(self.mask_id)
        else:
            pos = self.lead + len(self.prefix) + len(sentence_ids) + self.suffix.index(self.mask_id)
        return list(ids), pos

    def tokenize(
        self, texts: Sequence[str], max_length: int, *, denoise: bool = False
    ) -> TokenBatch:
        """Padded token batch of the wrapped ``texts`` (right padding), with
        ``special_tokens_mask`` (1 for special tokens, template tokens and padding),
        ``pooling_mask`` (1 at the template's mask token only) and, with ``denoise``, the
        template-only sequence under :data:`TEMPLATE_KEY`."""
        texts = check_texts(texts)
        budget = self.sentence_budget(max_length)
        enc = self.tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
        rows = [self.wrap_ids(ids[:budget]) for ids in enc]
        longest = max(len(ids) for ids, _ in rows)
        n = len(rows)
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError(f"{tokenizer_name(self.tokenizer)} has no pad token")
        input_ids = torch.full((n, longest), int(pad_id), dtype=torch.long)
        attention = torch.zeros((n, longest), dtype=torch.long)
        special = torch.ones((n, longest), dtype=torch.long)
        pooling = torch.zeros((n, longest), dtype=torch.long)
        for i, ((ids, pos), sent) in enumerate(zip(rows, enc, strict=True)):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[i, : len(ids)] = 1
            start = self.lead + len(self.prefix)
            special[i, start : start + min(len(sent), budget)] = 0
            pooling[i, pos] = 1
        batch = as_token_batch(
            {
                "input_ids": input_ids,
                "attention_mask": attention,
                "special_tokens_mask": special,
                "pooling_mask": pooling,
            }
        )
        if "token_type_ids" in getattr(self.tokenizer, "model_input_names", ()):
            batch["token_type_ids"] = torch.zeros_like(input_ids)
        if denoise:
            tpl = torch.tensor([self.template_only, self.after_slot], dtype=torch.long).T
            batch_dict: dict[str, Tensor] = dict(batch)  # type: ignore[arg-type]
            batch_dict[TEMPLATE_KEY] = tpl.unsqueeze(0).expand(n, -1, -1).contiguous()
            batch = as_token_batch(batch_dict)
        return batch

    def __repr__(self) -> str:
        return f"PromptTemplate({self.template!r})"


def template_positions(template: Tensor, attention_mask: Tensor, offset: int = 0) -> Tensor:
    """Position ids ``(B, T)`` of the template-only tokens as they sit in the full input:
    ``offset + j`` before the sentence slot, ``offset + j + n_b`` after it, with ``n_b``
    row ``b``'s sentence length (real tokens of the full row minus the template's ``T``)."""
    length = template.shape[1]
    n_sentence = attention_mask.sum(dim=1, keepdim=True).to(torch.long) - length
    steps = torch.arange(length, device=template.device).unsqueeze(0)
    return offset + steps + template[..., 1] * n_sentence


def template_state(model: Any, tokenizer: Any, tensors: Mapping[str, Tensor]) -> Tensor:
    """Template denoising: the ``[MASK]`` state ``(B, H)`` of each row's template alone
    (``tensors[TEMPLATE_KEY]``), its tokens at the position ids they have in the full row,
    through the transformer ``model``."""
    template = tensors.get(TEMPLATE_KEY)
    if template is None:
        raise ValueError(
            f"template denoising needs batch[{TEMPLATE_KEY!r}] (built by "
            "SentenceEncoder.tokenize); or build the encoder with prompt_denoise=False"
        )
    ids = template[..., 0]
    offset = padding_position_offset(model)
    kwargs: dict[str, Tensor] = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "position_ids": template_positions(
            template, tensors["attention_mask"], 0 if offset is None else offset + 1
        ),
    }
    if "token_type_ids" in tensors:
        kwargs["token_type_ids"] = torch.zeros_like(ids)
    states = model(**kwargs, return_dict=True).last_hidden_state
    slot = ids.eq(int(tokenizer.mask_token_id)).int().argmax(dim=1)
    return states[torch.arange(ids.shape[0], device=ids.device), slot]
