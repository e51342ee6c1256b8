"""textcl's training loop: contrastive learning of sentence embeddings, short and explicit.

One :class:`Trainer` runs one :class:`TrainConfig`:

* data: raw sentences (``unsup``: two views of each sentence) or pairs/triples (``sup``:
  anchor, positive and optional hard negative), planned into batches per epoch with no
  duplicate text inside a batch;
* step: DataLoader collator (tokenize + views, :mod:`textcl.train.batches`) -> objective
  (encoder under autocast -> InfoNCE -> backward, plain or through the gradient cache; the
  encoder in DDP under torchrun) -> non-finite check -> clip -> AdamW -> linear schedule
  (:mod:`textcl.train.optim`);
* optional momentum queue of negatives (``queue_size``, ``momentum``) and false-negative
  control (``fn_margin``/``fn_threshold``, ``guide_model``): the objective becomes a
  :class:`textcl.momentum.MomentumContrast` over :class:`textcl.losses.ExtendedInfoNCE`, its
  queue and EMA weights saved in every checkpoint;
* every ``eval_steps``: the evaluator (:mod:`textcl.train.evaluators`; default: STS-B dev
  Spearman, alignment and uniformity); the best model by its primary metric is kept in
  ``OUTPUT_DIR/best``;
* one run state, :class:`~textcl.train.state.TrainerState` (step, log history, best metric
  and step, elapsed seconds), behind :class:`TrainResult`, ``results.json`` and
  ``metrics.jsonl``;
* checkpoints (:mod:`textcl.train.checkpoints`) ``OUTPUT_DIR/checkpoints/step-XXXXXXXX/``,
  written atomically; ``resume`` checks them and the run's fingerprint
  (:mod:`textcl.train.run_folder`), then continues exactly;
* the run folder belongs to one run: rank 0 holds its lock for the whole run, a new run
  does not start over another run's checkpoints; ``overwrite`` sets the old run aside only
  once the new one is checked (config, paths, data, model, evaluation data, device) and
  drops it after the new run's first checkpoint, or restores it if the new run fails first
  (:mod:`textcl.train.run_folder`); the output folder never shares a path with an input;
* callbacks (:mod:`textcl.train.callbacks`) watch the run and steer it through a
  :class:`~textcl.train.callbacks.TrainerControl` (stop, save, evaluate); ``metrics.jsonl``
  and the tracker of ``report_to`` (TensorBoard under ``OUTPUT_DIR/tb``, wandb) are
  callbacks; a tqdm bar.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from textcl.distributed import (
    DistEnv,
    all_reduce_mean,
    barrier,
    broadcast_object,
    init_distributed,
    shard_batch,
    wrap_ddp,
)
from textcl.encoder import SentenceEncoder
from textcl.errors import InputError
from textcl.evaluation.data import resolve_sts_dir
from textcl.io import FolderLock, remove_stale_tmp, write_json
from textcl.momentum import MomentumContrast
from textcl.objective import Embed, embed_batches
from textcl.precision import autocast_context, check_device, resolve_precision
from textcl.prompt import PromptTemplate
from textcl.tokens import TokenBatch, as_token_batch, batch_tensors
from textcl.train.batches import (
    BatchCollator,
    PlannedBatches,
    make_loader,
)
from textcl.train.callbacks import (
    CallbackList,
    MetricsJsonl,
    RunInfo,
    TrainerCallback,
    TrainerControl,
    reporting_callbacks,
)
from textcl.train.checkpoints import (
    check_resume_length,
    find_latest_checkpoint,
    load_checkpoint,
    os_errors,
    prune_checkpoints,
    rank_state,
    resolve_resume,
    weights_digest,
    write_checkpoint,
)
from textcl.train.config import TrainConfig
from textcl.train.evaluators import (
    BEST_METRIC,
    Evaluator,
    EvaluatorLike,
    MetricEvaluator,
    check_evaluator,
    metric_scales,
    primary_metric,
    sts_dev_evaluator,
)
from textcl.train.objectives import build_objective, uses_extended_loss
from textcl.train.optim import make_optimizer, make_scheduler
from textcl.train.plan import TrainingData
from textcl.train.results import TrainResult, card_facts, run_summary, train_result
from textcl.train.run_folder import (
    check_fingerprint,
    check_run_paths,
    claim_folder,
    drop_replaced,
    restore_replaced,
    run_fingerprint,
    settle_replaced,
)
from textcl.train.state import (
    TrainerState,
    load_checkpoint_state,
    seed_everything,
)
from textcl.views import ViewContext, build_view
from textcl.views.base import View

__all__ = [  # and re-exported from their new modules, for older imports
    "BEST_METRIC",
    "Evaluator",
    "MetricEvaluator",
    "TrainResult",
    "Trainer",
    "find_latest_checkpoint",
    "resolve_precision",
    "sts_dev_evaluator",
    "train",
]

logger = logging.getLogger(__name__)


@dataclass
class _Window:
    """The steps since the last train record: sentences, losses, and the seconds spent
    outside training (evaluation, checkpoints, callbacks), left out of the throughput."""

    start: float = field(default_factory=lambda: time.perf_counter())  # looked up per run
    sentences: int = 0
    losses: list[float] = field(default_factory=list)
    paused: float = 0.0


class Trainer:
    """Runs one :class:`TrainConfig`.

    Args:
        config: the run.
        evaluator: metrics for an encoder (default :func:`sts_dev_evaluator`); its
            ``primary_metric`` (``greater_is_better``) picks the best checkpoint; a plain
            callable's primary metric is ``stsb_dev_spearman`` (greater is better).
        callbacks: :class:`~textcl.train.callbacks.TrainerCallback` objects, called after
            ``metrics.jsonl`` and the ``report_to`` tracker; they stop, save or evaluate
            through the control (:mod:`textcl.train.callbacks` gives the order).
        step_callback: called as ``step_callback(trainer, step)`` after each optimizer step
            (after logging, evaluation and checkpointing); a simpler form of a callback.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        evaluator: EvaluatorLike | None = None,
        callbacks: Sequence[TrainerCallback] = (),
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
        self.evaluator: EvaluatorLike = evaluator or sts_dev_evaluator(
            config.data_dir, config.eval_batch_size
        )
        check_run_paths(config, self._sts_dir() if evaluator is None else None)
        check_device(config.device, "config field 'device'")
        self.primary_metric, self.greater_is_better = primary_metric(self.evaluator)
        self.user_callbacks = list(callbacks)
        self.step_callback = step_callback
        # Under torchrun: one process per device, gloo on CPU / nccl on CUDA.
        self.env: DistEnv = init_distributed(config.device)
        self.device = self.env.device
        self.precision = resolve_precision(config.precision, self.device)
        logger.info(
            "training precision: %s (requested %s, device %s)",
            self.precision,
            config.precision,
            self.device,
        )
        self.rank, self.world_size = self.env.rank, self.env.world_size
        self.is_main = self.env.is_main
        if config.batch_size % self.world_size:
            raise ValueError(
                f"config field 'batch_size': {config.batch_size} sentences cannot be split "
                f"evenly over {self.world_size} processes"
            )
        self.state = TrainerState(
            best_metric_name=self.primary_metric, greater_is_better=self.greater_is_better
        )
        self.control = TrainerControl()
        # Outside train() (e.g. evaluate() on its own) records still go to metrics.jsonl.
        self.callbacks = CallbackList([MetricsJsonl()] if self.is_main else [])
        self.run_info = RunInfo(config, self.output_dir, self.is_main, self)
        self._window = _Window()
        self._clock = time.perf_counter()
        self._evaluated_at = self._saved_at = -1  # steps of the loop's last eval / checkpoint
        self._model_digest: str | None = None
        self._guide_digest: str | None = None
        self._replaced: Path | None = None  # the old run set aside by overwrite
        # Data is read (and checked) before the model is loaded: bad input fails fast.
        self.training_data = TrainingData(config, self.world_size)
        self.data, self.hashes = self.training_data.items, self.training_data.hashes

    def _sts_dir(self) -> Path | None:
        """The default evaluator's STS folder when the run evaluates (None: none, or the
        hub; a missing one is reported by the evaluator's check)."""
        if self.config.eval_steps < 0:
            return None

        try:
            return resolve_sts_dir(self.config.data_dir)
        except OSError:
            return None

    # The run state lives in self.state; these read and write it.
    @property
    def step(self) -> int:
        return self.state.step

    @step.setter
    def step(self, value: int) -> None:
        self.state.step = value

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.state.epoch = value

    @property
    def batch_in_epoch(self) -> int:
        return self.state.batch_in_epoch

    @batch_in_epoch.setter
    def batch_in_epoch(self, value: int) -> None:
        self.state.batch_in_epoch = value

    @property
    def best_metric(self) -> float | None:
        return self.state.best_metric

    @property
    def best_step(self) -> int | None:
        return self.state.best_step

    @property
    def last_metrics(self) -> dict[str, float] | None:
        return self.state.last_metrics

    # ------------------------------------------------------------------ data
    def plan(self, epoch: int) -> list[list[int]]:
        """The global batches of ``epoch`` (deterministic in seed and epoch)."""
        return self.training_data.plan(epoch)

    def total_steps(self) -> int:
        return self.training_data.total_steps()

    def epoch_progress(self) -> float:
        """Epochs done, with the fraction of the one in progress (``0.54``): the ``epoch`` of
        the log records (the run state keeps the integer epoch and the batch within it)."""
        return round(self.epoch + self.batch_in_epoch / max(len(self.plan(self.epoch)), 1), 4)

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
        prompt: dict[str, Any] = {}
        if cfg.pooling == "prompt":
            prompt = {
                "prompt_template": cfg.resolved_prompt_templates()[0],
                "prompt_denoise": cfg.prompt_denoise == "always",
            }
        self.encoder = SentenceEncoder.from_pretrained(
            source, pooling=cfg.pooling, head_mode=cfg.head, **prompt
        ).to(self.device)
        self.encoder.check_max_length(cfg.max_length, "config field 'max_length'")
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
            templates=self._prompt_templates(),
            denoise=cfg.prompt_denoise != "none",
        )
        self.loss_fn, self.objective = build_objective(cfg, self.encoder, self.env, self.device)
        self.optimizer = make_optimizer(self.encoder, cfg.lr, cfg.weight_decay, self.device)
        self.scheduler = make_scheduler(self.optimizer, self.total_steps(), cfg.warmup_ratio)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.precision == "fp16" and self.device.type == "cuda"
        )

    def _prompt_templates(self) -> list[Any] | None:
        """PromptBERT: the templates of view a and view b, for the encoder's tokenizer."""
        if self.config.pooling != "prompt":
            return None

        return [
            PromptTemplate(t, self.encoder.tokenizer)
            for t in self.config.resolved_prompt_templates()
        ]

    # ------------------------------------------------------------------ step
    def compute_loss(self, reps: Sequence[Tensor]) -> Tensor:
        """InfoNCE of ``reps = [z_a, z_b(, z_neg)]``; across ranks, each rank's anchors
        are contrasted with the positives and hard negatives of the global batch."""
        return self.objective.compute(reps)

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

    # ------------------------------------------------------------------ run identity
    def fingerprint(self) -> dict[str, Any]:
        """What must not change when a run is resumed
        (:func:`~textcl.train.run_folder.run_fingerprint`). Stored in every checkpoint."""
        return run_fingerprint(
            self.config,
            model_digest=self._model_digest,
            data_items=len(self.hashes),
            data_sha256=self.training_data.digest(),
            world_size=self.world_size,
            guide_digest=self._guide_digest,
        )

    # ------------------------------------------------------------------ checkpoints
    def _views(self) -> dict[str, View]:
        return {"view_a": self.view_a, "view_b": self.view_b}

    def _momentum(self) -> Any:
        """The run's :class:`~textcl.momentum.MomentumContrast` (its queue and EMA weights
        go into every checkpoint), or None."""
        if not uses_extended_loss(self.config):
            return None

        return self.objective if isinstance(self.objective, MomentumContrast) else None

    def _payload(self, ranks: list[dict[str, Any]]) -> dict[str, Any]:
        self._sync_elapsed()
        momentum = self._momentum()
        return {
            "state": self.state.to_dict(),
            "fingerprint": self.fingerprint(),
            "config": self.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ranks": ranks,
            **({"momentum": momentum.state_dict()} if momentum is not None else {}),
        }

    def model_card_data(self) -> dict[str, Any]:
        """The run facts the model card of ``best/`` and ``final/`` shows."""
        stsb = self.best_metric if self.primary_metric == BEST_METRIC else None
        return card_facts(self.config, self.step, self.data, stsb, self.best_step)

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-XXXXXXXX`` atomically (rank 0); prune this run's old
        ones beyond ``save_total_limit``; then the ``on_save`` callbacks.

        Collective under torchrun: every rank calls it (rank 0 collects their RNG states).
        """
        ranks = [rank_state(self._views())]
        if self.env.is_distributed:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, ranks[0])
            ranks = gathered
        target = None
        if self.is_main:
            meta = {
                "epoch": self.epoch,
                "metrics": self.last_metrics,
                "best_metric": self.best_metric,
                "best_step": self.best_step,
            }
            target = write_checkpoint(
                self.output_dir, self.step, self.encoder, self.config, meta, self._payload(ranks)
            )
            if self._replaced is not None:  # the new run has started for real
                drop_replaced(self._replaced)
                self._replaced = None
            prune_checkpoints(self.output_dir, self.state.run_id, self.config.save_total_limit)
        barrier(self.env)
        self._call("on_save", target)
        return target

    def _load_state(self, checkpoint: Path) -> None:
        state = load_checkpoint(
            checkpoint,
            check_fingerprint=lambda path, stored: check_fingerprint(
                path, self.fingerprint(), stored
            ),
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            views=self._views(),
            rank=self.rank,
            momentum=self._momentum(),
            device=self.device,
        )
        state.best_metric_name = self.primary_metric
        state.greater_is_better = self.greater_is_better
        self.state = state

    # ------------------------------------------------------------------ logging
    def _call(self, hook: str, *args: Any) -> None:
        """Call ``hook`` on every callback with the run, its state and the control."""
        self.callbacks.call(hook, self.run_info, self.state, self.control, *args)

    def _sync_elapsed(self) -> None:
        now = time.perf_counter()
        self.state.elapsed_s += now - self._clock
        self._clock = now

    def _log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to the run state's log history; then the ``on_log`` callbacks
        (``metrics.jsonl``, the ``report_to`` tracker)."""
        self._sync_elapsed()
        record = {**record, "elapsed_s": round(self.state.elapsed_s, 3)}
        self.state.log_history.append(record)
        self._call("on_log", record)

    def _log_train(self, bar: Any) -> None:
        """The train record of the steps since the last one (training time only:
        evaluations, checkpoints and callbacks are left out)."""
        window = self._window
        elapsed = time.perf_counter() - window.start - window.paused
        rate = window.sentences / max(elapsed, 1e-9)
        mean_loss = float(np.mean(window.losses))
        bar.set_postfix(loss=f"{mean_loss:.4g}", sent_s=f"{rate:.1f}")
        self._log(
            {
                "event": "train",
                "step": self.step,
                "epoch": self.epoch_progress(),
                "time": time.time(),
                "loss": mean_loss,
                "lr": self.scheduler.get_last_lr()[0],
                "sentences_per_s": rate,
            }
        )
        self._window = _Window()

    @contextlib.contextmanager
    def _paused(self) -> Iterator[None]:
        """Time spent here is not training time (throughput of the train records)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._window.paused += time.perf_counter() - start

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Run the evaluator; keep the best model (by the evaluator's primary metric) in
        ``OUTPUT_DIR/best``; then the ``on_evaluate`` callbacks."""
        start = time.perf_counter()
        metrics: dict[str, float] = {}
        if self.is_main:  # the other ranks wait: evaluation is cheap next to training
            metrics = {k: float(v) for k, v in self.evaluator(self.encoder).items()}
            if self.primary_metric not in metrics:
                raise InputError(
                    f"the evaluator returned no {self.primary_metric!r} (its primary metric, "
                    f"which picks best/); it returned {sorted(metrics)}. Give the evaluator a "
                    "'primary_metric' attribute (e.g. wrap it in MetricEvaluator)"
                )
        if self.env.is_distributed:
            metrics = broadcast_object(metrics, self.env)
        self.state.last_metrics = metrics
        score = metrics.get(self.primary_metric)
        best = score is not None and self.state.is_better(score)
        if best:
            self.state.best_metric, self.state.best_step = score, self.step
            if self.is_main:
                with os_errors(self.output_dir / "best"):
                    self.encoder.save(self.output_dir / "best", card=self.model_card_data())
        barrier(self.env)
        scales = metric_scales(self.evaluator)
        self._log(
            {
                "event": "eval",
                "step": self.step,
                "epoch": self.epoch_progress(),
                "time": time.time(),
                **metrics,
                "primary_metric": self.primary_metric,
                "scales": {k: scales.get(k, 1.0) for k in metrics},
                "best": bool(best),
                "eval_time_s": round(time.perf_counter() - start, 3),
            }
        )
        self._call("on_evaluate", metrics)
        return metrics

    # ------------------------------------------------------------------ loop
    def train(self, resume: str | os.PathLike[str] | bool | None = None) -> TrainResult:
        """Train; ``resume``: a checkpoint folder, ``True`` (latest, must exist) or
        ``"auto"`` (latest if any).

        Rank 0 holds the run folder's lock for the whole run: a second ``train`` into the
        same folder fails at once (:class:`~textcl.errors.FolderBusyError`); a new run into
        a folder holding another run refuses (:class:`~textcl.errors.FolderConflictError`)
        unless ``overwrite``; a resume must match the run's fingerprint.
        """
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise InputError(f"config field 'output_dir': {self.output_dir} is not a folder")
        lock = FolderLock(self.output_dir, "training run") if self.is_main else None
        if lock is not None:
            lock.acquire()
        try:
            return self._train_locked(resume)
        finally:
            if lock is not None:
                lock.release()

    def _start(self, resume: str | os.PathLike[str] | bool | None) -> None:
        """Check everything (checkpoint, model, evaluation data), set up (from the checkpoint
        when resuming), restore or start the run state; only then claim the run folder
        (``overwrite``: the old run set aside) and write ``config.json``."""
        cfg = self.config
        self._clock = time.perf_counter()
        if self.is_main:
            remove_stale_tmp(self.output_dir)  # left by a killed run; we hold the lock
            settle_replaced(self.output_dir)  # an overwrite killed before its 1st checkpoint
        barrier(self.env)
        checkpoint = resolve_resume(self.output_dir, resume)
        if checkpoint is not None:
            load_checkpoint_state(checkpoint)  # refuse a damaged/old one before the model loads
            check_resume_length(checkpoint, self.total_steps(), self.config.max_steps is not None)
        self._model_digest = weights_digest(cfg.model)
        if cfg.guide_model is not None:
            self._guide_digest = weights_digest(cfg.guide_model)
        self.setup(checkpoint)
        if self.is_main and cfg.eval_steps >= 0:
            check_evaluator(self.evaluator)  # fail now, not at the first evaluation
        if checkpoint is not None:
            self._load_state(checkpoint)
            logger.info("resumed from %s at step %d", checkpoint, self.step)
        else:
            self.state = TrainerState(
                run_id=uuid.uuid4().hex,
                best_metric_name=self.primary_metric,
                greater_is_better=self.greater_is_better,
            )
        if self.is_main:
            self._replaced = claim_folder(
                self.output_dir, resuming=checkpoint is not None, overwrite=cfg.overwrite
            )
        barrier(self.env)
        self._clock = time.perf_counter()
        if self.is_main:
            cfg.save(self.output_dir / "config.json")

    def _train_locked(self, resume: str | os.PathLike[str] | bool | None) -> TrainResult:
        try:
            return self._run(resume)
        except BaseException:
            if self._replaced is not None:  # failed before its first checkpoint
                restore_replaced(self.output_dir, self._replaced)
                self._replaced = None
                logger.warning("%s: the old run is restored", self.output_dir)
            raise

    def _run(self, resume: str | os.PathLike[str] | bool | None) -> TrainResult:
        self._start(resume)
        cfg, total = self.config, self.total_steps()
        self.callbacks = CallbackList(
            [*reporting_callbacks(cfg, self.is_main), *self.user_callbacks]
        )
        self.control = control = TrainerControl()
        self._evaluated_at = self._saved_at = -1
        bar = None
        try:
            self._call("on_train_begin")
            if cfg.eval_at_start and self.step == 0 and cfg.eval_steps >= 0:
                self.evaluate()
            self.encoder.train()
            bar = tqdm(
                total=total, initial=self.step, desc="train", unit="step", disable=not self.is_main
            )
            self._window = _Window()
            while self.step < total and not control.should_stop:
                plan = self.plan(self.epoch)
                for cpu_inputs in self.loader(self.epoch):
                    if self.step >= total:
                        break
                    loss = self.train_step(self.to_device(cpu_inputs))
                    self._window.sentences += len(plan[self.batch_in_epoch])
                    self._window.losses.append(loss)
                    self.batch_in_epoch += 1
                    self.step += 1
                    bar.update(1)
                    self._cadence()  # control: this step's log / evaluate / save flags
                    with self._paused():
                        self._call("on_step_end")  # callbacks may change the flags
                    if control.should_log or self._ends(total):
                        self._log_train(bar)
                    with self._paused():
                        if control.should_evaluate and not self._ends(total):
                            self._evaluate_or_save()
                            self._evaluated_at = self.step
                        if control.should_save and not self._ends(total):
                            self.save_checkpoint()
                            self._saved_at = self.step
                        if self.step_callback is not None:
                            self.step_callback(self, self.step)
                    if control.should_stop:
                        break
                if self.batch_in_epoch >= len(plan):
                    self.epoch += 1
                    self.batch_in_epoch = 0
            final_metrics = self._finish(bar)
        finally:
            if bar is not None:
                bar.close()
            self._call("on_train_end")
        return self.result(final_metrics)

    def _evaluate_or_save(self) -> None:
        """Evaluate; if the evaluation fails (its data went away mid-run...), the step's
        checkpoint, if due, is still written (one process): the training is not lost."""
        try:
            self.evaluate()
        except Exception:
            if self.control.should_save and not self.env.is_distributed:
                self.save_checkpoint()
            raise

    def _cadence(self) -> None:
        """The control's flags for this step from the config (``logging_steps``,
        ``eval_steps``, ``save_steps``: by default every ``eval_steps``)."""
        cfg, step = self.config, self.step
        save_every = cfg.save_steps or (cfg.eval_steps if cfg.eval_steps > 0 else 0)
        self.control.should_log = step % cfg.logging_steps == 0
        self.control.should_evaluate = cfg.eval_steps > 0 and step % cfg.eval_steps == 0
        self.control.should_save = save_every > 0 and step % save_every == 0

    def _ends(self, total: int) -> bool:
        """This step is the run's last: ``total`` reached or a callback stopped the run
        (its logging, evaluation and checkpoint are the final ones)."""
        return self.step >= total or self.control.should_stop

    def _finish(self, bar: Any) -> dict[str, float] | None:
        """The end of a run, at ``max_steps`` / the last epoch or stopped by a callback
        (``should_stop``), the same either way: the steps not logged yet, the final
        evaluation (unless ``eval_steps < 0``), ``final/``, the last checkpoint and
        ``results.json``. An evaluation or checkpoint the loop already made at this step
        (a stop from ``on_evaluate`` / ``on_save``) is not repeated."""
        cfg = self.config
        if self._window.losses:
            self._log_train(bar)
        final_metrics = None
        if cfg.eval_steps >= 0:
            done = self._evaluated_at == self.step
            final_metrics = self.last_metrics if done else self.evaluate()
        if self.is_main:
            with os_errors(self.output_dir / "final"):
                self.encoder.save(self.output_dir / "final", card=self.model_card_data())
        if self._saved_at != self.step:
            self.save_checkpoint()
        if self.is_main:
            write_json(self.output_dir / "results.json", self.summary(final_metrics))
        return final_metrics

    def summary(self, final_metrics: Mapping[str, float] | None) -> dict[str, Any]:
        """``results.json``: the run's outcome, from the run state."""
        return run_summary(self.state, final_metrics)

    def result(self, final_metrics: Mapping[str, float] | None = None) -> TrainResult:
        """The :class:`TrainResult` of the run state."""
        return train_result(self.output_dir, self.state, final_metrics)


def train(
    config: TrainConfig,
    *,
    resume: str | os.PathLike[str] | bool | None = None,
    evaluator: EvaluatorLike | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """Train one run (see :class:`Trainer`)."""
    return Trainer(config, evaluator=evaluator, callbacks=callbacks).train(resume=resume)
