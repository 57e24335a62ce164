"""Eager inference against torchvision: the same networks with the same weights, side by side in one process.

For each model, torchvision's network with random weights is built, its state dict converted to our
layout (``convnets.weights.convert_state_dict``) and loaded into ours, the logits compared (they must
agree), then batch-1 and batch-8 inference timed in eval mode under ``torch.inference_mode``,
contiguous and channels-last, the sides interleaved round by round. Reported: the median over
rounds of convnets' time / torchvision's time (below 1: convnets is faster), and the same for a copy
of ours whose activations are not in place (what convnets did before 0.1.1's ``ConvBNAct``).

torchvision does not import beside the CPU build of torch the project pins; run this in an
environment that has both, e.g. (this workplace, x86_64):

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.14.1 torchvision==0.29.1 safetensors numpy \\
        pillow tqdm matplotlib scikit-learn
    PYTHONPATH=src /tmp/tv/bin/python benchmarks/bench_eager.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import torch

import convnets
from convnets.weights import convert_state_dict

# convnets name -> torchvision builder name
PAIRS = {"mobilenet_v2": "mobilenet_v2", "efficientnet_b0": "efficientnet_b0", "resnet50_torchvision": "resnet50"}


def cpu_name() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f" {f}" in info)
    return f"{name} ({flags})"


def pair(name: str, tv_name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    import torchvision

    torch.manual_seed(0)
    theirs = getattr(torchvision.models, tv_name)(weights=None).eval()
    for m in theirs.modules():  # non-trivial BatchNorm statistics, so a wrong eps or order shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    _, state = convert_state_dict(theirs.state_dict(), layout=f"torchvision:{tv_name}")
    ours = convnets.create_model(name).eval()
    ours.load_state_dict(state)
    return ours, theirs


def timed(model: torch.nn.Module, x: torch.Tensor, runs: int) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(runs):
            model(x)
    return (time.perf_counter() - start) / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import torchvision

    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}\n")
    print(f"{'model':<22} {'batch':>5} {'layout':<14} {'ours ms':>8} {'tv ms':>8} {'ours/tv':>8} "
          f"{'not in place/tv':>15} {'max |diff|':>10}")
    for name in args.models:
        ours, theirs = pair(name, PAIRS[name])
        copying = copy.deepcopy(ours)
        for m in copying.modules():
            if hasattr(m, "inplace"):
                m.inplace = False
        for batch in (1, 8):
            for layout in ("contiguous", "channels_last"):
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                ours, theirs, copying = (m.to(memory_format=fmt) for m in (ours, theirs, copying))
                x = torch.randn(batch, 3, 224, 224).to(memory_format=fmt)
                with torch.inference_mode():
                    diff = (ours(x) - theirs(x)).abs().max().item()
                runs = max(2, round(0.4 / max(timed(theirs, x, 1), 1e-4)))
                times: dict[str, list[float]] = {"ours": [], "tv": [], "copying": []}
                for r in range(args.rounds):
                    sides = [("ours", ours), ("tv", theirs), ("copying", copying)]
                    for side, model in sides if r % 2 == 0 else sides[::-1]:
                        times[side].append(timed(model, x, runs))
                ratio, before = (statistics.median(o / t for o, t in zip(times[side], times["tv"], strict=True))
                                 for side in ("ours", "copying"))
                print(f"{name:<22} {batch:>5} {layout:<14} {1000 * statistics.median(times['ours']):>8.2f} "
                      f"{1000 * statistics.median(times['tv']):>8.2f} {ratio:>7.2f}x {before:>14.2f}x {diff:>10.2e}",
                      flush=True)


if __name__ == "__main__":
    main()
