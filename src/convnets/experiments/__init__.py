"""The case studies' claims as runnable experiments: ``convnets experiment NAME [--budget] [--out]``.

Each experiment writes a figure (PNG), its raw results (JSON) and a short markdown table to its
output directory, and states the claim it tests. ``small`` budgets fit a 2-core CPU; ``full`` is
the paper-scale setting. Whatever comes out is reported: a claim that does not reproduce at a
small budget is a finding.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from convnets.device import check_threads
from convnets.errors import ConfigError, ConfigMismatchError

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


@dataclass
class Setting:
    """Where and how an experiment runs: its budget, output directory, data and CPU threads."""

    budget: str
    out: Path
    data: str = "fashion-mnist"
    data_dir: str | None = None
    threads: int | None = None

    def pick(self, tiny: Any, small: Any, full: Any) -> Any:
        """The value for this budget."""
        return {"tiny": tiny, "small": small, "full": full}[self.budget]

    def train(self, name: str, model: str, **config: Any) -> Trained:
        """Train ``model`` into ``out/runs/name`` with :func:`convnets.train`.

        A run already finished with the same configuration is read back instead of trained again,
        and one that was interrupted resumes from its checkpoint, so re-running an experiment after
        a stop only does the work that is left.
        """
        from convnets.training import TrainConfig, train
        from convnets.training.loop import STATE_FILE
        from convnets.training.report import write_text

        out = self.out / "runs" / name
        config = TrainConfig(**{"data": self.data, "data_dir": self.data_dir, "threads": self.threads,
                                "progress": False, **config, "model": model, "out": str(out)}).to_dict()
        done = out / "trained.json"
        saved = _read_record(done)
        if saved is not None and saved["request"] == config:
            return Trained(name, out, saved["config"], saved["rows"], saved["test_accuracy"], saved["seconds"],
                           saved["steps"])
        resume = (out / STATE_FILE).exists() and (out / "config.json").exists()
        result = train(TrainConfig(**{**config, "resume": resume}))
        resolved = json.loads((out / "config.json").read_text())
        metrics = out / "metrics.jsonl"  # absent when max_steps ends the run inside its first epoch
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line] if metrics.exists() else []
        record = {"request": config, "config": resolved, "rows": rows, "test_accuracy": result.test_accuracy,
                  "seconds": result.seconds, "steps": result.steps}
        write_text(done, json.dumps(record, indent=1) + "\n")
        return Trained(name, out, resolved, rows, result.test_accuracy, result.seconds, result.steps)


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
    expected = {"request", "config", "rows", "test_accuracy", "seconds", "steps"}
    return record if isinstance(record, dict) and expected <= set(record) else None


@dataclass
class Result:
    """What an experiment found: the claim, a markdown table, raw numbers and the figure."""

    name: str
    claim: str
    table: str
    data: dict[str, Any]
    figure: Path | None = None
    notes: list[str] = field(default_factory=list)
    out: Path | None = None

    def write(self, out: Path, budget: str) -> None:
        from convnets.training.report import write_text

        write_text(out / "results.json", json.dumps({"name": self.name, "budget": budget, "claim": self.claim,
                                                     "data": self.data}, indent=2, default=str) + "\n")
        lines = [f"# {self.name}", "", f"Claim: {self.claim}", "", f"Budget: {budget}", "", self.table, ""]
        lines += [f"- {n}" for n in self.notes]
        if self.figure:
            lines += ["", f"![{self.name}]({self.figure.name})"]
        write_text(out / "results.md", "\n".join(lines) + "\n")


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
                   data_dir: str | None = None, threads: int | None = None) -> Result:
    """Run one experiment and write its files to ``out`` (default ``runs/experiments/NAME``).

    ``data`` is the dataset of the experiments that train (``fashion-mnist``, ``cifar10``...).
    """
    register_all()
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(sorted(EXPERIMENTS))}")
    if budget not in BUDGETS:
        raise ConfigError(f"--budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    from convnets.training.rundir import MARKER, RunDirectory

    check_threads(threads)  # before any work: not every experiment trains, where TrainConfig would check it
    out = Path(out) if out else Path("runs") / "experiments" / name
    from convnets.training.report import write_text

    # Refuses a file, a directory of someone else's files, or one another experiment is writing.
    with RunDirectory(out, "experiment"):
        setting = {"name": name, "budget": budget, "data": str(data)}
        _check_same_setting(out, setting)
        write_text(out / SETTING_FILE, json.dumps(setting, indent=1) + "\n")
        try:
            result = EXPERIMENTS[name][1](Setting(budget, out, data, data_dir, threads))
        except BaseException as err:
            if {p.name for p in out.iterdir()} <= {MARKER, SETTING_FILE}:  # refused before any run: leave nothing
                (out / SETTING_FILE).unlink()
            elif isinstance(err, KeyboardInterrupt):
                again = f"convnets experiment {name} --budget {budget}" + (
                    f" --data {data}" if data != "fashion-mnist" else "") + f" --out {out}"
                print(f"experiment stopped; `{again}` continues it (finished runs are reused)", flush=True)
            raise
        result.write(out, budget)
    result.out = out
    return result


# What an experiment's directory was made with; its runs are reused only by a run with the same.
SETTING_FILE = "experiment.json"


def _check_same_setting(out: Path, setting: dict[str, str]) -> None:
    """A ConfigMismatchError, before any work, when ``out`` holds another experiment, budget or dataset.

    Its training runs were made for that setting: reusing them would mix budgets in one table, and
    resuming them with other settings is refused anyway, but only once the experiment reaches them.
    Directories written before :data:`SETTING_FILE` existed are judged by their ``results.json``.
    """
    before = _read_json(out / SETTING_FILE) or {k: v for k, v in (_read_json(out / "results.json") or {}).items()
                                                 if k in ("name", "budget")}
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
