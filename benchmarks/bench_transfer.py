"""Transfer learning, measured: head training on cached features vs running the frozen trunk every epoch.

Epoch time of head training on cached features vs running the frozen trunk every epoch, the
same model, weights, data and batch size, interleaved (cached, trunk, cached, trunk...) so that
load from other processes falls on both alike. The one-time feature extraction is reported
separately. Goal: at least 20x faster per epoch.

    python benchmarks/bench_transfer.py --source resnet20:fashion-mnist --out runs/bench_transfer.json

``--source`` is MODEL:TAG for registered weights, or MODEL:PATH to a weights file. Which regime
to use by amount of data (scratch, frozen trunk + new head, fine-tune the last stage or all) is an
experiment: ``convnets experiment transfer --budget small --threads 1``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from convnets.training import TrainConfig, train


def epoch_rows(model: str, out: Path, **kw) -> list[dict]:
    """Train into ``out`` and return its per-epoch metrics."""
    train(TrainConfig(model=model, out=str(out), progress=False, device="cpu", **kw))
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def epoch_times(model: str, weights: str, tmp: Path, rounds: int, epochs: int) -> dict:
    """Median seconds per epoch, cached features vs the frozen trunk run every epoch."""
    times: dict[str, list[float]] = {"cached": [], "trunk": []}
    common = dict(data="fashion-mnist", weights=weights, freeze="all-but-head", epochs=epochs, batch_size=128,
                  cache_dir=str(tmp / "cache"), augment="none")
    for r in range(rounds):
        for name, cached in (("cached", True), ("trunk", False)):
            rows = epoch_rows(model, tmp / f"{name}{r}", cache_features=cached, **common)
            times[name] += [row["seconds"] for row in rows]
    cached, trunk = statistics.median(times["cached"]), statistics.median(times["trunk"])
    return {"cached_s_per_epoch": cached, "trunk_s_per_epoch": trunk, "speedup": trunk / cached,
            "epochs_measured": len(times["cached"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="resnet20:fashion-mnist", help="MODEL:TAG or MODEL:PATH")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the epoch-time comparison")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per timing run")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    model, weights = args.source.split(":", 1)
    results: dict = {"source": args.source, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                     "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp_dir:
        t = epoch_times(model, weights, Path(tmp_dir), args.rounds, args.epochs)
    results["epoch_time"] = t
    print(f"head training on Fashion-MNIST (60k images): cached features {t['cached_s_per_epoch']:.3f} s/epoch, "
          f"frozen trunk every epoch {t['trunk_s_per_epoch']:.2f} s/epoch: {t['speedup']:.0f}x faster", flush=True)
    print("regimes by amount of data: convnets experiment transfer --budget small --threads 1")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
