"""Evaluation speed: ``convnets evaluate`` against a plain PyTorch loop, and what its data loading costs.

Four measurements, each side by side in one process (or, for the command, one shell), the sides
interleaved round by round so that load from other processes falls on all of them; reported as
medians over rounds of the per-round ratios.

1. loading: ``load_dataset("fashion-mnist", splits=("test",))`` against loading both splits (what
   evaluate did before it asked for the test split only);
2. the loop: evaluate's pass over the test split (``member_probabilities``: loader, normalisation,
   softmax, bookkeeping) against a plain loop over the same uint8 test tensors with the same model
   (normalise, forward, softmax), in images/s, with the model contiguous and channels-last;
3. image folders: evaluate's end-to-end images/s decoding a folder of JPEGs in the main process
   against decoding with DataLoader workers;
4. the command: wall time of ``convnets evaluate`` on the shipped resnet20 Fashion-MNIST weights,
   this checkout against another (``--before-src``, e.g. a checkout of main, run with the same Python).

    PYTHONPATH=src python benchmarks/bench_evaluate.py --threads 2
    PYTHONPATH=src python benchmarks/bench_evaluate.py --threads 2 --before-src /path/to/main/src

Results go to ``benchmarks/results/evaluate.json`` with the CPU and its flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import convnets
from convnets.data.datasets import load_dataset
from convnets.evaluate import Member, load_member, member_probabilities

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "src" / "convnets" / "pretrained" / "resnet20-fashion-mnist.safetensors"
RESULTS = ROOT / "benchmarks" / "results" / "evaluate.json"


def cpu() -> dict[str, str]:
    """The CPU's name and the flags that decide which kernels run (``lscpu | grep -o 'avx512_bf16\\|amx_bf16'``)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"name": platform.processor() or platform.machine(), "flags": ""}
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in info)
    return {"name": name, "flags": flags, "cores": str(os.cpu_count()), "load_average": " ".join(
        f"{x:.1f}" for x in os.getloadavg())}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(sides: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each side's value per round (a time, or images/s), the sides run in turn within every round."""
    out: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            out[name].append(fn())
    return out


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


@torch.no_grad()
def plain_loop(model: torch.nn.Module, images: torch.Tensor, mean: tuple, std: tuple, batch_size: int,
               channels_last: bool) -> float:
    """Images/s of the loop a user would write: normalise a uint8 batch, forward, softmax."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        x = ((images[i : i + batch_size].float() / 255 - m) / s).contiguous(memory_format=memory_format)
        F.softmax(model(x), dim=1)
    return len(images) / (time.perf_counter() - start)


def evaluate_loop(member: Member, dataset, batch_size: int, channels_last: bool, num_workers: int | None = None
                  ) -> float:
    """Images/s of evaluate's own pass over the test split, end to end."""
    _, labels, _, total, _ = member_probabilities(member, dataset, views="none", batch_size=batch_size,
                                                  device=torch.device("cpu"), channels_last=channels_last,
                                                  num_workers=num_workers)
    return len(labels) / total


def loop_section(rounds: int, batch_size: int, images: int) -> dict:
    member = load_member(WEIGHTS)
    c, h, w = member.input_size
    dataset = load_dataset("fashion-mnist", image_size=(h, w), channels=c, splits=("test",))
    test = dataset.test.subset(torch.arange(images))  # a fixed subset keeps a round short on a loaded machine
    dataset = dataclasses.replace(dataset, test=test)
    sides = {
        "plain contiguous": lambda: plain_loop(member.model, test.images, member.mean, member.std, batch_size, False),
        "plain channels-last": lambda: plain_loop(member.model, test.images, member.mean, member.std, batch_size,
                                                  True),
        "evaluate contiguous": lambda: evaluate_loop(member, dataset, batch_size, False),
        "evaluate channels-last": lambda: evaluate_loop(member, dataset, batch_size, True),
    }
    sides["plain contiguous"]()  # warm-up: oneDNN primitives of both formats
    sides["plain channels-last"]()
    rates = interleaved(sides, rounds)
    return {
        "model": "resnet20 (shipped Fashion-MNIST weights)", "images": images, "batch_size": batch_size,
        "images_per_second_median": {k: statistics.median(v) for k, v in rates.items()},
        "evaluate_channels_last / plain_contiguous": median_ratio(rates["evaluate channels-last"],
                                                                  rates["plain contiguous"]),
        "evaluate_channels_last / plain_channels_last": median_ratio(rates["evaluate channels-last"],
                                                                     rates["plain channels-last"]),
        "evaluate_channels_last / evaluate_contiguous": median_ratio(rates["evaluate channels-last"],
                                                                     rates["evaluate contiguous"]),
        "plain_channels_last / plain_contiguous": median_ratio(rates["plain channels-last"],
                                                               rates["plain contiguous"]),
    }


def loading_section(rounds: int) -> dict:
    """What evaluate loads for the shipped resnet20 (1x28x28): both splits before, the test split now."""
    sides = {
        "both splits": lambda: timed(lambda: load_dataset("fashion-mnist", image_size=(28, 28), channels=1)),
        "test split": lambda: timed(lambda: load_dataset("fashion-mnist", image_size=(28, 28), channels=1,
                                                         splits=("test",))),
    }
    times = interleaved(sides, rounds)
    return {"seconds_median": {k: statistics.median(v) for k, v in times.items()},
            "both / test_only (time)": median_ratio(times["both splits"], times["test split"])}


def folder_section(rounds: int, batch_size: int, workers: int) -> dict:
    """A folder of 64x64 JPEG crops of scikit-learn's sample photos, a randomly initialised 3-channel resnet20."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    photos = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for split in ("train", "val"):
            for label in ("china", "flower"):
                folder = Path(tmp, split, label)
                folder.mkdir(parents=True)
                photo = photos[label == "flower"]
                for i in range(128 if split == "val" else 2):
                    y, x = rng.integers(0, photo.shape[0] - 160), rng.integers(0, photo.shape[1] - 160)
                    Image.fromarray(photo[y : y + 160, x : x + 160]).save(folder / f"{i}.jpg", quality=90)
        dataset = load_dataset(tmp, image_size=64, splits=("test",))
        model = convnets.create_model("resnet20", num_classes=2, in_chans=3).eval()
        member = Member("resnet20", model, ["china", "flower"], (3, 64, 64), (0.5,) * 3, (0.25,) * 3, tmp)
        sides = {
            "main process": lambda: evaluate_loop(member, dataset, batch_size, True, num_workers=0),
            f"{workers} workers": lambda: evaluate_loop(member, dataset, batch_size, True, num_workers=workers),
        }
        rates = interleaved(sides, rounds)
    return {"images": len(dataset.test), "image_size": 64, "batch_size": batch_size,
            "images_per_second_median": {k: statistics.median(v) for k, v in rates.items()},
            "workers / main_process (images/s)": median_ratio(rates[f"{workers} workers"], rates["main process"])}


def command_section(rounds: int, before_src: str | None, threads: int) -> dict:
    out_dir = tempfile.mkdtemp()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}

    def run(src: str) -> float:
        argv = [sys.executable, "-m", "convnets", "evaluate", str(WEIGHTS), "--out", out_dir]
        return timed(lambda: subprocess.run(argv, check=True, stdout=subprocess.DEVNULL,
                                            env={**env, "PYTHONPATH": src}))

    sides = {"this checkout": lambda: run(str(ROOT / "src"))}
    if before_src:
        sides["before"] = lambda: run(before_src)
    times = interleaved(sides, rounds)
    result: dict = {"command": f"convnets evaluate {WEIGHTS.relative_to(ROOT)}",
                    "seconds_median": {k: statistics.median(v) for k, v in times.items()}}
    if before_src:
        result["before_src"] = before_src
        result["before / this (wall time)"] = median_ratio(times["before"], times["this checkout"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=2048, help="test images per round of the loop comparison")
    parser.add_argument("--workers", type=int, default=2, help="decoding workers of the folder comparison")
    parser.add_argument("--before-src", help="the src/ of another checkout, for the command's before/after")
    parser.add_argument("--only", choices=("loading", "loop", "folder", "command"), action="append")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sections = args.only or ["loading", "loop", "folder", "command"]
    results: dict = {"cpu": cpu(), "torch": torch.__version__, "threads": args.threads, "rounds": args.rounds}
    if "loading" in sections:
        results["loading"] = loading_section(args.rounds)
        print("loading:", json.dumps(results["loading"]))
    if "loop" in sections:
        results["loop"] = loop_section(args.rounds, args.batch_size, args.images)
        print("loop:", json.dumps(results["loop"]))
    if "folder" in sections:
        results["folder"] = folder_section(args.rounds, 64, args.workers)
        print("folder:", json.dumps(results["folder"]))
    if "command" in sections:
        results["command"] = command_section(args.rounds, args.before_src, args.threads)
        print("command:", json.dumps(results["command"]))
    results["cpu"]["load_average_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
