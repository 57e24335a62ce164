"""Training throughput and time-to-accuracy: convnets' training path against a straightforward baseline loop.

For lenet5 and resnet20 on Fashion-MNIST, in one process, on the CPU:

1. Matmul peak: the best float32 ``torch.mm`` GFLOP/s over a few sizes, for scale.
2. Throughput (images/s) of training steps, interleaved A, B, B, A, ... so that load from other
   processes and clock drift fall on both sides alike:

   - convnets: ``make_loader`` over the in-memory uint8 tensors (batched indexing, batched
     augmentation, one fused normalisation) feeding the model;
   - baseline: a ``torch.utils.data.Dataset`` returning one Pillow image at a time, per-image
     transforms (lenet5: pad 28 -> 32 with ``ImageOps.expand``; resnet20: the ``standard`` preset,
     i.e. mirror, 4-pixel pad-and-crop, +-20 grey shift and PCA colour, all per image), then
     to-tensor and normalisation in numpy, through ``torch.utils.data.DataLoader(num_workers=N)``.

   Both sides train the same model (same initial weights), eager fp32, the same batch size and
   the recipe's optimizer (``convnets.training.config.RECIPES``), with a plain
   zero_grad / forward / cross-entropy / backward / step. Achieved GFLOP/s is
   ``3 * 2 * MACs * images/s``: a training step is taken as 3 forward passes (forward, plus a
   backward that costs about twice the forward: gradients of activations and of weights).
3. Time to accuracy with ``convnets.training.train`` and the recipe: lenet5 to 0.90 (default budget),
   resnet20 to 0.93 (``--full``: the 30-epoch recipe, 1-1.5 hours on 2 cores; by default a short run
   of ``--resnet-epochs`` with the recipe's schedule compressed to it).

    python benchmarks/bench_train.py                         # default budget: ~10 minutes on 2 idle cores
    python benchmarks/bench_train.py --threads 1             # on a machine shared with other jobs
    python benchmarks/bench_train.py --full --out runs/bench_train.json   # the resnet20 recipe too
    python benchmarks/bench_train.py --skip-accuracy --rounds 8           # throughput only
    python benchmarks/bench_train.py --compile-only --threads 2          # 4. alone

4. ``--compile`` end to end: ``convnets.train`` of resnet20 for ``--compile-epochs`` (1) with the
   defaults, once plain and once with ``compile="inductor"``, one after the other in this process
   (plain first: the compiled run then finds no warmer caches than the plain one had), timing the
   whole call: data, setup, compilation, training, evaluation and the run directory. The ratio
   plain/compiled above 1 means compiling pays for itself within the run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

import convnets
from convnets.data.augment import PRESETS, pca_basis
from convnets.data.datasets import Dataset, load_dataset
from convnets.data.loader import make_loader
from convnets.training import TrainConfig, train
from convnets.training.config import resolve
from convnets.training.loop import autocast_dtype

# The input side each model trains at (what `convnets train` picks) and its time-to-accuracy goal.
CASES: dict[str, dict[str, Any]] = {
    "lenet5": dict(size=32, goal=0.90),
    "resnet20": dict(size=28, goal=0.93),
}


# --------------------------------------------------------------------------------------------
# matmul peak


def matmul_peak(sizes: tuple[int, ...] = (256, 512, 1024, 2048), min_seconds: float = 0.3) -> dict[str, Any]:
    """Best float32 ``torch.mm`` rate over square sizes, with torch's current thread count.

    Args:
        sizes: Square matrix sides to try.
        min_seconds: Time each size at least this long (repeating the product) so one
            descheduling by another process does not decide the figure.

    Returns:
        ``{"gflops": best, "per_size": {n: gflops}, "threads": n}``.
    """
    per_size = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        torch.mm(a, b, out=out)  # warm-up: first call allocates and picks the kernel
        best, reps = 0.0, 1
        spent = 0.0
        while spent < min_seconds:
            start = time.perf_counter()
            for _ in range(reps):
                torch.mm(a, b, out=out)
            seconds = time.perf_counter() - start
            spent += seconds
            best = max(best, 2 * n**3 * reps / seconds / 1e9)
            reps *= 2
        per_size[n] = round(best, 1)
    return {"gflops": max(per_size.values()), "per_size": per_size, "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------------------------
# the baseline: per-image Pillow transforms through a DataLoader


class PillowDataset(torch.utils.data.Dataset):
    """One (image, label) at a time from a uint8 (N, H, W) array, transformed with Pillow and numpy.

    What one writes without a batched pipeline (torchvision's ``Pad``/``RandomCrop``/
    ``RandomHorizontalFlip``/``ToTensor``/``Normalize``, written out since torchvision is not a
    dependency). Random parameters come from Python's ``random``, which DataLoader seeds per worker.

    Args:
        images: uint8 (N, H, W) grey images.
        labels: int (N,) labels.
        mean, std: Normalisation, the same values as the convnets side.
        pad_to: Centre the image on a zero canvas of this side (LeNet-5's 28 -> 32), or None.
        augment: Preset name whose flip, pad-and-crop and colour settings to apply per image, or None.
        pixel_cov: (1, 1) training pixel covariance, for the preset's PCA colour term.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        mean: float,
        std: float,
        *,
        pad_to: int | None = None,
        augment: str | None = None,
        pixel_cov: torch.Tensor | None = None,
    ) -> None:
        self.images, self.labels = images, labels
        self.mean, self.std = np.float32(mean), np.float32(std)
        self.pad_to = pad_to
        self.cfg = PRESETS[augment] if augment else None
        self.pca_scale = 0.0
        if self.cfg is not None and self.cfg.pca_std:
            eigvals, eigvecs = pca_basis(pixel_cov)
            # One channel: the PCA shift is eigvec * alpha * sqrt(eigval), alpha ~ N(0, pca_std).
            self.pca_scale = float(eigvecs[0, 0] * eigvals[0].sqrt())

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[i])
        side = image.size[0]
        if self.pad_to is not None:
            before = (self.pad_to - side) // 2
            image = ImageOps.expand(image, (before, before, self.pad_to - side - before, self.pad_to - side - before))
            side = self.pad_to
        shift = 0.0
        cfg = self.cfg
        if cfg is not None:
            if random.random() < cfg.hflip:
                image = ImageOps.mirror(image)
            pad = round(cfg.pad_crop * side)
            if pad:
                image = ImageOps.expand(image, pad, fill=0)
                left, top = random.randint(0, 2 * pad), random.randint(0, 2 * pad)
                image = image.crop((left, top, left + side, top + side))
            shift = random.uniform(-cfg.color_shift, cfg.color_shift) / 255
            shift += random.gauss(0.0, cfg.pca_std) * self.pca_scale
        x = np.asarray(image, dtype=np.float32) / 255
        if cfg is not None and (cfg.color_shift or cfg.pca_std):
            x = np.clip(x + shift, 0.0, 1.0)
        x = (x - self.mean) / self.std
        return torch.from_numpy(x[None]), int(self.labels[i])


# --------------------------------------------------------------------------------------------
# interleaved throughput


def forever(loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches without end, epoch after epoch (``set_epoch`` where the loader has one)."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def make_optimizer(model: nn.Module, name: str) -> torch.optim.Optimizer:
    """The recipe's optimizer and hyperparameters for ``name`` (both sides get the same one)."""
    cfg = resolve(TrainConfig(model=name))
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


class Side:
    """One training pipeline: a batch iterator, a model and its optimizer; times chunks of steps.

    ``channels_last`` and ``autocast`` are what ``convnets train`` does by default on this machine
    (NHWC, and bf16 autocast where the CPU has bf16 instructions); the baseline runs eager fp32.
    """

    def __init__(self, name: str, batches: Iterator, model: nn.Module, optimizer: torch.optim.Optimizer,
                 *, channels_last: bool = False, autocast: torch.dtype | None = None) -> None:
        self.name, self.batches, self.model, self.optimizer = name, batches, model, optimizer
        self.channels_last, self.autocast = channels_last, autocast
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.images, self.seconds, self.data_seconds = 0, 0.0, 0.0
        self.rates: list[float] = []

    def steps(self, count: int, timed: bool = True) -> None:
        """Run ``count`` training steps; when ``timed``, add them to the totals."""
        images = 0
        data = 0.0
        start = time.perf_counter()
        for _ in range(count):
            t = time.perf_counter()
            x, y = next(self.batches)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            data += time.perf_counter() - t
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
                loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            self.optimizer.step()
            images += len(y)
        loss.item()  # CPU kernels are synchronous already; this keeps the timing right on a GPU too
        seconds = time.perf_counter() - start
        if timed:
            self.images += images
            self.seconds += seconds
            self.data_seconds += data
            self.rates.append(images / seconds)

    def summary(self) -> dict[str, Any]:
        # The median round, not the total: a burst of load from another process that hits one
        # chunk would otherwise decide the figure (the rounds of both sides are in the JSON).
        return {
            "images_per_s": statistics.median(self.rates),
            "images_per_s_total": self.images / self.seconds,
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "data_wait_fraction": round(self.data_seconds / self.seconds, 3),
            "per_round_images_per_s": [round(r, 1) for r in self.rates],
        }


def throughput(
    name: str, data: Dataset, raw: Dataset, *, batch_size: int, workers: int, rounds: int, steps: int, warm: int,
    seed: int,
) -> dict[str, Any]:
    """Interleaved images/s of the convnets path and the baseline for one model.

    Args:
        name: Model name (``lenet5`` or ``resnet20``).
        data: The dataset at the model's input size (what ``convnets train`` loads).
        raw: Fashion-MNIST at 28x28, the baseline's source of Pillow images.
        batch_size: Images per step, both sides.
        workers: DataLoader workers of the baseline.
        rounds: Rounds of (convnets, baseline) chunks, the order alternating each round.
        steps: Timed steps per chunk.
        warm: Untimed steps at the start of every chunk: they refill the baseline's prefetch
            queue, which its workers filled ahead while the other side ran, so the timed steps
            see its steady state rather than a head start.
        seed: Initial weights and data order.
    """
    recipe = resolve(TrainConfig(model=name))
    torch.manual_seed(seed)
    model = convnets.create_model(name, num_classes=data.num_classes, in_chans=data.channels)
    base_model = copy.deepcopy(model)
    ours = make_loader(data, "train", batch_size=batch_size, augment=recipe.augment, seed=seed, drop_last=True)
    pad_to = data.image_size[0] if data.image_size != raw.image_size else None
    pillow = PillowDataset(
        raw.train.images[:, 0].numpy(), raw.train.labels.numpy(), data.mean[0], data.std[0], pad_to=pad_to,
        augment=None if recipe.augment == "none" else recipe.augment, pixel_cov=raw.pixel_cov,
    )
    base_loader = torch.utils.data.DataLoader(
        pillow, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),
    )
    sides = [
        Side("convnets", forever(ours), model, make_optimizer(model, name), channels_last=True,
             autocast=autocast_dtype("auto", torch.device("cpu"))),
        Side("baseline", forever(base_loader), base_model, make_optimizer(base_model, name)),
    ]
    for side in sides:  # first-call costs (worker start-up, allocator, oneDNN primitives) are not throughput
        side.model.train()
        side.steps(max(warm, 2), timed=False)
    for r in range(rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            side.steps(warm, timed=False)
            side.steps(steps)
    ours_s, base_s = sides[0].summary(), sides[1].summary()
    size = data.image_size
    macs = convnets.count(model, input_size=(data.channels, *size)).macs
    ratios = [a / b for a, b in zip(sides[0].rates, sides[1].rates, strict=True)]
    return {
        "model": name,
        "input": [data.channels, *size],
        "augment": recipe.augment,
        "optimizer": recipe.optimizer,
        "batch_size": batch_size,
        "macs_per_image": macs,
        "train_flops_per_image": 3 * 2 * macs,
        "convnets": ours_s,
        "baseline": base_s,
        "speedup": statistics.median(ratios),  # per round, so both sides of a ratio saw the same load
        "speedup_total": ours_s["images_per_s_total"] / base_s["images_per_s_total"],
        "speedup_range": [min(ratios), max(ratios)],
    }


# --------------------------------------------------------------------------------------------
# time to accuracy


def time_to_accuracy(name: str, goal: float, out: Path, epochs: int | None, seed: int) -> dict[str, Any]:
    """Train ``name`` with its recipe (``epochs`` replaced when given) and find when ``goal`` was first reached.

    The loop records each epoch's training seconds (``seconds`` in metrics.jsonl, measured
    before the evaluation), so the cumulative sum is training time without evaluation. The
    figure "with eval" adds the run's remaining wall time (evaluation, checkpoints, weights)
    spread evenly over its epochs. Both are read at epoch ends: the goal may have been passed
    earlier within the epoch.
    """
    recipe = resolve(TrainConfig(model=name))
    overrides: dict[str, Any] = {}
    if epochs is not None and epochs != recipe.epochs:
        # A shorter run keeps the recipe's shape: the same warm-up fraction, the schedule ending at the run's end.
        overrides = dict(epochs=epochs, warmup_epochs=recipe.warmup_epochs * epochs / recipe.epochs)
    cfg = TrainConfig(model=name, out=str(out), progress=False, device="cpu", precision="fp32", seed=seed, **overrides)
    start = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_seconds = sum(r["seconds"] for r in rows)
    overhead = (result.seconds - train_seconds) / max(len(rows), 1)
    reached = None
    cumulative = 0.0
    for r in rows:
        cumulative += r["seconds"]
        if r["test_acc"] >= goal:
            reached = {"epoch": r["epoch"], "train_seconds": round(cumulative, 1),
                       "seconds_with_eval": round(cumulative + overhead * r["epoch"], 1), "test_acc": r["test_acc"]}
            break
    return {
        "model": name,
        "goal": goal,
        "epochs": len(rows),
        "recipe_epochs": recipe.epochs,
        "overrides": overrides,
        "reached": reached,
        "final_test_acc": result.test_accuracy,
        "best_test_acc": result.best_accuracy,
        "run_seconds": round(result.seconds, 1),
        "wall_seconds_incl_setup": round(wall, 1),
        "train_seconds": round(train_seconds, 1),
        "train_images_per_s": round(sum(r["images_per_s"] * r["seconds"] for r in rows) / max(train_seconds, 1e-9)),
        "per_epoch": [{k: r[k] for k in ("epoch", "test_acc", "seconds", "images_per_s")} for r in rows],
    }


def compile_end_to_end(name: str, epochs: int, seed: int, runs: Path, per_class: int | None) -> dict[str, Any]:
    """Wall time of ``train()`` plain and with ``compile="inductor"``, everything included (see the docstring)."""
    sides: dict[str, Any] = {}
    for side, backend in (("plain", None), ("compiled", "inductor")):
        cfg = TrainConfig(model=name, epochs=epochs, out=str(runs / f"{name}-{side}-{int(time.time())}"),
                          progress=False, seed=seed, compile=backend, train_per_class=per_class,
                          test_per_class=per_class)
        torch._dynamo.reset()  # no compiled code from an earlier run in this process
        start = time.perf_counter()
        result = train(cfg)
        wall = time.perf_counter() - start
        rows = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
        sides[side] = {"wall_seconds": round(wall, 1), "train_seconds": round(sum(r["seconds"] for r in rows), 1),
                       "images_per_s_first_epoch": rows[0]["images_per_s"], "test_acc": result.test_accuracy,
                       "precision": result.precision}
        print(f"{name} {side}: {sides[side]}", flush=True)
    return {"model": name, "epochs": epochs, "per_class": per_class, **sides,
            "plain_over_compiled_wall": round(sides["plain"]["wall_seconds"] / sides["compiled"]["wall_seconds"], 3),
            "plain_over_compiled_train": round(sides["plain"]["train_seconds"] / sides["compiled"]["train_seconds"],
                                               3)}


def cpu_flags() -> list[str]:
    """The bf16 instructions this CPU has, as ``lscpu | grep -o 'avx512_bf16\\|amx_bf16'`` lists them."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return []
    return sorted({f for f in flags if f in ("avx512_bf16", "amx_bf16")})


# --------------------------------------------------------------------------------------------
# report


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown tables."""
    if "matmul" not in results:  # --compile-only
        return _compile_markdown(results, [])
    peak = results["matmul"]["gflops"]
    lines = [
        f"matmul peak (fp32 torch.mm, {results['matmul']['threads']} threads): {peak:.1f} GFLOP/s "
        f"(per size: {results['matmul']['per_size']})",
        "",
        f"| model | side | images/s (median round) | data wait | GFLOP/s (3x fwd) | % of {peak:.0f} GFLOP/s "
        "| speed-up: median round (range; totals) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for t in results["throughput"]:
        for side in ("convnets", "baseline"):
            s = t[side]
            gflops = t["train_flops_per_image"] * s["images_per_s"] / 1e9
            speed = (f"**{t['speedup']:.2f}x** ({t['speedup_range'][0]:.2f}-{t['speedup_range'][1]:.2f}x; "
                     f"totals {t['speedup_total']:.2f}x)") if side == "convnets" else ""
            lines.append(f"| {t['model']} | {side} | {s['images_per_s']:,.0f} | {s['data_wait_fraction']:.0%} | "
                         f"{gflops:.2f} | {100 * gflops / peak:.1f}% | {speed} |")
    if results.get("accuracy"):
        lines += ["", "| model | goal | reached at (train s / with eval) | epoch | epochs run | final acc | "
                      "train images/s |", "|---|---:|---|---:|---:|---:|---:|"]
        for a in results["accuracy"]:
            hit = a["reached"]
            at = f"{hit['train_seconds']:.1f} s / {hit['seconds_with_eval']:.1f} s" if hit else "not reached"
            lines.append(f"| {a['model']} | {a['goal']} | {at} | {hit['epoch'] if hit else '-'} | "
                         f"{a['epochs']} of {a['recipe_epochs']} | {a['final_test_acc']:.4f} | "
                         f"{a['train_images_per_s']:,} |")
    return _compile_markdown(results, lines)


def _compile_markdown(results: dict[str, Any], lines: list[str]) -> str:
    if results.get("compile"):
        c = results["compile"]
        size = f", {c['per_class']} images per class" if c["per_class"] else ""
        lines += ["", f"--compile end to end ({c['model']}, {c['epochs']} epoch{size}, defaults; whole train() call):",
                  f"plain {c['plain']['wall_seconds']} s, compiled {c['compiled']['wall_seconds']} s: "
                  f"plain/compiled **{c['plain_over_compiled_wall']}x** (training alone "
                  f"{c['plain_over_compiled_train']}x)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--batch-size", type=int, default=128, help="both sides (the recipes' batch)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="baseline DataLoader workers (default: the CPU count)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, the core count)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per model")
    parser.add_argument("--steps", type=int, help="timed steps per chunk (default: 40 lenet5, 8 resnet20)")
    parser.add_argument("--warm", type=int, default=4, help="untimed steps before each chunk")
    parser.add_argument("--skip-accuracy", action="store_true", help="throughput and matmul only")
    parser.add_argument("--resnet-epochs", type=int, default=1,
                        help="resnet20 time-to-accuracy run length, schedule compressed to it (default 1)")
    parser.add_argument("--full", action="store_true", help="resnet20's full 30-epoch recipe (hours on 2 cores)")
    parser.add_argument("--runs", help="keep the training runs here (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--compile-only", action="store_true", help="only 4., --compile end to end")
    parser.add_argument("--skip-compile", action="store_true", help="leave out 4.")
    parser.add_argument("--compile-epochs", type=int, default=1, help="epochs of each --compile run (default 1)")
    parser.add_argument("--compile-per-class", type=int,
                        help="train and test the --compile runs on this many images per class (default: all)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    results: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_average_before": round(os.getloadavg()[0], 2),
            "cpu_flags": cpu_flags(),
        },
        "command": "python benchmarks/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(f"{results['machine']}", flush=True)
    if args.compile_only:
        with tempfile.TemporaryDirectory() as tmp:
            results["compile"] = compile_end_to_end("resnet20", args.compile_epochs, args.seed,
                                                    Path(args.runs or tmp), args.compile_per_class)
        results["machine"]["load_average_after"] = round(os.getloadavg()[0], 2)
        return _finish(results, args.out)
    # The peak at the thread count the training uses is the scale; the other count is printed for context.
    threads = torch.get_num_threads()
    for n in sorted({1, os.cpu_count() or 1} - {threads}) + [threads]:
        torch.set_num_threads(n)
        peak = matmul_peak()
        print(f"matmul peak, {n} threads: {peak}", flush=True)
        results.setdefault("matmul_by_threads", {})[n] = peak
    results["matmul"] = peak

    raw = load_dataset("fashion-mnist")
    results["throughput"] = []
    for name in args.models:
        data = load_dataset("fashion-mnist", image_size=CASES[name]["size"])
        steps = args.steps or (40 if name == "lenet5" else 8)
        t = throughput(name, data, raw, batch_size=args.batch_size, workers=args.workers, rounds=args.rounds,
                       steps=steps, warm=args.warm, seed=args.seed)
        results["throughput"].append(t)
        print(f"{name}: convnets {t['convnets']['per_round_images_per_s']} img/s, baseline "
              f"{t['baseline']['per_round_images_per_s']} img/s, speed-up {t['speedup']:.2f}x (median round)",
              flush=True)

    results["accuracy"] = []
    if not args.skip_accuracy:
        with tempfile.TemporaryDirectory() as tmp:
            runs = Path(args.runs or tmp)
            for name in args.models:
                epochs = None if name != "resnet20" or args.full else args.resnet_epochs
                out = runs / f"{name}-{int(time.time())}"
                a = time_to_accuracy(name, CASES[name]["goal"], out, epochs, args.seed)
                results["accuracy"].append(a)
                print(f"{name}: {a}", flush=True)
        if not args.skip_compile:
            with tempfile.TemporaryDirectory() as tmp:
                results["compile"] = compile_end_to_end("resnet20", args.compile_epochs, args.seed,
                                                        Path(args.runs or tmp), args.compile_per_class)
    results["machine"]["load_average_after"] = round(os.getloadavg()[0], 2)
    return _finish(results, args.out)


def _finish(results: dict[str, Any], out: str | None) -> int:
    print()
    print(markdown(results))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
