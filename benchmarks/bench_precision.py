"""Training speed by precision, per family: fp32 against bf16 autocast and against what ``--precision auto`` does.

On a CPU with native bf16 (AVX512-BF16 / AMX) bf16 autocast speeds up dense convolutions, but
oneDNN's bf16 depthwise convolutions are many times slower than fp32 ones (stride 2 most of all).
convnets therefore computes depthwise convolutions in fp32 under CPU autocast
(``convnets.layers.DepthwiseConv2d``). This measures, for one model of every family, training steps
(forward, cross-entropy, backward, SGD step; channels-last, as the trainer runs) in:

- ``fp32``: no autocast;
- ``bf16-all``: bf16 autocast with the depthwise convolutions in bf16 too (what autocast does alone);
- ``auto``: what ``--precision auto`` does on this machine (bf16 autocast where the CPU has native
  bf16, with depthwise convolutions kept in fp32; fp32 elsewhere).

Sides are interleaved round by round (A, B, C, C, B, A, ...) so that load from other processes
falls on all of them; each ratio is the median over rounds of per-round ratios.

    python benchmarks/bench_precision.py                 # every family, 5 rounds (about 3 minutes)
    python benchmarks/bench_precision.py --models mobilenet_v2 resnet20 --rounds 9
    python benchmarks/bench_precision.py --depthwise     # also the single stride-2 depthwise layer
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import convnets
from convnets import layers
from convnets.training.loop import autocast_dtype, cpu_has_native_bf16

# One model per family at a CIFAR-like size (small_input: the same parameters, a stride-1 stem).
MODELS: dict[str, dict] = {
    "lenet5": dict(input=(1, 32, 32)),
    "resnet20": dict(input=(1, 28, 28)),
    "resnet18": dict(input=(3, 32, 32), small_input=True),
    "vgg11_bn": dict(input=(3, 32, 32)),
    "googlenet_torchvision": dict(input=(3, 32, 32), small_input=True),
    "nin": dict(input=(3, 32, 32)),
    "mobilenet_v1": dict(input=(3, 32, 32), small_input=True, width=0.5),
    "mobilenet_v2": dict(input=(3, 32, 32), small_input=True, width=0.5),
    "efficientnet_b0": dict(input=(3, 32, 32), small_input=True),
}


def cpu() -> tuple[str, str]:
    """The CPU's model name and which of the vector extensions that matter here it has."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), "?"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return name, ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f" {f}" in info)


def set_depthwise_fp32(model: torch.nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, layers.DepthwiseConv2d):
            m.fp32_under_autocast = on


def step_fn(name: str, spec: dict, batch: int, mode: str) -> Callable[[], None]:
    """One training step of ``name`` in ``mode`` (fp32, bf16-all, auto) on fixed random data."""
    kwargs = {k: v for k, v in spec.items() if k != "input"}
    torch.manual_seed(0)
    model = convnets.create_model(name, num_classes=10, in_chans=spec["input"][0], **kwargs)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    # bf16-all: autocast as PyTorch does it alone, depthwise convolutions in bf16 too.
    set_depthwise_fp32(model, mode != "bf16-all")
    x = torch.randn(batch, *spec["input"]).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    dtype = {"fp32": None, "bf16-all": torch.bfloat16, "auto": autocast_dtype("auto", torch.device("cpu"))}[mode]

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext():
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def images_per_second(step: Callable[[], None], batch: int, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def compare(name: str, spec: dict, batch: int, seconds: float, rounds: int) -> dict:
    modes = ("fp32", "bf16-all", "auto")
    steps_of = {m: step_fn(name, spec, batch, m) for m in modes}
    for m in modes:  # warm-up: oneDNN builds its kernels on first use
        steps_of[m]()
        steps_of[m]()
    # Enough steps per timed round that a small model's round is not lost in the timer's and the OS's noise.
    steps = max(2, math.ceil(seconds * images_per_second(steps_of["fp32"], batch, 2) / batch))
    speed: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(rounds):
        for m in modes if r % 2 == 0 else reversed(modes):
            speed[m].append(images_per_second(steps_of[m], batch, steps))
    per_round = {m: [s / f for s, f in zip(speed[m], speed["fp32"], strict=True)] for m in modes[1:]}
    ratio = {m: statistics.median(r) for m, r in per_round.items()}
    # The spread of the per-round ratios says whether a median near 1 is a difference or noise.
    return {"model": name, "fp32_images_per_s": round(statistics.median(speed["fp32"]), 1),
            "bf16_all_vs_fp32": round(ratio["bf16-all"], 3), "auto_vs_fp32": round(ratio["auto"], 3),
            "auto_vs_fp32_range": [round(min(per_round["auto"]), 3), round(max(per_round["auto"]), 3)]}


def depthwise_layer(rounds: int) -> dict:
    """The single layer of the issue: a stride-2 depthwise 3x3, 96 channels, 16x16, batch 64, forward+backward."""
    conv = layers.ConvBNAct(96, 96, 3, 2, groups=96)
    x = torch.randn(64, 96, 16, 16).to(memory_format=torch.channels_last).requires_grad_()

    def run(mode: str) -> float:
        set_depthwise_fp32(conv, mode == "auto")
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode != "fp32"):
            y = conv(x)
        y.float().sum().backward()
        return (time.perf_counter() - start) * 1000

    for m in ("fp32", "bf16-all", "auto"):
        run(m)
    ms = {m: statistics.median(run(m) for _ in range(rounds * 4)) for m in ("fp32", "bf16-all", "auto")}
    return {k: round(v, 2) for k, v in ms.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=0.5, help="length of one timed round of one side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--depthwise", action="store_true", help="also time the single depthwise layer")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name, flags = cpu()
    machine = {"cpu": name, "flags": flags,
               "native_bf16": cpu_has_native_bf16(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(f"machine: {machine}")
    print(f"--precision auto here: {autocast_dtype('auto', torch.device('cpu'))}\n")
    rows = []
    print(f"{'model':<24} {'fp32 images/s':>13} {'bf16-all / fp32':>15} {'auto / fp32':>11} {'(rounds)':>13}")
    for name in args.models:
        row = compare(name, MODELS[name], args.batch, args.seconds, args.rounds)
        rows.append(row)
        low, high = row["auto_vs_fp32_range"]
        print(f"{name:<24} {row['fp32_images_per_s']:>13,.0f} {row['bf16_all_vs_fp32']:>14.2f}x "
              f"{row['auto_vs_fp32']:>10.2f}x {f'{low:.2f}-{high:.2f}x':>13}", flush=True)
    result = {"machine": machine, "batch": args.batch, "rounds": args.rounds, "rows": rows}
    if args.depthwise:
        result["depthwise_stride2_ms"] = depthwise_layer(args.rounds)
        print(f"\nstride-2 depthwise 3x3 forward+backward, ms: {result['depthwise_stride2_ms']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
