"""Transfer learning, measured: cached features against running the frozen trunk, and the regimes by data size.

1. Epoch time of head training on cached features vs running the frozen trunk every epoch, the
   same model, weights, data and batch size, interleaved (cached, trunk, cached, trunk...) so
   that load from other processes falls on both alike. The one-time feature extraction is
   reported separately. Goal: at least 20x faster per epoch.
2. Fashion-MNIST -> digits (scikit-learn's 8x8, upsampled to 28x28): test accuracy with 10, 30
   and all examples per class, for four regimes: from scratch; frozen trunk + new head (cached
   features); fine-tune the last stage (stem and first two stages frozen); fine-tune all
   (pretrained layers at a tenth of the head's learning rate).

    python benchmarks/bench_transfer.py --source resnet20:fashion-mnist --out runs/bench_transfer.json

``--source`` is MODEL:TAG for registered weights, or MODEL:PATH to a weights file.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from convnets.training import TrainConfig, train

REGIMES = {
    "scratch": dict(),
    "frozen + new head (cached)": dict(freeze="all-but-head", cache_features=True),
    "fine-tune last stage": dict(freeze="2", pretrained_lr_scale=0.1),
    "fine-tune all": dict(freeze="none", pretrained_lr_scale=0.1),
}


def run(model: str, out: Path, **kw) -> tuple[float, list[dict]]:
    result = train(TrainConfig(model=model, out=str(out), progress=False, device="cpu", **kw))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return result.test_accuracy, rows


def epoch_times(model: str, weights: str, tmp: Path, rounds: int, epochs: int) -> dict:
    """Median seconds per epoch, cached features vs the frozen trunk run every epoch."""
    times: dict[str, list[float]] = {"cached": [], "trunk": []}
    common = dict(data="fashion-mnist", weights=weights, freeze="all-but-head", epochs=epochs, batch_size=128,
                  cache_dir=str(tmp / "cache"), augment="none")
    for r in range(rounds):
        for name, cached in (("cached", True), ("trunk", False)):
            _, rows = run(model, tmp / f"{name}{r}", cache_features=cached, **common)
            times[name] += [row["seconds"] for row in rows]
    cached, trunk = statistics.median(times["cached"]), statistics.median(times["trunk"])
    return {"cached_s_per_epoch": cached, "trunk_s_per_epoch": trunk, "speedup": trunk / cached,
            "epochs_measured": len(times["cached"])}


def regimes(model: str, weights: str, tmp: Path, sizes: list[int | None], steps: int) -> list[dict]:
    rows = []
    for per_class in sizes:
        n_train = 1437 if per_class is None else 10 * per_class
        batch = min(32, max(8, n_train // 4))
        epochs = min(200, max(10, math.ceil(steps / (n_train // batch))))
        for name, extra in REGIMES.items():
            kw = dict(data="digits", image_size=28, batch_size=batch, epochs=epochs, train_per_class=per_class,
                      augment="light", **extra)
            if name != "scratch":
                kw["weights"] = weights
            slug = "".join(c if c.isalnum() else "-" for c in name)
            acc, _ = run(model, tmp / f"{slug}-{per_class}", **kw)
            rows.append({"per_class": per_class or "all", "regime": name, "test_accuracy": acc, "epochs": epochs,
                         "batch_size": batch})
            print(f"{str(per_class or 'all'):>4} per class  {name:<28} {acc:.4f}  ({epochs} epochs, batch {batch})",
                  flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="resnet20:fashion-mnist", help="MODEL:TAG or MODEL:PATH")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the epoch-time comparison")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per timing run")
    parser.add_argument("--steps", type=int, default=300, help="about this many optimizer steps per regime run")
    parser.add_argument("--sizes", default="10,30,all", help="examples per class")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-regimes", action="store_true")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    model, weights = args.source.split(":", 1)
    sizes = [None if s == "all" else int(s) for s in args.sizes.split(",")]
    results: dict = {"source": args.source, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                     "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        if not args.skip_timing:
            t = epoch_times(model, weights, tmp, args.rounds, args.epochs)
            results["epoch_time"] = t
            print(f"head training on Fashion-MNIST (60k images): cached features {t['cached_s_per_epoch']:.3f} "
                  f"s/epoch, frozen trunk every epoch {t['trunk_s_per_epoch']:.2f} s/epoch: "
                  f"{t['speedup']:.0f}x faster", flush=True)
        if not args.skip_regimes:
            results["regimes"] = regimes(model, weights, tmp, sizes, args.steps)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
