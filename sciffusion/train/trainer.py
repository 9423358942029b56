"""The one trainer every domain uses.

It trains any ``torch.nn.Module`` with ``training_loss(batch, rng) -> scalar tensor``: AdamW with
linear warm-up and cosine decay, gradient clipping, an EMA copy (``torch.optim.swa_utils``),
autocast where the device supports it, deterministic batches and per-step randomness, a progress
bar, ``metrics.csv`` (+ optional TensorBoard), periodic sampling, atomic safetensors checkpoints,
exact resume, NaN/Inf detection, a clean stop on SIGINT / SIGTERM (the current step finishes, a
checkpoint is saved and :meth:`Trainer.fit` returns with ``stopped`` set; the same on ``trainer.max_minutes``), and
DistributedDataParallel under ``torchrun``.

Steps are counted from 1. Step ``s`` uses the batch :class:`StepBatchSampler` assigns to ``s``,
the random numbers of ``StepRandom(seed, s, rank, world)`` and ``torch.manual_seed`` of
``(seed, s, rank)`` (for dropout), so a run resumed from the checkpoint of step ``k`` repeats
steps ``k + 1 ..`` bit for bit on CPU.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, default_collate
from tqdm.auto import tqdm

from sciffusion.config import Config, ConfigError, TrainerConfig
from sciffusion.outputs import OutputError, check_folder
from sciffusion.rng import StepRandom
from sciffusion.train.batches import StepBatchSampler
from sciffusion.train.checkpoint import (
    EMA_FILE,
    MODEL_FILE,
    find_checkpoint,
    load_meta,
    load_module_weights,
    load_optimizer,
    save_checkpoint,
    write_text_atomic,
)
from sciffusion.train.errors import ResumeError, TrainingDiverged
from sciffusion.train.distributed import DistInfo, all_reduce_mean, barrier, init_distributed, shutdown
from sciffusion.train.logs import MetricsLog, plot_metrics, stderr_is_terminal

if TYPE_CHECKING:
    from sciffusion.domain import TrainSetup


class StopRequest:
    """Once installed, SIGINT and SIGTERM only set :attr:`signum`; the training loop then finishes its step, saves
    a checkpoint and stops. A second signal gets the previous handler (e.g. an immediate KeyboardInterrupt).
    Signals the process ignores (a background job's SIGINT) stay ignored; outside the main thread it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self.restore()

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

__all__ = ["ResumeError", "TrainResult", "Trainer", "TrainingDiverged", "check_run_dir", "ema_decay_at", "lr_at", "seed_everything", "step_seed", "train"]

log = logging.getLogger("sciffusion")

PLOT_INTERVAL_S = 120.0  # loss.png is redrawn at checkpoints at most this often, and at the end


@dataclass
class TrainResult:
    """Where training ended. ``stopped`` says why it ended before ``max_steps`` (``"SIGINT"``, ``"SIGTERM"``,
    ``"max_minutes"``; the checkpoint of ``step`` is saved), None when it reached ``max_steps``."""

    run_dir: Path
    step: int
    loss: float
    resumed_from: int
    stopped: str | None = None


def lr_at(step: int, tc: TrainerConfig) -> float:
    """Learning rate used for 1-based ``step``.

    Warm-up: ``lr * step / warmup_steps`` for ``step <= warmup_steps``. Then ``constant``: ``lr``;
    ``cosine``: ``lr * (r + (1 - r) * (1 + cos(pi * p)) / 2)`` with ``r = min_lr_ratio`` and
    ``p = (step - warmup_steps - 1) / (max_steps - warmup_steps)``, so the first step after
    warm-up uses the full ``lr`` and the schedule would reach ``lr * r`` one step after the last.
    """
    if tc.warmup_steps > 0 and step <= tc.warmup_steps:
        return tc.lr * step / tc.warmup_steps
    if tc.lr_schedule == "constant":
        return tc.lr
    progress = min(1.0, max(0.0, (step - tc.warmup_steps - 1) / max(1, tc.max_steps - tc.warmup_steps)))
    return tc.lr * (tc.min_lr_ratio + (1.0 - tc.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def ema_decay_at(num_averaged: int, decay: float, warmup: bool) -> float:
    """Decay of the EMA update that folds in model number ``num_averaged + 1``.

    The first model is copied (``AveragedModel`` semantics); after that
    ``ema = d * ema + (1 - d) * weights`` with ``d = min(decay, (1 + n) / (10 + n))`` when
    ``warmup`` (``n = num_averaged``), else ``d = decay``.
    """
    return min(decay, (1.0 + num_averaged) / (10.0 + num_averaged)) if warmup else decay


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of ``torch.manual_seed`` before step ``step`` on ``rank`` (dropout and other global-RNG use)."""
    return (seed * 998_244_353 + step * 1_000_000_007 + rank * 19_260_817 + 1) % (2**63 - 1)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (done before a domain builds its model)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_run_dir(run_dir: str | Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (or ``None``); refuses to overwrite a run without ``resume``, a ``run_dir``
    that is (or lies under) an existing file, and a checkpoint whose metadata is damaged."""
    try:
        check_folder(run_dir, "run_dir")
    except OutputError as e:
        raise ConfigError(str(e)) from None
    ckpt = find_checkpoint(run_dir)
    if ckpt is None:
        return None
    step = load_meta(ckpt)["step"]
    if not resume:
        raise ResumeError(f"run folder {run_dir} already holds a checkpoint (step {step}); pass --resume to continue it or set run_dir=<new folder>")
    return ckpt


def _first_difference(a: Any, b: Any, prefix: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            diff = _first_difference(a.get(key), b.get(key), f"{prefix}.{key}")
            if diff:
                return diff
        return None
    return None if a == b else prefix


class _LossForward(torch.nn.Module):
    """Routes ``forward`` to ``training_loss`` so DistributedDataParallel's hooks see the step."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any, rng: StepRandom) -> torch.Tensor:
        return self.model.training_loss(batch, rng)


def _to_device(batch: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return batch
    if hasattr(batch, "to") and callable(batch.to):  # tensors, torch-geometric Batch
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _precision(device: torch.device, precision: str) -> tuple[Callable[[], ContextManager[Any]], torch.amp.GradScaler | None, str]:
    """Autocast context factory, grad scaler (fp16 on CUDA) and the precision actually used."""
    if precision == "fp32":
        return contextlib.nullcontext, None, "fp32"
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            warnings.warn("bf16 is not supported on this GPU; training in fp32", stacklevel=2)
            return contextlib.nullcontext, None, "fp32"
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        return (lambda: torch.autocast("cuda", dtype=dtype)), scaler, precision
    if device.type == "cpu" and precision == "bf16":
        return (lambda: torch.autocast("cpu", dtype=torch.bfloat16)), None, "bf16"
    warnings.warn(f"{precision} autocast is not supported on {device.type}; training in fp32", stacklevel=2)
    return contextlib.nullcontext, None, "fp32"


class Trainer:
    """Trains ``setup.model`` as ``cfg.trainer`` says, writing into ``cfg.run_dir``.

    Args:
        cfg: validated config (``trainer``, ``seed`` and ``run_dir`` are used; all of it is saved).
        setup: the domain's model, dataset, collate and sample hook.
        resume: continue from ``RUN_DIR/checkpoints/last`` if it exists (else start fresh).
    """

    def __init__(self, cfg: Config, setup: "TrainSetup", resume: bool = False) -> None:
        self.cfg, self.tc, self.setup = cfg, cfg.trainer, setup
        self.run_dir = Path(cfg.run_dir)
        if not callable(getattr(setup.model, "training_loss", None)):
            raise TypeError(f"{type(setup.model).__name__} has no training_loss(batch, rng) method")
        self.resume_from = check_run_dir(self.run_dir, resume)
        self._resume_requested = resume
        self.dist: DistInfo = init_distributed(self.tc.device)
        if self.tc.batch_size % self.dist.world != 0:
            shutdown(self.dist)
            raise ConfigError(f"'trainer.batch_size' ({self.tc.batch_size}) must be divisible by the number of processes ({self.dist.world})")
        self.device = self.dist.device
        self.model = setup.model.to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.tc.lr, betas=self.tc.betas, eps=self.tc.eps, weight_decay=self.tc.weight_decay
        )
        self.ema: AveragedModel | None = None
        if self.tc.ema_decay > 0:
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(self.tc.ema_decay), use_buffers=False)
            self.ema.module.eval()
        self.autocast, self.scaler, self.precision = _precision(self.device, self.tc.precision)
        self.step = 0

    # ----------------------------------------------------------------------------- state
    @property
    def ema_model(self) -> torch.nn.Module:
        """The EMA weights as a plain module (the raw model when EMA is disabled)."""
        return self.ema.module if self.ema is not None else self.model

    def _load(self, ckpt: Path) -> None:
        meta = load_meta(ckpt)
        saved, current = meta.get("config", {}), self.cfg.to_dict()
        for section in ("domain", "data", "net", "process"):
            diff = _first_difference(saved.get(section), current.get(section), section)
            if diff:
                raise ResumeError(f"cannot resume {self.run_dir}: '{diff}' differs from the checkpoint's config ({ckpt / 'meta.json'})")
        load_module_weights(self.model, ckpt / MODEL_FILE, self.device)
        load_optimizer(self.optimizer, ckpt)
        if self.ema is not None:
            if (ckpt / EMA_FILE).is_file():
                load_module_weights(self.ema.module, ckpt / EMA_FILE, self.device)
                self.ema.n_averaged.fill_(int(meta.get("ema", {}).get("n_averaged", meta["step"])))
            else:  # EMA switched on mid-run: start it from the current weights
                self.ema.n_averaged.zero_()
        if self.scaler is not None and meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        self.step = int(meta["step"])

    def _save(self) -> Path:
        meta = {
            "step": self.step,
            "config": self.cfg.to_dict(),
            "world_size": self.dist.world,
            "precision": self.precision,
            "ema": {"decay": self.tc.ema_decay, "warmup": self.tc.ema_warmup, "n_averaged": int(self.ema.n_averaged) if self.ema is not None else 0},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": "stateless: step s draws from StepRandom(seed, s, rank, world) and torch.manual_seed(step_seed(seed, s, rank))",
        }
        return save_checkpoint(self.run_dir, model=self.model, optimizer=self.optimizer, ema_model=self.ema.module if self.ema is not None else None, meta=meta)

    def _update_ema(self) -> None:
        if self.ema is None:
            return
        decay = ema_decay_at(int(self.ema.n_averaged), self.tc.ema_decay, self.tc.ema_warmup)
        self.ema.multi_avg_fn = get_ema_multi_avg_fn(decay)
        self.ema.update_parameters(self.model)

    def _sample(self) -> None:
        hook = self.setup.sample_hook
        if hook is None:
            return
        out = self.run_dir / "samples"
        out.mkdir(parents=True, exist_ok=True)
        model = self.ema_model
        was_training = model.training
        model.eval()
        try:
            hook(model, self.step, out)
        finally:
            model.train(was_training)

    # ----------------------------------------------------------------------------- loop
    def fit(self) -> TrainResult:
        """Run steps ``step + 1 .. max_steps``; returns the final step and loss."""
        try:
            return self._fit()
        finally:
            shutdown(self.dist)

    def _fit(self) -> TrainResult:
        tc, info, main = self.tc, self.dist, self.dist.is_main
        start = 0
        if self.resume_from is not None:
            self._load(self.resume_from)
            start = self.step
            if main:
                log.info("resuming %s from step %d", self.run_dir, start)
        elif self._resume_requested and main:
            log.info("no checkpoint in %s yet; starting a new run", self.run_dir)
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.run_dir / "config.yaml", self.cfg.to_yaml())
            n_params = sum(p.numel() for p in self.model.parameters())
            log.info("training %s: %s parameters, %s, %s, %d process(es), run folder %s", self.cfg.domain, f"{n_params:,}", self.device, self.precision, info.world, self.run_dir)
        if start >= tc.max_steps:
            if main:
                log.info("already at step %d of %d; nothing to train", start, tc.max_steps)
            return TrainResult(self.run_dir, start, float("nan"), start)

        if self.setup.batch_sampler is not None:
            sampler = self.setup.batch_sampler(start + 1, tc.max_steps, info.rank, info.world)
        else:
            sampler = StepBatchSampler(len(self.setup.dataset), tc.batch_size, self.cfg.seed, start + 1, tc.max_steps, info.rank, info.world)
        loader = DataLoader(
            self.setup.dataset,
            batch_sampler=sampler,
            collate_fn=self.setup.collate or default_collate,
            num_workers=tc.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        loss_module: torch.nn.Module
        if info.distributed:
            loss_module = DistributedDataParallel(
                _LossForward(self.model), device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        else:
            loss_module = _LossForward(self.model)
        metrics = MetricsLog(self.run_dir, start, tc.tensorboard) if main else None
        bar = tqdm(total=tc.max_steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (main and tc.progress and stderr_is_terminal()))
        max_norm = tc.grad_clip if tc.grad_clip else float("inf")
        params = [p for p in self.model.parameters() if p.requires_grad]
        last_ckpt_step = start if self.resume_from is not None else None
        window_loss, window_norm, window_steps, window_start = 0.0, 0.0, 0, time.perf_counter()
        smooth_loss: float | None = None
        last_plot = time.perf_counter()
        loss_value = float("nan")
        self.model.train()
        deadline = time.perf_counter() + 60.0 * tc.max_minutes if tc.max_minutes else math.inf
        stop = StopRequest().install()
        try:
            for step, batch in zip(range(start + 1, tc.max_steps + 1), loader):
                lr = lr_at(step, tc)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                batch = _to_device(batch, self.device)
                torch.manual_seed(step_seed(self.cfg.seed, step, info.rank))
                rng = StepRandom(self.cfg.seed, step, info.rank, info.world)
                with self.autocast():
                    loss = loss_module(batch, rng)
                if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                    shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                    raise TypeError(f"training_loss must return a scalar tensor, got {shape}")
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    self.scaler.unscale_(self.optimizer)
                else:
                    loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                # the loss is averaged over ranks together with "a stop was requested" and "the budget is spent", so
                # that all ranks stop at one step
                flags = [float(stop.signum is not None), float(time.perf_counter() > deadline)]
                shared = all_reduce_mean(torch.tensor([loss.detach().float().item(), *flags], device=loss.device), info)
                loss_value, signalled, out_of_time = shared[0].item(), shared[1].item() > 0, shared[2].item() > 0
                norm_value = grad_norm.detach().float().item()
                bad = None
                if not math.isfinite(loss_value):
                    bad = f"non-finite loss ({loss_value})"
                elif not math.isfinite(norm_value) and self.scaler is None:
                    bad = f"non-finite gradient norm ({norm_value})"
                if bad:
                    where = f"the last good checkpoint is {self.run_dir / 'checkpoints' / 'last'} (step {last_ckpt_step})" if last_ckpt_step is not None else "no checkpoint had been written yet"
                    raise TrainingDiverged(f"training stopped: {bad} at step {step}; {where}")
                if self.scaler is not None:  # fp16: the scaler skips steps with inf/nan gradients
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self._update_ema()
                self.step = step

                window_loss += loss_value
                window_norm += norm_value
                window_steps += 1
                smooth_loss = loss_value if smooth_loss is None else 0.9 * smooth_loss + 0.1 * loss_value
                bar.update(1)
                if step % tc.log_every == 0 or step == tc.max_steps:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    throughput = window_steps * tc.batch_size / elapsed
                    if metrics is not None:
                        metrics.write(step, window_loss / window_steps, lr, window_norm / window_steps, throughput)
                    bar.set_postfix(loss=f"{smooth_loss:.4g}", samples_s=f"{throughput:.0f}")
                    window_loss, window_norm, window_steps, window_start = 0.0, 0.0, 0, time.perf_counter()
                pause_start = time.perf_counter()  # sampling and checkpoints do not count against throughput
                if tc.sample_every and main and (step % tc.sample_every == 0 or step == tc.max_steps):
                    self._sample()
                if (tc.checkpoint_every and step % tc.checkpoint_every == 0) or step == tc.max_steps:
                    if main:
                        self._save()
                        if step == tc.max_steps or time.perf_counter() - last_plot > PLOT_INTERVAL_S:
                            plot_metrics(self.run_dir / "metrics.csv", self.run_dir / "loss.png")
                            last_plot = time.perf_counter()
                    barrier(info)
                    last_ckpt_step = step
                window_start += time.perf_counter() - pause_start
                if (signalled or out_of_time) and step < tc.max_steps:
                    if last_ckpt_step != step:
                        if main:
                            self._save()
                        barrier(info)
                    if signalled:
                        why = signal.Signals(stop.signum).name if stop.signum is not None else "a signal to another rank"
                    else:
                        why = "max_minutes"
                    if main:
                        log.warning("stopped by %s after step %d of %d; checkpoint saved in %s (continue with --resume)",
                                    why if signalled else f"trainer.max_minutes={tc.max_minutes:g}", step, tc.max_steps,
                                    self.run_dir / "checkpoints" / "last")
                    return TrainResult(self.run_dir, self.step, loss_value, start, stopped=why)
        finally:
            stop.restore()
            bar.close()
            if metrics is not None:
                metrics.close()
        if main:
            log.info("finished step %d; run folder %s", self.step, self.run_dir)
        return TrainResult(self.run_dir, self.step, loss_value, start)


def train(cfg: Config, resume: bool = False) -> TrainResult:
    """Set up ``cfg.domain``'s data and model and train them (the ``sciffusion train`` command)."""
    from sciffusion.domain import get_domain

    check_run_dir(cfg.run_dir, resume)  # fail before a possibly slow data set-up
    seed_everything(cfg.seed)  # model initialisation and any data shuffling follow the run seed
    setup = get_domain(cfg.domain).setup(cfg)
    return Trainer(cfg, setup, resume=resume).fit()
