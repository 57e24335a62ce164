"""The GPU check: the training paths a CPU never runs, on the CUDA devices of this machine.

When a CUDA device is visible it runs, each as its own ``convnets train`` process:

1. the main job, ``convnets train lenet5`` (the README's first command) with the recipe's 8 epochs;
2. resnet20 for ``--epochs`` (3) epochs with bf16 autocast;
3. the same with ``--compile``, if ``convnets train --help`` offers it;
4. the same as 2 as a 2-process DistributedDataParallel run through torchrun, if two devices are visible;

and prints, per run: training images/s of the first epoch (warm-up, and compilation with ``--compile``)
and the median of the later ones, the final test accuracy, the wall time of the whole process, and GPU
utilisation and memory sampled by ``nvidia-smi`` every ``--interval`` seconds (or, without it,
``torch.cuda.utilization``, which needs pynvml). The figures and the machine (GPU names, driver,
torch and CUDA versions, CPU) go to ``benchmarks/results/gpu_check.json``.

Without a CUDA device it prints one line saying so and exits with status 0.

    python benchmarks/gpu_check.py                                  # Fashion-MNIST, a few minutes on one GPU
    python benchmarks/gpu_check.py --data digits --epochs 1         # offline and shortest
    python benchmarks/gpu_check.py --runs runs/gpu_check --out gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_check.json"
CONVNETS = [sys.executable, "-m", "convnets"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]  # torchrun, from this interpreter's environment


@dataclass
class Job:
    """One training run of the check: a name, its command line and its run directory."""

    name: str
    argv: list[str]
    out: Path
    processes: int = 1


def no_cuda_reason() -> str | None:
    """Why this process sees no CUDA device, or None when it sees one."""
    if torch.version.cuda is None:
        return f"this PyTorch build ({torch.__version__}) has no CUDA"
    if not torch.cuda.is_available():
        return f"no CUDA device is visible (PyTorch {torch.__version__}, CUDA {torch.version.cuda})"
    return None


def has_option(help_text: str, option: str) -> bool:
    """Whether ``option`` (``--compile``) is listed in a ``--help`` text, not merely a longer option beginning so."""
    return re.search(rf"{re.escape(option)}(?![\w-])", help_text) is not None


def compile_offered() -> bool:
    """Whether this checkout's ``convnets train`` takes ``--compile``."""
    help_text = subprocess.run([*CONVNETS, "train", "--help"], capture_output=True, text=True, check=True).stdout
    return has_option(help_text, "--compile")


def plan(devices: int, compile_option: bool, data: list[str], epochs: int, runs: Path) -> list[Job]:
    """The runs of the check for ``devices`` visible GPUs.

    Args:
        devices: How many CUDA devices are visible.
        compile_option: Whether ``convnets train`` takes ``--compile``.
        data: The ``--data`` (and ``--data-dir``) arguments every run gets.
        epochs: resnet20's epochs.
        runs: Where the run directories go.
    """
    train = ["train", *data, "--no-progress"]
    resnet = ["resnet20", "--epochs", str(epochs), "--precision", "bf16"]
    jobs = [Job("main job: lenet5", [*CONVNETS, *train, "lenet5", "--out", str(runs / "lenet5")], runs / "lenet5"),
            Job("resnet20 bf16", [*CONVNETS, *train, *resnet, "--out", str(runs / "resnet20-bf16")],
                runs / "resnet20-bf16")]
    if compile_option:
        out = runs / "resnet20-bf16-compile"
        jobs.append(Job("resnet20 bf16 --compile", [*CONVNETS, *train, *resnet, "--compile", "--out", str(out)], out))
    if devices >= 2:
        out = runs / "resnet20-bf16-ddp2"
        jobs.append(Job("resnet20 bf16 DDP x2",
                        [*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "convnets", *train, *resnet,
                         "--out", str(out)], out, processes=2))
    return jobs


def smi(*query: str) -> list[str]:
    """An ``nvidia-smi`` command line for ``query``, limited to the GPUs ``CUDA_VISIBLE_DEVICES`` names by index.

    nvidia-smi lists every GPU of the machine whatever ``CUDA_VISIBLE_DEVICES`` says; PyTorch, and so the
    runs, see only those. (Visible devices given by UUID are not mapped: then every GPU is listed.)
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [f"--id={visible}"] if re.fullmatch(r"\d+(,\d+)*", visible) else []
    return ["nvidia-smi", *ids, *query]


def parse_smi(text: str) -> list[tuple[float | None, float | None]]:
    """``nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits`` as
    (utilisation %, memory MiB) per GPU; a field the driver does not report ("[N/A]") is None."""

    def value(field: str) -> float | None:
        try:
            return float(field)
        except ValueError:
            return None

    rows = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and any(value(f) is not None for f in fields):
            rows.append((value(fields[0]), value(fields[1])))
    return rows


class Sampler:
    """Samples every GPU's utilisation and memory in a background thread while a run goes on."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: list[list[tuple[float | None, float | None]]] = []
        self.source = "nvidia-smi" if shutil.which("nvidia-smi") else "torch.cuda.utilization"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def read(self) -> list[tuple[float | None, float | None]]:
        """One sample: (utilisation %, memory MiB) per GPU; empty when nothing can read them."""
        if self.source == "nvidia-smi":
            try:
                done = subprocess.run(smi("--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"),
                                      capture_output=True, text=True, timeout=10)
            except subprocess.TimeoutExpired:  # a hung driver query: this sample is missing, the next may come
                return []
            return parse_smi(done.stdout) if done.returncode == 0 else []
        try:  # needs pynvml; a missing one (or a driver it cannot read) leaves the figures out
            return [(float(torch.cuda.utilization(i)), None) for i in range(torch.cuda.device_count())]
        except (ModuleNotFoundError, RuntimeError):
            return []

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            sample = self.read()
            if sample:
                self.samples.append(sample)


def epochs_of(out: Path) -> list[dict[str, Any]]:
    """The per-epoch rows of a run's ``metrics.jsonl`` (none if the run wrote none)."""
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def summarise(rows: list[dict[str, Any]], samples: list[list[tuple[float | None, float | None]]],
              processes: int) -> dict[str, Any]:
    """A run's figures: images/s of the first epoch and the median of the others, accuracy, GPU use.

    GPU figures cover the first ``processes`` GPUs (the ones the run used: torchrun gives rank r GPU r).
    """
    speeds = [r["images_per_s"] for r in rows if r.get("images_per_s") is not None]
    used = [gpu for sample in samples for gpu in sample[:processes]]
    utilisation = [u for u, _ in used if u is not None]
    memory = [m for _, m in used if m is not None]
    return {
        "epochs": len(rows),
        "images_per_s_first_epoch": speeds[0] if speeds else None,
        "images_per_s_later_epochs": statistics.median(speeds[1:]) if len(speeds) > 1 else None,
        "test_acc": rows[-1].get("test_acc") if rows else None,
        "train_seconds": round(sum(r.get("seconds", 0.0) for r in rows), 2),
        "gpu_utilisation_mean": round(statistics.mean(utilisation), 1) if utilisation else None,
        "gpu_utilisation_max": max(utilisation) if utilisation else None,
        "gpu_memory_max_mib": max(memory) if memory else None,
        "gpu_samples": len(samples),
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on.

    GPU names come from nvidia-smi where it exists: asking PyTorch would start CUDA in this process, whose
    memory would then count in every run's figures.
    """
    gpus = subprocess.run(smi("--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"),
                          capture_output=True, text=True) if shutil.which("nvidia-smi") else None
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True) if shutil.which("lscpu") else None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "gpus": (gpus.stdout.strip().splitlines() if gpus and gpus.returncode == 0
                 else [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_bf16": sorted(set(re.findall(r"avx512_bf16|amx_bf16", lscpu.stdout))) if lscpu else None,
    }


def show(value: Any, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="fashion-mnist", help="the --data of every run (default fashion-mnist)")
    parser.add_argument("--data-dir", help="the --data-dir of every run")
    parser.add_argument("--epochs", type=int, default=3, help="resnet20's epochs (default 3)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between GPU samples (default 0.5)")
    parser.add_argument("--runs", type=Path, help="keep the run directories here (default: a temporary directory)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"the JSON results (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.interval <= 0:
        parser.error("--epochs must be >= 1 and --interval > 0")

    why = no_cuda_reason()
    if why is not None:
        print(f"gpu_check: {why}; nothing to check here (exit 0)")
        return 0

    data = ["--data", args.data] + (["--data-dir", args.data_dir] if args.data_dir else [])
    runs = args.runs or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    jobs = plan(torch.cuda.device_count(), compile_offered(), data, args.epochs, runs)
    results: dict[str, Any] = {"machine": machine(), "runs": []}
    print(json.dumps(results["machine"]), flush=True)
    failed = 0
    for job in jobs:
        print(f"\n== {job.name}: {' '.join(job.argv)}", flush=True)
        job.out.parent.mkdir(parents=True, exist_ok=True)
        log = job.out.parent / f"{job.out.name}.log"
        start = time.perf_counter()
        with Sampler(args.interval) as sampler, open(log, "w") as output:
            done = subprocess.run(job.argv, stdout=output, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
        record = {"name": job.name, "command": job.argv, "returncode": done.returncode,
                  "wall_seconds": round(wall, 1), "gpu_sampler": sampler.source,
                  **summarise(epochs_of(job.out), sampler.samples, job.processes)}
        results["runs"].append(record)
        if done.returncode != 0:
            failed += 1
            print(f"FAILED (exit {done.returncode}); the last lines of {log}:\n"
                  + "\n".join(log.read_text().splitlines()[-15:]), flush=True)
        print(f"{record['epochs']} epochs in {wall:.1f} s: images/s first epoch "
              f"{show(record['images_per_s_first_epoch'])}, later {show(record['images_per_s_later_epochs'])}; "
              f"test acc {show(record['test_acc'], '.4f')}; GPU {show(record['gpu_utilisation_mean'], '.0f')}% "
              f"mean, {show(record['gpu_utilisation_max'], '.0f')}% max, "
              f"{show(record['gpu_memory_max_mib'])} MiB max ({sampler.source})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}; run directories in {runs}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
