"""The classic networks side by side: accuracy against cost, under one budget.

Each network trains with its own recipe (:data:`convnets.training.config.RECIPES`: the optimizer
and learning rate it needs) and is set beside the dataset's published figures and the d2l.ai
modern-CNN chapter's. The two budgets compare differently, and say so:

- ``small`` gives every network **equal wall-clock time** on the reference machine (``SMALL_SECONDS``
  of training each, as images = seconds x its measured training rate there, :data:`REFERENCE_RATES`):
  the question a CPU user asks, "what does each design reach in the same minute?". Equal epochs
  cannot fit a 2-core CPU (AlexNet, VGG-16 and GoogLeNet train at 50-100 images/s there, LeNet-5 at
  15,000), and none of these networks converges at either. The images are fixed by the table, not
  timed at run time, so a second run (on any machine) trains the same steps; the measured time
  column shows how equal the times were there. At 32x32: the ImageNet networks with their
  ``small_input`` stems (same parameters, stride-1 first layer; 224x224 would cost 49x the MACs for
  images that hold 28x28 pixels), LeNet-5 and resnet20 at their own 32x32 (the 28x28 images
  zero-padded, as LeCun did).
- ``full`` gives every network **equal epochs** (30) at its native input size, for a GPU.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
import statistics
from typing import Any

from convnets.analysis import count
from convnets.data.datasets import load_dataset
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
from convnets.experiments.stats import mean_interval
from convnets.registry import create_model, model_entry
from convnets.training.config import RECIPES

MODELS = ("lenet5_classic", "lenet5", "alexnet", "vgg16", "googlenet", "resnet20", "resnet18", "mobilenet_v1",
          "mobilenet_v2", "efficientnet_b0")

# Fashion-MNIST's own benchmark table (zalandoresearch/fashion-mnist README, not verified by its
# authors): test accuracy of each family as submitted there, at that submitter's budget.
PUBLISHED = {"vgg16": 0.935, "googlenet": 0.937, "resnet18": 0.949, "mobilenet_v1": 0.950}
PUBLISHED_OTHERS = {"human": 0.835, "2-conv nets (low)": 0.876, "2-conv nets (high)": 0.939}

# d2l.ai, "Modern Convolutional Neural Networks" (https://d2l.ai/chapter_convolutional-modern/), trains
# each network on Fashion-MNIST for 10 epochs on a GPU: AlexNet at 224 px (lr 0.01), ResNet-18 and
# DenseNet at 96 px (lr 0.05 and 0.1), batch 128-256, one run each. Test accuracies as printed in the
# Chinese edition's outputs (https://zh.d2l.ai/chapter_convolutional-modern/alexnet.html, resnet.html,
# densenet.html), read here from course notes that quote them, not from the pages themselves: check
# them there before relying on a digit. VGG-11 (a quarter width), NiN and GoogLeNet are in the chapter
# too; their printed figures were not found in the sources available to this project.
D2L = {"alexnet": {"input": 224, "epochs": 10, "test_acc": 0.885, "train_acc": 0.881},
       "resnet18": {"input": 96, "epochs": 10, "test_acc": 0.922, "train_acc": 0.998}}
D2L_OTHERS = {"densenet (d2l)": {"input": 96, "epochs": 10, "test_acc": 0.822, "train_acc": 0.944}}


# The small budget: every network trains about SMALL_SECONDS on the reference machine, at batch BATCH
# on SMALL_SIDE x SMALL_SIDE images. REFERENCE_RATES are its training images/s there: 2 threads of an
# Intel Xeon with AVX512-BF16 and AMX, bf16 autocast, torch 2.13.0, measured by
# `python benchmarks/bench_classic_rates.py --threads 2` (which re-measures them on any machine).
SMALL_SECONDS = 35
BATCH = 64
SMALL_SIDE = 32
REFERENCE_RATES = {"lenet5_classic": 11_900, "lenet5": 15_700, "alexnet": 103, "vgg16": 86, "googlenet": 53,
                   "resnet20": 920, "resnet18": 158, "mobilenet_v1": 385, "mobilenet_v2": 309, "efficientnet_b0": 180}


def builder_kwargs(model: str) -> dict[str, Any]:
    """The builder arguments ``model`` trains with at the small budget (``small_input`` where it has one)."""
    return {"small_input": True} if "small_input" in inspect.signature(model_entry(model).builder).parameters else {}


def _input(setting: Setting, model: str) -> tuple[int, dict[str, Any]]:
    """The image side and builder arguments ``model`` trains with at this budget."""
    if setting.budget == "full":
        return model_entry(model).input_size[1], {}
    return SMALL_SIDE, builder_kwargs(model)


def small_budget(model: str, train_images: int, classes: int) -> dict[str, Any]:
    """Epochs, images per class and warm-up of ``model`` at the small budget: SMALL_SECONDS of training on the
    reference machine, in at least two epochs (over a subset when that is less than two epochs of the
    ``train_images`` the data holds; a network that gets more runs more epochs).

    The times are approximate: the reference rates are plain SGD steps on random images, while the
    recipes add augmentation and some use AdamW, and evaluation comes on top (the time column shows
    what each run took).
    """
    images = SMALL_SECONDS * REFERENCE_RATES[model]
    epochs = max(2, math.ceil(images / train_images))
    recipe = next(r for pattern, r in RECIPES if fnmatch.fnmatchcase(model, pattern))
    # The recipes warm up for a whole epoch of a long run; here that would be half the run.
    warmup = min(recipe["warmup_epochs"], 0.2 * epochs)
    return dict(epochs=epochs, train_per_class=min(train_images, images // epochs) // classes, warmup_epochs=warmup)


def plan(setting: Setting) -> list[Run]:
    models = setting.pick(("lenet5", "resnet20"), MODELS, MODELS)
    data = load_dataset(setting.data, data_dir=setting.data_dir)
    runs = []
    for model in models:
        side, kwargs = _input(setting, model)
        budget: dict[str, Any]
        if setting.budget == "small":
            budget = dict(test_per_class=100, batch_size=BATCH,
                          **small_budget(model, len(data.train), data.num_classes))
        else:
            budget = setting.pick(dict(train_per_class=5, test_per_class=5, epochs=1, batch_size=16), None,
                                  dict(epochs=30))
        runs += [Run(model, seed, model, dict(image_size=side, model_kwargs=kwargs, seed=seed, **budget))
                 for seed in setting.seed_list]
    return runs


@experiment("classic", "LeNet-5 to EfficientNet under one budget (equal time at small, equal epochs at full): accuracy "
            "against cost, time measured")
def classic(setting: Setting) -> Result:
    planned = plan(setting)
    runs = setting.run_all(planned, "classic")
    acc = seed_values(runs)
    dataset = load_dataset(setting.data, data_dir=setting.data_dir)
    rows = []
    for model in dict.fromkeys(r.arm for r in planned):
        mine = [run for (arm, _), run in runs.items() if arm == model]
        side, kwargs = _input(setting, model)
        net = create_model(model, num_classes=dataset.num_classes, in_chans=dataset.channels, **kwargs)
        cost = count(net, (dataset.channels, side, side))
        iv = mean_interval(list(acc[model].values()))
        rows.append({"model": model, "params": cost.params, "macs": cost.macs, "image_size": side,
                     "seconds": statistics.fmean(r.seconds for r in mine),
                     "images_per_s": statistics.fmean(r.rows[-1]["images_per_s"] for r in mine),
                     "test_accuracy": iv.mean, "interval": iv.to_dict(), "by_seed": acc[model],
                     "published": PUBLISHED.get(model), "d2l": D2L.get(model, {}).get("test_acc"),
                     "optimizer": mine[0].config["optimizer"], "lr": mine[0].config["lr"],
                     "precision": mine[0].config.get("precision"), "epochs": mine[0].config["epochs"],
                     "train_per_class": mine[0].config["train_per_class"], "steps": mine[0].steps})

    table = markdown_table(
        ["model", "params", "MACs", "input", "recipe", "budget: epochs x images per class (steps)",
         "train time (measured, mean)", "test accuracy (%, mean [95% CI])", "published (its own budget)",
         "d2l.ai (10 epochs, GPU)"],
        [[r["model"], f"{r['params']:,}", f"{r['macs'] / 1e6:,.1f}M", f"{r['image_size']}px",
          f"{r['optimizer']} {r['lr']:g}", f"{r['epochs']} x {r['train_per_class'] or 'all'} ({r['steps']:,})",
          f"{r['seconds']:.0f} s", arm_interval(r["by_seed"]),
          f"{r['published']:.3f}" if r["published"] else "",
          f"{r['d2l']:.3f} ({D2L[r['model']]['input']}px)" if r["d2l"] else ""] for r in rows])
    present = {r["model"] for r in rows}
    verdicts = [compare(acc, later, earlier, f"{later} ({macs_ratio(rows, earlier, later)} fewer MACs) reaches at "
                        f"least {earlier}'s accuracy", claimed=+1)
                for later, earlier in (("efficientnet_b0", "vgg16"), ("resnet20", "alexnet"))
                if {later, earlier} <= present]

    def draw(ax) -> None:
        for i, r in enumerate(sorted(rows, key=lambda r: (r["test_accuracy"], r["macs"]))):
            half = _half_width(r)
            ax.errorbar(r["macs"], r["test_accuracy"], yerr=half, fmt="o", ms=5, capsize=3, zorder=3)
            # Alternate labels above and below: networks at the same accuracy would overwrite each other.
            ax.annotate(r["model"], (r["macs"], r["test_accuracy"]), fontsize=7, xytext=(4, 4 if i % 2 else -10),
                        textcoords="offset points")
            if r["published"]:
                ax.scatter(r["macs"], r["published"], s=40, facecolors="none", edgecolors="black", zorder=3)
            if r["d2l"]:
                ax.scatter(r["macs"], r["d2l"], s=40, marker="s", facecolors="none", edgecolors="tab:red", zorder=3)
        ax.axhline(PUBLISHED_OTHERS["human"], color="grey", linestyle=":", lw=1, label="human (0.835)")
        ax.axhspan(PUBLISHED_OTHERS["2-conv nets (low)"], PUBLISHED_OTHERS["2-conv nets (high)"], color="grey",
                   alpha=0.12, label="published 2-conv nets")
        ax.scatter([], [], s=40, facecolors="none", edgecolors="black", label="published figure, same family")
        ax.scatter([], [], s=40, marker="s", facecolors="none", edgecolors="tab:red", label="d2l.ai, same family")
        ax.set(xscale="log", xlabel="MACs per image (this run's input size)", ylabel="test accuracy (mean, 95% CI)",
               title=f"{setting.data}: every network for " + (
                   f"about {SMALL_SECONDS} s of training" if setting.budget == "small" else "the same epochs"))
        ax.legend(fontsize=7, loc="lower right")

    figure = plot(setting.out / "classic.png", draw, size=(8, 5))
    best = max(rows, key=lambda r: r["test_accuracy"])
    cheapest = min((r for r in rows if r["test_accuracy"] >= best["test_accuracy"] - 0.01), key=lambda r: r["macs"])
    first = next(iter(runs.values()))
    stuck = [r for r in rows if r["test_accuracy"] <= 1 / dataset.num_classes + 0.02]
    fastest = min(rows, key=lambda r: r["seconds"])
    if setting.budget == "small":
        budget = (f"equal time, not equal epochs: each network trains on {SMALL_SECONDS} s x its training rate on "
                  "the reference machine (classic.REFERENCE_RATES, measured by `python "
                  "benchmarks/bench_classic_rates.py --threads 2`), in at least 2 epochs; the budget column says "
                  "what each got")
    else:
        budget = f"equal epochs ({first.config['epochs']}), not equal time"
    notes = [f"budget: {budget}; batch {first.config['batch_size']}, each network with its own recipe, "
             f"{first.config.get('precision', 'auto')} precision; test accuracy on "
             f"{first.config['test_per_class'] or 'all'} test images per class, mean [95% interval] over "
             f"{setting.seeds} seed(s)",
             f"best: {best['model']} at {best['test_accuracy']:.4f}; the cheapest within one point of it: "
             f"{cheapest['model']} ({cheapest['macs'] / 1e6:,.1f}M MACs vs {best['macs'] / 1e6:,.1f}M)",
             "train time: the training loop's seconds (evaluation included), mean over seeds, on the machine below; "
             "relative to the fastest (" + fastest["model"] + "): " + ", ".join(
                 f"{r['model']} {r['seconds'] / max(fastest['seconds'], 1e-9):.1f}x" for r in rows),
             *([f"at chance (1/{dataset.num_classes}) after this budget: {', '.join(r['model'] for r in stuck)}"]
               if stuck else []),
             "published figures come from the dataset's benchmark table, each at its submitter's own (much "
             "longer) budget and preprocessing; d2l.ai's from 10 GPU epochs at 96-224 px, one run each "
             f"(DenseNet {D2L_OTHERS['densenet (d2l)']['test_acc']:.3f} there; see classic.py for the sources): "
             "they show where each family ends, not a same-budget comparison"]
    return Result("classic", "each generation of these architectures buys more accuracy per multiplication: "
                  "under one budget the later designs match or beat the earlier ones at a fraction of their MACs",
                  table, {"rows": rows, "budget": first.config, "d2l": {**D2L, **D2L_OTHERS}}, figure, notes,
                  verdicts=verdicts)


def macs_ratio(rows: list[dict[str, Any]], earlier: str, later: str) -> str:
    by = {r["model"]: r["macs"] for r in rows}
    return f"{by[earlier] / by[later]:.0f}x"


def _half_width(row: dict[str, Any]) -> float:
    half = (row["interval"]["high"] - row["interval"]["low"]) / 2
    return half if math.isfinite(half) else 0.0
