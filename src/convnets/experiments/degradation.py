"""The degradation problem (He et al. 2015, Fig. 6): deeper plain nets train worse, deeper ResNets better.

Plain and residual CIFAR-style nets of depths 20 and 56 (6n+2 layers; 110 too at the full budget)
are trained with the same recipe and, seed by seed, the same initialisation, training subset and
data order; training and test error are plotted against iterations, one panel per family. The
only difference between ``plainN`` and ``resnetN`` is the identity shortcut (option A: zero-padded
identity, as in the paper's CIFAR nets), so the parameter counts are identical.

The verdict comes from three paired comparisons of the final training error over seeds: plain-56
above plain-20 (the degradation), ResNet-56 below ResNet-20 (depth helps once the shortcuts are
there) and ResNet-56 below plain-56.
"""

from __future__ import annotations

import statistics
from typing import Any

from convnets.experiments import (
    Result,
    Run,
    Setting,
    arm_interval,
    compare,
    experiment,
    markdown_table,
    plot,
    seed_values,
)

FAMILIES = ("plain", "resnet")


def budget(setting: Setting) -> dict[str, Any]:
    """The training budget of every arm.

    small: 2,000 images per class (20,000) for 8 epochs at batch 128, 1,248 iterations, on the images
    downsampled to 14x14 (antialiased), a quarter of the pixels per step, which fits the 12 runs into
    30 minutes on 2 cores (18.7 measured, docs/RESULTS.md): the claim is about optimisation (training
    error), which needs iterations more than pixels. An earlier single-seed run at 28x28 and 468 iterations separated
    the plain nets (19% -> 60% training error) but left the ResNets in no order. full: the paper's 64k
    iterations (164 epochs of 50k images at batch 128; here 60k images, so 76,752) with the learning rate
    divided by 10 at half and three quarters, at the data's own size.
    """
    return setting.pick(
        dict(train_per_class=5, test_per_class=5, epochs=2, batch_size=16),
        dict(train_per_class=2000, test_per_class=200, epochs=8, batch_size=128, image_size=14),
        dict(epochs=164, batch_size=128),
    )


def plan(setting: Setting) -> list[Run]:
    depths = setting.pick((20,), (20, 56), (20, 56, 110))
    # Augmentation and smoothing pinned to the paper's setting, not the resnet recipe's short-budget
    # choices (light shifts, smoothing 0.1).
    recipe = dict(schedule="step", optimizer="sgd", lr=0.1, weight_decay=1e-4, augment="standard",
                  label_smoothing=0.0, **budget(setting))
    return [Run(f"{family}{depth}", seed, f"{family}{depth}", {**recipe, "seed": seed})
            for family in FAMILIES for depth in depths for seed in setting.seed_list]


@experiment("degradation", "plain vs residual nets at depths 20 and 56: deeper plain nets train worse, ResNets better")
def degradation(setting: Setting) -> Result:
    runs = setting.run_all(plan(setting), "degradation")
    arms = list(dict.fromkeys(arm for arm, _ in runs))
    depths = sorted({int(arm.removeprefix("plain").removeprefix("resnet")) for arm in arms})
    train_acc = seed_values(runs, lambda r: r.rows[-1]["train_acc"])
    test_acc = seed_values(runs)
    train_err = {arm: {s: 1 - a for s, a in v.items()} for arm, v in train_acc.items()}
    test_err = {arm: {s: 1 - a for s, a in v.items()} for arm, v in test_acc.items()}

    table = markdown_table(
        ["depth", "plain train error (%)", "plain test error (%)", "ResNet train error (%)", "ResNet test error (%)"],
        [[str(d), *[arm_interval(errs[f"{family}{d}"], digits=1) for family in FAMILIES
                    for errs in (train_err, test_err)]] for d in depths])
    verdicts = []
    if len(depths) > 1:
        shallow, deep = depths[0], depths[1]
        verdicts = [
            compare(train_err, f"plain{deep}", f"plain{shallow}", f"plain-{deep} trains to a higher error than "
                    f"plain-{shallow}", claimed=+1, unit="points of training error"),
            compare(train_err, f"resnet{deep}", f"resnet{shallow}", f"ResNet-{deep} trains to a lower error than "
                    f"ResNet-{shallow}", claimed=-1, unit="points of training error"),
            compare(train_err, f"resnet{deep}", f"plain{deep}", f"ResNet-{deep} trains to a lower error than "
                    f"plain-{deep}", claimed=-1, unit="points of training error"),
        ]

    def mean_curve(arm: str, key: str) -> tuple[list[int], list[float]]:
        rows = [run.rows for (a, _), run in runs.items() if a == arm]
        steps = [row["step"] for row in rows[0]]
        return steps, [100 * (1 - statistics.fmean(r[i][key] for r in rows)) for i in range(len(steps))]

    def draw(axes) -> None:
        top = max(max(mean_curve(arm, key)[1]) for arm in arms for key in ("train_acc", "test_acc"))
        for ax, family in zip(axes, FAMILIES, strict=True):
            for depth in depths:
                steps, test = mean_curve(f"{family}{depth}", "test_acc")
                line = ax.plot(steps, test, lw=2, label=f"{family}-{depth}")
                ax.plot(*mean_curve(f"{family}{depth}", "train_acc"), "--", lw=1, color=line[0].get_color())
            ax.set(xlabel="iterations", ylabel="error (%), mean over seeds", ylim=(0, top * 1.05),
                   title=f"{'plain' if family == 'plain' else 'ResNet'} (dashed: training, bold: test)")
            ax.legend(fontsize=8)

    figure = plot(setting.out / "degradation.png", draw, panels=2, size=(6, 4.2))
    first = next(iter(runs.values()))
    side = first.config.get("image_size")
    notes = [f"data: {setting.data}" + (f" at {side}x{side}" if side else "") + ", "
             f"{first.config['train_per_class'] or 'all'} training images per class, "
             f"{first.config['epochs']} epochs at batch {first.config['batch_size']} ({first.steps:,} iterations), "
             f"SGD lr 0.1 divided by 10 at 50% and 75%, augment {first.config['augment']}, "
             f"{first.config.get('precision', 'auto')} precision; test error on "
             f"{first.config['test_per_class'] or 'all'} test images per class; training error is the running "
             "error over the last epoch (augmented batches, as He et al. plot it)",
             f"each cell: mean [95% interval] over {setting.seeds} seed(s); a seed gives the plain and residual "
             "nets of one depth the same initialisation, training subset and data order, so the verdicts pair them",
             "an EMA of the weights (`--ema`) would steady the last-epoch numbers; it is left out to keep the "
             "paper's setting"]
    data = {"depths": depths, "recipe": first.config, "train_error": train_err, "test_error": test_err,
            "runs": {f"{arm}-s{seed}": {"rows": run.rows, "seconds": run.seconds, "steps": run.steps}
                     for (arm, seed), run in runs.items()}}
    return Result("degradation", "deeper plain nets have higher training error (degradation); with identity "
                  "shortcuts, deeper nets have lower error", table, data, figure, notes, verdicts=verdicts)
