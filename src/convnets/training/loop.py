"""The training loop: one function, ``train(config)``, from data to a finished run directory.

Run directory (``config.out``)::

    config.json       the resolved configuration (every default filled in)
    metrics.jsonl     one line per epoch; metrics.csv the same as a table
    state.pt          training state: model, optimizer, scheduler, scaler, epoch, batch
                      position, step, RNG state (written atomically; --resume reads it)
    best.safetensors  weights of the best test accuracy, last.safetensors the final ones
    curves.png        learning curves; report.md a short summary; bad_files.tsv if any
    .convnets-run     marks the directory as a convnets run; the process writing it holds a lock on it

A run directory has one writer at a time (see :mod:`convnets.training.rundir`); a directory that
is not empty and was not written by convnets is refused, never overwritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import convnets
from convnets.data.datasets import load_dataset, subsample_per_class
from convnets.data.loader import make_loader
from convnets.data.preprocess import Preprocessing
from convnets.device import set_threads
from convnets.errors import ConfigError, ConfigMismatchError, ConvnetsError, RunDirectoryError, TrainingDiverged
from convnets.layers import DepthwiseConv2d
from convnets.models.inception import AUX_LOSS_WEIGHT
from convnets.training import distributed
from convnets.training.config import TrainConfig, check_input_size, default_out, probe_model, resolve, smallest_batch
from convnets.training.report import MetricsLog, write_report, write_text
from convnets.training.rundir import DirectoryBusy, RunDirectory
from convnets.transfer import FeatureLoader, cached_features, freeze, parameter_groups, recommend, split_fingerprint
from convnets.weights import atomic_write, get_weights, is_tag, load_pretrained, save_weights, weights_preprocessing

STATE_FILE = "state.pt"
STATE_KEYS = frozenset({"model_name", "model", "optimizer", "scheduler", "scaler", "epoch", "position", "step",
                        "best", "elapsed", "skipped_steps", "rng", "cuda_rng", "metrics"})
# What a resumed run may change: how and how long it runs, not what it trains. Every other field
# (model, data, recipe, seed, weights, freezing...) defines the run, and a different value for one
# of them is refused, naming it. max_steps is always this invocation's own (None: to the end).
RESUME_MAY_CHANGE = ("epochs", "max_steps", "progress", "device", "threads", "num_workers", "checkpoint_minutes",
                     "nan_policy", "deterministic", "channels_last", "cache_dir")


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


def train(config: TrainConfig, *, given: Collection[str] = ()) -> TrainResult:
    """Train ``config.model`` on ``config.data`` and write the run directory.

    Under torchrun each process trains on its shard of every batch order and gradients are
    averaged (DistributedDataParallel); rank 0 alone prints and writes.

    Args:
        config: The run. With ``resume``, the run in ``config.out`` continues; a field that defines
            the run and differs from the run's value is refused (see :data:`RESUME_MAY_CHANGE`).
        given: Fields the user set explicitly (the command line names the options typed). The
            fields passed to ``TrainConfig(...)`` (:attr:`TrainConfig.given`) and those whose value
            differs from the default count as given too, so that ``data="fashion-mnist"`` named
            on a resumed run of digits is refused, not ignored.

    Raises:
        ConfigError: ``config`` is not a :class:`TrainConfig`, or holds values that cannot go together.
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"train() takes a TrainConfig (TrainConfig(model='lenet5', data='digits', ...)), "
                          f"not {type(config).__name__}")
    given = {*given, *config.given}
    with _terminate_as_interrupt():
        ctx = distributed.setup(config.device)
        try:
            resolved = resolve(config)
            # A default directory is numbered on first use; rank 0 picks it, and every rank learns which.
            numbered = (config.model, config.data) if config.out is None and not config.resume else None
            with _claimed(Path(resolved.out), ctx, numbered=numbered) as out:
                return _Run(dataclasses.replace(config, out=str(out)), ctx, given).run()
        finally:
            distributed.teardown(ctx)


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


class _Run:
    def __init__(self, config: TrainConfig, ctx: distributed.Context, given: Collection[str] = ()) -> None:
        self.ctx = ctx
        out = Path(config.out)
        changed: dict[str, tuple[Any, Any]] = {}
        if config.resume:
            config, changed = _resumed_config(config, out, given)
        self.cfg = cfg = resolve(config)
        self.out = out
        if not cfg.resume and (out / STATE_FILE).exists():
            other = _saved_model(out)
            if other not in (None, cfg.model):
                raise ConfigMismatchError(f"{out} already holds a run of {other}: choose another --out for {cfg.model}")
            raise ConfigMismatchError(
                f"{out} already holds a run: pass --resume to continue it, or --out for a new directory"
            )
        if cfg.deterministic:
            _make_deterministic()
        set_threads(cfg.threads)
        torch.manual_seed(cfg.seed)

        # Pretrained weights fix the preprocessing: input size, channels and normalisation.
        self.preprocessing = weights_preprocessing(cfg.weights, cfg.model) if cfg.weights else None
        # Saved with the weights: the options pretrained weights need (a Keras file's tf_same) rebuild the same network.
        self.model_kwargs = model_kwargs = {**(self.preprocessing or {}).get("model_kwargs", {}), **cfg.model_kwargs}
        probe = probe_model(cfg.model, model_kwargs)
        image_size, channels = cfg.image_size, None
        if self.preprocessing:
            channels = self.preprocessing["input_size"][0]
            image_size = image_size or self.preprocessing["input_size"][1]
        if image_size is not None:  # checked before the data is read; sizes the data decides, after
            source = f"--image-size {image_size} gives" if cfg.image_size else "the weights' input size is"
            check_input_size(cfg.model, probe, (image_size, image_size), source)
        elif probe.fixed_input_size:
            image_size = probe.fixed_input_size[0]
        recipe = (self.preprocessing or {}).get("preprocessing")  # the weights' resize, crop and filter
        self.recipe = recipe.at_size(cfg.image_size) if recipe and cfg.image_size else recipe
        dataset = load_dataset(cfg.data, data_dir=cfg.data_dir, image_size=image_size, channels=channels,
                               num_workers=cfg.num_workers, preprocessing=self.recipe)
        if self.preprocessing and self.preprocessing["mean"] is not None:  # None: the data's own statistics
            dataset = dataclasses.replace(dataset, mean=tuple(self.preprocessing["mean"]),
                                          std=tuple(self.preprocessing["std"]))
        if cfg.train_per_class:
            dataset = subsample_per_class(dataset, cfg.train_per_class, cfg.seed)
        if cfg.test_per_class:
            dataset = subsample_per_class(dataset, cfg.test_per_class, seed=0, split="test")
        self.dataset = dataset
        if len(dataset.test) == 0:
            self._say(f"warning: {dataset.name} has no test images: test loss and accuracy are not measured (nan)")
        check_input_size(cfg.model, probe, dataset.image_size, f"{dataset.name} gives")
        self.data_identity = data_identity(dataset)
        self.model = convnets.create_model(cfg.model, num_classes=dataset.num_classes, in_chans=dataset.channels,
                                           **model_kwargs)
        if cfg.weights and not cfg.resume:
            load_pretrained(self.model, cfg.weights)
            trained_on = self.preprocessing.get("classes")
            if trained_on and list(trained_on) != list(dataset.classes) and len(trained_on) == dataset.num_classes:
                # Same number of classes, other classes: the old classifier would only mislead.
                self.model.reset_classifier(dataset.num_classes)
                self._say(f"new classifier for the classes of {dataset.name} (the weights' predicted "
                          f"{', '.join(map(str, trained_on[:3]))}, ...)")
        self.frozen = self._freeze() if cfg.freeze else []
        self.model.to(ctx.device)
        self.cached = cfg.cache_features
        # NHWC is the layout cuDNN's and oneDNN's convolution kernels prefer (about 1.2x on a CPU).
        self.channels_last = (cfg.channels_last if cfg.channels_last is not None else True) and not self.cached
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

        loader_kw = dict(device=ctx.device, seed=cfg.seed, num_workers=cfg.num_workers)
        if self.cached:
            self._cached_feature_loaders(loader_kw)
        else:
            self.net: nn.Module = self.model
            if ctx.distributed:
                ids = [ctx.device.index] if ctx.device.type == "cuda" else None
                self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
            self.eval_net = self.model
            self.batch_size = self._batch_for(len(dataset.train))
            # Checked on the model as it will train (frozen parts stay in evaluation mode); a batch that
            # broken files leave below the smallest is skipped in the loop.
            self.min_batch = smallest_batch(cfg.model, probe, self.batch_size, dataset.image_size,
                                            frozen=self.frozen, few_images=self.batch_size < cfg.batch_size)
            self.train_loader = make_loader(dataset, "train", batch_size=self.batch_size, augment=cfg.augment,
                                            rank=ctx.rank, world_size=ctx.world_size, drop_last=True, **loader_kw)
            self.test_loader = make_loader(dataset, "test", batch_size=max(256, cfg.batch_size), **loader_kw)
        self.steps_per_epoch = len(self.train_loader)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        groups = parameter_groups(self.model, cfg.lr, cfg.weight_decay,
                                  cfg.pretrained_lr_scale if cfg.weights else 1.0)
        self.optimizer = (torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum) if cfg.optimizer == "sgd"
                          else torch.optim.AdamW(groups, lr=cfg.lr))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(cfg, self.total_steps,
                                                                                       self.steps_per_epoch))
        self.autocast_dtype = autocast_dtype(cfg.precision, ctx.device)
        self.precision = describe_precision(self.autocast_dtype, ctx.device, self.model)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.autocast_dtype == torch.float16)
        self.aux = getattr(self.model, "aux", None) is not None and not self.cached
        self.epoch, self.position, self.step, self.best = 0, 0, 0, 0.0
        self.skipped_steps, self.elapsed = 0, 0.0
        # The running sums of the current epoch (loss * n, correct, n) and its seconds so far: kept in the
        # checkpoint, so that an epoch resumed mid-way reports metrics over all of its batches.
        self.epoch_sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)
        self.epoch_seconds = 0.0
        self.log = MetricsLog(out, enabled=ctx.is_main)
        if cfg.resume:
            self._load_state()
            if changed and ctx.is_main:
                shown = [f"{_option(k)} {_show(new)} (was {_show(old)})" for k, (old, new) in changed.items()
                         if k != "max_steps"]
                if shown:
                    self._say(f"resuming with {', '.join(shown)}; recorded in {out / 'config.json'}")
                self._write_config()
        elif ctx.is_main:
            self._write_config()
            self._say(self.dataset.describe())
            self._say(f"{cfg.model}: {sum(p.numel() for p in self.model.parameters()):,} params on "
                      f"{ctx.device}" + (f" x {ctx.world_size} processes" if ctx.distributed else "")
                      + f", precision {cfg.precision}: {self.precision}")

    def _write_config(self) -> None:
        write_text(self.out / "config.json", json.dumps({**self.cfg.to_dict(), "resume": False}, indent=2) + "\n")

    def _batch_for(self, images: int) -> int:
        batch = fit_batch(self.cfg.batch_size, images, self.ctx.world_size)
        if batch < self.cfg.batch_size:
            where = " per process" if self.ctx.distributed else ""
            self._say(f"batch size {self.cfg.batch_size} is more than the {batch} training images{where}: "
                      f"training on batches of {batch}")
        return batch

    def _freeze(self) -> list[str]:
        spec = self.cfg.freeze
        if spec == "auto":
            per_class = len(self.dataset.train) / self.dataset.num_classes
            spec, reason = recommend(per_class, len(self.model.stage_info))
            self._say(f"--freeze auto: {reason} (--freeze {spec})")
        paths = freeze(self.model, spec)
        if paths:
            frozen = sum(p.numel() for p in self.model.parameters() if not p.requires_grad)
            self._say(f"frozen: {', '.join(paths)} ({frozen:,} parameters)")
        return paths

    def _cached_feature_loaders(self, loader_kw: dict[str, Any]) -> None:
        """Run the frozen trunk once per split; the head then trains on the stored features."""
        cfg, ds = self.cfg, self.dataset
        if self.frozen != ["stem", "stages"]:
            raise ConfigMismatchError("--cache-features needs everything but the classifier frozen: "
                                      "add --freeze all-but-head")
        if self.ctx.distributed:
            raise ConfigMismatchError("--cache-features trains the head in one process: run it without torchrun")
        for p in self.model.head.hidden.parameters():  # pre-logits layers are part of the cached trunk
            p.requires_grad_(False)
        loaders = {split: make_loader(ds, split, batch_size=256, augment=None, shuffle=False, **loader_kw)
                   for split in ("train", "test")}
        # Keyed by what the features depend on: the trunk and its weights, and what each split holds
        # (every image and label, see split_fingerprint), decoded by this version of convnets.
        key = dict(model=cfg.model, model_kwargs=cfg.model_kwargs, weights=_weights_identity(cfg.model, cfg.weights),
                   layer="pre_logits", data=ds.name, source=ds.source, classes=ds.classes,
                   train=split_fingerprint(ds.train), test=split_fingerprint(ds.test),
                   image=[ds.channels, *ds.image_size], mean=ds.mean, std=ds.std, transform="none",
                   convnets=convnets.__version__)
        if self.recipe:  # only then: the keys of runs without a published recipe stay what they were
            key["preprocessing"] = self.recipe.to_dict()
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path.home() / ".cache" / "convnets" / "features"
        t0 = time.perf_counter()
        features, path, hit = cached_features(self.model, loaders, self.ctx.device, cache_dir, key, say=self._say)
        self._say(f"features {'read from' if hit else 'computed once and cached in'} {path} "
                  f"({time.perf_counter() - t0:.1f} s)")
        (train_x, train_y), (test_x, test_y) = features["train"], features["test"]
        self.batch_size = self._batch_for(len(train_y))
        self.min_batch = 1  # only the classifier trains, on whole feature batches
        self.train_loader = FeatureLoader(train_x, train_y, batch_size=self.batch_size, device=self.ctx.device,
                                          shuffle=True, seed=cfg.seed, drop_last=True)
        self.test_loader = FeatureLoader(test_x, test_y, batch_size=256, device=self.ctx.device, shuffle=False)
        self.net = self.eval_net = self.model.head.fc

    # ---- the loop

    def run(self) -> TrainResult:
        cfg, stopped = self.cfg, None
        start = self._start = time.perf_counter() - self.elapsed
        self._last_save = time.perf_counter()
        if cfg.max_steps is not None and self.step >= cfg.max_steps:  # a resumed run already there: not one more
            self._say(f"--max-steps {cfg.max_steps}: {self.out} has made {self.step} steps already; nothing to train")
            stopped = "max_steps"
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
        images = self.step * self.batch_size * self.ctx.world_size
        best = math.nan if math.isnan(test_acc) else max(self.best, test_acc)  # nan: no test image to measure
        result = TrainResult(self.model, self.out, test_acc, best, self.epoch, self.step,
                             self.elapsed, images / max(self.elapsed, 1e-9), stopped is not None, self.precision)
        # Each process decodes its own shard: the files any of them could not read are reported together.
        bad = distributed.gather_lists(self.ctx, self.dataset.bad_files.items + self.train_loader.bad_files.items)
        if self.ctx.is_main:
            meta = self._weights_metadata(test_acc)
            save_weights(self.model, self.out / "last.safetensors", meta)
            if not (self.out / "best.safetensors").exists():
                save_weights(self.model, self.out / "best.safetensors", meta)
            self.dataset.bad_files.extend(bad)
            if self.dataset.bad_files.items:
                self.dataset.bad_files.write(self.out)
                self._say(self.dataset.bad_files.summary())
            write_report(self.out, dataclasses.replace(cfg, batch_size=self.batch_size), result, self.log.rows)
            status = "stopped at --max-steps" if stopped else f"{self.epoch} epochs"
            self._say(f"{cfg.model} on {self.dataset.name}: test accuracy {test_acc:.4f} "
                      f"(best {result.best_accuracy:.4f}) · {status} in {self.elapsed:.0f} s · "
                      f"{result.images_per_second:,.0f} images/s · {self.out}")
        distributed.barrier(self.ctx)
        return result

    def _train_epoch(self) -> str | None:
        """One epoch from ``self.position``; says why it stopped early ("max_steps", "signal"), if it did."""
        cfg, ctx = self.cfg, self.ctx
        self.net.train()
        self.train_loader.set_epoch(self.epoch, start_batch=self.position)
        if self.position == 0:  # a new epoch; one resumed mid-way continues its sums from the checkpoint
            self.epoch_sums.zero_()
            self.epoch_seconds = 0.0
        sums = self.epoch_sums  # loss * n, correct, n
        t0, seen, seconds_before = time.perf_counter(), 0, self.epoch_seconds
        bar = self._progress(self.steps_per_epoch - self.position)
        for x, y in self.train_loader:
            if not self._trainable(len(y)):
                self.position = self.train_loader.position
                continue
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            stepped = self._step(x, y)
            if stepped is not None:  # a skipped step (--nan-policy skip) adds nothing to the epoch's metrics
                loss, logits = stepped
                with torch.no_grad():
                    sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) == y).sum().double(),
                                         torch.tensor(float(len(y)), dtype=torch.float64, device=ctx.device)])
            self.position = self.train_loader.position
            self.epoch_seconds = seconds_before + time.perf_counter() - t0
            seen += len(y)
            if bar is not None:
                rate = seen * ctx.world_size / (time.perf_counter() - t0)
                if stepped is not None:
                    accuracy = (sums[1] / sums[2].clamp_min(1)).item()
                    bar.set_postfix(loss=f"{stepped[0].item():.3f}", acc=f"{accuracy:.3f}", img_s=f"{rate:,.0f}",
                                    refresh=False)
                bar.update()
            # Under torchrun every rank must stop, and checkpoint, at the same step (the checkpoint sums
            # the ranks' metrics): a signal on any rank stops all, rank 0's clock times the checkpoints.
            due = ctx.is_main and time.perf_counter() - self._last_save > cfg.checkpoint_minutes * 60
            signalled, due = distributed.all_sum(ctx, float(bool(self._signalled)), float(due))
            reason = "signal" if signalled else None
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
        seconds = self.epoch_seconds
        loss_sum, correct, n = distributed.all_sum(ctx, *sums.tolist())
        test_loss, test_acc = self.evaluate()
        # An epoch whose every step was skipped measured nothing: nan, as for a missing test split, not 0.
        row = dict(epoch=self.epoch + 1, step=self.step, lr=self.scheduler.get_last_lr()[0],
                   train_loss=loss_sum / n if n else math.nan, train_acc=correct / n if n else math.nan,
                   test_loss=test_loss,
                   test_acc=test_acc, seconds=round(seconds, 3), images_per_s=round(n / max(seconds, 1e-9), 1),
                   elapsed=round(time.perf_counter() - self._start, 3))
        self.log.append(row)
        if ctx.is_main:
            self._say(f"epoch {row['epoch']}/{cfg.epochs}: train loss {row['train_loss']:.4f} acc "
                      f"{row['train_acc']:.4f} · test loss {test_loss:.4f} acc {test_acc:.4f} · "
                      f"{row['images_per_s']:,.0f} images/s")
            if test_acc > self.best:
                self.best = test_acc
                save_weights(self.model, self.out / "best.safetensors",
                             self._weights_metadata(test_acc, epochs=self.epoch + 1))
        return None

    def _trainable(self, images: int) -> bool:
        """Whether every rank's batch can make a step: broken files may leave one empty, or with a single
        image where BatchNorm needs two (see :func:`~convnets.training.config.smallest_batch`).

        Under torchrun the ranks agree, so that they keep making the same steps together.
        """
        usable = images >= self.min_batch
        if self.ctx.distributed:
            usable = distributed.all_sum(self.ctx, float(usable))[0] == self.ctx.world_size
        if not usable:
            self._say(f"warning: batch {self.train_loader.position} of epoch {self.epoch + 1} skipped: after its "
                      f"undecodable files{' on some process' if self.ctx.distributed else ''} too few images "
                      f"are left (the model needs {self.min_batch} a batch); see bad_files.tsv")
        return usable

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One optimizer step; the loss and logits, or None when a non-finite loss was skipped."""
        cfg = self.cfg
        autocast = (torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else nullcontext())
        with autocast:
            if self.aux:
                # Szegedy et al. 2014: the auxiliary losses are added with weight 0.3 in training.
                logits, aux_logits = self.net(x, return_aux=True)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                for aux in aux_logits:
                    loss = loss + AUX_LOSS_WEIGHT * F.cross_entropy(aux, y, label_smoothing=cfg.label_smoothing)
            else:
                logits = self.net(x)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        finite = bool(distributed.all_sum(self.ctx, float(torch.isfinite(loss).item()))[0] == self.ctx.world_size)
        if not finite:
            self._diverged(loss)
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return loss, logits.float()

    def _diverged(self, loss: torch.Tensor) -> None:
        where = f"step {self.step + 1} (epoch {self.epoch + 1}, batch {self.position + 1})"
        if self.cfg.nan_policy == "skip":
            self.skipped_steps += 1
            self._say(f"warning: loss is {loss.item()} at {where}; step skipped ({self.skipped_steps} so far)")
            if self.skipped_steps <= 20:
                return
            where += f" after {self.skipped_steps} skipped steps"
        kept = self.out / STATE_FILE
        # The last checkpoint may hold weights the step before already spoilt (a huge learning rate): not "good".
        kept_text = f"the last checkpoint is {kept}" if kept.exists() else "no checkpoint was written yet"
        remedies = f"lower --lr (now {self.cfg.lr}) or add --grad-clip 1.0" if self.cfg.nan_policy == "skip" else (
            f"lower --lr (now {self.cfg.lr}), add --grad-clip 1.0, or pass --nan-policy skip to skip such steps")
        raise TrainingDiverged(f"loss became {loss.item()} at {where}; {kept_text}: {remedies}")

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Test loss and accuracy over the whole test split (every rank computes the same)."""
        self.eval_net.eval()
        loss_sum = correct = n = 0.0
        autocast = (torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else nullcontext())
        self.test_loader.set_epoch(0)
        for x, y in self.test_loader:
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits = self.eval_net(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            n += len(y)
        self.eval_net.train()
        if n == 0:  # no test image (or none readable): nothing was measured, and 0.0 would read as a result
            return math.nan, math.nan
        return loss_sum / n, correct / n

    # ---- state

    def _save_state(self) -> None:
        """Checkpoint the run (every rank calls this at the same step; rank 0 writes)."""
        self._last_save = time.perf_counter()
        epoch_sums = distributed.all_sum(self.ctx, *self.epoch_sums.tolist())  # the whole epoch so far, all ranks
        if not self.ctx.is_main:
            return
        state = {
            "model_name": self.cfg.model,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "position": self.position,
            "step": self.step,
            "best": self.best,
            "elapsed": self.elapsed,
            "skipped_steps": self.skipped_steps,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "metrics": self.log.rows,
            "epoch_sums": epoch_sums,
            "epoch_seconds": self.epoch_seconds,
            "data": self.data_identity,
        }
        atomic_write(self.out / STATE_FILE, lambda tmp: _save_torch(state, tmp))

    def _load_state(self) -> None:
        path = self.out / STATE_FILE
        try:
            state = torch.load(path, map_location=self.ctx.device, weights_only=True)
        except OSError:
            raise
        except Exception as err:  # torch reports a damaged or unsafe file with many types; all mean "unusable"
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RunDirectoryError(f"{path} cannot be resumed: it is not a readable training state ({reason}); the "
                                    "run's weights are in best.safetensors and last.safetensors if it wrote them"
                                    ) from err
        missing = sorted(STATE_KEYS - set(state)) if isinstance(state, dict) else sorted(STATE_KEYS)
        if missing:
            raise RunDirectoryError(f"{path} is not a convnets training state (it has no {', '.join(missing)})")
        if state["model_name"] != self.cfg.model:
            raise ConfigMismatchError(f"{path} is a run of {state['model_name']}, not {self.cfg.model}")
        if "data" in state:  # checkpoints written before it was recorded are trusted
            _check_same_data(state["data"], self.data_identity, self.cfg.data, self.out)
        if state["epoch"] > self.cfg.epochs:
            raise ConfigMismatchError(f"--epochs {self.cfg.epochs}: {self.out} has finished {state['epoch']} epochs "
                                      "already; give at least that many")
        from convnets.weights import check_state_dict

        check_state_dict(self.model, state["model"], source=f"checkpoint {path}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.position, self.step = state["epoch"], state["position"], state["step"]
        self.best, self.elapsed, self.skipped_steps = state["best"], state["elapsed"], state["skipped_steps"]
        torch.set_rng_state(state["rng"].cpu())
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        if self.ctx.is_main and "epoch_sums" in state:  # the sums of all ranks, counted once, on rank 0
            self.epoch_sums = torch.tensor(state["epoch_sums"], dtype=torch.float64, device=self.ctx.device)
            self.epoch_seconds = state["epoch_seconds"]
        self.log.restore(state["metrics"])
        if self.epoch >= self.cfg.epochs:
            self._say(f"resumed {self.out}: its {self.cfg.epochs} epochs are done, nothing to train (pass --epochs N "
                      "to train longer)")
        else:
            self._say(f"resumed {self.out} at epoch {self.epoch + 1}, batch {self.position} (step {self.step})")

    def _weights_metadata(self, accuracy: float, epochs: int | None = None) -> dict[str, Any]:
        ds = self.dataset
        return {
            "model": self.cfg.model,
            "model_kwargs": self.model_kwargs,
            "num_classes": ds.num_classes,
            "in_chans": ds.channels,
            "input_size": [ds.channels, *ds.image_size],
            "mean": list(ds.mean),
            "std": list(ds.std),
            # How its images were prepared, so that it is evaluated (and predicts) on inputs prepared alike.
            "preprocessing": (dataclasses.replace(self.recipe, mean=ds.mean, std=ds.std) if self.recipe else
                              Preprocessing(ds.image_size, channels=ds.channels, mean=ds.mean, std=ds.std)).to_dict(),
            "classes": ds.classes,
            "dataset": ds.name,
            "test_accuracy": round(accuracy, 5),
            "epochs": self.epoch if epochs is None else epochs,
            "command": shlex.join(["convnets", *sys.argv[1:]]) if sys.argv and "convnets" in sys.argv[0] else "",
        }

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


def _resumed_config(config: TrainConfig, out: Path, given_names: Collection[str] = ()
                    ) -> tuple[TrainConfig, dict[str, tuple[Any, Any]]]:
    """The configuration of the run in ``out``, with the changes a resume may make (:data:`RESUME_MAY_CHANGE`).

    A field counts as given when named in ``given_names`` or when it differs from
    :class:`TrainConfig`'s default. A given field that defines the run and differs from the run's
    value is refused, naming each such option with both values.

    Returns:
        The configuration to continue with, and the fields it changes as ``{name: (old, new)}``.
    """
    saved = _saved_config(out)
    if saved.get("model") != config.model:
        raise ConfigMismatchError(f"{out} is a run of {saved.get('model')}, not {config.model}")
    defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in config.to_dict().items()
             if k not in ("model", "out", "resume") and (k in given_names or v != defaults[k])}
    conflicts = [f"{_option(k)} {_show(v)} (the run has {_show(saved.get(k))})" for k, v in given.items()
                 if k not in RESUME_MAY_CHANGE and not _same(saved.get(k), v)]
    if conflicts:
        raise ConfigMismatchError(f"cannot resume {out} with other settings than it began with: "
                                  f"{'; '.join(conflicts)}. Resume without them, or start a new run with another "
                                  f"--out (may change on resume: {', '.join(map(_option, RESUME_MAY_CHANGE))})")
    values = {**saved, **{k: v for k, v in given.items() if k in RESUME_MAY_CHANGE},
              "max_steps": config.max_steps, "resume": True, "out": str(out)}
    changed = {k: (saved.get(k), values[k]) for k in RESUME_MAY_CHANGE if not _same(saved.get(k), values[k])}
    return TrainConfig(**values), changed


def _saved_model(out: Path) -> str | None:
    """The model of the run in ``out`` as its config.json says, or None when that cannot be read."""
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return saved.get("model") if isinstance(saved, dict) else None


def data_identity(dataset: Any) -> dict[str, Any]:
    """What a resumed run must find again: the classes, and each split's size and a hash of its labels
    and (for an image folder) of its files' paths within the folder.

    Cheap (no file is read or stat'ed): it catches images added, removed or moved to another class
    and renamed classes, which would otherwise shift the resumed epoch or swap what the model learnt.
    """
    identity: dict[str, Any] = {"classes": [str(c) for c in dataset.classes]}
    for split in ("train", "test"):
        part = getattr(dataset, split)
        digest = hashlib.sha256(part.labels.cpu().numpy().astype("<i8").tobytes())
        for path, _ in getattr(part, "samples", ()):
            digest.update(os.path.relpath(path, dataset.source or ".").encode("utf-8", "surrogateescape") + b"\0")
        identity[split] = [len(part), digest.hexdigest()]
    return identity


def _check_same_data(saved: dict[str, Any], now: dict[str, Any], data: str, out: Path) -> None:
    """A ConfigMismatchError saying what changed when the data of a resumed run is not what it began with."""
    if saved == now:
        return

    def sizes(identity: dict[str, Any]) -> list[Any]:
        return [(identity.get(split) or [None])[0] for split in ("train", "test")]

    if saved.get("classes") != now["classes"]:
        what = f"its classes were {_listed(saved.get('classes'))}, now {_listed(now['classes'])}"
    elif sizes(saved) != sizes(now):
        (train_was, test_was), (train_now, test_now) = sizes(saved), sizes(now)
        what = f"it had {train_was} training and {test_was} test images, now {train_now} and {test_now}"
    else:
        what = "as many images, but other files or labels"
    raise ConfigMismatchError(f"cannot resume {out}: the data {data} changed since the run began ({what}); a "
                              "resumed run must see the same data: restore it, or start a new run with another --out")


def _listed(names: Any, limit: int = 6) -> str:
    names = list(names or [])
    return ", ".join(map(str, names[:limit])) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _saved_config(out: Path) -> dict[str, Any]:
    """The fields of ``out/config.json`` of a run that has a checkpoint to resume."""
    path = out / "config.json"
    if not (out / STATE_FILE).exists():
        why = " (the run stopped before its first checkpoint: start it again without --resume)" if path.exists() else ""
        raise FileNotFoundError(f"nothing to resume in {out}: no {STATE_FILE} there{why}")
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise RunDirectoryError(f"{path} is missing: the run's configuration is needed to resume it") from err
    except ValueError as err:  # a truncated or hand-edited file
        raise RunDirectoryError(f"{path} is damaged ({err}): it cannot be resumed until the file is repaired") from err
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(values, dict) or "model" not in values or not set(values) <= known:
        unknown = sorted(set(values) - known) if isinstance(values, dict) else type(values).__name__
        raise RunDirectoryError(f"{path} is not a convnets run configuration (unexpected: {unknown})")
    return values


# Options whose command-line spelling is not the field's name with dashes.
_OPTIONS = {"num_workers": "--workers", "model_kwargs": "--model-arg", "progress": "--no-progress"}


def _option(field_name: str) -> str:
    return _OPTIONS.get(field_name, "--" + field_name.replace("_", "-"))


def _show(value: Any) -> str:
    if value is None:
        return "none"
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else str(value)


def _same(a: Any, b: Any) -> bool:
    """Equal, as JSON would store them, or two spellings of one existing path (``data/`` and ``./data``)."""
    if a == b or json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str):
        return True
    paths = [Path(v).expanduser() for v in (a, b) if isinstance(v, str) and v]
    return len(paths) == 2 and all(p.exists() for p in paths) and paths[0].resolve() == paths[1].resolve()


def _save_torch(obj: Any, path: str) -> None:
    """``torch.save`` through a Python file: then a full disk is an OSError, not a RuntimeError of torch's writer.

    A second Ctrl-C (or SIGTERM) stops the run at once, even mid-write; torch's writer then fails to close
    its archive and reports that as a RuntimeError, which is given back as the interruption it is.
    """
    with open(path, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as err:
            if isinstance(err.__context__, KeyboardInterrupt):
                raise err.__context__ from None
            raise


def fit_batch(batch_size: int, images: int, world_size: int = 1) -> int:
    """The batch size for ``images`` training images over ``world_size`` processes: ``batch_size``, or the
    whole training set (per process) when that is smaller.

    Training drops the last incomplete batch of an epoch (and, distributed, the uneven tail), so a
    training set smaller than one batch would make no batch at all; like Keras and timm, the batch
    shrinks to the data instead.

    Raises:
        ConfigMismatchError: fewer images than processes.
    """
    per_process = images // world_size
    if per_process == 0:
        raise ConfigMismatchError(f"{images} training images cannot give each of {world_size} processes one: "
                                  "use more data or fewer processes")
    return min(batch_size, per_process)


def _weights_identity(model: str, weights: str | None) -> str | None:
    """What identifies weights in a cache key: a registered tag's sha256, or a file's path, size and time."""
    if weights and is_tag(weights):
        return get_weights(model, weights).sha256
    if weights and Path(weights).is_file():
        stat = Path(weights).stat()
        return f"{Path(weights).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return weights


def _lr_factor(cfg: TrainConfig, total: int, per_epoch: int) -> Any:
    """The learning-rate multiplier at each optimizer step: warm-up, then the schedule."""
    warmup = int(cfg.warmup_epochs * per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        t = (step - warmup) / max(1, total - warmup)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if cfg.schedule == "step":  # x0.1 at 50% and 75%, as He et al. at 32k and 48k of 64k iterations
            return 0.1 ** ((t >= 0.5) + (t >= 0.75))
        if cfg.schedule == "onecycle":  # 25% linear ramp from lr/25, then cosine down to ~0
            ramp = 0.25
            if t < ramp:
                return 0.04 + 0.96 * t / ramp
            return 0.5 * (1 + math.cos(math.pi * min((t - ramp) / (1 - ramp), 1.0)))
        return 1.0

    return factor


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a ``--precision`` on a device (None: plain fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    # auto: bf16 autocast where the hardware computes bf16 natively (recent GPUs; CPUs with
    # AVX512-BF16 or AMX, where oneDNN's bf16 convolutions run about twice as fast as fp32);
    # fp32 elsewhere, where bf16 would be emulated and slower.
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


def describe_precision(dtype: torch.dtype | None, device: torch.device, model: nn.Module) -> str:
    """What a run computes in, in words: ``fp32``, ``bf16 autocast``, ``fp16 autocast with loss scaling``,
    with a note where the model's depthwise convolutions stay in fp32 (on the CPU, see :class:`DepthwiseConv2d`)."""
    if dtype is None:
        return "fp32"
    text = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast with loss scaling"}[dtype]
    if device.type == "cpu" and any(isinstance(m, DepthwiseConv2d) and m.fp32_under_autocast
                                    for m in model.modules()):
        text += " (depthwise convolutions in fp32: faster on this CPU)"
    return text


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (torch exposes the check only privately, hence the guard)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def _make_deterministic() -> None:
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
