"""What a run leaves for a reader: per-epoch metrics, learning curves and a short report."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from convnets.weights import atomic_write


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically: a kill or a full disk leaves the previous version, and the error names ``path``.

    UTF-8 whatever the locale; a name that is not UTF-8 (a data folder named in Latin-1, held by Python with
    surrogates) is written as its original bytes, as ``bad_files.tsv`` writes it.
    """
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", errors="surrogateescape"))


def displayable(text: str) -> str:
    """``text`` with what is not UTF-8 in a name escaped (``p\\xe9ts``), as a picture's title or label can show it.

    Python holds such bytes of a file name as lone surrogates, which matplotlib refuses (a TypeError).
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class MetricsLog:
    """Per-epoch rows, kept in memory and mirrored to ``metrics.jsonl`` and ``metrics.csv``."""

    def __init__(self, out: Path, *, enabled: bool = True) -> None:
        self.out, self.enabled = out, enabled
        self.rows: list[dict[str, Any]] = []

    def restore(self, rows: list[dict[str, Any]]) -> None:
        """Continue from the rows of a checkpoint (a resumed run rewrites both files from them)."""
        self.rows = [dict(r) for r in rows]
        self._write()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        if not self.enabled:
            return
        write_text(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.rows))
        if self.rows:
            table = io.StringIO(newline="")
            writer = csv.DictWriter(table, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)
            write_text(self.out / "metrics.csv", table.getvalue())


def plot_curves(rows: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Loss and accuracy against epochs, train and test, as a PNG."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-"), ("test", "--")):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in rows], style, marker="o", label=split)
        ax_acc.plot(epochs, [r[f"{split}_acc"] for r in rows], style, marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(displayable(title))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def write_report(out: Path, cfg: Any, result: Any, rows: list[dict[str, Any]]) -> Path:
    """``report.md``: the result, the recipe and the per-epoch table; plus ``curves.png``."""
    plot_curves(rows, out / "curves.png", f"{cfg.model} on {cfg.data}")
    lines = [
        f"# {cfg.model} on {cfg.data}",
        "",
        f"Test accuracy **{result.test_accuracy:.4f}** (best epoch {result.best_accuracy:.4f}) after "
        f"{result.epochs} epochs / {result.steps} steps in {result.seconds:.0f} s "
        f"({result.images_per_second:,.0f} training images/s).",
        "",
        f"Recipe: {cfg.optimizer} lr {cfg.lr}, {cfg.schedule} schedule, warm-up {cfg.warmup_epochs} epochs, "
        f"batch {cfg.batch_size}{_accumulated(cfg)}, weight decay {cfg.weight_decay}, "
        f"label smoothing {cfg.label_smoothing}, "
        f"augmentation {cfg.augment}, seed {cfg.seed}; precision {cfg.precision}: {result.precision}.",
        "",
    ]
    ema = getattr(result, "ema_accuracy", None)
    if ema is not None:
        # Which of the two to use is what a reader of the report wants to know first.
        better = "the average" if ema > result.test_accuracy else "the weights" if ema < result.test_accuracy else (
            "neither")
        lines += [f"Moving average of the weights (decay {cfg.ema}): test accuracy **{ema:.4f}** against the "
                  f"weights' {result.test_accuracy:.4f}: {better} is better (`last-ema.safetensors`, "
                  "`last.safetensors`; the table's last column follows it per epoch).", ""]
    extra = " average's test acc |" if ema is not None else ""
    lines += [
        "| epoch | train loss | train acc | test loss | test acc | images/s |" + extra,
        "|---:|---:|---:|---:|---:|---:|" + "---:|" * bool(extra),
    ]
    lines += [
        f"| {r['epoch']} | {r['train_loss']:.4f} | {r['train_acc']:.4f} | {r['test_loss']:.4f} | "
        f"{r['test_acc']:.4f} | {r['images_per_s']:,.0f} |" + (f" {r['ema_test_acc']:.4f} |" if ema is not None else "")
        for r in rows
    ]
    if rows:
        lines += ["", "![learning curves](curves.png)"]
    return write_text(out / "report.md", "\n".join(lines) + "\n")


def _accumulated(cfg: Any) -> str:
    accumulate = getattr(cfg, "accumulate", 1)
    return f" x {accumulate} accumulated (effective {cfg.batch_size * accumulate})" if accumulate > 1 else ""
