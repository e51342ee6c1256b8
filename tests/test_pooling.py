from __future__ import annotations

import numpy as np
import pytest
import torch

from textcl.pooling import (
    DENSE_ACTIVATIONS,
    POOLING_STRATEGIES,
    DenseLayer,
    Pooling,
    ProjectionHead,
    check_head_mode,
    dense_activation,
)


def _numpy_pool(strategy: str, hidden: list[np.ndarray], mask: np.ndarray) -> np.ndarray:
    """Reference pooling, one sentence at a time, looking only at its real tokens (loops,
    from the formulas in the pooling docstring)."""
    out = []
    for b in range(mask.shape[0]):
        keep = np.flatnonzero(mask[b])
        last = hidden[-1][b, keep]
        if strategy == "cls":
            out.append(last[0])
        elif strategy == "lasttoken":
            out.append(last[-1])
        elif strategy == "weightedmean":
            acc, total = np.zeros(last.shape[1]), 0.0
            for k, row in enumerate(last, start=1):
                acc += k * row
                total += k
            out.append(acc / total)
        elif strategy == "mean_sqrt_len_tokens":
            out.append(last.sum(axis=0) / np.sqrt(len(keep)))
        elif strategy == "mean":
            out.append(last.mean(axis=0))
        elif strategy == "max":
            out.append(last.max(axis=0))
        elif strategy == "first_last_avg":
            out.append(((hidden[1][b, keep] + last) / 2).mean(axis=0))
        elif strategy == "last2_avg":
            out.append(((hidden[-2][b, keep] + last) / 2).mean(axis=0))
    return np.stack(out)


@pytest.mark.parametrize("left", [False, True], ids=["right-pad", "left-pad"])
@pytest.mark.parametrize("strategy", [s for s in POOLING_STRATEGIES if s != "prompt"])
def test_pooling_matches_numpy_reference_with_padding(strategy: str, left: bool) -> None:
    g = torch.Generator().manual_seed(1)
    lengths = [5, 2, 7, 1]
    mask = torch.zeros(4, 7, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            mask[i, 7 - n :] = 1
        else:
            mask[i, :n] = 1
    # Padding positions hold large garbage: it must never leak into the result.
    hidden = [torch.randn(4, 7, 6, generator=g) for _ in range(3)]
    for h in hidden:
        h[mask == 0] = 1e4
    got = Pooling(strategy)(hidden[-1], mask, hidden)
    want = _numpy_pool(strategy, [h.numpy() for h in hidden], mask.numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def test_prompt_pooling_takes_the_one_marked_token() -> None:
    g = torch.Generator().manual_seed(2)
    states = torch.randn(3, 6, 4, generator=g)
    slots = [4, 0, 5]
    mask = torch.zeros(3, 6, dtype=torch.long)
    mask[torch.arange(3), torch.tensor(slots)] = 1
    got = Pooling("prompt")(states, mask)
    np.testing.assert_array_equal(
        got.numpy(), np.stack([states[i, s].numpy() for i, s in enumerate(slots)])
    )
    mask[0, 1] = 1  # two slots in row 0
    with pytest.raises(ValueError, match=r"exactly one \[MASK\] slot"):
        Pooling("prompt")(states, mask)


def test_unknown_pooling_name() -> None:
    with pytest.raises(ValueError, match="unknown pooling 'avg'"):
        Pooling("avg")


def test_layer_poolings_need_hidden_states() -> None:
    p = Pooling("first_last_avg")
    assert p.needs_hidden_states
    assert not Pooling("mean").needs_hidden_states
    with pytest.raises(ValueError, match="hidden states"):
        p(torch.zeros(1, 2, 3), torch.ones(1, 2))


def test_mask_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="attention_mask shape"):
        Pooling("mean")(torch.zeros(2, 3, 4), torch.ones(2, 4))


def test_projection_head_shape() -> None:
    head = ProjectionHead(8)
    assert head(torch.randn(3, 8)).shape == (3, 8)
    with pytest.raises(ValueError):
        ProjectionHead(0)
    with pytest.raises(ValueError, match="head mode"):
        check_head_mode("sometimes")


def test_new_poolings_against_hand_values() -> None:
    # One sentence, 3 real tokens with states 1, 2, 4 (H=1), then padding.
    states = torch.tensor([[[1.0], [2.0], [4.0], [100.0]]])
    mask = torch.tensor([[1, 1, 1, 0]])
    pool = {name: Pooling(name)(states, mask).item() for name in POOLING_STRATEGIES[:3]}
    pool["weightedmean"] = Pooling("weightedmean")(states, mask).item()
    pool["lasttoken"] = Pooling("lasttoken")(states, mask).item()
    pool["mean_sqrt_len_tokens"] = Pooling("mean_sqrt_len_tokens")(states, mask).item()
    assert pool["weightedmean"] == pytest.approx((1 * 1 + 2 * 2 + 3 * 4) / 6)
    assert pool["lasttoken"] == 4.0
    assert pool["mean_sqrt_len_tokens"] == pytest.approx(7 / 3**0.5)
    assert pool["cls"] == 1.0 and pool["max"] == 4.0


def test_cls_takes_first_real_token_when_left_padded() -> None:
    states = torch.arange(8, dtype=torch.float32).view(2, 4, 1)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    got = Pooling("cls")(states, mask)[:, 0].tolist()
    assert got == [2.0, 4.0]  # not position 0 (= 0.0) for the left-padded row


def test_dense_layer_activations() -> None:
    assert dense_activation(None).__class__.__name__ == "Identity"
    for name, cls in DENSE_ACTIVATIONS.items():
        assert isinstance(dense_activation(f"torch.nn.modules.activation.{name}"), cls)
    with pytest.raises(ValueError, match=r"Dense 2: activation_function 'my\.Act'"):
        dense_activation("my.Act", "Dense 2")
    with pytest.raises(ValueError, match="not supported"):
        dense_activation("torch.nn.modules.activation.Softmax2d")
    layer = DenseLayer(3, 2, activation=torch.nn.ReLU())
    x = torch.randn(4, 3)
    want = torch.relu(x @ layer.linear.weight.T + layer.linear.bias)
    torch.testing.assert_close(layer(x), want)
    assert layer.st_config()["activation_function"] == "torch.nn.modules.activation.ReLU"
