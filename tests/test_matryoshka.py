"""MatryoshkaLoss: sum over nested prefixes, against a loop reference from the formula."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from textcl.losses import InfoNCE
from textcl.matryoshka import MatryoshkaLoss, check_matryoshka

pytestmark = pytest.mark.usefixtures("one_thread")


def _infonce_loop(a: np.ndarray, b: np.ndarray, t: float) -> float:
    """-mean_i log softmax_j(cos(a_i, b_j)/t)[i], with plain loops."""
    n = a.shape[0]
    total = 0.0
    for i in range(n):
        sims = []
        for j in range(n):
            cos = float(a[i] @ b[j]) / (np.linalg.norm(a[i]) * np.linalg.norm(b[j]))
            sims.append(cos / t)
        m = max(sims)
        log_z = m + math.log(sum(math.exp(s - m) for s in sims))
        total += log_z - sims[i]
    return total / n


def test_equals_loop_reference_sum() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    dims, weights = [16, 8, 4, 2], [1.0, 0.5, 2.0, 1.0]
    got = MatryoshkaLoss(InfoNCE(temperature=0.1), dims, weights)(a, b)
    want = sum(
        w * _infonce_loop(a[:, :d].numpy(), b[:, :d].numpy(), 0.1)
        for d, w in zip(dims, weights, strict=True)
    )
    assert float(got) == pytest.approx(want, rel=1e-5)
    # negative control: the full vector alone is a different number
    assert float(InfoNCE(temperature=0.1)(a, b)) != pytest.approx(want, rel=1e-3)
    # default weights: 1 each
    plain = MatryoshkaLoss(InfoNCE(temperature=0.1), [16, 4])(a, b)
    want1 = _infonce_loop(a.numpy(), b.numpy(), 0.1) + _infonce_loop(
        a[:, :4].numpy(), b[:, :4].numpy(), 0.1
    )
    assert float(plain) == pytest.approx(want1, rel=1e-5)


def test_hard_negatives_pass_through() -> None:
    g = torch.Generator().manual_seed(1)
    a, b, n = (torch.randn(4, 8, generator=g) for _ in range(3))
    base = InfoNCE(temperature=0.05)
    got = MatryoshkaLoss(base, [8, 3])(a, b, n)
    want = base(a, b, n) + base(a[:, :3], b[:, :3], n[:, :3])
    torch.testing.assert_close(got, want)


def test_gradient_matches_finite_differences() -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.randn(4, 6, generator=g, requires_grad=True)
    b = torch.randn(4, 6, generator=g)
    loss = MatryoshkaLoss(InfoNCE(temperature=0.5), [6, 3, 1], [1.0, 0.7, 0.3])
    loss(a, b).backward()
    assert a.grad is not None
    eps = 1e-3
    num = torch.zeros_like(a)
    with torch.no_grad():
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                up, down = a.detach().clone(), a.detach().clone()
                up[i, j] += eps
                down[i, j] -= eps
                num[i, j] = (loss(up, b) - loss(down, b)) / (2 * eps)
    torch.testing.assert_close(a.grad, num, atol=2e-3, rtol=2e-2)
    # the dims past the smallest prefix still get gradient only from the larger prefixes
    only_full = torch.autograd.grad(InfoNCE(temperature=0.5)(a, b), a)[0]
    assert not torch.allclose(a.grad[:, :1], only_full[:, :1])
    torch.testing.assert_close(
        a.grad[:, 3:], torch.autograd.grad(InfoNCE(temperature=0.5)(a, b), a)[0][:, 3:]
    )


def test_with_gradient_cache_equals_plain_step(tiny_model_dir: Path) -> None:
    from textcl import SentenceEncoder
    from textcl.gradcache import CachedLoss
    from textcl.objective import LossStep

    texts = ["A man is playing a guitar.", "The cat sat on the mat.", "A bird sings.", "Rain."]
    grads, losses = [], []
    for make in (
        lambda loss: LossStep(loss),
        lambda loss: CachedLoss(loss, 3),
    ):
        enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="mean").eval()
        batch = enc.tokenize(texts)
        losses.append(float(make(MatryoshkaLoss(InfoNCE(), [32, 16, 4]))(enc, [batch, batch])))
        grads.append(torch.cat([p.grad.flatten() for p in enc.parameters() if p.grad is not None]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_checks() -> None:
    assert check_matryoshka([8, 4]) == ([8, 4], [1.0, 1.0])
    for dims, weights, match in (
        ([], None, "non-empty"),
        ([8, 0], None, "positive integer"),
        ([8, 8], None, "distinct"),
        ([8, 4], [1.0], "one weight per dimension"),
        ([8, 4], [1.0, -1.0], "finite positive"),
    ):
        with pytest.raises(ValueError, match=match):
            check_matryoshka(dims, weights)
    with pytest.raises(ValueError, match=r"exceed the embedding size 4"):
        MatryoshkaLoss(InfoNCE(), [8, 4])(torch.randn(3, 4), torch.randn(3, 4))


def test_train_config_fields() -> None:
    from textcl.train import TrainConfig

    TrainConfig(matryoshka_dims=[32, 16], matryoshka_weights=[1.0, 0.5])
    cli = TrainConfig(matryoshka_dims=["32", "16"], matryoshka_weights=["1", "0.5"])  # type: ignore[list-item]
    assert cli.matryoshka_dims == [32, 16] and cli.matryoshka_weights == [1.0, 0.5]
    with pytest.raises(ValueError, match="matryoshka_dims"):
        TrainConfig(matryoshka_dims=["32", "x"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="matryoshka_dims"):
        TrainConfig(matryoshka_dims=[32, 16], matryoshka_weights=[1.0])
    with pytest.raises(ValueError, match="matryoshka_weights"):
        TrainConfig(matryoshka_weights=[1.0])


def test_command_line_flags() -> None:
    from textcl.cli import build_parser
    from textcl.commands.train import config_from_args

    args = build_parser().parse_args(
        ["train", "--model", "m", "--train-file", "f", "--output-dir", "o", "--pooling",
         "prompt", "--prompt-templates",
         'This sentence of "[X]" means [MASK] .,This sentence : "[X]" means [MASK] .',
         "--prompt-denoise", "always", "--matryoshka-dims", "768,512,256",
         "--matryoshka-weights", "1,0.5,0.25"]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert cfg.prompt_templates == [
        'This sentence of "[X]" means [MASK] .',
        'This sentence : "[X]" means [MASK] .',
    ]
    assert cfg.prompt_denoise == "always"
    assert cfg.matryoshka_dims == [768, 512, 256]
    assert cfg.matryoshka_weights == [1.0, 0.5, 0.25]


@pytest.mark.parametrize(
    "extra", [{"queue_size": 8}, {"fn_margin": 0.1}, {"fn_threshold": 0.9}], ids=str
)
def test_not_combined_with_queue_or_false_negative_control(extra: dict[str, object]) -> None:
    from textcl.train.config import TrainConfig

    TrainConfig(matryoshka_dims=[8, 4])  # alone: fine
    TrainConfig(**extra)  # type: ignore[arg-type]  # alone: fine
    with pytest.raises(ValueError, match="matryoshka_dims"):
        TrainConfig(matryoshka_dims=[8, 4], **extra)  # type: ignore[arg-type]
