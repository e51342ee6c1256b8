"""textcl's training loop: contrastive learning of sentence embeddings, short and explicit.

One :class:`Trainer` runs one :class:`TrainConfig`:

* data: raw sentences (``unsup``: two views of each sentence) or pairs/triples (``sup``:
  anchor, positive and optional hard negative), planned into batches per epoch with no
  duplicate text inside a batch;
* step: DataLoader collator (tokenize + views, :mod:`textcl.train.batches`) -> objective
  (encoder under autocast -> InfoNCE -> backward, plain or through the gradient cache; the
  encoder in DDP under torchrun) -> non-finite check -> clip -> AdamW -> linear schedule;
* optional momentum queue of negatives (``queue_size``, ``momentum``) and false-negative
  control (``fn_margin``/``fn_threshold``, ``guide_model``): the objective becomes a
  :class:`textcl.momentum.MomentumContrast` over :class:`textcl.losses.ExtendedInfoNCE`, its
  queue and EMA weights saved in every checkpoint;
* every ``eval_steps``: the evaluator (default: STS-B dev Spearman, alignment and
  uniformity); the best model by its primary metric is kept in ``OUTPUT_DIR/best``;
* one run state, :class:`~textcl.train.state.TrainerState` (step, log history, best metric
  and step, elapsed seconds), behind :class:`TrainResult`, ``results.json`` and
  ``metrics.jsonl``;
* checkpoints ``OUTPUT_DIR/checkpoints/step-XXXXXXXX/`` written atomically with the model,
  the run state, optimizer, scheduler, scaler, RNG and view states as safetensors + JSON
  (never a pickle), each file's sha256 recorded; ``resume`` checks them and the run's
  fingerprint, then continues exactly;
* the run folder belongs to one run: rank 0 holds its lock for the whole run, a new run
  does not start over another run's checkpoints (``overwrite`` clears them);
* ``OUTPUT_DIR/metrics.jsonl`` (one JSON object per line, ``event`` = ``train``/``eval``),
  a tqdm bar, and a tracker (``report_to``: TensorBoard under ``OUTPUT_DIR/tb``, wandb).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

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
from textcl.encoder import SentenceEncoder
from textcl.errors import CorruptFileError, FolderConflictError, InputError
from textcl.io import (
    FolderLock,
    atomic_dir,
    atomic_write_text,
    dumps_json,
    files_digest,
    read_json,
    remove_stale_tmp,
    write_json,
)
from textcl.losses import InfoNCE
from textcl.objective import Embed, LossStep, embed_batches
from textcl.precision import autocast_context, resolve_precision
from textcl.tokens import TokenBatch, as_token_batch, batch_tensors
from textcl.train.batches import (
    BatchCollator,
    PlannedBatches,
    length_grouped_order,
    make_loader,
)
from textcl.train.config import TrainConfig
from textcl.train.state import (
    LEGACY_STATE_FILE,
    STATE_JSON,
    TrainerState,
    load_checkpoint_state,
    rng_state,
    save_checkpoint_state,
    set_rng_state,
)
from textcl.views import ViewContext, build_view
from textcl.views.base import View

logger = logging.getLogger(__name__)

BEST_METRIC = "stsb_dev_spearman"
"""The primary metric of :func:`sts_dev_evaluator` (and of plain-callable evaluators)."""
CHECKPOINTS = "checkpoints"
STATE_FILE = STATE_JSON
METRICS_FILE = "metrics.jsonl"
RUN_OUTPUTS = (CHECKPOINTS, "best", "final", METRICS_FILE, "results.json", "tb", "config.json")
"""What a run writes in its folder (``overwrite`` removes exactly these)."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")

RESUMABLE_FIELDS = (
    "output_dir",
    "max_steps",
    "epochs",
    "eval_steps",
    "eval_at_start",
    "eval_batch_size",
    "save_steps",
    "save_total_limit",
    "logging_steps",
    "data_dir",
    "device",
    "report_to",
    "overwrite",
    "train_file",
    "model",
    "compile",
    "precision",
    "grad_cache_chunk",
    "num_workers",
    "stream",
)
"""Config fields that may change on ``--resume`` (cadence, length, where and how it runs).
``model`` and ``train_file`` may be moved: their content is checked (weights hash, data
identity) instead of their path."""


@runtime_checkable
class Evaluator(Protocol):
    """Maps an encoder to metrics, e.g. ``{"stsb_dev_spearman": 76.1, "alignment": ...}``,
    and declares which metric picks the best checkpoint.

    A plain callable ``encoder -> metrics`` works too: its primary metric is
    :data:`BEST_METRIC` (greater is better), and it must return it.
    """

    primary_metric: str
    greater_is_better: bool

    def __call__(self, encoder: SentenceEncoder) -> Mapping[str, float]: ...


EvaluatorLike = Evaluator | Callable[[SentenceEncoder], Mapping[str, float]]


class MetricEvaluator:
    """Wrap a plain ``encoder -> metrics`` callable with its primary metric and direction.

    ``MetricEvaluator(my_eval, "val_loss", greater_is_better=False)``; ``scales`` says
    how each stored value is scaled (e.g. ``{"stsb_dev_spearman": 100}``: ×100).
    """

    def __init__(
        self,
        fn: Callable[[SentenceEncoder], Mapping[str, float]],
        primary_metric: str,
        greater_is_better: bool = True,
        scales: Mapping[str, float] | None = None,
    ) -> None:
        self.fn = fn
        self.primary_metric = primary_metric
        self.greater_is_better = greater_is_better
        self.scales = dict(scales or {})

    def __call__(self, encoder: SentenceEncoder) -> Mapping[str, float]:
        return self.fn(encoder)


@dataclass
class TrainResult:
    """What a finished run produced (from its :class:`TrainerState`)."""

    output_dir: Path
    steps: int
    final_dir: Path
    best_dir: Path | None
    best_metrics: dict[str, float] | None
    final_metrics: dict[str, float] | None
    start_metrics: dict[str, float] | None = None
    """Metrics of the starting model (with ``eval_at_start``)."""
    state: TrainerState | None = None
    """The run state the result was read from."""


def _numbers(record: Mapping[str, Any] | None) -> dict[str, float] | None:
    if record is None:
        return None
    return {
        k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


def sts_dev_evaluator(data_dir: str | None = None, batch_size: int = 128) -> MetricEvaluator:
    """The SimCSE protocol's evaluator: STS-B dev Spearman (x100, cosine, ``all``), plus
    alignment and uniformity (Wang & Isola 2020) on STS-B dev. Primary metric:
    ``stsb_dev_spearman`` (greater is better)."""

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

    return MetricEvaluator(
        evaluate, BEST_METRIC, greater_is_better=True, scales={BEST_METRIC: 100.0}
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def find_latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest ``step-XXXXXXXX`` checkpoint under ``output_dir``, or None (checkpoint
    folders appear complete or not at all: they are written atomically). An old-format
    checkpoint is returned too: resuming from it fails with a clear message."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    done = [
        p
        for p in root.glob("step-*")
        if _step_of(p) is not None
        and ((p / STATE_JSON).is_file() or (p / LEGACY_STATE_FILE).is_file())
    ]
    return max(done, key=lambda p: _step_of(p) or 0) if done else None


def _step_of(path: Path) -> int | None:
    try:
        return int(path.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return None


def _weights_digest(model: str) -> str | None:
    """sha256 over the weight files of a local model folder (None for a hub id)."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return None
    return files_digest(
        path, (p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    )


def _uses_extended_loss(cfg: TrainConfig) -> bool:
    """Momentum queue or false-negative control asked for."""
    return bool(cfg.queue_size) or cfg.fn_margin is not None or cfg.fn_threshold is not None


class Trainer:
    """Runs one :class:`TrainConfig`.

    Args:
        config: the run.
        evaluator: metrics for an encoder (default :func:`sts_dev_evaluator`); its
            ``primary_metric`` (``greater_is_better``) picks the best checkpoint; a plain
            callable's primary metric is ``stsb_dev_spearman`` (greater is better).
        step_callback: called as ``step_callback(trainer, step)`` after each optimizer step
            (after logging, evaluation and checkpointing).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        evaluator: EvaluatorLike | None = None,
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
        self.primary_metric: str = getattr(self.evaluator, "primary_metric", BEST_METRIC)
        self.greater_is_better = bool(getattr(self.evaluator, "greater_is_better", True))
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
        self._trackers: list[Any] = []
        self._paused = 0.0  # seconds of evaluation/checkpointing in the current log window
        self._clock = time.perf_counter()
        self._model_digest: str | None = None
        self._guide_digest: str | None = None
        self._data_sha256: str | None = None
        # Data is read (and checked) before the model is loaded: bad input fails fast.
        self.data = self._load_data()
        self.hashes = self._hashes()
        distinct = len(np.unique(self.hashes))
        if config.batch_size > distinct:
            raise InputError(
                f"config field 'batch_size': {config.batch_size} is more than the {distinct} "
                f"distinct item(s) of {config.train_file}; a batch holds no duplicate, so "
                f"lower batch_size to at most {distinct} or add data"
            )
        self._plans: dict[int, list[list[int]]] = {}
        self._lengths: np.ndarray | None = None

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
    def _load_data(self) -> Any:
        cfg = self.config
        if cfg.objective == "unsup":
            return TextCorpus.from_source(
                cfg.train_file, text_column=cfg.text_column, split=cfg.split, streaming=cfg.stream
            )
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
                    order=self._length_order(epoch),
                )
            }
            if not self._plans[epoch]:
                raise InputError(
                    f"{self.config.train_file}: {len(self.hashes)} distinct item(s) cannot fill "
                    f"one batch of {self.config.batch_size}; lower batch_size"
                )
        return self._plans[epoch]

    def _length_order(self, epoch: int) -> np.ndarray | None:
        """With ``group_by_length``: the item order of ``epoch`` (else None: random)."""
        if not self.config.group_by_length:
            return None
        if self._lengths is None:
            first = (
                (lambda i: self.data[i])
                if isinstance(self.data, TextCorpus)
                else (lambda i: self.data[i][0])
            )
            self._lengths = np.array([len(first(i)) for i in range(len(self.hashes))])
        return length_grouped_order(self._lengths, self.config.batch_size, self.config.seed, epoch)

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
        prompt: dict[str, Any] = {}
        if cfg.pooling == "prompt":
            prompt = {
                "prompt_template": cfg.resolved_prompt_templates()[0],
                "prompt_denoise": cfg.prompt_denoise == "always",
            }
        self.encoder = SentenceEncoder.from_pretrained(
            source, pooling=cfg.pooling, head_mode=cfg.head, **prompt
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
            templates=self._prompt_templates(),
            denoise=cfg.prompt_denoise != "none",
        )
        self.loss_fn = InfoNCE(
            temperature=cfg.temperature,
            symmetric=cfg.symmetric,
            hard_negative_weight=cfg.hard_negative_weight,
            dist=self.env,
        )
        step_loss = self._matryoshka(self.loss_fn)
        self.objective: LossStep = LossStep(step_loss)
        if cfg.grad_cache_chunk is not None:
            from textcl.gradcache import CachedLoss

            self.objective = CachedLoss(step_loss, cfg.grad_cache_chunk)
        if _uses_extended_loss(cfg):
            self._setup_negatives()
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

    def _setup_negatives(self) -> None:
        """Momentum queue and/or false-negative control (issue 17): an ExtendedInfoNCE run
        by a MomentumContrast objective (plain or gradient cache)."""
        from textcl.losses import ExtendedInfoNCE
        from textcl.momentum import GuideEncoder, MomentumContrast

        cfg = self.config
        self.loss_fn = ExtendedInfoNCE(
            temperature=cfg.temperature,
            symmetric=cfg.symmetric,
            hard_negative_weight=cfg.hard_negative_weight,
            dist=self.env,
            fn_margin=cfg.fn_margin,
            fn_threshold=cfg.fn_threshold,
        )
        guide = None
        if cfg.guide_model is not None:
            if not Path(cfg.guide_model).is_dir():
                raise InputError(
                    f"config field 'guide_model': {cfg.guide_model} is not a model folder"
                )
            guide = GuideEncoder.load(
                cfg.guide_model, self.encoder.tokenizer, cfg.max_length, self.device
            )
        self.objective = MomentumContrast(
            self.loss_fn,
            queue_size=cfg.queue_size,
            momentum=cfg.momentum,
            online=self.encoder,
            chunk_size=cfg.grad_cache_chunk,
            guide=guide,
            dist=self.env,
        )

    def _prompt_templates(self) -> list[Any] | None:
        """PromptBERT: the templates of view a and view b, for the encoder's tokenizer."""
        if self.config.pooling != "prompt":
            return None
        from textcl.prompt import PromptTemplate

        return [
            PromptTemplate(t, self.encoder.tokenizer)
            for t in self.config.resolved_prompt_templates()
        ]

    def _matryoshka(self, loss: Any) -> Any:
        """``loss`` summed over the ``matryoshka_dims`` prefixes (as configured)."""
        cfg = self.config
        if not cfg.matryoshka_dims:
            return loss
        from textcl.matryoshka import MatryoshkaLoss

        width = self.encoder.full_embedding_dim
        if max(cfg.matryoshka_dims) > width:
            raise ValueError(
                f"config field 'matryoshka_dims': {cfg.matryoshka_dims} exceed the embedding "
                f"size {width} of {cfg.model}"
            )
        return MatryoshkaLoss(loss, cfg.matryoshka_dims, cfg.matryoshka_weights)

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

    # ------------------------------------------------------------------ run identity
    def fingerprint(self) -> dict[str, Any]:
        """What must not change when a run is resumed: the starting model (source and a
        sha256 of its weight files), the training data's identity (items and a content
        hash), the recipe and the number of processes. Stored in every checkpoint."""
        cfg = self.config.to_dict()
        recipe = {k: v for k, v in cfg.items() if k not in RESUMABLE_FIELDS}
        fingerprint = {
            **recipe,
            "model_weights_sha256": self._model_digest,
            "data_items": len(self.hashes),
            "data_sha256": self._data_digest(),
            "world_size": self.world_size,
        }
        if self.config.guide_model is not None:
            # The guide decides which negatives count: its content, not only its path.
            fingerprint["guide_weights_sha256"] = self._guide_digest
        return fingerprint

    def _data_digest(self) -> str:
        """sha256 of the training data's content (the corpus's per-sentence hashes; every
        column of pairs), computed once."""
        if self._data_sha256 is None:
            if isinstance(self.data, TextCorpus):
                raw = np.ascontiguousarray(self.hashes).tobytes()
                self._data_sha256 = hashlib.sha256(raw).hexdigest()
            else:
                h = hashlib.sha256()
                for i in range(len(self.data)):
                    h.update("\x1f".join(self.data[i]).encode("utf-8") + b"\x1e")
                self._data_sha256 = h.hexdigest()
        return self._data_sha256

    def _check_fingerprint(self, checkpoint: Path, stored: Any) -> None:
        if not isinstance(stored, dict):
            raise CorruptFileError(f"{checkpoint / STATE_JSON}: no run fingerprint")
        now = self.fingerprint()
        defaults = TrainConfig().to_dict()
        changed = sorted(
            k
            for k in set(now) | set(stored)
            if now.get(k) != stored.get(k)
            # a config field added after the checkpoint was written, left at its default
            and not (k not in stored and k in defaults and now[k] == defaults[k])
        )
        if changed:
            what = "; ".join(f"{k}: {stored.get(k)!r} -> {now.get(k)!r}" for k in changed)
            raise FolderConflictError(
                f"{checkpoint}: cannot resume, the run changed ({what}). Resume with the "
                "run's own model, data and recipe, or start a new run (--overwrite or "
                "another --output-dir)"
            )

    def _claim_folder(self, resuming: bool) -> None:
        """A new run may not start over another run's checkpoints (``overwrite`` clears
        them); called with the folder's lock held."""
        root = self.output_dir
        found = [n for n in (CHECKPOINTS, "best", "final") if (root / n).exists()]
        if CHECKPOINTS in found and not any((root / CHECKPOINTS).iterdir()):
            found.remove(CHECKPOINTS)
        if resuming or not found:
            return
        if not self.config.overwrite:
            raise FolderConflictError(
                f"{root}: holds another run ({', '.join(found)}); continue it with --resume, "
                "clear it with --overwrite, or use another --output-dir"
            )
        for name in RUN_OUTPUTS:
            path = root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()

    # ------------------------------------------------------------------ checkpoints
    def _rank_state(self) -> dict[str, Any]:
        """What differs between ranks: RNG and view generator states."""
        views = {
            name: v.state_dict()
            for name, v in (("view_a", self.view_a), ("view_b", self.view_b))
            if hasattr(v, "state_dict")
        }
        return {"views": views, "rng": rng_state()}

    def _payload(self, ranks: list[dict[str, Any]]) -> dict[str, Any]:
        self._sync_elapsed()
        return {
            "state": self.state.to_dict(),
            "fingerprint": self.fingerprint(),
            "config": self.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ranks": ranks,
            **self._negatives_state(),
        }

    def _negatives_state(self) -> dict[str, Any]:
        """The momentum queue and EMA weights (same on every rank), when in use."""
        if not _uses_extended_loss(self.config):
            return {}
        from textcl.momentum import MomentumContrast

        if not isinstance(self.objective, MomentumContrast):
            return {}
        return {"momentum": self.objective.state_dict()}

    def model_card_data(self) -> dict[str, Any]:
        """The run facts the model card of ``best/`` and ``final/`` shows
        (:mod:`textcl.model_card`)."""
        cfg = self.config
        try:
            size: int | None = len(self.data)
        except TypeError:  # a stream has no length
            size = None
        return {
            "base_model": cfg.model,
            "objective": cfg.objective,
            "views": cfg.view_a if cfg.view_a == cfg.view_b else f"{cfg.view_a} / {cfg.view_b}",
            "temperature": cfg.temperature,
            "batch_size": cfg.batch_size,
            "learning_rate": cfg.lr,
            "steps": self.step,
            "data": cfg.train_file,
            "data_size": size,
            # The card's score line is STS-B dev; a custom primary metric is not it.
            "best_stsb_dev": self.best_metric if self.primary_metric == BEST_METRIC else None,
            "best_step": self.best_step,
            **(
                {"prompt_templates": cfg.resolved_prompt_templates()}
                if cfg.pooling == "prompt"
                else {}
            ),
            **({"matryoshka_dims": cfg.matryoshka_dims} if cfg.matryoshka_dims else {}),
        }

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-XXXXXXXX`` atomically (rank 0); prune this run's old
        ones beyond ``save_total_limit``.

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
        target = root / f"step-{self.step:08d}"
        with atomic_dir(target) as tmp:
            self.encoder.save(tmp / "model")
            self.config.save(
                tmp / "config.json",
                step=self.step,
                epoch=self.epoch,
                metrics=self.last_metrics,
                best_metric=self.best_metric,
                best_step=self.best_step,
            )
            save_checkpoint_state(tmp, self._payload(ranks))  # last: it lists the files
        self._prune_checkpoints(root)
        barrier(self.env)
        return target

    def _prune_checkpoints(self, root: Path) -> None:
        mine: list[tuple[int, Path]] = []
        for p in root.glob("step-*"):
            step = _step_of(p)
            if step is None or not (p / STATE_JSON).is_file():
                continue
            try:
                run_id = read_json(p / STATE_JSON)["payload"]["state"]["run_id"]
            except (CorruptFileError, KeyError, TypeError):
                continue  # not ours to judge: leave it
            if run_id == self.state.run_id:
                mine.append((step, p))
        mine.sort()
        for _, old in mine[: -self.config.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)

    def _load_state(self, checkpoint: Path) -> None:
        payload = load_checkpoint_state(checkpoint)
        source = str(checkpoint / STATE_JSON)
        try:
            self._check_fingerprint(checkpoint, payload.get("fingerprint"))
            state = TrainerState.from_dict(payload["state"], source)
            if _step_of(checkpoint) not in (None, state.step):
                raise CorruptFileError(
                    f"{source}: holds step {state.step}, not the folder's {checkpoint.name}"
                )
            self.optimizer.load_state_dict(payload["optimizer"])
            self.scheduler.load_state_dict(payload["scheduler"])
            self.scaler.load_state_dict(payload["scaler"])
            mine = payload["ranks"][self.rank]
            for name, view in (("view_a", self.view_a), ("view_b", self.view_b)):
                if name in mine["views"] and hasattr(view, "load_state_dict"):
                    view.load_state_dict(mine["views"][name])
            set_rng_state(mine["rng"])
            if _uses_extended_loss(self.config):
                from textcl.momentum import MomentumContrast

                if isinstance(self.objective, MomentumContrast):
                    self.objective.load_state_dict(payload["momentum"], self.device)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
            if isinstance(e, CorruptFileError | FolderConflictError):
                raise
            raise CorruptFileError(
                f"{source}: damaged trainer state ({type(e).__name__}: {e})"
            ) from None
        state.best_metric_name = self.primary_metric
        state.greater_is_better = self.greater_is_better
        self.state = state

    def _resolve_resume(self, resume: str | os.PathLike[str] | bool | None) -> Path | None:
        if resume is None or resume is False:
            return None
        if resume is True or resume == "auto":
            found = find_latest_checkpoint(self.output_dir)
            if found is None and resume is True:
                raise FileNotFoundError(f"{self.output_dir}: no checkpoint to resume from")
            return found
        path = Path(resume)
        if not ((path / STATE_JSON).is_file() or (path / LEGACY_STATE_FILE).is_file()):
            raise FileNotFoundError(f"{path}: not a textcl checkpoint (no {STATE_JSON})")
        return path

    # ------------------------------------------------------------------ logging
    def _sync_elapsed(self) -> None:
        now = time.perf_counter()
        self.state.elapsed_s += now - self._clock
        self._clock = now

    def _log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to the run state's log history, ``metrics.jsonl`` and the
        trackers (``report_to``)."""
        self._sync_elapsed()
        record = {**record, "elapsed_s": round(self.state.elapsed_s, 3)}
        self.state.log_history.append(record)
        if not self.is_main:
            return
        with open(self.output_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
            fh.write(dumps_json(record, indent=None) + "\n")
        for tracker in self._trackers:
            tracker.log(record)

    def _write_log(self) -> None:
        """``metrics.jsonl`` rewritten from the run state (at a start or a resume: records
        of an interrupted run past its checkpoint are dropped, a damaged log is replaced)."""
        if self.is_main:
            atomic_write_text(
                self.output_dir / METRICS_FILE,
                "".join(dumps_json(r, indent=None) + "\n" for r in self.state.log_history),
            )

    def _open_trackers(self) -> list[Any]:
        """The experiment trackers of ``report_to`` (rank 0 only)."""
        if not self.is_main or self.config.report_to == "none":
            return []
        kind = self.config.report_to
        if kind in ("auto", "tensorboard"):
            try:
                return [_TensorBoard(self.output_dir / "tb", self.config)]
            except ImportError:
                if kind == "tensorboard":
                    raise InputError(
                        "config field 'report_to': tensorboard is not installed "
                        "(pip install tensorboard) or use --report-to none"
                    ) from None
                return []
        return [_WandB(self.output_dir, self.config)]

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Run the evaluator; keep the best model (by the evaluator's primary metric) in
        ``OUTPUT_DIR/best``."""
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
            from textcl.distributed import broadcast_object

            metrics = broadcast_object(metrics, self.env)
        self.state.last_metrics = metrics
        score = metrics.get(self.primary_metric)
        best = score is not None and self.state.is_better(score)
        if best:
            self.state.best_metric, self.state.best_step = score, self.step
            if self.is_main:
                self.encoder.save(self.output_dir / "best", card=self.model_card_data())
        barrier(self.env)
        scales = dict(getattr(self.evaluator, "scales", {}) or {})
        self._log(
            {
                "event": "eval",
                "step": self.step,
                "epoch": self.epoch,
                "time": time.time(),
                **metrics,
                "primary_metric": self.primary_metric,
                "scales": {k: scales.get(k, 1.0) for k in metrics},
                "best": bool(best),
                "eval_time_s": round(time.perf_counter() - start, 3),
            }
        )
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

    def _train_locked(self, resume: str | os.PathLike[str] | bool | None) -> TrainResult:
        cfg = self.config
        self._clock = time.perf_counter()
        if self.is_main:
            remove_stale_tmp(self.output_dir)  # left by a killed run; we hold the lock
        checkpoint = self._resolve_resume(resume)
        if self.is_main:
            self._claim_folder(resuming=checkpoint is not None)
        barrier(self.env)
        if checkpoint is not None:
            load_checkpoint_state(checkpoint)  # refuse a damaged/old one before the model loads
        self._model_digest = _weights_digest(cfg.model)
        if cfg.guide_model is not None:
            self._guide_digest = _weights_digest(cfg.guide_model)
        self.setup(checkpoint)
        if checkpoint is not None:
            self._load_state(checkpoint)
            logger.info("resumed from %s at step %d", checkpoint, self.step)
        else:
            self.state = TrainerState(
                run_id=uuid.uuid4().hex,
                best_metric_name=self.primary_metric,
                greater_is_better=self.greater_is_better,
            )
        self._clock = time.perf_counter()
        self._write_log()
        if self.is_main:
            cfg.save(self.output_dir / "config.json")
        self._trackers = self._open_trackers()
        total = self.total_steps()
        save_every = cfg.save_steps or (cfg.eval_steps if cfg.eval_steps > 0 else None)
        if cfg.eval_at_start and self.step == 0 and cfg.eval_steps >= 0:
            self.evaluate()
        self.encoder.train()
        bar = tqdm(
            total=total, initial=self.step, desc="train", unit="step", disable=not self.is_main
        )
        window_start, window_sentences, window_losses = time.perf_counter(), 0, []
        self._paused = 0.0
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
                        # Training time only: evaluations and checkpoints are left out.
                        elapsed = time.perf_counter() - window_start - self._paused
                        rate = window_sentences / max(elapsed, 1e-9)
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
                        self._paused = 0.0
                    last = self.step == total
                    paused_from = time.perf_counter()
                    if cfg.eval_steps > 0 and self.step % cfg.eval_steps == 0 and not last:
                        self.evaluate()
                    if save_every and self.step % save_every == 0 and not last:
                        self.save_checkpoint()
                    if self.step_callback is not None:
                        self.step_callback(self, self.step)
                    self._paused += time.perf_counter() - paused_from
                if self.batch_in_epoch >= len(plan):
                    self.epoch += 1
                    self.batch_in_epoch = 0
            final_metrics = self.evaluate() if cfg.eval_steps >= 0 else None
            final_dir = self.output_dir / "final"
            if self.is_main:
                self.encoder.save(final_dir, card=self.model_card_data())
            self.save_checkpoint()
            if self.is_main:
                write_json(self.output_dir / "results.json", self.summary(final_metrics))
        finally:
            bar.close()
            for tracker in self._trackers:
                tracker.close()
            self._trackers = []
        return self.result(final_metrics)

    def summary(self, final_metrics: Mapping[str, float] | None) -> dict[str, Any]:
        """``results.json``: the run's outcome, from the run state."""
        return {
            "steps": self.step,
            "elapsed_s": round(self.state.elapsed_s, 3),
            "primary_metric": self.primary_metric,
            "greater_is_better": self.greater_is_better,
            "best": {
                "step": self.best_step,
                self.primary_metric: self.best_metric,
                "metrics": _numbers(self.state.best_record()),
            },
            "final": dict(final_metrics) if final_metrics is not None else None,
        }

    def result(self, final_metrics: Mapping[str, float] | None = None) -> TrainResult:
        """The :class:`TrainResult` of the run state."""
        best_dir = self.output_dir / "best" if self.best_step is not None else None
        return TrainResult(
            output_dir=self.output_dir,
            steps=self.step,
            final_dir=self.output_dir / "final",
            best_dir=best_dir,
            best_metrics=_numbers(self.state.best_record()) if best_dir is not None else None,
            final_metrics=dict(final_metrics) if final_metrics is not None else None,
            start_metrics=_numbers(self.state.eval_record(0)),
            state=self.state,
        )


class _TensorBoard:
    """Scalars under ``OUTPUT_DIR/tb``; the config as hyper-parameters (text)."""

    def __init__(self, log_dir: Path, config: TrainConfig) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("config", "```\n" + dumps_json(config.to_dict()) + "```", 0)

    def log(self, record: Mapping[str, Any]) -> None:
        for key, value in record.items():
            if key in ("step", "event", "epoch", "time", "best", "elapsed_s"):
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"{record['event']}/{key}", value, record["step"])

    def close(self) -> None:
        self.writer.close()


class _WandB:
    """Weights & Biases (optional; offline runs follow ``WANDB_MODE``)."""

    def __init__(self, output_dir: Path, config: TrainConfig) -> None:
        try:
            import wandb
        except ImportError:
            raise InputError(
                "config field 'report_to': wandb is not installed (pip install wandb) or use "
                "--report-to none"
            ) from None
        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "textcl"),
            name=output_dir.name,
            dir=str(output_dir),
            config=config.to_dict(),
        )

    def log(self, record: Mapping[str, Any]) -> None:
        values = {
            f"{record['event']}/{k}": v
            for k, v in record.items()
            if k not in ("step", "event", "time", "best")
            and isinstance(v, int | float)
            and not isinstance(v, bool)
        }
        self.run.log(values, step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()


def train(
    config: TrainConfig,
    *,
    resume: str | os.PathLike[str] | bool | None = None,
    evaluator: EvaluatorLike | None = None,
) -> TrainResult:
    """Train one run (see :class:`Trainer`)."""
    return Trainer(config, evaluator=evaluator).train(resume=resume)
