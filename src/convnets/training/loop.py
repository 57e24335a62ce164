"""The training loop: ``train(config)``, from data to a finished run directory, and the :class:`Trainer`
that runs its epochs and steps.

What a run trains with is built by :mod:`convnets.training.setup`, its checkpoints are written and
read by :mod:`convnets.training.checkpoint`, its learning-rate schedules are the table of
:mod:`convnets.training.schedules`.

Run directory (``config.out``)::

    config.json       the resolved configuration (every default filled in)
    metrics.jsonl     one line per epoch; metrics.csv the same as a table
    state.pt          training state: model, optimizer, scheduler, scaler, weight average, epoch, batch
                      position, step, RNG state (written atomically; --resume reads it)
    best.safetensors  weights of the best test accuracy, last.safetensors the final ones
                      (last-ema.safetensors: the final moving average of the weights, with --ema)
    curves.png        learning curves; report.md a short summary; bad_files.tsv if any
    tensorboard/      TensorBoard logs, with --tensorboard
    .convnets-run     marks the directory as a convnets run; the process writing it holds a lock on it

A run directory has one writer at a time (see :mod:`convnets.training.rundir`); a directory that
is not empty and was not written by convnets is refused, never overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convnets.data.preprocess import Preprocessing
from convnets.device import keep_freed_memory, set_threads
from convnets.errors import ConfigError, ConfigMismatchError, ConvnetsError, RunDirectoryError, TrainingDiverged
from convnets.models.base import ConvNet
from convnets.training import distributed
from convnets.training.checkpoint import (
    STATE_FILE,
    check_same_data,
    option_name,
    read_state,
    restore_rng,
    resumed_config,
    rng_state,
    saved_model,
    shown,
    write_state,
)
from convnets.training.config import ModelSource, TrainConfig, default_out, model_source, resolve
from convnets.training.report import MetricsLog, write_report, write_text
from convnets.training.rundir import DirectoryBusy, RunDirectory
from convnets.training.setup import (  # autocast_dtype...: the benchmarks import them from here
    autocast_dtype,  # noqa: F401
    build,
    cpu_has_native_bf16,  # noqa: F401
    describe_precision,  # noqa: F401
    fit_batch,  # noqa: F401
    make_deterministic,
)
from convnets.weights import save_weights

# Of the k most confident wrong predictions of each evaluation, shown in TensorBoard.
MISTAKES_SHOWN = 16


@dataclass
class TrainResult:
    """What a finished run reached, and the trained model (on the device it trained on)."""

    model: nn.Module = field(repr=False)
    out: Path
    test_accuracy: float
    best_accuracy: float
    epochs: int
    steps: int
    seconds: float
    images_per_second: float
    stopped_early: bool = False
    precision: str = "fp32"  # what ran: "bf16 autocast (depthwise convolutions in fp32)", "fp32"...
    ema_accuracy: float | None = None  # the test accuracy of the weights' moving average, with --ema


def train(config: TrainConfig, *, given: Collection[str] = (),
          model: ConvNet | Callable[..., ConvNet] | None = None) -> TrainResult:
    """Train ``config.model`` on ``config.data`` and write the run directory.

    Under torchrun each process trains on its shard of every batch order and gradients are
    averaged (DistributedDataParallel); rank 0 alone prints and writes.

    Args:
        config: The run. With ``resume``, the run in ``config.out`` continues; a field that defines
            the run and differs from the run's value is refused (see
            :data:`~convnets.training.checkpoint.RESUME_MAY_CHANGE`).
        given: Fields the user set explicitly (the command line names the options typed). The
            fields passed to ``TrainConfig(...)`` (:attr:`TrainConfig.given`) and those whose value
            differs from the default count as given too, so that ``data="fashion-mnist"`` named
            on a resumed run of digits is refused, not ignored.
        model: The network, when it is not the registered ``config.model``: a builder, called as
            ``builder(num_classes=..., in_chans=..., **config.model_kwargs)``, or a built
            :class:`ConvNet` for the data's classes and channels (trained in place). ``config.model``
            then names the run. A resumed run needs the same network again.

    Raises:
        ConfigError: ``config`` is not a :class:`TrainConfig`, ``model`` is neither a ConvNet nor a
            builder, or ``config`` holds values that cannot go together.
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"train() takes a TrainConfig (TrainConfig(model='lenet5', data='digits', ...)), "
                          f"not {type(config).__name__}")
    source = model_source(config.model, model)
    given = {*given, *config.given}
    with _terminate_as_interrupt():
        # Checked before joining the process group: a rank that refuses its options after joining leaves
        # the others waiting in init_process_group, where no signal reaches Python.
        resolved = resolve(config, source)
        ctx = distributed.setup(config.device)
        try:
            # A default directory is numbered on first use; rank 0 picks it, and every rank learns which.
            numbered = (config.model, config.data) if config.out is None and not config.resume else None
            with _claimed(Path(resolved.out), ctx, numbered=numbered) as out:
                return Trainer(dataclasses.replace(config, out=str(out)), ctx, given, source).run()
        finally:
            distributed.teardown(ctx)


def _failed_to_compile(err: BaseException) -> bool:
    """Whether ``err`` is torch.compile's backend failing on its first call (a backend's missing package, no C++
    compiler for inductor): a choice of --compile the machine cannot honour, not a bug of the run."""
    from torch._dynamo.exc import BackendCompilerFailed

    return isinstance(err, BackendCompilerFailed)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Let SIGTERM stop the setup (reading data, loading weights) as Ctrl-C does, so that the run directory
    claimed for it is released and, if still empty, removed; the loop then handles both signals itself."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _claimed(out: Path, ctx: distributed.Context, *, numbered: tuple[str, str] | None = None) -> Iterator[Path]:
    """Hold the run directory for the run (rank 0 writes it, so rank 0 claims it); every rank learns which.

    Args:
        out: The directory.
        ctx: This process's place in the run.
        numbered: (model, data) when ``out`` is the default ``runs/MODEL-DATA``: then a directory another
            process is writing is passed over for the next number, so that two runs started at once both run.
    """
    directory, error = None, None
    if ctx.is_main:
        try:
            directory = _claim(out, numbered)
        except (ConvnetsError, OSError) as err:  # raised below, once the other ranks know not to start
            error = err
    claimed = distributed.broadcast(ctx, None if directory is None else str(directory.path))
    if claimed is None:
        if error is not None:
            raise error
        raise RunDirectoryError(f"{out}: rank 0 could not claim the run directory (its error says why)")
    try:
        yield Path(claimed)
    finally:
        if directory is not None:
            directory.release()


def _claim(out: Path, numbered: tuple[str, str] | None) -> RunDirectory:
    """Acquire ``out``, or with ``numbered`` the first default directory no other process is writing."""
    busy: list[Path] = []
    while True:
        directory = RunDirectory(out, "train")
        try:
            directory.acquire()
            return directory
        except DirectoryBusy:
            if numbered is None:
                raise
            busy.append(out)
            out = default_out(*numbered, skip=busy)


class Trainer:
    """A run's epochs and steps, from a :class:`~convnets.training.setup.Setup`: the loss, the optimizer
    steps (over ``accumulate`` micro-batches each), the weight average, evaluation, checkpoints, the
    checks for a diverged loss and for signals, progress and logs.

    The host looks at the device (the loss for the progress bar, the non-finite check, a signal, a
    due checkpoint) every ``sync_every`` optimizer steps: every step on the CPU, where a look is
    cheap; on an accelerator a non-finite loss is noted on the device, and the look every N steps
    names the first bad step. A checkpoint is written only after such a look, so the one kept is
    always from before the first bad step.
    """

    def __init__(self, config: TrainConfig, ctx: distributed.Context, given: Collection[str] = (),
                 source: ModelSource | None = None) -> None:
        self.ctx = ctx
        out = Path(config.out)
        changed: dict[str, tuple[Any, Any]] = {}
        if config.resume:
            config, changed = resumed_config(config, out, given)
        self.source = source = source or ModelSource(config.model)
        self.cfg = cfg = resolve(config, source)
        self.out = out
        if not cfg.resume and (out / STATE_FILE).exists():
            other = saved_model(out)
            if other not in (None, cfg.model):
                raise ConfigMismatchError(f"{out} already holds a run of {other}: choose another --out for {cfg.model}")
            raise ConfigMismatchError(
                f"{out} already holds a run: pass --resume to continue it, or --out for a new directory"
            )
        if cfg.deterministic:
            make_deterministic()
        set_threads(cfg.threads)
        if ctx.device.type == "cpu":
            # Each step frees and re-allocates its activations: glibc by default gives them back to the OS and
            # the next step faults them in again (770k minor faults in 63 resnet20 steps, 97k kept; see
            # keep_freed_memory and bench_train.py --malloc-compare).
            keep_freed_memory()
        torch.manual_seed(cfg.seed)
        self.setup = setup = build(cfg, ctx, source, self._say)
        self.model = setup.model
        self.dataset = setup.dataset
        # --nan-policy skip must know before the update whether to make it: it looks at every step.
        self.sync_every = 1 if cfg.nan_policy == "skip" else (
            cfg.sync_every or (1 if ctx.device.type == "cpu" else 50))
        self.epoch, self.position, self.step, self.best = 0, 0, 0, 0.0
        self.skipped_steps, self.elapsed = 0, 0.0
        # The running sums of the current epoch (loss * n, correct, n) and its seconds so far: kept in the
        # checkpoint, so that an epoch resumed mid-way reports metrics over all of its batches.
        self.epoch_sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)
        self.epoch_seconds = 0.0
        # Micro-batches since the host last looked: (step, epoch, batch) of each, and on the device the index
        # of the first whose loss was not finite (-1: none) and that loss.
        self._unchecked: list[tuple[int, int, int]] = []
        self._first_bad = torch.full((), -1, dtype=torch.int64, device=ctx.device)
        self._bad_loss = torch.zeros((), device=ctx.device)
        self._spoiled = False  # the accumulation window holds a skipped (non-finite) micro-batch
        self.log = MetricsLog(out, enabled=ctx.is_main)
        if cfg.resume:
            self._load_state()
            if changed and ctx.is_main:
                shown_changes = [f"{option_name(k)} {shown(new)} (was {shown(old)})" for k, (old, new)
                                 in changed.items() if k != "max_steps"]
                if shown_changes:
                    self._say(f"resuming with {', '.join(shown_changes)}; recorded in {out / 'config.json'}")
                self._write_config()
        elif ctx.is_main:
            self._write_config()
        if ctx.is_main:
            self._say(self.dataset.describe())
            self._say(f"{cfg.model}: {sum(p.numel() for p in self.model.parameters()):,} params on "
                      f"{ctx.device}" + (f" x {ctx.world_size} processes" if ctx.distributed else "")
                      + f", precision {cfg.precision}: {setup.precision}")
        self.tensorboard = self._open_tensorboard()

    def _write_config(self) -> None:
        write_text(self.out / "config.json", json.dumps({**self.cfg.to_dict(), "resume": False}, indent=2) + "\n")

    # ---- the loop

    def run(self) -> TrainResult:
        try:
            return self._run()
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()

    def _run(self) -> TrainResult:
        cfg, setup, stopped = self.cfg, self.setup, None
        start = self._start = time.perf_counter() - self.elapsed
        self._last_save = time.perf_counter()
        if cfg.max_steps is not None and self.step >= cfg.max_steps:  # a resumed run already there: not one more
            self._say(f"--max-steps {cfg.max_steps}: {self.out} has made {self.step} steps already; nothing to train")
            stopped = "max_steps"
        if self.tensorboard is not None and self.epoch == 0 and self.position == 0 and not setup.cached:
            self.tensorboard.image("augmentation", augmentation_grid(self.dataset, cfg.augment, cfg.seed), 0)
        with _stop_on_signals() as signalled:
            self._signalled = signalled
            while self.epoch < cfg.epochs and not stopped:
                stopped = self._train_epoch()
                if stopped:
                    break
                self.epoch, self.position = self.epoch + 1, 0
                self.elapsed = time.perf_counter() - start
                self._save_state()
        self.elapsed = time.perf_counter() - start
        if stopped:
            self._save_state()
        if stopped == "signal":
            self._say(f"\nstopped at step {self.step} with a checkpoint; continue with: convnets train {cfg.model} "
                      f"--out {self.out} --resume")
            raise KeyboardInterrupt
        # The last epoch was evaluated already unless the run stopped mid-epoch (or had no epoch left).
        finished_epoch = self.log.rows and self.log.rows[-1]["epoch"] == self.epoch and not stopped
        test_acc = self.log.rows[-1]["test_acc"] if finished_epoch else self.evaluate()[1]
        ema_acc = None
        if setup.ema is not None:
            ema_acc = self.log.rows[-1]["ema_test_acc"] if finished_epoch else self.evaluate(self._ema_net())[1]
        images = self.step * setup.batch_size * cfg.accumulate * self.ctx.world_size
        best = math.nan if math.isnan(test_acc) else max(self.best, test_acc)  # nan: no test image to measure
        result = TrainResult(self.model, self.out, test_acc, best, self.epoch, self.step, self.elapsed,
                             images / max(self.elapsed, 1e-9), stopped is not None, setup.precision, ema_acc)
        # Each process decodes its own shard: the files any of them could not read are reported together.
        bad = distributed.gather_lists(self.ctx, self.dataset.bad_files.items + setup.train_loader.bad_files.items)
        if self.ctx.is_main:
            meta = self._weights_metadata(test_acc)
            save_weights(self.model, self.out / "last.safetensors", meta)
            if not (self.out / "best.safetensors").exists():
                save_weights(self.model, self.out / "best.safetensors", meta)
            if setup.ema is not None:
                save_weights(setup.ema.model, self.out / "last-ema.safetensors",
                             {**self._weights_metadata(ema_acc), "ema_decay": cfg.ema})
            self.dataset.bad_files.extend(bad)
            if self.dataset.bad_files.items:
                self.dataset.bad_files.write(self.out)
                self._say(self.dataset.bad_files.summary())
            write_report(self.out, dataclasses.replace(cfg, batch_size=setup.batch_size), result, self.log.rows)
            status = "stopped at --max-steps" if stopped else f"{self.epoch} epochs"
            self._say(f"{cfg.model} on {self.dataset.name}: test accuracy {test_acc:.4f} "
                      f"(best {result.best_accuracy:.4f}) · {status} in {self.elapsed:.0f} s · "
                      f"{result.images_per_second:,.0f} images/s · {self.out}")
            if ema_acc is not None:
                self._say(f"moving average of the weights (decay {cfg.ema}): test accuracy {ema_acc:.4f}, "
                          f"{_compared(ema_acc, test_acc)} · {self.out / 'last-ema.safetensors'}")
        distributed.barrier(self.ctx)
        return result

    def _train_epoch(self) -> str | None:
        """One epoch from ``self.position``; says why it stopped early ("max_steps", "signal"), if it did."""
        cfg, ctx, setup = self.cfg, self.ctx, self.setup
        loader = setup.train_loader
        setup.train_net.train()
        loader.set_epoch(self.epoch, start_batch=self.position)
        if self.position == 0:  # a new epoch; one resumed mid-way continues its sums from the checkpoint
            self.epoch_sums.zero_()
            self.epoch_seconds = 0.0
        sums = self.epoch_sums  # loss * n, correct, n
        t0, seen, seconds_before = time.perf_counter(), 0, self.epoch_seconds
        # Batches past the last whole accumulation window are left out (see setup.build).
        used_batches = setup.optimizer_steps_per_epoch * cfg.accumulate
        bar = self._progress(used_batches - self.position)
        bar_at = self.position  # batches the bar shows
        window = backwards = 0  # micro-batches in this accumulation window; of them, with a backward pass
        loss = None
        for x, y in loader:
            if loader.position > used_batches:
                break
            if window == 0:
                setup.optimizer.zero_grad(set_to_none=True)
            if self._trainable(len(y)):
                if setup.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                stepped = self._forward_backward(x, y)
                if stepped is not None:  # a skipped step (--nan-policy skip) adds nothing to the epoch's metrics
                    loss, logits = stepped
                    with torch.no_grad():
                        sums[0] += loss.detach().double() * len(y)
                        sums[1] += (logits.argmax(1) == y).sum()
                        sums[2] += len(y)
                backwards += 1
            window += 1
            self.position = loader.position
            seen += len(y)
            if window < cfg.accumulate:
                continue
            window = 0
            if not backwards:  # every micro-batch skipped for broken files: no step to make
                continue
            backwards = 0
            self._optimizer_step()
            self.epoch_seconds = seconds_before + time.perf_counter() - t0
            reason = None
            if self.step % self.sync_every == 0:
                self._check_finite()
                rate = seen * ctx.world_size / (time.perf_counter() - t0)
                if bar is not None:
                    if loss is not None:
                        accuracy = (sums[1] / sums[2].clamp_min(1)).item()
                        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy:.3f}", img_s=f"{rate:,.0f}",
                                        refresh=False)
                    bar.update(self.position - bar_at)
                    bar_at = self.position
                if self.tensorboard is not None and loss is not None:
                    self.tensorboard.step(self.step, {"loss": loss.item(), "images_per_s": rate,
                                                      "lr": setup.scheduler.get_last_lr()[0]})
                # Under torchrun every rank must stop, and checkpoint, at the same step (the checkpoint sums
                # the ranks' metrics): a signal on any rank stops all, rank 0's clock times the checkpoints.
                due = ctx.is_main and time.perf_counter() - self._last_save > cfg.checkpoint_minutes * 60
                signalled, due = distributed.all_sum(ctx, float(bool(self._signalled)), float(due))
                reason = "signal" if signalled else None
            else:
                due = False
            if cfg.max_steps is not None and self.step >= cfg.max_steps:
                reason = "max_steps"
            if reason:
                if bar is not None:
                    bar.close()
                return reason
            if due:
                self._save_state()
        if bar is not None:
            bar.close()
        self._check_finite()
        self.epoch_seconds = seconds_before + time.perf_counter() - t0
        self._end_epoch()
        return None

    def _end_epoch(self) -> None:
        """Evaluate, log the epoch's row, keep the best weights."""
        cfg, setup = self.cfg, self.setup
        seconds = self.epoch_seconds
        loss_sum, correct, n = distributed.all_sum(self.ctx, *self.epoch_sums.tolist())
        mistakes = self._mistakes()
        test_loss, test_acc = self.evaluate(mistakes=mistakes)
        # An epoch whose every step was skipped measured nothing: nan, as for a missing test split, not 0.
        row = dict(epoch=self.epoch + 1, step=self.step, lr=setup.scheduler.get_last_lr()[0],
                   train_loss=loss_sum / n if n else math.nan, train_acc=correct / n if n else math.nan,
                   test_loss=test_loss, test_acc=test_acc)
        if setup.ema is not None:
            row["ema_test_loss"], row["ema_test_acc"] = self.evaluate(self._ema_net())
        row.update(seconds=round(seconds, 3), images_per_s=round(n / max(seconds, 1e-9), 1),
                   elapsed=round(time.perf_counter() - self._start, 3))
        self.log.append(row)
        if self.ctx.is_main:
            ema = f" · average of the weights: acc {row['ema_test_acc']:.4f}" if setup.ema is not None else ""
            self._say(f"epoch {row['epoch']}/{cfg.epochs}: train loss {row['train_loss']:.4f} acc "
                      f"{row['train_acc']:.4f} · test loss {test_loss:.4f} acc {test_acc:.4f}{ema} · "
                      f"{row['images_per_s']:,.0f} images/s")
            if test_acc > self.best:
                self.best = test_acc
                save_weights(self.model, self.out / "best.safetensors",
                             self._weights_metadata(test_acc, epochs=self.epoch + 1))
        if self.tensorboard is not None:
            self.tensorboard.epoch(row["epoch"], {k: float(v) for k, v in row.items() if k != "epoch"})
            if mistakes is not None:
                self.tensorboard.image("test/mistakes", mistakes.grid(), row["epoch"])

    def _trainable(self, images: int) -> bool:
        """Whether every rank's batch can make a step: broken files may leave one empty, or with a single
        image where BatchNorm needs two (see :func:`~convnets.training.config.smallest_batch`).

        Under torchrun the ranks agree, so that they keep making the same steps together.
        """
        usable = images >= self.setup.min_batch
        # Only broken files make a batch short: in-memory data has none, and the ranks need not compare.
        if self.ctx.distributed and not self.dataset.in_memory:
            usable = distributed.all_sum(self.ctx, float(usable))[0] == self.ctx.world_size
        if not usable:
            self._say(f"warning: batch {self.setup.train_loader.position} of epoch {self.epoch + 1} skipped: after "
                      f"its undecodable files{' on some process' if self.ctx.distributed else ''} too few images "
                      f"are left (the model needs {self.setup.min_batch} a batch); see bad_files.tsv")
        return usable

    def _autocast(self) -> Any:
        dtype = self.setup.autocast_dtype
        return torch.autocast(self.ctx.device.type, dtype=dtype) if dtype is not None else nullcontext()

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The loss of one micro-batch and its gradients; the loss and logits, or None when a non-finite loss
        was skipped (looking every step) and the window's step with it."""
        cfg, setup = self.cfg, self.setup
        with self._autocast():
            try:
                logits, aux_logits = setup.train_net(x)
            except Exception as err:
                if cfg.compile is None or not _failed_to_compile(err):
                    raise
                inner = getattr(err, "inner_exception", None) or err
                reason = (str(inner).strip().splitlines() or [type(inner).__name__])[0][:200]
                raise ConfigError(f"--compile {cfg.compile}: torch.compile could not compile {cfg.model} "
                                  f"({type(inner).__name__}: {reason}); choose another backend or leave out "
                                  "--compile") from None
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            for aux in aux_logits:
                loss = loss + self.model.aux_loss_weight * F.cross_entropy(aux, y, label_smoothing=cfg.label_smoothing)
        if self.sync_every == 1:
            finite = distributed.all_sum(self.ctx, float(torch.isfinite(loss).item()))[0] == self.ctx.world_size
            if not finite:
                self._diverged(loss)
                self._spoiled = True
                return None
        else:
            self._note_finite(loss)
        setup.scaler.scale(loss / cfg.accumulate if cfg.accumulate > 1 else loss).backward()
        return loss, logits.float()

    def _optimizer_step(self) -> None:
        """The step of an accumulation window, unless a micro-batch of it was skipped."""
        cfg, setup = self.cfg, self.setup
        if self._spoiled:
            self._spoiled = False
            return
        if cfg.grad_clip:
            setup.scaler.unscale_(setup.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        setup.scaler.step(setup.optimizer)
        setup.scaler.update()
        setup.scheduler.step()
        if setup.ema is not None:
            setup.ema.update(self.step)  # the run's step count, restored on resume
        self.step += 1

    def _note_finite(self, loss: torch.Tensor) -> None:
        """Remember on the device whether this micro-batch's loss is finite, without waiting for it."""
        index = len(self._unchecked)
        self._unchecked.append((self.step + 1, self.epoch + 1, self.position + 1))
        first = ~torch.isfinite(loss.detach()) & (self._first_bad < 0)
        self._first_bad = torch.where(first, index, self._first_bad)
        self._bad_loss = torch.where(first, loss.detach().float(), self._bad_loss)

    def _check_finite(self) -> None:
        """The host's look at the losses noted since the last one: a TrainingDiverged naming the first bad step."""
        if not self._unchecked:
            return
        local = int(self._first_bad.item())
        first = distributed.all_min(self.ctx, local if local >= 0 else len(self._unchecked))
        if first < len(self._unchecked):
            step, epoch, batch = self._unchecked[first]
            value = self._bad_loss.item() if local == first else math.nan
            raise TrainingDiverged(self._divergence(value, f"step {step} (epoch {epoch}, batch {batch})"))
        self._unchecked.clear()

    def _diverged(self, loss: torch.Tensor) -> None:
        where = f"step {self.step + 1} (epoch {self.epoch + 1}, batch {self.position + 1})"
        if self.cfg.nan_policy == "skip":
            self.skipped_steps += 1
            self._say(f"warning: loss is {loss.item()} at {where}; step skipped ({self.skipped_steps} so far)")
            if self.skipped_steps <= 20:
                return
            where += f" after {self.skipped_steps} skipped steps"
        raise TrainingDiverged(self._divergence(loss.item(), where))

    def _divergence(self, value: float, where: str) -> str:
        kept = self.out / STATE_FILE
        # The last checkpoint may hold weights the step before already spoilt (a huge learning rate): not "good".
        kept_text = f"the last checkpoint is {kept}" if kept.exists() else "no checkpoint was written yet"
        remedies = f"lower --lr (now {self.cfg.lr}) or add --grad-clip 1.0" if self.cfg.nan_policy == "skip" else (
            f"lower --lr (now {self.cfg.lr}), add --grad-clip 1.0, or pass --nan-policy skip to skip such steps")
        return f"loss became {value} at {where}; {kept_text}: {remedies}"

    def _ema_net(self) -> nn.Module:
        """The moving average of the weights as evaluation calls it (its classifier, on cached features)."""
        ema = self.setup.ema.model
        return ema.classifier() if self.setup.cached else ema

    @torch.no_grad()
    def evaluate(self, net: nn.Module | None = None, mistakes: Any = None) -> tuple[float, float]:
        """Test loss and accuracy of ``net`` (default: the trained network) over the whole test split
        (every rank computes the same); ``mistakes``, when given, sees every batch."""
        net = net if net is not None else self.setup.eval_net
        was_training = net.training
        net.eval()
        # Summed on the device and read once at the end: a read per batch would wait for each batch on a GPU.
        sums = torch.zeros(2, dtype=torch.float64, device=self.ctx.device)  # loss, correct
        n = 0
        loader = self.setup.test_loader
        loader.set_epoch(0)
        for x, y in loader:
            if self.setup.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = net(x).float()
            sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
            sums[1] += (logits.argmax(1) == y).sum()
            n += len(y)
            if mistakes is not None:
                mistakes.update(x, logits, y)
        net.train(was_training)
        if n == 0:  # no test image (or none readable): nothing was measured, and 0.0 would read as a result
            return math.nan, math.nan
        loss_sum, correct = sums.tolist()
        return loss_sum / n, correct / n

    # ---- state

    def _save_state(self) -> None:
        """Checkpoint the run (every rank calls this at the same step; rank 0 writes)."""
        self._check_finite()  # never a checkpoint of weights after a non-finite loss
        self._last_save = time.perf_counter()
        epoch_sums = distributed.all_sum(self.ctx, *self.epoch_sums.tolist())  # the whole epoch so far, all ranks
        if not self.ctx.is_main:
            return
        setup = self.setup
        state = {
            "model_name": self.cfg.model,
            "model": self.model.state_dict(),
            "optimizer": setup.optimizer.state_dict(),
            "scheduler": setup.scheduler.state_dict(),
            "scaler": setup.scaler.state_dict(),
            "epoch": self.epoch,
            "position": self.position,
            "step": self.step,
            "best": self.best,
            "elapsed": self.elapsed,
            "skipped_steps": self.skipped_steps,
            **rng_state(),
            "metrics": self.log.rows,
            "epoch_sums": epoch_sums,
            "epoch_seconds": self.epoch_seconds,
            "data": setup.data_identity,
        }
        if setup.ema is not None:
            state["ema"] = setup.ema.state_dict()
        write_state(self.out, state)

    def _load_state(self) -> None:
        cfg, setup = self.cfg, self.setup
        path = self.out / STATE_FILE
        state = read_state(self.out, self.ctx.device, cfg.model, needs=("ema",) if cfg.ema else ())
        if "data" in state:  # checkpoints written before it was recorded are trusted
            check_same_data(state["data"], setup.data_identity, cfg.data, self.out)
        if state["epoch"] > cfg.epochs:
            raise ConfigMismatchError(f"--epochs {cfg.epochs}: {self.out} has finished {state['epoch']} epochs "
                                      "already; give at least that many")
        from convnets.weights import check_state_dict

        check_state_dict(self.model, state["model"], source=f"checkpoint {path}")
        self.model.load_state_dict(state["model"])
        setup.optimizer.load_state_dict(state["optimizer"])
        setup.scheduler.load_state_dict(state["scheduler"])
        setup.scaler.load_state_dict(state["scaler"])
        if setup.ema is not None:
            check_state_dict(setup.ema.model, state["ema"], source=f"checkpoint {path} (its weight average)")
            setup.ema.load_state_dict(state["ema"])
        self.epoch, self.position, self.step = state["epoch"], state["position"], state["step"]
        self.best, self.elapsed, self.skipped_steps = state["best"], state["elapsed"], state["skipped_steps"]
        restore_rng(state)
        if self.ctx.is_main and "epoch_sums" in state:  # the sums of all ranks, counted once, on rank 0
            self.epoch_sums = torch.tensor(state["epoch_sums"], dtype=torch.float64, device=self.ctx.device)
            self.epoch_seconds = state["epoch_seconds"]
        self.log.restore(state["metrics"])
        if self.epoch >= cfg.epochs:
            self._say(f"resumed {self.out}: its {cfg.epochs} epochs are done, nothing to train (pass --epochs N "
                      "to train longer)")
        else:
            self._say(f"resumed {self.out} at epoch {self.epoch + 1}, batch {self.position} (step {self.step})")

    def _weights_metadata(self, accuracy: float, epochs: int | None = None) -> dict[str, Any]:
        ds = self.dataset
        # "model" names a registered network, which load_weights rebuilds from it; one given to train() is not.
        return {
            "model" if self.source.registered else "network": self.cfg.model,
            "model_kwargs": self.setup.model_kwargs,
            "num_classes": ds.num_classes,
            "in_chans": ds.channels,
            "input_size": [ds.channels, *ds.image_size],
            "mean": list(ds.mean),
            "std": list(ds.std),
            # How its images were prepared, so that it is evaluated (and predicts) on inputs prepared alike.
            "preprocessing": (dataclasses.replace(self.setup.recipe, mean=ds.mean, std=ds.std) if self.setup.recipe else
                              Preprocessing(ds.image_size, channels=ds.channels, mean=ds.mean, std=ds.std)).to_dict(),
            "classes": ds.classes,
            "dataset": ds.name,
            "test_accuracy": round(accuracy, 5),
            "epochs": self.epoch if epochs is None else epochs,
            "command": shlex.join(["convnets", *sys.argv[1:]]) if sys.argv and "convnets" in sys.argv[0] else "",
        }

    # ---- TensorBoard

    def _open_tensorboard(self) -> Any:
        """The TensorBoard log of ``out/tensorboard`` (rank 0, with --tensorboard), imported only then."""
        if not (self.cfg.tensorboard and self.ctx.is_main):
            return None
        from convnets.training.tensorboard import TensorBoardLog

        return TensorBoardLog(self.out / "tensorboard")

    def _mistakes(self) -> Any:
        """A collector of the most confident wrong test predictions, for TensorBoard (images only)."""
        if self.tensorboard is None or self.setup.cached:
            return None
        from convnets.training.tensorboard import Mistakes

        return Mistakes(MISTAKES_SHOWN, self.dataset.classes, self.dataset.mean, self.dataset.std)

    # ---- output

    def _say(self, text: str) -> None:
        if not self.ctx.is_main:
            return
        try:
            print(text, flush=True)
        except BrokenPipeError:
            # Output piped into `head` or a closed `tee`: the run goes on unheard rather than ending mid-epoch.
            # Standard output becomes /dev/null, so that nothing buffered for it fails again at exit.
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, sys.stdout.fileno())
                os.close(null)
            except (OSError, ValueError):  # not a real file (captured output): nothing to redirect
                pass

    def _progress(self, total: int) -> Any:
        if not (self.ctx.is_main and self.cfg.progress):
            return None
        from tqdm import tqdm

        return tqdm(total=total, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", unit="batch", leave=False,
                    mininterval=0.5, dynamic_ncols=True, file=sys.stderr)



class _stop_on_signals:
    """Turn Ctrl-C and SIGTERM (a cluster preempting the job) into a clean stop between two steps.

    The context value is a list that becomes non-empty when a signal arrives; the loop checks it
    after every step, so the checkpoint it then writes never holds half a step.
    """

    def __enter__(self) -> list[int]:
        self.received: list[int] = []
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self.received

    def _handle(self, signum: int, frame: object) -> None:
        if self.received:  # a second Ctrl-C: stop now, the last checkpoint stays as it was
            raise KeyboardInterrupt
        self.received.append(signum)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _compared(average: float, weights: float) -> str:
    if math.isnan(average) or math.isnan(weights):
        return "not compared (no test image)"
    if average == weights:
        return "the same as the weights'"
    return f"{'better' if average > weights else 'worse'} than the weights' {weights:.4f}"


def augmentation_grid(dataset: Any, augment: str, seed: int, rows: int = 8, variants: int = 4) -> np.ndarray:
    """Training images, each beside ``variants`` augmented versions (``convnets augment``'s grid), as uint8 HWC."""
    from convnets.data.augment import Augmenter
    from convnets.data.grid import render_grid, sample_images
    from convnets.data.loader import derive_seed

    originals = sample_images(dataset, rows, seed)
    versions = [originals.float() / 255]
    if augment != "none":
        augmenter = Augmenter(augment, dataset.pixel_cov)
        versions += [augmenter(originals, torch.Generator().manual_seed(derive_seed(seed, v))) for v in range(variants)]
    return np.asarray(render_grid([torch.stack([version[i] for version in versions]) for i in range(len(originals))]))
