"""textcl's training loop: contrastive learning of sentence embeddings, short and explicit.

One :class:`Trainer` runs one :class:`TrainConfig`:

* data: raw sentences (``unsup``: two views of each sentence) or pairs/triples (``sup``:
  anchor, positive and optional hard negative), planned into batches per epoch with no
  duplicate text inside a batch;
* step: DataLoader collator (tokenize + views, :mod:`textcl.train.batches`) -> objective
  (encoder under autocast -> InfoNCE -> backward, plain or through the gradient cache; the
  encoder in DDP under torchrun) -> non-finite check -> clip -> AdamW -> linear schedule;
* every ``eval_steps``: STS-B dev Spearman, alignment and uniformity; the best model is kept
  in ``OUTPUT_DIR/best``;
* checkpoints ``OUTPUT_DIR/checkpoints/step-XXXXXXXX/`` written atomically with the model,
  optimizer, scheduler, scaler, RNG and view states; ``resume`` continues exactly;
* ``OUTPUT_DIR/metrics.jsonl`` (one JSON object per line, ``event`` = ``train``/``eval``),
  a tqdm bar, and TensorBoard scalars under ``OUTPUT_DIR/tb`` when tensorboard is installed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from textcl.data.text import TextCorpus, plan_epoch, text_hash64
from textcl.distributed import (
    DistEnv,
    all_reduce_mean,
    barrier,
    init_distributed,
    shard_batch,
    wrap_ddp,
)
from textcl.encoder import (
    SentenceEncoder,
    TokenBatch,
    as_token_batch,
    autocast_context,
    batch_tensors,
)
from textcl.losses import InfoNCE
from textcl.objective import Embed, LossStep, embed_batches
from textcl.train.batches import BatchCollator, PlannedBatches, make_loader
from textcl.train.config import TrainConfig
from textcl.views import ViewContext, build_view
from textcl.views.base import View

logger = logging.getLogger(__name__)

Evaluator = Callable[[SentenceEncoder], dict[str, float]]
"""Maps an encoder to metrics, e.g. ``{"stsb_dev_spearman": 76.1, "alignment": ...}``."""

BEST_METRIC = "stsb_dev_spearman"
CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"


@dataclass
class TrainResult:
    """What a finished run produced."""

    output_dir: Path
    steps: int
    final_dir: Path
    best_dir: Path | None
    best_metrics: dict[str, float] | None
    final_metrics: dict[str, float] | None
    start_metrics: dict[str, float] | None = None
    """Metrics of the starting model (with ``eval_at_start``)."""


def sts_dev_evaluator(data_dir: str | None = None, batch_size: int = 128) -> Evaluator:
    """The SimCSE protocol's evaluator: STS-B dev Spearman (x100, cosine, ``all``), plus
    alignment and uniformity (Wang & Isola 2020) on STS-B dev."""

    def evaluate(encoder: SentenceEncoder) -> dict[str, float]:
        from textcl.evaluation import evaluate_sts
        from textcl.evaluation.alignment import alignment_uniformity

        cache: dict[str, np.ndarray] = {}

        def embed(texts: list[str]) -> np.ndarray:
            """Both metrics read STS-B dev: encode each sentence once for both."""
            new = [t for t in dict.fromkeys(texts) if t not in cache]
            if new:
                vectors = encoder.encode(new, batch_size=batch_size, output="numpy")
                cache.update(zip(new, np.asarray(vectors), strict=True))
            return np.stack([cache[t] for t in texts])

        result = evaluate_sts(
            embed, tasks=("stsb",), split="dev", data_dir=data_dir, batch_size=batch_size
        )
        metrics = {BEST_METRIC: float(result["tasks"]["stsb"]["spearman"])}
        au = alignment_uniformity(embed, data_dir=data_dir, batch_size=batch_size)
        metrics.update({k: float(v) for k, v in au.items()})
        return metrics

    return evaluate


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU."""
    if precision != "auto":
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def find_latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete ``step-XXXXXXXX`` checkpoint under ``output_dir``, or None."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step-*") if (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None


class Trainer:
    """Runs one :class:`TrainConfig`.

    Args:
        config: the run.
        evaluator: metrics for an encoder (default :func:`sts_dev_evaluator`); its
            ``stsb_dev_spearman`` picks the best checkpoint.
        step_callback: called as ``step_callback(trainer, step)`` after each optimizer step
            (after logging, evaluation and checkpointing).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        evaluator: Evaluator | None = None,
        step_callback: Callable[[Trainer, int], None] | None = None,
    ) -> None:
        config.validate()
        if not config.model:
            raise ValueError("config field 'model': give a hub id or a local model folder")
        if not config.train_file:
            raise ValueError("config field 'train_file': give the training data")
        if not config.output_dir:
            raise ValueError("config field 'output_dir': give a folder for the run")
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.evaluator = evaluator or sts_dev_evaluator(config.data_dir, config.eval_batch_size)
        self.step_callback = step_callback
        # Under torchrun: one process per device, gloo on CPU / nccl on CUDA.
        self.env: DistEnv = init_distributed(config.device)
        self.device = self.env.device
        self.precision = resolve_precision(config.precision, self.device)
        self.rank, self.world_size = self.env.rank, self.env.world_size
        self.is_main = self.env.is_main
        if config.batch_size % self.world_size:
            raise ValueError(
                f"config field 'batch_size': {config.batch_size} sentences cannot be split "
                f"evenly over {self.world_size} processes"
            )
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.last_metrics: dict[str, float] | None = None
        # Data is read (and checked) before the model is loaded: bad input fails fast.
        self.data = self._load_data()
        self.hashes = self._hashes()
        self._plans: dict[int, list[list[int]]] = {}

    # ------------------------------------------------------------------ data
    def _load_data(self) -> Any:
        cfg = self.config
        if cfg.objective == "unsup":
            return TextCorpus.from_source(cfg.train_file, text_column=cfg.text_column)
        from textcl.data.pairs import PairDataset

        return PairDataset.from_source(
            cfg.train_file, columns=cfg.columns, skip_bad_rows=cfg.skip_bad_rows
        )

    def _hashes(self) -> np.ndarray:
        if isinstance(self.data, TextCorpus):
            return self.data.hashes
        # Supervised: no two rows with the same anchor in a batch (each anchor's positive
        # would be a false negative of the other).
        return np.array([text_hash64(self.data[i][0]) for i in range(len(self.data))], np.uint64)

    def plan(self, epoch: int) -> list[list[int]]:
        """The global batches of ``epoch`` (deterministic in seed and epoch)."""
        if epoch not in self._plans:
            self._plans = {
                epoch: plan_epoch(
                    self.hashes,
                    self.config.batch_size,
                    seed=self.config.seed,
                    epoch=epoch,
                    drop_last=self.config.drop_last or self.world_size > 1,
                )
            }
            if not self._plans[epoch]:
                raise ValueError(
                    f"{self.config.train_file}: {len(self.hashes)} distinct item(s) cannot fill "
                    f"one batch of {self.config.batch_size}; lower batch_size"
                )
        return self._plans[epoch]

    def total_steps(self) -> int:
        if self.config.max_steps is not None:
            return self.config.max_steps
        return sum(len(self.plan(e)) for e in range(self.config.epochs))

    def local_rows(self, batch: Sequence[int]) -> list[int]:
        """This process's share of a global batch (every rank plans the same batches)."""
        return shard_batch(batch, self.env)

    def make_inputs(self, rows: Sequence[int]) -> list[TokenBatch]:
        """Token batches, one per role: ``[view_a, view_b]`` (unsup) or
        ``[anchor, positive(, hard_negative)]`` (sup), on the training device (the
        collator's work, in this process, with the views' generators as they are)."""
        return self.to_device(self.collator.collate(rows))

    def to_device(self, batches: Sequence[TokenBatch]) -> list[TokenBatch]:
        """``batches`` on the training device."""
        return [
            as_token_batch(
                {k: v.to(self.device, non_blocking=True) for k, v in batch_tensors(b).items()}
            )
            for b in batches
        ]

    def loader(self, epoch: int) -> Any:
        """The DataLoader of ``epoch``'s remaining batches (from ``batch_in_epoch``):
        tokenization and token-level views in ``num_workers`` processes."""
        return make_loader(
            PlannedBatches(epoch, self.plan(epoch), self.batch_in_epoch, self.env),
            self.collator,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            seed=self.config.seed + epoch,
        )

    # ------------------------------------------------------------------ model
    def setup(self, resume_from: Path | None = None) -> None:
        """Build the encoder (from ``resume_from``'s model when given), its DDP wrapper under
        torchrun, the views, the objective (loss, gradient cache), optimizer, schedule and
        scaler. :meth:`train` calls it; call it yourself to use :meth:`train_step` directly."""
        cfg = self.config
        # Each rank draws its own dropout masks and view noise.
        seed_everything(cfg.seed + 7919 * self.rank)
        source = resume_from / "model" if resume_from is not None else cfg.model
        self.encoder = SentenceEncoder.from_pretrained(
            source, pooling=cfg.pooling, head_mode=cfg.head
        ).to(self.device)
        if cfg.dropout is not None:
            for module in self.encoder.model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = cfg.dropout
        if cfg.compile:
            self.encoder.model.compile()
        # The module the step runs: under torchrun DDP (its constructor copies rank 0's
        # parameters to every rank, e.g. a new head; its backward averages the gradients,
        # bucketed and overlapped with the backward pass). self.encoder stays the plain
        # encoder (evaluation, saving).
        self.model: Embed = self.encoder
        if self.env.is_distributed:
            self.model = wrap_ddp(self.encoder, self.env)
        view_seed = cfg.seed + 1000 + 7919 * self.rank
        context = ViewContext.from_encoder(self.encoder)
        self.view_a: View = build_view(cfg.view_a, seed=view_seed, context=context)
        self.view_b: View = build_view(cfg.view_b, seed=view_seed + 500, context=context)
        self.collator = BatchCollator(
            self.data,
            cfg.objective,
            self.encoder.tokenizer,
            cfg.max_length,
            self.view_a,
            self.view_b,
        )
        self.loss_fn = InfoNCE(
            temperature=cfg.temperature,
            symmetric=cfg.symmetric,
            hard_negative_weight=cfg.hard_negative_weight,
            dist=self.env,
        )
        self.objective: LossStep = LossStep(self.loss_fn)
        if cfg.grad_cache_chunk is not None:
            from textcl.gradcache import CachedLoss

            self.objective = CachedLoss(self.loss_fn, cfg.grad_cache_chunk)
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for name, p in self.encoder.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.dim() < 2 or "norm" in name.lower() else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            # One fused kernel over all parameters instead of a Python loop of ~10 small ops
            # per tensor (torch's default on CPU): same update, ~8x faster optimizer step.
            fused=self._can_fuse(decay + no_decay),
        )
        total = self.total_steps()
        warmup = int(total * cfg.warmup_ratio)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.precision == "fp16" and self.device.type == "cuda"
        )

    # ------------------------------------------------------------------ step
    def compute_loss(self, reps: Sequence[Tensor]) -> Tensor:
        """InfoNCE of ``reps = [z_a, z_b(, z_neg)]``; across ranks, each rank's anchors
        are contrasted with the positives and hard negatives of the global batch."""
        return self.objective.compute(reps)

    def _can_fuse(self, params: Sequence[torch.nn.Parameter]) -> bool:
        """Fused AdamW: CPU and CUDA, floating-point parameters on one device type."""
        return self.device.type in ("cpu", "cuda") and all(
            p.is_floating_point() and p.device.type == self.device.type for p in params
        )

    def embed(self, inputs: Sequence[TokenBatch]) -> list[Tensor]:
        """The embeddings of each token batch of ``inputs`` (same-shaped batches in one
        forward pass: :func:`textcl.objective.embed_batches`)."""
        return embed_batches(self.model, inputs)

    def train_step(self, inputs: Sequence[TokenBatch]) -> float:
        """One optimizer step over ``inputs``; returns the loss (the mean over ranks).

        Raises ``FloatingPointError`` on a non-finite loss BEFORE the optimizer step: the
        weights, optimizer and schedule are left as they were.
        """
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.objective(
            self.model,
            inputs,
            autocast=lambda: autocast_context(self.device, self.precision),
            scaler=self.scaler if self.scaler.is_enabled() else None,
        )
        value = all_reduce_mean(loss, self.env)
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(
                f"loss is {value} at step {self.step + 1}; lower lr or use fp32/bf16 "
                "(no update was applied)"
            )
        if cfg.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.encoder.parameters(), cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return value

    # ------------------------------------------------------------------ checkpoints
    def _rank_state(self) -> dict[str, Any]:
        """What differs between ranks: RNG and view generator states."""
        views = {
            name: v.state_dict()
            for name, v in (("view_a", self.view_a), ("view_b", self.view_b))
            if hasattr(v, "state_dict")
        }
        return {"views": views, "rng": _rng_state()}

    def _state(self, ranks: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "last_metrics": self.last_metrics,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "world_size": self.world_size,
            "ranks": ranks,
        }

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-XXXXXXXX`` atomically (rank 0); prune old ones.

        Collective under torchrun: every rank calls it (rank 0 collects their RNG states).
        """
        ranks = [self._rank_state()]
        if self.env.is_distributed:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, ranks[0])
            ranks = gathered
        if not self.is_main:
            barrier(self.env)
            return None
        root = self.output_dir / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        target = root / f"step-{self.step:08d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
        try:
            self.encoder.save(tmp / "model")
            torch.save(self._state(ranks), tmp / STATE_FILE)
            self.config.save(
                tmp / "config.json",
                step=self.step,
                epoch=self.epoch,
                metrics=self.last_metrics,
                best_metric=self.best_metric,
                best_step=self.best_step,
            )
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        done = sorted(
            (p for p in root.glob("step-*") if (p / STATE_FILE).is_file()),
            key=lambda p: int(p.name.split("-")[1]),
        )
        for old in done[: -self.config.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
        barrier(self.env)
        return target

    def _load_state(self, checkpoint: Path) -> None:
        state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.best_metric = state["best_metric"]
        self.best_step = state["best_step"]
        self.last_metrics = state["last_metrics"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if state["world_size"] != self.world_size:
            raise ValueError(
                f"{checkpoint} was written by {state['world_size']} process(es); resume it with "
                f"the same number (now {self.world_size}) to continue exactly"
            )
        mine = state["ranks"][self.rank]
        for name, view in (("view_a", self.view_a), ("view_b", self.view_b)):
            if name in mine["views"] and hasattr(view, "load_state_dict"):
                view.load_state_dict(mine["views"][name])
        _set_rng_state(mine["rng"])

    def _resolve_resume(self, resume: str | os.PathLike[str] | bool | None) -> Path | None:
        if resume is None or resume is False:
            return None
        if resume is True or resume == "auto":
            found = find_latest_checkpoint(self.output_dir)
            if found is None and resume is True:
                raise FileNotFoundError(f"{self.output_dir}: no checkpoint to resume from")
            return found
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"{path}: not a textcl checkpoint (no {STATE_FILE})")
        return path

    # ------------------------------------------------------------------ logging
    def _log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with open(self.output_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "event", "epoch", "time") and isinstance(
                    value, (int, float)
                ):
                    self._tb.add_scalar(f"{record['event']}/{key}", value, record["step"])

    def _truncate_log(self, step: int) -> None:
        """Drop records after ``step`` (written by an interrupted run past its checkpoint)."""
        path = self.output_dir / METRICS_FILE
        if not self.is_main or not path.is_file():
            return
        kept = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        _atomic_write_text(path, "".join(line + "\n" for line in kept))

    def _open_tensorboard(self) -> Any:
        if not self.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(log_dir=str(self.output_dir / "tb"))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Run the evaluator; keep the best model in ``OUTPUT_DIR/best``."""
        start = time.perf_counter()
        metrics: dict[str, float] = {}
        if self.is_main:  # the other ranks wait: evaluation is cheap next to training
            metrics = {k: float(v) for k, v in self.evaluator(self.encoder).items()}
        if self.env.is_distributed:
            from textcl.distributed import broadcast_object

            metrics = broadcast_object(metrics, self.env)
        self.last_metrics = metrics
        score = metrics.get(BEST_METRIC)
        best = score is not None and (self.best_metric is None or score > self.best_metric)
        if best:
            self.best_metric, self.best_step = score, self.step
            if self.is_main:
                self.encoder.save(self.output_dir / "best")
        barrier(self.env)
        self._log(
            {
                "event": "eval",
                "step": self.step,
                "epoch": self.epoch,
                "time": time.time(),
                **metrics,
                "best": bool(best),
                "eval_time_s": round(time.perf_counter() - start, 3),
            }
        )
        return metrics

    # ------------------------------------------------------------------ loop
    def train(self, resume: str | os.PathLike[str] | bool | None = None) -> TrainResult:
        """Train; ``resume``: a checkpoint folder, ``True`` (latest, must exist) or
        ``"auto"`` (latest if any)."""
        cfg = self.config
        checkpoint = self._resolve_resume(resume)
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.setup(checkpoint)
        if checkpoint is not None:
            self._load_state(checkpoint)
            self._truncate_log(self.step)
            logger.info("resumed from %s at step %d", checkpoint, self.step)
        elif self.is_main and (self.output_dir / METRICS_FILE).exists():
            (self.output_dir / METRICS_FILE).unlink()
        if self.is_main:
            cfg.save(self.output_dir / "config.json")
        self._tb = self._open_tensorboard()
        total = self.total_steps()
        save_every = cfg.save_steps or (cfg.eval_steps if cfg.eval_steps > 0 else None)
        if cfg.eval_at_start and self.step == 0 and cfg.eval_steps >= 0:
            self.evaluate()
        self.encoder.train()
        bar = tqdm(
            total=total, initial=self.step, desc="train", unit="step", disable=not self.is_main
        )
        window_start, window_sentences, window_losses = time.perf_counter(), 0, []
        try:
            while self.step < total:
                plan = self.plan(self.epoch)
                for cpu_inputs in self.loader(self.epoch):
                    if self.step >= total:
                        break
                    batch = plan[self.batch_in_epoch]
                    loss = self.train_step(self.to_device(cpu_inputs))
                    self.batch_in_epoch += 1
                    self.step += 1
                    window_sentences += len(batch)
                    window_losses.append(loss)
                    bar.update(1)
                    if self.step % cfg.logging_steps == 0 or self.step == total:
                        elapsed = max(time.perf_counter() - window_start, 1e-9)
                        rate = window_sentences / elapsed
                        mean_loss = float(np.mean(window_losses))
                        bar.set_postfix(loss=f"{mean_loss:.4g}", sent_s=f"{rate:.1f}")
                        self._log(
                            {
                                "event": "train",
                                "step": self.step,
                                "epoch": self.epoch,
                                "time": time.time(),
                                "loss": mean_loss,
                                "lr": self.scheduler.get_last_lr()[0],
                                "sentences_per_s": rate,
                            }
                        )
                        window_start, window_sentences, window_losses = time.perf_counter(), 0, []
                    last = self.step == total
                    if cfg.eval_steps > 0 and self.step % cfg.eval_steps == 0 and not last:
                        self.evaluate()
                    if save_every and self.step % save_every == 0 and not last:
                        self.save_checkpoint()
                    if self.step_callback is not None:
                        self.step_callback(self, self.step)
                if self.batch_in_epoch >= len(plan):
                    self.epoch += 1
                    self.batch_in_epoch = 0
            final_metrics = self.evaluate() if cfg.eval_steps >= 0 else None
            final_dir = self.output_dir / "final"
            if self.is_main:
                self.encoder.save(final_dir)
            self.save_checkpoint()
            if self.is_main:
                summary = {
                    "steps": self.step,
                    "best": {"step": self.best_step, BEST_METRIC: self.best_metric},
                    "final": final_metrics,
                }
                _atomic_write_text(
                    self.output_dir / "results.json", json.dumps(summary, indent=2) + "\n"
                )
        finally:
            bar.close()
            if self._tb is not None:
                self._tb.close()
        best_dir = self.output_dir / "best" if self.best_step is not None else None
        best_metrics = None
        if best_dir is not None:
            best_metrics = self._best_record()
        return TrainResult(
            start_metrics=self._eval_record(0),
            output_dir=self.output_dir,
            steps=self.step,
            final_dir=final_dir,
            best_dir=best_dir,
            best_metrics=best_metrics,
            final_metrics=final_metrics,
        )

    def _eval_record(self, step: int) -> dict[str, float] | None:
        path = self.output_dir / METRICS_FILE
        if not path.is_file():
            return None
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec.get("event") == "eval" and rec.get("step") == step:
                return {k: v for k, v in rec.items() if isinstance(v, (int, float))}
        return None

    def _best_record(self) -> dict[str, float] | None:
        path = self.output_dir / METRICS_FILE
        if not path.is_file():
            return None
        best: dict[str, float] | None = None
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec.get("event") == "eval" and rec.get("best"):
                best = {k: v for k, v in rec.items() if isinstance(v, (int, float))}
        return best


def train(
    config: TrainConfig,
    *,
    resume: str | os.PathLike[str] | bool | None = None,
    evaluator: Evaluator | None = None,
) -> TrainResult:
    """Train one run (see :class:`Trainer`)."""
    return Trainer(config, evaluator=evaluator).train(resume=resume)
