"""The degradation problem (He et al. 2015, Fig. 6): deeper plain nets train worse, deeper ResNets better.

Plain and residual CIFAR-style nets of the same depths (6n+2 layers: 20, 32, 44, 56, and 110 at the
full budget) are trained with the same recipe, data and seed; training and test error are plotted
against iterations, one panel per family. The only difference between ``plainN`` and ``resnetN``
is the identity shortcut (option A: zero-padded identity, as in the paper's CIFAR nets), so the
parameter counts are identical.
"""

from __future__ import annotations

from typing import Any

from convnets.experiments import Result, Setting, Trained, experiment, markdown_table, plot

FAMILIES = ("plain", "resnet")


def _final_errors(run: Trained) -> tuple[float, float]:
    last = run.rows[-1]
    return 1 - last["train_acc"], 1 - last["test_acc"]


def _trend(errors: list[float]) -> str:
    """``rises``, ``falls`` or ``is mixed`` across depths (strictly monotone only counts)."""
    steps = [b - a for a, b in zip(errors, errors[1:], strict=False)]
    if all(s > 0 for s in steps):
        return "rises"
    if all(s < 0 for s in steps):
        return "falls"
    return "is mixed"


@experiment("degradation", "plain vs residual nets at depths 20-56: deeper plain nets train worse, ResNets better")
def degradation(setting: Setting) -> Result:
    depths = setting.pick((20,), (20, 32, 44, 56), (20, 32, 44, 56, 110))
    # small: a 10,000-image subset seen 6 times (468 iterations); full: the paper's 64k iterations
    # at batch 128 with the learning rate divided by 10 at half and three quarters of the run.
    budget: dict[str, Any] = setting.pick(
        dict(train_per_class=5, test_per_class=5, epochs=2, batch_size=16),
        dict(train_per_class=1000, test_per_class=100, epochs=6, batch_size=128),
        dict(epochs=164, batch_size=128),
    )
    # Augmentation and smoothing pinned as docs/RESULTS.md's figures had them, not the resnet recipe's
    # short-budget choices (light shifts, smoothing 0.1), which would change the paper's setting.
    recipe = dict(schedule="step", optimizer="sgd", lr=0.1, weight_decay=1e-4, augment="standard", label_smoothing=0.0,
                  seed=0, **budget)
    runs = {(family, depth): setting.train(f"{family}{depth}", f"{family}{depth}", **recipe)
            for family in FAMILIES for depth in depths}

    errors = {key: _final_errors(run) for key, run in runs.items()}
    table_rows = [[str(depth)] + [f"{100 * e:.1f}%" for family in FAMILIES for e in errors[(family, depth)]]
                  for depth in depths]
    table = markdown_table(["depth", "plain train error", "plain test error", "ResNet train error",
                            "ResNet test error"], table_rows)

    def draw(axes) -> None:
        top = max(1 - row[f"{split}_acc"] for run in runs.values() for row in run.rows for split in ("train", "test"))
        for ax, family in zip(axes, FAMILIES, strict=True):
            for depth in depths:
                run = runs[(family, depth)]
                steps = [row["step"] for row in run.rows]
                line = ax.plot(steps, [100 * (1 - r["test_acc"]) for r in run.rows], lw=2, label=f"{family}-{depth}")
                ax.plot(steps, [100 * (1 - r["train_acc"]) for r in run.rows], "--", lw=1,
                        color=line[0].get_color())
            ax.set(xlabel="iterations", ylabel="error (%)", ylim=(0, 100 * top * 1.05),
                   title=f"{'plain' if family == 'plain' else 'ResNet'} (dashed: training, bold: test)")
            ax.legend(fontsize=8)

    figure = plot(setting.out / "degradation.png", draw, panels=2, size=(6, 4.2))
    notes = []
    if len(depths) > 1:
        for family in FAMILIES:
            train_errors = [errors[(family, d)][0] for d in depths]
            notes.append(f"{family}: final training error {_trend(train_errors)} with depth "
                         f"({' -> '.join(f'{100 * e:.1f}%' for e in train_errors)} for depths "
                         f"{', '.join(map(str, depths))})")
        deepest = depths[-1]
        gap = errors[("plain", deepest)][0] - errors[("resnet", deepest)][0]
        notes.append(f"at depth {deepest} the ResNet's training error is {100 * abs(gap):.1f} points "
                     f"{'below' if gap > 0 else 'above'} the plain net's (same parameters, same recipe)")
    first = next(iter(runs.values()))
    notes.append(f"data: {setting.data}, {first.config['train_per_class'] or 'all'} training images per class, "
                 f"{first.config['epochs']} epochs at batch {first.config['batch_size']} "
                 f"({first.steps} iterations), SGD lr 0.1 divided by 10 at 50% and 75%, augment "
                 f"{first.config['augment']}; test error on {first.config['test_per_class'] or 'all'} test images "
                 "per class; training error is the running error over each epoch")
    data = {"depths": list(depths), "recipe": first.config,
            "runs": {f"{family}{depth}": {"rows": run.rows, "seconds": run.seconds}
                     for (family, depth), run in runs.items()}}
    return Result("degradation", "deeper plain nets have higher training error (degradation); with identity "
                  "shortcuts, deeper nets have lower error", table, data, figure, notes)
