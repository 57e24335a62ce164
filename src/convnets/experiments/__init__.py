"""The case studies' claims as runnable experiments: ``convnets experiment NAME|all [--budget] [--seeds] [--out]``.

Each experiment writes a figure (PNG), its raw results (JSON) and a short markdown table to its
output directory, and states the claim it tests. A training experiment plans its runs as arms x
seeds (:class:`Run`), prints the plan with an estimate timed on each arm's first steps, trains them
under one progress bar (:meth:`Setting.run_all`; finished runs are read back, interrupted ones
resume), and states its verdict by the rule of :mod:`convnets.experiments.stats` from paired
differences over seeds. ``small`` budgets are for a CPU; ``full`` is the paper-scale setting.
Whatever comes out is reported: a claim that does not reproduce at a small budget is a finding.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from convnets.device import check_threads
from convnets.errors import ConfigError, ConfigMismatchError, RunDirectoryError
from convnets.weights.io import check_writable

BUDGETS = ("tiny", "small", "full")  # tiny: a seconds-long smoke run for the test suite
MODULES = ("costs", "degradation", "architecture", "practice", "classic")  # each registers its experiments


@dataclass
class Trained:
    """One finished training run of an experiment: its per-epoch metrics and where its weights are."""

    name: str
    out: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    test_accuracy: float
    seconds: float
    steps: int

    def model(self) -> nn.Module:
        """The trained network (CPU, eval mode), rebuilt from its config and last weights."""
        from convnets.weights import load_weights

        return load_weights(self.out / "last.safetensors").eval()


DEFAULT_SEEDS = 3  # every arm of a training experiment runs at least this many seeds (--seeds)
PROBE_STEPS = {"tiny": 1, "small": 20, "full": 50}  # steps of each arm timed before the plan's estimate


@dataclass(frozen=True)
class Run:
    """One training run an experiment plans: one arm of a comparison at one seed.

    The seed sets the initialisation, the training subset, the data order and the augmentation
    draws (``TrainConfig.seed``), so two arms at the same seed see the same images in the same
    order: their difference is a paired measurement (see :mod:`convnets.experiments.stats`).
    """

    arm: str
    seed: int
    model: str
    config: dict[str, Any]
    # The network when it is not the registered ``model``: a builder that ``convnets.train(config,
    # model=builder)`` calls with the data's classes and channels and ``config["model_kwargs"]``;
    # ``model`` then only names the run (its recipe is the one whose pattern matches the name).
    builder: Callable[..., nn.Module] | None = None

    @property
    def name(self) -> str:
        return f"{self.arm}-s{self.seed}"


@dataclass
class Setting:
    """Where and how an experiment runs: its budget, output directory, data, CPU threads and seeds."""

    budget: str
    out: Path
    data: str = "fashion-mnist"
    data_dir: str | None = None
    threads: int | None = None
    seeds: int = DEFAULT_SEEDS
    progress: bool = True

    def pick(self, tiny: Any, small: Any, full: Any) -> Any:
        """The value for this budget."""
        return {"tiny": tiny, "small": small, "full": full}[self.budget]

    @property
    def seed_list(self) -> tuple[int, ...]:
        return tuple(range(self.seeds))

    def _request(self, name: str, model: str, config: dict[str, Any]) -> dict[str, Any]:
        """The full TrainConfig (as a dict) of the run ``name``: what its record must match to be reused."""
        from convnets.training import TrainConfig

        out = self.out / "runs" / name
        return TrainConfig(**{"data": self.data, "data_dir": self.data_dir, "threads": self.threads,
                              "progress": False, **config, "model": model, "out": str(out)}).to_dict()

    def finished(self, name: str, model: str, **config: Any) -> Trained | None:
        """The run ``name`` read back when it finished with this configuration, else None."""
        request = self._request(name, model, config)
        out = Path(request["out"])
        saved = _read_record(out / "trained.json")
        if saved is None or _with_defaults(saved["request"]) != request:
            return None
        return Trained(name, out, saved["config"], saved["rows"], saved["test_accuracy"], saved["seconds"],
                       saved["steps"])

    def train(self, name: str, model: str, builder: Callable[..., nn.Module] | None = None, **config: Any) -> Trained:
        """Train ``model`` into ``out/runs/name`` with :func:`convnets.train`.

        A run already finished with the same configuration is read back instead of trained again,
        and one that was interrupted resumes from its checkpoint, so re-running an experiment after
        a stop only does the work that is left.
        """
        from convnets.training import TrainConfig, train
        from convnets.training.report import write_text

        done = self.finished(name, model, **config)
        if done is not None:
            return done
        config = self._request(name, model, config)
        out = Path(config["out"])
        resume = _started(out)
        try:
            result = train(TrainConfig(**{**config, "resume": resume}), model=builder)
        except RunDirectoryError as err:
            if not resume:
                raise
            # The user's way out of a damaged interrupted run, which the experiment would otherwise hit every time.
            raise RunDirectoryError(f"{err}; to train {name} again from its start, remove {out}") from err
        resolved = json.loads((out / "config.json").read_text())
        metrics = out / "metrics.jsonl"  # absent when max_steps ends the run inside its first epoch
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line] if metrics.exists() else []
        record = {"request": config, "config": resolved, "rows": rows, "test_accuracy": result.test_accuracy,
                  "seconds": result.seconds, "steps": result.steps}
        write_text(out / "trained.json", json.dumps(record, indent=1) + "\n")
        return Trained(name, out, resolved, rows, result.test_accuracy, result.seconds, result.steps)

    def probe(self, run: Run, steps: int) -> tuple[float, float]:
        """Train the first ``steps`` steps of ``run`` (kept: the run later resumes from them).

        Returns:
            The seconds per step the training loop measured, and the seconds of everything else in the
            call (reading the data, building the model), which every run pays once.
        """
        from convnets.training import TrainConfig, train

        config = self._request(run.name, run.model, run.config)
        start = time.perf_counter()
        result = train(TrainConfig(**{**config, "max_steps": steps, "resume": _started(Path(config["out"]))}),
                       model=run.builder)
        wall = time.perf_counter() - start
        return result.seconds / max(result.steps, 1), max(0.0, wall - result.seconds)

    def run_all(self, runs: Sequence[Run], title: str) -> dict[tuple[str, int], Trained]:
        """Train every run of an experiment, after printing the plan and its estimated time.

        The estimate times the first steps of each arm (:data:`PROBE_STEPS`; those steps are kept, the
        run resumes from them) and multiplies by the steps planned; a progress bar then follows the
        whole experiment. Finished runs are read back, interrupted ones resume (see :meth:`train`).

        Returns:
            ``{(arm, seed): Trained}``.
        """
        names = [r.name for r in runs]
        if len(set(names)) != len(names):
            raise ConfigError(f"{title}: runs planned twice: {sorted({n for n in names if names.count(n) > 1})}")
        plan = self.plan(runs, title)
        from tqdm import tqdm

        results = {}
        with tqdm(total=plan["steps"], unit="step", desc=title, disable=not self.progress, smoothing=0.05) as bar:
            bar.update(plan["steps_done"])
            for run in runs:
                bar.set_postfix_str(run.name)
                was_done = self.finished(run.name, run.model, **run.config) is not None
                trained = self.train(run.name, run.model, run.builder, **run.config)
                results[run.arm, run.seed] = trained
                if not was_done:
                    bar.update(plan["by_run"][run.name])
        return results

    def plan(self, runs: Sequence[Run], title: str) -> dict[str, Any]:
        """Print the planned runs, their steps and the time they are estimated to take; write ``plan.json``."""
        from convnets.training.report import write_text

        steps = {r.name: self.planned_steps(r) for r in runs}
        done = {r.name for r in runs if self.finished(r.name, r.model, **r.config) is not None}
        arms: dict[str, list[Run]] = {}
        for r in runs:
            arms.setdefault(r.arm, []).append(r)
        todo = sum(steps[n] for n in steps if n not in done)
        seeds = len({r.seed for r in runs})
        header = (f"{title} --budget {self.budget}: {len(arms)} arm(s) x {seeds} seed(s) = {len(runs)} runs, "
                  f"{sum(steps.values()):,} steps ({todo:,} to train); {machine_line()}")
        print(header, flush=True)
        per_step: dict[str, tuple[float, float]] = {}
        for arm, members in arms.items():
            todo_arm = [r for r in members if r.name not in done]
            if not todo_arm:
                continue
            first = todo_arm[0]
            probe = min(PROBE_STEPS[self.budget], steps[first.name] - 1)
            if probe >= 1:
                per_step[arm] = self.probe(first, probe)
        rows, total = [], 0.0
        for arm, members in arms.items():
            left = sum(steps[r.name] for r in members if r.name not in done)
            rate, setup = per_step.get(arm, (0.0, 0.0))
            seconds = left * rate + setup * sum(r.name not in done for r in members)
            total += seconds
            rows.append({"arm": arm, "model": members[0].model, "runs": len(members),
                         "steps_per_run": steps[members[0].name], "steps_left": left,
                         "seconds_per_step": rate or None, "setup_s": setup, "estimate_s": seconds})
        width = max(len(a) for a in arms)
        for row in rows:
            rate = f"{row['seconds_per_step']:.3f} s/step" if row["seconds_per_step"] else "done or too short to time"
            print(f"  {row['arm']:<{width}}  {row['runs']} x {row['steps_per_run']:,} steps  {rate}  "
                  f"~{row['estimate_s'] / 60:.1f} min", flush=True)
        print(f"  estimated {total / 60:.1f} min: measured steps and set-up; the evaluation after each epoch comes "
              "on top", flush=True)
        record = {"title": title, "budget": self.budget, "seeds": self.seeds, "runs": len(runs),
                  "steps": sum(steps.values()), "estimate_s": total, "arms": rows, "machine": machine()}
        write_text(self.out / f"plan-{_slug(title)}.json", json.dumps(record, indent=1) + "\n")
        return {"steps": sum(steps.values()), "steps_done": sum(steps[n] for n in done), "by_run": steps,
                "estimate_s": total, "arms": rows}

    def planned_steps(self, run: Run) -> int:
        """The optimizer steps ``run`` takes: epochs x (training images // batch), or its ``max_steps``."""
        from convnets.training import TrainConfig
        from convnets.training.config import model_source, resolve
        from convnets.training.loop import fit_batch

        cfg = resolve(TrainConfig(**self._request(run.name, run.model, run.config)),
                      model_source(run.model, run.builder))
        images = _training_images(cfg.data, cfg.data_dir, cfg.train_per_class)
        steps = cfg.epochs * (images // fit_batch(cfg.batch_size, images))
        return min(steps, cfg.max_steps) if cfg.max_steps else steps


def _with_defaults(request: dict[str, Any]) -> dict[str, Any]:
    """A saved run's request with the TrainConfig fields added since it was saved at their defaults: a new
    option that the run did not use does not make it a different run."""
    from convnets.training import TrainConfig

    # Made by TrainConfig itself, so that a field with a default_factory (model_kwargs) has its default too.
    defaults = TrainConfig(model="x").to_dict()  # model is in every request
    return {**{k: v for k, v in defaults.items() if k not in request}, **request}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text)


def _started(out: Path) -> bool:
    """Whether ``out`` holds an interrupted run to resume (a checkpoint and its config)."""
    from convnets.training.loop import STATE_FILE

    return (out / STATE_FILE).exists() and (out / "config.json").exists()


@functools.lru_cache(maxsize=32)
def _training_images(data: str, data_dir: str | None, per_class: int | None) -> int:
    """How many training images a run on ``data`` with ``per_class`` per class sees (the count is the same for
    every seed)."""
    from convnets.data.datasets import load_dataset, subsample_per_class

    dataset = load_dataset(data, data_dir=data_dir)
    return len((subsample_per_class(dataset, per_class) if per_class else dataset).train)


def machine() -> dict[str, Any]:
    """The machine an experiment ran on: CPU model and its bf16/AVX-512 flags, threads, torch, GPU."""
    import torch

    from convnets.training.loop import cpu_has_native_bf16

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and cpu in ("", platform.machine(), platform.processor()):
            cpu = value.strip()
        if key.strip() == "flags" and not flags:
            flags = set(value.split())
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "flags": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags],
            "native_bf16": cpu_has_native_bf16(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def machine_line(m: dict[str, Any] | None = None) -> str:
    """The machine in one line, for plans, tables and docs/RESULTS.md."""
    m = m or machine()
    flags = ", ".join(m["flags"]) or "no AVX2/AVX-512"
    bf16 = "bf16 autocast by default" if m["native_bf16"] else "fp32 (no native bf16)"
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return f"{m['cpu']} ({m['cores']} cores; {flags}; {bf16}), {m['threads']} thread(s), torch {m['torch']}{gpu}"


def _read_record(path: Path) -> dict[str, Any] | None:
    """The record of a finished training run (``trained.json``), or None when absent or unreadable (then the
    run is resumed or trained again, and the record rewritten)."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as err:
        print(f"{path}: damaged ({err}); the run is checked again and the record rewritten", flush=True)
        return None
    types = {"request": dict, "config": dict, "rows": list, "test_accuracy": float | int, "seconds": float | int,
             "steps": int}
    if not (isinstance(record, dict) and all(isinstance(record.get(k), t) and not isinstance(record[k], bool)
                                             for k, t in types.items())
            and math.isfinite(record["seconds"])):
        print(f"{path}: damaged (a field missing or of the wrong type); the run is checked again and the record "
              "rewritten", flush=True)
        return None
    return record


@dataclass
class Result:
    """What an experiment found: the claim, a markdown table, raw numbers, the figure and the verdicts.

    ``verdicts`` holds one entry per claimed comparison: ``{"claim", "verdict", "difference"}`` with the
    paired 95% interval (:mod:`convnets.experiments.stats`) in the unit its ``unit`` names; cost-only
    experiments have exact counts and no verdict from seeds.
    """

    name: str
    claim: str
    table: str
    data: dict[str, Any]
    figure: Path | None = None
    notes: list[str] = field(default_factory=list)
    out: Path | None = None
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    seconds: float | None = None
    total_seconds: float | None = None  # over every invocation on its directory (see WALL_FILE)
    machine: dict[str, Any] | None = None

    @property
    def verdict(self) -> str | None:
        """The experiment's verdict from its comparisons (see :func:`~convnets.experiments.stats.overall`)."""
        from convnets.experiments.stats import overall

        return overall([v["verdict"] for v in self.verdicts]) if self.verdicts else None

    def verdict_lines(self) -> list[str]:
        from convnets.experiments.stats import Interval

        lines = []
        for v in self.verdicts:
            diff = Interval(**v["difference"])
            lines.append(f"**{v['verdict']}**: {v['claim']}: {diff.format(v.get('scale', 100))} "
                         f"{v.get('unit', 'points')} (paired 95% interval over {diff.n} seed(s))")
        return lines

    def write(self, out: Path, budget: str) -> None:
        from convnets.training.report import write_text

        write_text(out / "results.json", json.dumps({
            "name": self.name, "budget": budget, "claim": self.claim, "verdict": self.verdict,
            "verdicts": self.verdicts, "seconds": self.seconds, "total_seconds": self.total_seconds,
            "machine": self.machine, "data": self.data},
            indent=2, default=str) + "\n")
        lines = [f"# {self.name}", "", f"Claim: {self.claim}", "", f"Budget: {budget}", ""]
        if self.verdicts:
            lines += [f"Verdict: {self.verdict}", "", *[f"- {line}" for line in self.verdict_lines()], ""]
        lines += [self.table, ""]
        lines += [f"- {n}" for n in self.notes]
        if self.machine:
            lines += ["", f"Machine: {machine_line(self.machine)}; {_wall_text(self)}."]
        if self.figure:
            lines += ["", f"![{self.name}]({self.figure.name})"]
        write_text(out / "results.md", "\n".join(lines) + "\n")


def _wall_text(result: Result) -> str:
    """The wall time in words: over every invocation, and this one's where they differ."""
    total = result.total_seconds if result.total_seconds is not None else result.seconds
    if result.seconds is None or total is None or abs(total - result.seconds) < 1:
        return f"wall time {_minutes(result.seconds)}"
    return f"wall time {_minutes(total)} over all invocations (the last: {_minutes(result.seconds)})"


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "not measured"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def seed_values(runs: dict[tuple[str, int], Trained], value: Callable[[Trained], float] | None = None
                ) -> dict[str, dict[int, float]]:
    """``{arm: {seed: value}}`` from :meth:`Setting.run_all`'s runs (default value: the final test accuracy)."""
    out: dict[str, dict[int, float]] = {}
    for (arm, seed), run in runs.items():
        out.setdefault(arm, {})[seed] = value(run) if value else run.test_accuracy
    return out


def compare(by_seed: dict[str, dict[int, float]], arm: str, reference: str, claim: str, claimed: int = 1,
            unit: str = "points", scale: float = 100) -> dict[str, Any]:
    """A verdict entry: the paired interval of ``arm - reference`` and the rule's verdict for the claimed sign."""
    from convnets.experiments.stats import paired_difference, verdict

    diff = paired_difference(by_seed[reference], by_seed[arm])
    return {"claim": claim, "arm": arm, "reference": reference, "claimed": claimed, "verdict": verdict(diff, claimed),
            "difference": diff.to_dict(), "unit": unit, "scale": scale}


def arm_interval(values: dict[int, float], scale: float = 100, digits: int = 2) -> str:
    """An arm's mean and 95% interval over seeds, as text (``82.00 [77.03, 86.97]``)."""
    from convnets.experiments.stats import mean_interval

    return mean_interval(list(values.values())).format(scale, digits)


def markdown_table(header: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    """A markdown table; ``align`` is one character per column, ``l`` or ``r`` (default: first left)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = [header, rule, *[[str(c) for c in r] for r in rows]]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def standard_error(accuracy: float, n: int) -> float:
    """The binomial standard error of an accuracy measured on ``n`` test images.

    Two accuracies closer than about twice it (2.8 times it for the difference of two independent
    measurements) are not told apart by that test set.
    """
    return math.sqrt(accuracy * (1 - accuracy) / n)


def plot(path: Path, draw: Callable[..., Any], panels: int = 1, size: tuple[float, float] = (7, 4.2)) -> Path:
    """Draw a figure of ``panels`` side-by-side axes with ``draw(ax)`` (or ``draw(axes)``) and save it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(size[0] * panels if panels > 1 else size[0], size[1]))
    draw(axes)
    for ax in (axes if panels > 1 else [axes]):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


Experiment = Callable[[Setting], Result]
EXPERIMENTS: dict[str, tuple[str, Experiment]] = {}


def experiment(name: str, summary: str) -> Callable[[Experiment], Experiment]:
    """Register an experiment under ``name`` (refusing duplicates)."""

    def register(fn: Experiment) -> Experiment:
        if name in EXPERIMENTS:
            raise ConfigError(f"experiment {name!r} registered twice")
        EXPERIMENTS[name] = (summary, fn)
        return fn

    return register


def register_all() -> None:
    import importlib

    for module in MODULES:
        importlib.import_module(f"convnets.experiments.{module}")


def run_experiment(name: str, budget: str = "small", out: str | Path | None = None, *, data: str = "fashion-mnist",
                   data_dir: str | None = None, threads: int | None = None, seeds: int = DEFAULT_SEEDS,
                   progress: bool = True) -> Result:
    """Run one experiment and write its files to ``out`` (default ``runs/experiments/NAME``).

    ``data`` is the dataset of the experiments that train (``fashion-mnist``, ``cifar10``...);
    ``seeds`` how many seeds each arm of a training experiment runs (1 gives no interval, so no verdict).
    """
    register_all()
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(sorted(EXPERIMENTS))}")
    if budget not in BUDGETS:
        raise ConfigError(f"--budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= 100:
        raise ConfigError(f"--seeds must be a whole number from 1 to 100, got {seeds!r}")
    from convnets.training.rundir import MARKER, RunDirectory

    check_threads(threads)  # before any work: not every experiment trains, where TrainConfig would check it
    out = Path(out) if out else Path("runs") / "experiments" / name
    from convnets.training.report import write_text

    # Refuses a file, a directory of someone else's files, or one another experiment is writing.
    with RunDirectory(out, "experiment"):
        setting = {"name": name, "budget": budget, "data": str(data)}
        _check_same_setting(out, setting)
        _wall_record(out)  # a damaged record is refused before the work, not after it
        write_text(out / SETTING_FILE, json.dumps(setting, indent=1) + "\n")
        start = time.perf_counter()
        try:
            if threads:  # timings and training alike obey --threads, also where every run is read back
                import torch

                torch.set_num_threads(threads)
            result = EXPERIMENTS[name][1](Setting(budget, out, data, data_dir, threads, seeds, progress))
        except BaseException as err:
            plans = list(out.glob("plan-*.json"))  # a plan printed before any run trained is no work to keep
            if {p.name for p in out.iterdir()} - {p.name for p in plans} <= {MARKER, SETTING_FILE}:
                for path in [out / SETTING_FILE, *plans]:  # refused or stopped before any run: leave nothing
                    path.unlink()
            elif isinstance(err, KeyboardInterrupt):
                _record_wall_time(out, time.perf_counter() - start, "stopped")
                again = f"convnets experiment {name} --budget {budget}" + (
                    f" --data {data}" if data != "fashion-mnist" else "") + (
                    f" --seeds {seeds}" if seeds != DEFAULT_SEEDS else "") + f" --out {out}"
                print(f"experiment stopped; `{again}` continues it (finished runs are reused)", flush=True)
            raise
        # Wall time of this invocation: runs read back from an earlier one are not counted again, but
        # the experiment's total over every invocation that worked on its directory is kept beside it.
        result.seconds, result.machine = time.perf_counter() - start, machine()
        result.total_seconds = _record_wall_time(out, result.seconds, "finished")
        result.write(out, budget)
    result.out = out
    return result


# The order of docs/RESULTS.md: cost-only experiments first (seconds), then the training ones.
ORDER = ("one-by-one", "depthwise", "bottleneck", "degradation", "scaling", "transfer", "transfer-split",
         "augmentation", "ensemble", "classic")


def run_all(budget: str = "small", out: str | Path = "docs/results", report: str | Path | None = None, *,
            data: str = "fashion-mnist", data_dir: str | None = None, threads: int | None = None,
            seeds: int = DEFAULT_SEEDS, progress: bool = True) -> list[Result]:
    """Run every experiment into ``out/NAME`` and write the report (default ``out/../RESULTS.md``)."""
    register_all()
    out = Path(out)
    report_path = Path(report) if report else out.parent / "RESULTS.md"
    if report_path.is_dir():
        raise ConfigError(f"{report_path} is a directory; --report names the markdown file to write, e.g. "
                          f"{report_path / 'RESULTS.md'}")
    check_writable(report_path.parent, report_path)  # before the experiments, not after them
    names = [n for n in ORDER if n in EXPERIMENTS] + sorted(set(EXPERIMENTS) - set(ORDER))
    results = [run_experiment(n, budget, out / n, data=data, data_dir=data_dir, threads=threads, seeds=seeds,
                              progress=progress) for n in names]
    write_report(results, report_path, budget)
    return results


VERDICT_RULE = """\
Every training experiment runs each arm with several seeds (`--seeds`, default 3). A seed fixes the
initialisation, the training subset, the data order and the augmentation draws, so two arms at the same
seed see the same images in the same order and their difference is a paired measurement. Each arm is
reported as its mean and 95% t interval over seeds; each claimed comparison as the mean of the per-seed
differences and its 95% t interval (`convnets.experiments.stats`). The verdict follows from those numbers
by one rule, never from prose:

- **reproduced**: the claimed direction holds and the paired 95% interval excludes zero;
- **contradicted**: the opposite direction holds and the paired 95% interval excludes zero;
- **inconclusive**: otherwise (the interval holds zero, or one seed gave no interval).

A claim made of several comparisons is reproduced only when all of them are, contradicted when any is.
The cost-only experiments (one-by-one, depthwise, the bottleneck's MACs) report exact counts; their
measured times are medians on the machine named below and carry no verdict.
"""


def write_report(results: Sequence[Result], path: Path, budget: str) -> Path:
    """docs/RESULTS.md from the experiments' results: the rule, the machine, every section and a closing note."""
    from convnets.training.report import write_text

    m = next((r.machine for r in results if r.machine), machine())
    lines = ["# Results: the case studies' claims, tested", "",
             f"Generated by `convnets experiment all --budget {budget}`; every number below comes from that run.", "",
             f"Machine: {machine_line(m)}.", "", "## The verdict rule", "", VERDICT_RULE]
    for r in results:
        assert r.out is not None
        body = (r.out / "results.md").read_text().splitlines()
        rel = os.path.relpath(r.out, path.parent)
        body = [line.replace(f"]({r.figure.name})", f"]({rel}/{r.figure.name})") if r.figure else line
                for line in body]
        lines += ["## " + body[0].removeprefix("# "), "", *body[1:], ""]
    lines += ["## Closing note", "", markdown_table(
        ["experiment", "verdict", "paired 95% interval(s)", "wall time (all invocations)"],
        [[r.name, r.verdict or "cost only (exact counts)", "; ".join(
            f"{v['claim']}: {_interval_text(v)}" for v in r.verdicts) or "",
            _minutes(r.total_seconds if r.total_seconds is not None else r.seconds)] for r in results],
        align="llll"), ""]
    write_text(path, "\n".join(lines) + "\n")
    return path


def _interval_text(v: dict[str, Any]) -> str:
    from convnets.experiments.stats import Interval

    return f"{Interval(**v['difference']).format(v.get('scale', 100))} {v.get('unit', 'points')}"


# What an experiment's directory was made with; its runs are reused only by a run with the same.
SETTING_FILE = "experiment.json"
# The wall time of every invocation that worked on an experiment's directory (a stopped one included).
WALL_FILE = "wall-times.json"


def _record_wall_time(out: Path, seconds: float, how: str) -> float:
    """Add this invocation's wall time to ``out``'s record and return the total over all invocations.

    A directory written before the record existed starts it from its ``results.json`` (that
    invocation's wall time), so that a re-run which reads every training run back still reports what
    the training cost.
    """
    from convnets.training.report import write_text

    invocations = _wall_record(out)
    if invocations is None:
        earlier = (_read_json(out / "results.json") or {}).get("seconds")
        invocations = [{"seconds": earlier, "how": "finished (from results.json)"}] if isinstance(
            earlier, (int, float)) else []
    invocations.append({"seconds": round(seconds, 1), "how": how, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    write_text(out / WALL_FILE, json.dumps({"invocations": invocations}, indent=1) + "\n")
    return sum(i["seconds"] for i in invocations if isinstance(i.get("seconds"), (int, float)))


def _wall_record(out: Path) -> list[dict[str, Any]] | None:
    """The invocations recorded in ``out``'s :data:`WALL_FILE` (None: no record yet).

    Raises:
        ConfigError: a record that cannot be read, or an invocation without a finite, non-negative
            number of seconds: the experiment's total wall time would be wrong, so it is refused before any
            work instead of being restarted or summed silently.
    """
    path = out / WALL_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        invocations = json.loads(text).get("invocations")
    except (ValueError, AttributeError):
        invocations = None
    fine = isinstance(invocations, list) and all(
        isinstance(i, dict) and isinstance(i.get("seconds"), int | float) and not isinstance(i["seconds"], bool)
        and math.isfinite(i["seconds"]) and i["seconds"] >= 0 for i in invocations)
    if not fine:
        raise ConfigError(f"{path} is damaged (it must hold {{\"invocations\": [{{\"seconds\": ...}}, ...]}} with "
                          "each number of seconds finite and >= 0), so the experiment's total wall time cannot be "
                          "known: repair it, or remove it to count the wall time from this invocation on")
    return invocations


def _check_same_setting(out: Path, setting: dict[str, str]) -> None:
    """A ConfigMismatchError, before any work, when ``out`` holds another experiment, budget or dataset.

    Its training runs were made for that setting: reusing them would mix budgets in one table, and
    resuming them with other settings is refused anyway, but only once the experiment reaches them.
    Directories written before :data:`SETTING_FILE` existed are judged by their ``results.json``.
    """
    saved = _read_json(out / SETTING_FILE)
    if saved is None and (out / SETTING_FILE).exists():
        raise ConfigError(f"{out / SETTING_FILE} is damaged, so what {out} was made with is unknown and its runs "
                          "cannot be reused safely: repair it (name, budget, data) or choose another --out")
    before = saved or {k: v for k, v in (_read_json(out / "results.json") or {}).items() if k in ("name", "budget")}
    differ = [k for k in ("name", "budget", "data") if k in before and before[k] != setting[k]]
    if differ:
        held = " ".join(f"--{k} {before[k]}" for k in ("budget", "data") if k in before)
        raise ConfigMismatchError(f"{out} holds the {before.get('name', setting['name'])} experiment at {held}: "
                                  "re-run it with those to reuse its runs, or choose another --out for "
                                  f"{setting['name']} at --budget {setting['budget']} --data {setting['data']}")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
