"""Property tests over random padded batches: the contract every view keeps."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.views.batches import HIDDEN, clone_batch, fixed_slots, token_batches
from textcl import SentenceEncoder
from textcl.tokens import TokenBatch
from textcl.views import (
    Compose,
    FeatureCutoff,
    SpanCutoff,
    TokenCutoff,
    TokenShuffle,
    View,
    ViewContext,
    WordRepetition,
    available_views,
    build_view,
)

SETTINGS = settings(max_examples=50, deadline=None)

SAME_LENGTH_VIEWS: dict[str, Callable[[int], View]] = {
    "shuffle": lambda seed: TokenShuffle(seed=seed),
    "token_cutoff": lambda seed: TokenCutoff(0.3, seed=seed),
    "span_cutoff": lambda seed: SpanCutoff(0.3, seed=seed),
    "feature_cutoff": lambda seed: FeatureCutoff(0.25, seed=seed, hidden_size=HIDDEN),
    "shuffle+feature_cutoff": lambda seed: Compose(
        [TokenShuffle(seed=seed), FeatureCutoff(0.25, seed=seed + 1, hidden_size=HIDDEN)]
    ),
    "token_cutoff+shuffle+span_cutoff": lambda seed: Compose(
        [TokenCutoff(0.3, seed=seed), TokenShuffle(seed=seed + 1), SpanCutoff(0.3, seed=seed + 2)]
    ),
}

ALL_VIEWS: dict[str, Callable[[int], View]] = {
    **SAME_LENGTH_VIEWS,
    "repetition": lambda seed: WordRepetition(0.5, seed=seed),
    "token_cutoff+repetition+feature_cutoff": lambda seed: Compose(
        [
            TokenCutoff(0.3, seed=seed),
            WordRepetition(0.5, seed=seed + 1),
            FeatureCutoff(0.25, seed=seed + 2, hidden_size=HIDDEN),
        ]
    ),
}


def _check_valid(batch: TokenBatch) -> None:
    ids = batch["input_ids"]
    assert ids.dim() == 2 and ids.dtype == torch.long
    for key, value in batch.items():
        if key == "embedding_mask":
            # broadcastable to (B, L, H), float, values in {0, 1}
            torch.broadcast_shapes(value.shape, (*ids.shape, HIDDEN))
            assert value.is_floating_point()
            assert bool(((value == 0) | (value == 1)).all())
        else:
            assert value.shape == ids.shape, key
    assert set(batch["attention_mask"].unique().tolist()) <= {0, 1}
    # every row keeps its first special token attended (pooling never divides by zero)
    assert bool((batch["attention_mask"].sum(1) >= 1).all())


@pytest.mark.parametrize("name", list(ALL_VIEWS))
@SETTINGS
@given(batch=token_batches(), seed=st.integers(0, 2**16))
def test_view_contract(name: str, batch: TokenBatch, seed: int) -> None:
    before = clone_batch(batch)
    out = ALL_VIEWS[name](seed)(batch)
    # the input is never modified in place
    for k, v in before.items():
        assert torch.equal(batch[k], v), k
    _check_valid(out)
    # deterministic given the seed
    again = ALL_VIEWS[name](seed)(clone_batch(before))
    assert out.keys() == again.keys()
    for k in out:
        assert torch.equal(out[k], again[k]), k


@pytest.mark.parametrize("name", list(SAME_LENGTH_VIEWS))
@SETTINGS
@given(batch=token_batches(), seed=st.integers(0, 2**16))
def test_specials_and_padding_stay_in_place(name: str, batch: TokenBatch, seed: int) -> None:
    out = SAME_LENGTH_VIEWS[name](seed)(clone_batch(batch))
    assert out["input_ids"].shape == batch["input_ids"].shape
    fixed = fixed_slots(batch)
    for key in ("input_ids", "attention_mask", "special_tokens_mask", "token_type_ids"):
        assert torch.equal(out[key][fixed], batch[key][fixed]), key
    if "position_ids" in batch:
        assert torch.equal(out["position_ids"], batch["position_ids"])
    # no real token becomes special or padding-like special; attention only ever drops
    assert torch.equal(out["special_tokens_mask"], batch["special_tokens_mask"])
    assert bool((out["attention_mask"] <= batch["attention_mask"]).all())
    # the tokens of each row are the same multiset (views move or drop, never invent ids)
    for b in range(batch["input_ids"].shape[0]):
        assert sorted(out["input_ids"][b].tolist()) == sorted(batch["input_ids"][b].tolist())


@pytest.mark.parametrize(
    "view",
    [
        TokenCutoff(0.0, seed=0),
        SpanCutoff(0.0, seed=0),
        FeatureCutoff(0.0, seed=0, hidden_size=HIDDEN),
        WordRepetition(0.0, seed=0),
    ],
    ids=repr,
)
@SETTINGS
@given(batch=token_batches())
def test_rate_zero_is_identity(view: View, batch: TokenBatch) -> None:
    out = view(clone_batch(batch))
    assert out.keys() == batch.keys()
    for k in batch:
        assert torch.equal(out[k], batch[k]), k


@pytest.mark.parametrize("cls", [TokenCutoff, SpanCutoff, FeatureCutoff, WordRepetition])
@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), float("inf"), "0.1", True])
def test_invalid_rates_raise(cls: type, rate: object) -> None:
    with pytest.raises(ValueError, match="rate"):
        cls(rate)


@pytest.mark.parametrize("spec", ["shuffle", "token_cutoff:0.2", "span_cutoff", "repetition"])
def test_views_need_special_tokens_mask(spec: str) -> None:
    view = build_view(spec, seed=0)
    batch = {
        "input_ids": torch.tensor([[2, 7, 8, 3]]),
        "attention_mask": torch.ones(1, 4, dtype=torch.long),
    }
    with pytest.raises(ValueError, match="special_tokens_mask"):
        view(batch)


def test_state_dict_resumes_the_random_stream() -> None:
    batch = {
        "input_ids": torch.tensor([[2, *range(10, 30), 3]]),
        "attention_mask": torch.ones(1, 22, dtype=torch.long),
        "special_tokens_mask": torch.tensor([[1] + [0] * 20 + [1]]),
    }
    view = build_view("shuffle+token_cutoff:0.3", seed=5)
    view(batch)
    state = view.state_dict()  # type: ignore[attr-defined]
    first = view(batch)
    fresh = build_view("shuffle+token_cutoff:0.3", seed=99)
    fresh.load_state_dict(state)  # type: ignore[attr-defined]
    second = fresh(batch)
    for k in first:
        assert torch.equal(first[k], second[k])


def test_registry_names_and_defaults() -> None:
    assert isinstance(build_view("shuffle", seed=0), TokenShuffle)
    assert build_view("token_cutoff", seed=0).rate == 0.1  # type: ignore[attr-defined]
    assert build_view("span_cutoff", seed=0).rate == 0.1  # type: ignore[attr-defined]
    assert build_view("feature_cutoff", seed=0).rate == 0.2  # type: ignore[attr-defined]
    assert build_view("repetition", seed=0).rate == 0.32  # type: ignore[attr-defined]
    composed = build_view("shuffle+feature_cutoff:0.3", seed=3)
    assert isinstance(composed, Compose)
    assert composed.views[1].rate == 0.3  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="rate"):
        build_view("token_cutoff:1.2")


def test_a_rate_for_a_view_without_one_is_a_clear_error() -> None:
    """``shuffle:0.5`` used to surface ``__init__() got an unexpected keyword argument``."""
    with pytest.raises(ValueError, match=r"'shuffle' in 'shuffle:0\.5' takes no rate.*seed"):
        build_view("shuffle:0.5", seed=0)
    with pytest.raises(ValueError, match=r"'dropout'.*takes no rate.*parameters: none"):
        build_view("mask:0.2+dropout:0.1")


def test_context_gives_each_view_what_its_constructor_takes() -> None:
    context = ViewContext(pad_token_id=5, mask_token_id=7, hidden_size=12, max_length=30)
    view = build_view("mask+repetition+feature_cutoff+shuffle", seed=0, context=context)
    assert isinstance(view, Compose)
    mask, rep, feat, _ = view.views
    assert mask.mask_token_id == 7  # type: ignore[attr-defined]
    assert (rep.pad_token_id, rep.max_length) == (5, 30)  # type: ignore[attr-defined]
    assert feat.hidden_size == 12  # type: ignore[attr-defined]


def test_reseed_depends_only_on_seed_and_key() -> None:
    """The collator's per-batch seeding: the same (seed, epoch, batch) gives the same noise
    whatever ran before (a worker, a resumed run); another key gives other noise."""
    from textcl.views import reseed_view

    batch = {
        "input_ids": torch.tensor([[2, *range(10, 30), 3]]),
        "attention_mask": torch.ones(1, 22, dtype=torch.long),
        "special_tokens_mask": torch.tensor([[1] + [0] * 20 + [1]]),
    }
    used = build_view("shuffle+token_cutoff:0.3", seed=5)
    for _ in range(3):
        used(batch)  # advance its generators
    fresh = build_view("shuffle+token_cutoff:0.3", seed=5)
    reseed_view(used, 1, 4)
    reseed_view(fresh, 1, 4)
    a, b = used(batch), fresh(batch)
    assert all(torch.equal(a[k], b[k]) for k in a)
    reseed_view(fresh, 1, 5)
    assert not torch.equal(fresh(batch)["input_ids"], a["input_ids"])


TOKEN_VIEW_SPECS = ["shuffle", "token_cutoff:0.3", "span_cutoff:0.3", "feature_cutoff:0.25"]


@SETTINGS
@given(
    batch=token_batches(),
    seed=st.integers(0, 2**16),
    parts=st.lists(st.sampled_from([*TOKEN_VIEW_SPECS, "repetition:0.5"]), min_size=1, max_size=4),
)
def test_any_composition_keeps_the_contract(batch: TokenBatch, seed: int, parts: list[str]) -> None:
    """Random ``a+b+...`` specs from the registry: valid, deterministic, specials untouched."""
    spec = "+".join(parts)
    view = build_view(spec, seed=seed)
    for part in view.views if isinstance(view, Compose) else [view]:
        if isinstance(part, FeatureCutoff):
            part.hidden_size = HIDDEN
    before = clone_batch(batch)
    out = view(batch)
    _check_valid(out)
    for k, v in before.items():
        assert torch.equal(batch[k], v), k
    if "repetition:0.5" not in parts:
        fixed = fixed_slots(batch)
        for key in ("input_ids", "attention_mask", "special_tokens_mask", "token_type_ids"):
            assert torch.equal(out[key][fixed], batch[key][fixed]), (spec, key)
    else:
        # specials keep their order and count in every row; padding stays padding
        for b in range(batch["input_ids"].shape[0]):
            special_in = batch["input_ids"][b][batch["special_tokens_mask"][b].bool()]
            special_out = out["input_ids"][b][out["special_tokens_mask"][b].bool()]
            real_in = special_in[
                batch["attention_mask"][b][batch["special_tokens_mask"][b].bool()].bool()
            ]
            real_out = special_out[
                out["attention_mask"][b][out["special_tokens_mask"][b].bool()].bool()
            ]
            assert real_in.tolist() == real_out.tolist(), spec


def test_view_a_and_view_b_may_differ(tiny_encoder: SentenceEncoder, sentences: list[str]) -> None:
    """ConSERT's pair: two different views of ONE batch, embedded independently."""
    enc = tiny_encoder.eval()
    batch = enc.tokenize(sentences[:6])
    before = clone_batch(batch)
    view_a = build_view("shuffle", seed=0, context=ViewContext.from_encoder(enc))
    view_b = build_view("feature_cutoff", seed=1, context=ViewContext.from_encoder(enc))
    a, b = view_a(batch), view_b(batch)
    assert "embedding_mask" not in a and "embedding_mask" in b
    for k, v in before.items():
        assert torch.equal(batch[k], v), k
    with torch.no_grad():
        za, zb, plain = enc(a), enc(b), enc(batch)
    assert za.shape == zb.shape == plain.shape
    assert not torch.allclose(za, zb, atol=1e-4)
    assert not torch.allclose(za, plain, atol=1e-4) and not torch.allclose(zb, plain, atol=1e-4)


@pytest.mark.parametrize("name", available_views())
def test_every_registered_view_runs_in_the_encoder(
    name: str, tiny_encoder: SentenceEncoder, sentences: list[str]
) -> None:
    """Each registry name (with its default rate) on a real tokenized, padded batch: special
    tokens and padding of the result are those of the input, and the encoder embeds it."""
    enc = tiny_encoder.eval()
    batch = enc.tokenize(sentences[:8])
    assert bool((batch["attention_mask"] == 0).any())  # mixed lengths
    out = build_view(name, seed=0, context=ViewContext.from_encoder(enc))(batch)
    for b in range(batch["input_ids"].shape[0]):
        # specials (CLS/SEP) and their order are kept; padding stays pad id with attention 0
        def specials(x: TokenBatch, row: int = b) -> list[int]:
            keep = x["special_tokens_mask"][row].bool() & x["attention_mask"][row].bool()
            return x["input_ids"][row][keep].tolist()

        assert specials(out) == specials(batch)
        pad = out["special_tokens_mask"][b].bool() & ~out["attention_mask"][b].bool()
        assert bool((out["input_ids"][b][pad] == enc.tokenizer.pad_token_id).all())
        # no token is removed (cutoff only zeroes attention; repetition only adds)
        assert int((~pad).sum()) >= int(batch["attention_mask"][b].sum())
        # no view turns a real token into a special one
        real_out = out["input_ids"][b][~out["special_tokens_mask"][b].bool()]
        assert not (
            set(real_out.tolist()) & {enc.tokenizer.cls_token_id, enc.tokenizer.sep_token_id}
        )
    with torch.no_grad():
        emb = enc(out)
    assert emb.shape == (8, enc.hidden_size) and bool(torch.isfinite(emb).all())
