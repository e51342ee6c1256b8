"""Momentum queue of negatives and false-negative control (issue 17): the loss against a loop
reference from the formula, the queue's FIFO order, the EMA formula, no gradient into keys or
the EMA copy, the gradient cache, the guide encoder."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from tests.helpers import TINY_SENTENCES
from textcl import SentenceEncoder
from textcl.gradcache import CachedLoss
from textcl.losses import ExtendedInfoNCE, InfoNCE, false_negative_mask
from textcl.momentum import GuideEncoder, MomentumContrast, MomentumEncoder, MomentumQueue
from textcl.objective import LossStep

pytestmark = pytest.mark.usefixtures("one_thread")


def _cos(x: Tensor, y: Tensor) -> float:
    return float(torch.dot(x, y) / (x.norm() * y.norm()))


def reference_loss(
    z_a: Tensor,
    z_b: Tensor,
    z_neg: Tensor | None,
    queue: Tensor | None,
    *,
    t: float,
    hn_weight: float = 0.0,
    symmetric: bool = False,
    margin: float | None = None,
    threshold: float | None = None,
    fn_weight: float = 0.0,
    judge: tuple[Tensor, Tensor, Tensor | None, Tensor | None] | None = None,
) -> float:
    """The formula of ExtendedInfoNCE, one anchor and one candidate at a time (float64)."""
    z_a, z_b = z_a.double(), z_b.double()
    z_neg = None if z_neg is None else z_neg.double()
    queue = None if queue is None else queue.double()
    g_a, g_b, g_neg, g_q = judge if judge is not None else (z_a, z_b, z_neg, queue)
    n = z_a.shape[0]

    def flagged(s_cand: float, s_pos: float) -> bool:
        if margin is not None:
            return s_cand > s_pos - margin
        if threshold is not None:
            return s_cand > threshold
        return False

    def term(s: float, weight: float, suppressed: bool) -> float:
        if suppressed:
            weight *= fn_weight
        return weight * math.exp(s / t)

    forward = []
    for i in range(n):
        s_pos_judge = _cos(g_a[i].double(), g_b[i].double())
        num = math.exp(_cos(z_a[i], z_b[i]) / t)
        den = num
        for j in range(n):
            if j != i:
                s = _cos(z_a[i], z_b[j])
                den += term(s, 1.0, flagged(_cos(g_a[i].double(), g_b[j].double()), s_pos_judge))
        if z_neg is not None:
            assert g_neg is not None
            for j in range(n):
                w = math.exp(hn_weight) if i == j else 1.0
                s = _cos(z_a[i], z_neg[j])
                den += term(s, w, flagged(_cos(g_a[i].double(), g_neg[j].double()), s_pos_judge))
        if queue is not None:
            assert g_q is not None
            for k in range(queue.shape[0]):
                s = _cos(z_a[i], queue[k])
                den += term(s, 1.0, flagged(_cos(g_a[i].double(), g_q[k].double()), s_pos_judge))
        forward.append(-math.log(num / den))
    loss = sum(forward) / n
    if symmetric:
        back = []
        for i in range(n):
            s_pos_judge = _cos(g_b[i].double(), g_a[i].double())
            num = math.exp(_cos(z_b[i], z_a[i]) / t)
            den = num
            for j in range(n):
                if j != i:
                    s = _cos(z_b[i], z_a[j])
                    flag = flagged(_cos(g_b[i].double(), g_a[j].double()), s_pos_judge)
                    den += term(s, 1.0, flag)
            back.append(-math.log(num / den))
        loss = (loss + sum(back) / n) / 2
    return loss


def _data(seed: int = 0, n: int = 6, d: int = 8, k: int = 5) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=g)
    z_b = z_a + 0.7 * torch.randn(n, d, generator=g)  # positives near their anchors
    z_neg = torch.randn(n, d, generator=g)
    z_neg[1] = z_a[1] + 0.1 * torch.randn(d, generator=g)  # a false negative
    queue = torch.randn(k, d, generator=g)
    queue[0] = z_a[0] + 0.05 * torch.randn(d, generator=g)  # a queued false negative
    return z_a, z_b, z_neg, queue


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"hard_negative_weight": 0.5},
        {"symmetric": True},
        {"fn_margin": 0.1},
        {"fn_margin": -0.2, "symmetric": True, "hard_negative_weight": 0.3},
        {"fn_threshold": 0.3},
        {"fn_threshold": 0.3, "fn_weight": 0.25},
    ],
)
@pytest.mark.parametrize("with_neg", [False, True])
@pytest.mark.parametrize("with_queue", [False, True])
def test_loss_equals_loop_reference(kw: dict, with_neg: bool, with_queue: bool) -> None:
    z_a, z_b, z_neg, queue = _data()
    loss_fn = ExtendedInfoNCE(temperature=0.1, **kw)
    neg = z_neg if with_neg and not kw.get("symmetric") else None
    q = queue if with_queue else None
    got = loss_fn(z_a, z_b, neg, extra_negatives=q)
    ref = reference_loss(
        z_a,
        z_b,
        neg,
        q,
        t=0.1,
        hn_weight=kw.get("hard_negative_weight", 0.0),
        symmetric=kw.get("symmetric", False),
        margin=kw.get("fn_margin"),
        threshold=kw.get("fn_threshold"),
        fn_weight=kw.get("fn_weight", 0.0),
    )
    assert float(got) == pytest.approx(ref, rel=1e-5)


def test_false_negative_control_changes_the_loss_and_counts_rows() -> None:
    """Negative control: the masked loss differs from the plain one; the mask flags exactly
    the rows the loop rule flags, never the positive."""
    z_a, z_b, z_neg, queue = _data()
    plain = ExtendedInfoNCE(temperature=0.1)(z_a, z_b, z_neg, extra_negatives=queue)
    masked = ExtendedInfoNCE(temperature=0.1, fn_margin=0.1)(z_a, z_b, z_neg, queue)
    assert float(masked) < float(plain) - 1e-3
    sims = (
        torch.nn.functional.normalize(z_a, dim=-1)
        @ torch.nn.functional.normalize(torch.cat([z_b, z_neg, queue]), dim=-1).T
    )
    labels = torch.arange(6)
    mask = false_negative_mask(sims, labels, margin=0.1)
    expected = torch.zeros_like(mask)
    for i in range(6):
        for j in range(sims.shape[1]):
            expected[i, j] = j != i and float(sims[i, j]) > float(sims[i, i]) - 0.1
    assert torch.equal(mask, expected)
    assert mask[1, 6 + 1] and mask[0, 12]  # the planted false negatives
    assert not mask[labels, labels].any()
    # A margin so wide that every negative is flagged still keeps the positive: loss 0.
    everything = ExtendedInfoNCE(temperature=0.1, fn_margin=10.0)(z_a, z_b, z_neg, queue)
    assert float(everything) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        false_negative_mask(sims, labels)
    with pytest.raises(ValueError, match="exclude each other"):
        ExtendedInfoNCE(fn_margin=0.1, fn_threshold=0.5)


def test_without_extras_equals_infonce() -> None:
    z_a, z_b, z_neg, _ = _data()
    for kw in ({}, {"hard_negative_weight": 0.4}, {"symmetric": True}):
        neg = None if kw.get("symmetric") else z_neg
        torch.testing.assert_close(
            ExtendedInfoNCE(temperature=0.05, **kw)(z_a, z_b, neg),
            InfoNCE(temperature=0.05, **kw)(z_a, z_b, neg),
        )
        torch.testing.assert_close(
            ExtendedInfoNCE(temperature=0.05, **kw)(z_a, z_b, neg, torch.zeros(0, 8)),
            InfoNCE(temperature=0.05, **kw)(z_a, z_b, neg),
        )


def test_guide_similarities_decide() -> None:
    """With a guide, the guide's cosines (not the model's) pick the masked negatives."""
    z_a, z_b, z_neg, queue = _data()
    g = _data(seed=5)
    judge = (g[0], g[1], g[2], g[3])
    loss_fn = ExtendedInfoNCE(temperature=0.1, fn_margin=0.0, hard_negative_weight=0.2)
    got = loss_fn(z_a, z_b, z_neg, extra_negatives=queue, guide=judge)
    ref = reference_loss(z_a, z_b, z_neg, queue, t=0.1, hn_weight=0.2, margin=0.0, judge=judge)
    assert float(got) == pytest.approx(ref, rel=1e-5)
    own = reference_loss(z_a, z_b, z_neg, queue, t=0.1, hn_weight=0.2, margin=0.0)
    assert abs(own - ref) > 1e-3  # control: the guide changes the decision
    with pytest.raises(ValueError, match="g_extra"):
        loss_fn(z_a, z_b, z_neg, extra_negatives=queue, guide=(g[0], g[1], g[2], None))


def test_no_gradient_into_queued_keys() -> None:
    z_a, z_b, _, queue = _data()
    z_a.requires_grad_(True)
    keys = queue.clone().requires_grad_(True)
    ExtendedInfoNCE(temperature=0.1)(z_a, z_b, extra_negatives=keys).backward()
    assert keys.grad is None and z_a.grad is not None


# ------------------------------------------------------------------ queue and EMA
def test_queue_fifo_order_and_wrap_around() -> None:
    q = MomentumQueue(5)
    assert q.negatives() is None and len(q) == 0
    rows = torch.arange(12, dtype=torch.float32).unsqueeze(1).repeat(1, 2)
    q.enqueue(rows[:3])
    assert q.negatives() is not None
    assert q.negatives()[:, 0].tolist() == [0, 1, 2] and q.ptr == 3  # type: ignore[index]
    q.enqueue(rows[3:7])  # wraps: 0 and 1 are overwritten
    assert len(q) == 5 and q.ptr == 2
    assert q.negatives()[:, 0].tolist() == [2, 3, 4, 5, 6]  # type: ignore[index]
    assert q.buffer is not None and q.buffer[:, 0].tolist() == [5, 6, 2, 3, 4]
    q.enqueue(rows[7:12].clone().requires_grad_(True))  # a full lap
    assert q.negatives()[:, 0].tolist() == [7, 8, 9, 10, 11]  # type: ignore[index]
    assert not q.buffer.requires_grad
    big = MomentumQueue(3)
    big.enqueue(rows[:7])  # more than it holds: the newest 3
    assert big.negatives()[:, 0].tolist() == [4, 5, 6]  # type: ignore[index]
    # state_dict round trip (tensors only)
    state = q.state_dict()
    assert all(isinstance(v, Tensor) for v in state.values())
    r = MomentumQueue(5)
    r.load_state_dict(state)
    assert torch.equal(r.negatives(), q.negatives())  # type: ignore[arg-type]
    assert (r.ptr, r.filled) == (q.ptr, q.filled)
    with pytest.raises(ValueError, match="holds 5 keys"):
        MomentumQueue(4).load_state_dict(state)
    with pytest.raises(ValueError, match="dim"):
        q.enqueue(torch.zeros(2, 3))


def test_ema_update_equals_formula(tiny_model_dir: Path) -> None:
    online = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="cls", head_mode="train")
    ema = MomentumEncoder(online, momentum=0.9)
    start = {n: p.detach().clone() for n, p in ema.encoder.named_parameters()}
    with torch.no_grad():
        for p in online.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ema.update(online)
    q = dict(online.named_parameters())
    for name, p in ema.encoder.named_parameters():
        expected = 0.9 * start[name] + 0.1 * q[name].detach()
        torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-7, msg=name)
        assert not p.requires_grad
    assert any(not torch.equal(start[n], p) for n, p in ema.encoder.named_parameters())
    # Keys: no dropout (deterministic), the training-time head applies, no graph.
    batch = online.tokenize(list(TINY_SENTENCES[:4]))
    k1, k2 = ema(batch), ema(batch)
    assert torch.equal(k1, k2) and not k1.requires_grad
    assert k1.shape == (4, online.hidden_size)


def _no_dropout(tiny_model_dir: Path) -> SentenceEncoder:
    enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="mean", head_mode="train")
    for m in enc.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    enc.train()
    return enc


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_objective_queue_step_by_step(tiny_model_dir: Path, momentum: float) -> None:
    """Three steps of MomentumContrast: each loss equals ExtendedInfoNCE over the queue held
    before the step, the keys enqueued after it are the (EMA/online) view embeddings, and no
    gradient reaches the EMA copy."""
    enc = _no_dropout(tiny_model_dir)
    loss_fn = ExtendedInfoNCE(temperature=0.05)
    obj = MomentumContrast(loss_fn, queue_size=6, momentum=momentum, online=enc)
    opt = torch.optim.SGD(enc.parameters(), lr=0.5)
    texts = list(TINY_SENTENCES)
    for step in range(3):
        a = enc.tokenize(texts[4 * step : 4 * step + 4])
        b = enc.tokenize(texts[4 * step + 1 : 4 * step + 5])
        before = obj.queue.negatives()  # type: ignore[union-attr]
        if obj.key_encoder is not None:
            ref_ema = MomentumEncoder(obj.key_encoder.encoder, momentum)
            ref_ema.encoder.load_state_dict(obj.key_encoder.encoder.state_dict())
            ref_ema.momentum = momentum
            ref_ema.update(enc)
            expected_keys = ref_ema(b)
        else:
            with torch.no_grad():
                expected_keys = enc(b)
        with torch.no_grad():
            ref = loss_fn(enc(a), enc(b), None, extra_negatives=before)
        opt.zero_grad()
        loss = obj(enc, [a, b])
        assert float(loss) == pytest.approx(float(ref), rel=1e-5)
        held = obj.queue.negatives()  # type: ignore[union-attr]
        assert held is not None
        torch.testing.assert_close(held[-4:], expected_keys, rtol=1e-5, atol=1e-6)
        assert held.shape[0] == min(6, 4 * (step + 1))
        if obj.key_encoder is not None:
            assert all(p.grad is None for p in obj.key_encoder.parameters())
            assert all(not p.requires_grad for p in obj.key_encoder.parameters())
        opt.step()
    assert (obj.key_encoder is None) == (momentum == 0.0)


def test_gradient_cache_with_queue_equals_plain(tiny_model_dir: Path) -> None:
    """Chunked (gradient cache) steps with a queue give the plain steps' losses, gradients
    and queue."""
    results = []
    start = _no_dropout(tiny_model_dir)
    for chunk in (None, 3):
        enc = copy.deepcopy(start)
        obj = MomentumContrast(
            ExtendedInfoNCE(temperature=0.05, symmetric=True),
            queue_size=10,
            momentum=0.5,
            online=enc,
            chunk_size=chunk,
        )
        assert isinstance(obj.inner, CachedLoss) == (chunk is not None)
        opt = torch.optim.SGD(enc.parameters(), lr=0.5)
        losses, grads = [], []
        for step in range(3):
            a = enc.tokenize(list(TINY_SENTENCES[4 * step : 4 * step + 5]))
            b = enc.tokenize(list(TINY_SENTENCES[4 * step + 2 : 4 * step + 7]))
            opt.zero_grad()
            losses.append(float(obj(enc, [a, b])))
            grads.append(
                torch.cat([p.grad.flatten() for p in enc.parameters() if p.grad is not None])
            )
            opt.step()
        results.append((losses, grads, obj.queue.negatives()))  # type: ignore[union-attr]
    (l1, g1, q1), (l2, g2, q2) = results
    assert l1 == pytest.approx(l2, rel=1e-5) and min(l1) > 0.1
    for x, y in zip(g1, g2, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(q1, q2, rtol=1e-5, atol=1e-6)
    assert q1 is not None and q1.shape[0] == 10


def test_guide_encoder_path(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A tiny saved guide: its embeddings of the step's rows decide the masked negatives
    (checked against the loop reference with the guide's embeddings as judge)."""
    guide_enc = SentenceEncoder.from_pretrained(tiny_model_dir, pooling="max")
    guide_enc.save(tmp_path / "guide")
    enc = _no_dropout(tiny_model_dir)
    guide = GuideEncoder.load(str(tmp_path / "guide"), enc.tokenizer, 16, torch.device("cpu"))
    assert guide.same_vocab
    loss_fn = ExtendedInfoNCE(temperature=0.05, fn_margin=0.0)
    obj = MomentumContrast(loss_fn, queue_size=4, momentum=0.0, online=enc, guide=guide)
    texts = list(TINY_SENTENCES)
    batches = [(enc.tokenize(texts[i : i + 4]), enc.tokenize(texts[i + 1 : i + 5])) for i in (0, 4)]
    obj(enc, list(batches[0]))
    a, b = batches[1]
    with torch.no_grad():
        z_a, z_b = enc(a), enc(b)
        g_a, g_b = guide(a), guide(b)
    queue, g_queue = obj.queue.negatives(), obj.guide_queue.negatives()  # type: ignore[union-attr]
    assert queue is not None and g_queue is not None
    loss = obj(enc, [a, b])
    ref = reference_loss(z_a, z_b, None, queue, t=0.05, margin=0.0, judge=(g_a, g_b, None, g_queue))
    assert float(loss) == pytest.approx(ref, rel=1e-5)
    own = reference_loss(z_a, z_b, None, queue, t=0.05, margin=0.0)
    assert abs(own - ref) > 1e-4  # control: the model's own cosines decide differently
    # Another vocabulary: decoded and re-tokenized by the guide's tokenizer.
    guide.same_vocab = False
    decoded = enc.tokenizer.batch_decode(a["input_ids"].tolist(), skip_special_tokens=True)
    assert len(decoded) == 4 and all(decoded)
    with torch.no_grad():
        expected = guide.guide(guide.guide.tokenize(decoded, max_length=16))
    torch.testing.assert_close(guide(a), expected)


def test_plain_loss_step_is_untouched(tiny_model_dir: Path) -> None:
    """The plain step (no queue, no false-negative control) is InfoNCE and nothing more: its
    loss and gradients are InfoNCE's on the two views' embeddings, and it carries no state
    from one step to the next (a queue would make the first step's keys negatives of the
    second, changing its loss)."""
    enc = _no_dropout(tiny_model_dir)
    step = LossStep(InfoNCE(temperature=0.05))
    a = enc.tokenize(list(TINY_SENTENCES[:4]))
    b = enc.tokenize(list(TINY_SENTENCES[1:5]))

    def grads() -> Tensor:
        return torch.cat([p.grad.flatten() for p in enc.parameters() if p.grad is not None])

    losses, steps_grads = [], []
    for _ in range(3):
        enc.zero_grad()
        losses.append(float(step(enc, [a, b])))
        steps_grads.append(grads())
    enc.zero_grad()
    ref = InfoNCE(temperature=0.05)(enc(a), enc(b))
    ref.backward()
    assert losses[0] == pytest.approx(ref.item(), rel=1e-5) and losses[0] > 0.1
    torch.testing.assert_close(steps_grads[0], grads(), rtol=1e-4, atol=1e-6)
    assert losses[1] == losses[0] and losses[2] == losses[0]
    for later in steps_grads[1:]:
        torch.testing.assert_close(later, steps_grads[0], rtol=0, atol=0)


class _NaNOnCall(ExtendedInfoNCE):
    """ExtendedInfoNCE whose loss is NaN on the calls listed in ``bad``."""

    def __init__(self, bad: set[int]) -> None:
        super().__init__(temperature=0.05)
        self.bad, self.calls = bad, 0

    def forward(self, *args: object, **kwargs: object) -> Tensor:
        loss = super().forward(*args, **kwargs)  # type: ignore[arg-type]
        self.calls += 1
        return loss * float("nan") if self.calls in self.bad else loss


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_non_finite_step_enqueues_nothing(tiny_model_dir: Path, momentum: float) -> None:
    """A NaN-loss step (call 2) leaves the queue (rows and pointer) as it was; the finite
    steps around it enqueue as usual (control: calls 1 and 3 each add 4 keys)."""
    enc = _no_dropout(tiny_model_dir)
    obj = MomentumContrast(_NaNOnCall({2}), queue_size=12, momentum=momentum, online=enc)
    assert obj.queue is not None
    held: list[Tensor | None] = []
    for step in range(3):
        a = enc.tokenize(list(TINY_SENTENCES[4 * step : 4 * step + 4]))
        b = enc.tokenize(list(TINY_SENTENCES[4 * step + 1 : 4 * step + 5]))
        loss = obj(enc, [a, b])
        assert math.isfinite(float(loss)) == (step != 1)
        q = obj.queue.negatives()
        held.append(None if q is None else q.clone())
    assert held[0] is not None and held[0].shape[0] == 4
    assert held[1] is not None and torch.equal(held[1], held[0])
    assert held[2] is not None and held[2].shape[0] == 8
    assert torch.isfinite(held[2]).all()
    torch.testing.assert_close(held[2][:4], held[0])
