"""Test helpers importable from any test module (``from tests.helpers import ...``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import data_root as _bench_data_root
from benchmarks.common import minilm_path as minilm_path
from benchmarks.common import sts_data_dir as sts_data_dir

TINY_SENTENCES: tuple[str, ...] = (
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "The cat sat on the mat.",
    "Two dogs are running through a field of grass.",
    "A child is riding a bike down the street.",
    "The stock market fell sharply on Monday.",
    "Scientists discovered a new species of frog in the rainforest.",
    "He plays the piano every evening after dinner.",
    "She is reading a book in the park.",
    "The train to the city was delayed by an hour.",
    "A group of people are dancing at a wedding.",
    "The weather is cold and rainy today.",
    "An old man is fishing from a small boat on the lake.",
    "Children are playing football in the school yard.",
    "The president gave a speech about the economy.",
    "A bird is singing in the tree.",
)

CORPUS_EXTRA = (
    "Rain is expected over the weekend in the north.",
    "The museum opens a new exhibition of modern art.",
    "A cat is chasing a mouse in the kitchen.",
    "The team won the final after extra time.",
    "Engineers are repairing the old bridge.",
    "A woman is playing the violin on stage.",
    "The bakery sells fresh bread every morning.",
)
CORPUS: tuple[str, ...] = TINY_SENTENCES + CORPUS_EXTRA
"""23 distinct sentences: the search tests' corpus (the fixture corpus_txt writes it)."""

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tiny_tokenizer() -> Any:
    """A BERT-style WordPiece fast tokenizer over TINY_SENTENCES (no network).

    The vocabulary is built deterministically (``tokenizers``' WordPiece trainer breaks ties
    differently in every process, so a trained vocabulary, and with it every tiny model,
    would change from one test session to the next): the special tokens, every character
    with its ``##`` continuation, then the words of up to six characters and the longer ones
    that occur at least twice. Long rare words ("rainforest") split into several subwords,
    as real WordPiece vocabularies split rare words.
    """
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = Counter(
        word
        for sentence in TINY_SENTENCES
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(sentence))
    )
    chars = sorted({c for word in words for c in word})
    tokens = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    tokens += sorted(w for w, n in words.items() if len(w) > 1 and (n >= 2 or len(w) <= 6))
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )


def build_tiny_bert(vocab_size: int, seed: int = 0, **overrides: Any) -> Any:
    """A randomly initialised 2-layer BERT with hidden size 32."""
    from transformers import BertConfig, BertModel

    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
    )
    cfg.update(overrides)
    torch.manual_seed(seed)
    return BertModel(BertConfig(**cfg))


def data_root() -> Path | None:
    """TEXTCL_DATA, else ../shared/data beside the repository; None when neither exists
    (:func:`benchmarks.common.data_root` is the one lookup; ``minilm_path`` and
    ``sts_data_dir`` are re-exported from there)."""
    try:
        return _bench_data_root()
    except FileNotFoundError:
        return None


def join_gloo_world(rank: int, world: int, port: int) -> None:
    """Set the torch.distributed environment of one spawned CPU rank (loopback gloo, one
    thread, offline hub) before it calls ``textcl.distributed.init_distributed``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
