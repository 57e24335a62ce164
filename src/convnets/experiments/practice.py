"""Practice experiments: transfer learning and augmentation by amount of data, and ensembles and
multi-crop against the inference cost they multiply.

Every model trains through :meth:`Setting.train` (a re-run reuses finished runs) and is evaluated
with the library's own pieces: test-time views by :func:`convnets.evaluate.tta` (with
:func:`~convnets.evaluate.view_kwargs`), members combined by :func:`~convnets.evaluate.combine_outputs`
and timed as one :class:`~convnets.evaluate.Ensemble`, MACs counted by :func:`convnets.analysis.count`.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from convnets.analysis import count
from convnets.data.augment import get_preset
from convnets.data.datasets import load_dataset, subsample_per_class
from convnets.data.loader import make_loader
from convnets.data.views import tta_views
from convnets.errors import ConfigError
from convnets.evaluate import Ensemble, Member, combine_outputs, load_member, scores, tta, view_kwargs
from convnets.experiments import (
    Result,
    Run,
    Setting,
    Trained,
    arm_interval,
    compare,
    experiment,
    markdown_table,
    plot,
    seed_values,
    standard_error,
)
from convnets.experiments.stats import Interval, mean_interval
from convnets.export import median_latency_ms
from convnets.registry import create_model
from convnets.training.config import AUGMENT_PRESETS
from convnets.transfer import recommend

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text)


def _size_label(per_class: int | None) -> str:
    return "all" if per_class is None else str(per_class)


def _train_sizes(data: str, data_dir: str | None, sizes: Sequence[int | None]) -> tuple[list[int], int]:
    """Training images of ``data`` cut to each of ``sizes`` examples per class (None: all), as a run sees
    them, and the number of classes."""
    dataset = load_dataset(data, data_dir=data_dir)
    counts = [len(dataset.train if s is None else subsample_per_class(dataset, s).train) for s in sizes]
    return counts, dataset.num_classes


def _members_and_test_set(setting: Setting, runs: Sequence[Trained], per_class: int | None) -> tuple[list[Member],
                                                                                                       Batches]:
    """The runs' final weights, and their test split prepared as they were trained (size, channels,
    normalisation), cut to ``per_class`` images per class (None: all) by the same fixed choice as training."""
    members = [load_member(run.out / "last.safetensors") for run in runs]
    first = members[0]
    if any((m.input_size, m.mean, m.std) != (first.input_size, first.mean, first.std) for m in members):
        raise ConfigError("the runs were trained with different preprocessing; evaluate them separately")
    c, h, _ = first.input_size
    dataset = load_dataset(runs[0].config["data"], data_dir=setting.data_dir, image_size=h, channels=c)
    dataset = dataclasses.replace(dataset, mean=first.mean, std=first.std)
    if per_class is not None:
        dataset = subsample_per_class(dataset, per_class, seed=0, split="test")
    return members, list(make_loader(dataset, "test", batch_size=500))


def _probabilities(member: Member, batches: Batches, views: str) -> torch.Tensor:
    """Class probabilities of the whole test set, averaged over ``views``."""
    kwargs = view_kwargs(views, member.input_size[1], member.mean, member.std)
    return torch.cat([tta(member.model, x, views, **kwargs) for x, _ in batches])


def _labels(batches: Batches) -> torch.Tensor:
    return torch.cat([y for _, y in batches])


# ---------------------------------------------------------------------------------------------
# transfer

# The four regimes, from training everything anew to reusing everything but the classifier.
TRANSFER_REGIMES: dict[str, dict[str, Any]] = {
    "scratch": {},
    # Cached features are computed once, from unaugmented images: no augmentation can reach them.
    "frozen + new head (cached)": dict(freeze="all-but-head", cache_features=True, augment="none"),
    "fine-tune last stage": dict(freeze="2", pretrained_lr_scale=0.1),  # stem and first two of three stages frozen
    "fine-tune all": dict(freeze="none", pretrained_lr_scale=0.1),
}


def _transfer_schedule(n_train: int, steps: int, min_epochs: int) -> tuple[int, int]:
    """Batch size and epochs for about ``steps`` optimizer steps on ``n_train`` images."""
    batch = min(n_train, 32, max(8, n_train // 4))  # the whole set when it holds fewer than 8 images
    return batch, min(200, max(min_epochs, math.ceil(steps / (n_train // batch))))


def _advised_regime(per_class: float, num_stages: int) -> str:
    """The regime closest to what ``--freeze auto`` (the case studies' advice) picks for this much data."""
    spec, _ = recommend(per_class, num_stages)
    return {"all-but-head": "frozen + new head (cached)", "none": "fine-tune all"}.get(spec, "fine-tune last stage")


@experiment("transfer", "Fashion-MNIST -> digits: scratch, frozen trunk, fine-tune last stage or all, by data size")
def transfer(setting: Setting) -> Result:
    model, weights, target = "resnet20", "fashion-mnist", "digits"  # target is fixed: setting.data is the source's
    sizes: tuple[int | None, ...] = setting.pick((5, 10), (10, 30, None), (1, 3, 10, 30, None))
    steps = setting.pick(4, 300, 1000)  # about this many optimizer steps per run
    min_epochs = setting.pick(1, 10, 10)
    seeds = setting.seed_list  # a seed also picks the training subset
    test_per_class = setting.pick(5, None, None)
    num_stages = len(create_model(model, num_classes=10, in_chans=1).stage_info)
    n_test = len(load_dataset(target).test) if test_per_class is None else None
    counts, num_classes = _train_sizes(target, None, sizes)
    planned, plan = [], {}
    for per_class, n_train in zip(sizes, counts, strict=True):
        batch, epochs = _transfer_schedule(n_train, steps, min_epochs)
        plan[_size_label(per_class)] = (n_train, batch, epochs)
        for regime, extra in TRANSFER_REGIMES.items():
            pretrained = {"weights": weights} if regime != "scratch" else {}
            planned += [Run(f"{_slug(regime)}-{_size_label(per_class)}", seed, model,
                            {**dict(data=target, image_size=28, batch_size=batch, epochs=epochs,
                                    train_per_class=per_class, test_per_class=test_per_class, augment="light",
                                    seed=seed, cache_dir=str(setting.out / "runs" / "features"), **pretrained),
                             **extra})
                        for seed in seeds]
    runs = setting.run_all(planned, "transfer")
    regime_of = {_slug(regime): regime for regime in TRANSFER_REGIMES}
    rows = []
    for (arm, seed), run in runs.items():
        slug, label = arm.rsplit("-", 1)
        n_train, batch, epochs = plan[label]
        rows.append({"per_class": label, "examples_per_class": n_train / num_classes, "n_train": n_train,
                     "regime": regime_of[slug], "seed": seed, "test_accuracy": run.test_accuracy, "epochs": epochs,
                     "batch_size": batch, "steps": run.steps, "seconds": run.seconds})
    acc = seed_values(runs)
    low, high = _size_label(sizes[0]), _size_label(sizes[-1])
    frozen_slug, tuned_slug = _slug("frozen + new head (cached)"), _slug("fine-tune all")
    verdicts = [
        compare(acc, f"{frozen_slug}-{low}", f"scratch-{low}", f"at {low} digits per class the frozen clothing "
                "trunk beats training from scratch"),
        compare(acc, f"{tuned_slug}-{high}", f"{frozen_slug}-{high}", f"with {high} digits per class fine-tuning "
                "everything beats the frozen trunk"),
    ]

    def mean(label: str, regime: str) -> float:
        return statistics.fmean(r["test_accuracy"] for r in rows if r["per_class"] == label and r["regime"] == regime)

    labels = [_size_label(s) for s in sizes]
    summary = []
    for label in labels:
        first = next(r for r in rows if r["per_class"] == label)
        accs = {regime: mean(label, regime) for regime in TRANSFER_REGIMES}
        summary.append({"per_class": label, "examples_per_class": first["examples_per_class"],
                        "n_train": first["n_train"], "accuracy": accs, "best": max(accs, key=accs.get),
                        "advised": _advised_regime(first["examples_per_class"], num_stages)})
    table = markdown_table(
        ["examples per class", "training images", *TRANSFER_REGIMES, "advice (--freeze auto)", "best"],
        [[s["per_class"] if s["per_class"] != "all" else f"all (~{s['examples_per_class']:.0f})", s["n_train"],
          *[f"**{a:.4f}**" if r == s["best"] else f"{a:.4f}" for r, a in s["accuracy"].items()],
          s["advised"], s["best"]] for s in summary], align="rr" + "r" * len(TRANSFER_REGIMES) + "ll")

    def draw(ax) -> None:
        xs = [s["examples_per_class"] for s in summary]
        for regime in TRANSFER_REGIMES:
            ax.plot(xs, [s["accuracy"][regime] for s in summary], marker="o", label=regime)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(xs, [s["per_class"] if s["per_class"] != "all" else f"all\n({x:.0f})" for s, x in
                           zip(summary, xs, strict=True)])
        ax.set(xlabel="training examples per class", ylabel="test accuracy",
               title=f"{model} pretrained on Fashion-MNIST, transferred to digits")
        ax.legend(fontsize=8)

    figure = plot(setting.out / "transfer.png", draw)
    matches = sum(s["best"] == s["advised"] for s in summary)
    n_eval = n_test or num_classes * test_per_class
    # Two binomial standard errors of the best accuracy at each size, in points, shrunk by the seeds averaged.
    ties = ", ".join(f"{200 * standard_error(a, n_eval * len(seeds)):.1f}"
                     for a in (max(s["accuracy"].values()) for s in summary))
    frozen = "frozen + new head (cached)"
    gaps = ", ".join(f"{100 * (max(s['accuracy'].values()) - s['accuracy'][frozen]):.1f}" for s in summary)
    notes = [
        f"source: the shipped {model} weights '{weights}' (Fashion-MNIST); target: scikit-learn's 8x8 digits "
        f"upsampled to 28x28, each transfer run with a new classifier; "
        + (f"{n_test} test images (one image = {100 / n_test:.2f} points)" if n_test else
           f"{test_per_class} test images per class"),
        f"about {steps} optimizer steps per run (batch min(32, n/4), at least {min_epochs} epochs), SGD at the "
        "recipe's lr 0.1, pretrained layers that still train at 0.01; `light` augmentation as in the old "
        "benchmark, whose mirror flips are no digit's natural variation (a handicap shared by every regime)",
        f"seeds {', '.join(map(str, seeds))} (a seed also draws the training subset); accuracies are the mean over "
        "them, each the last epoch's",
        f"the advice's regime was the measured best at {matches} of {len(summary)} sizes; the frozen trunk + new "
        f"head stayed behind the best regime by {gaps} points (by size, smallest first)",
        f"regimes closer than two standard errors of the best accuracy on {n_eval} test images ({ties} points by "
        f"size, {len(seeds)} seed(s)) are a tie at this budget; the verdicts pair the regimes seed by seed",
        "--freeze auto would freeze the stem and the first stage for 100-1000 examples per class; the nearest "
        "regime here, fine-tune last stage, freezes two of the three stages",
    ]
    return Result("transfer", "with little data freeze all but the head; with more, fine-tune more layers; with a "
                  "lot, fine-tune everything or train from scratch", table,
                  {"model": model, "weights": weights, "target": target, "steps": steps, "seeds": list(seeds),
                   "summary": summary, "runs": rows}, figure, notes, verdicts=verdicts)


# ---------------------------------------------------------------------------------------------
# transfer between disjoint classes of one dataset

SPLIT_REGIMES = ("scratch", "frozen + new head (cached)", "fine-tune all")


def split_folders(setting: Setting) -> tuple[Path, Path, list[str], list[str]]:
    """The dataset cut into two disjoint halves of its classes, written as IDX folders under ``out/data``.

    Source: the first half of the classes (Fashion-MNIST: T-shirt/top, trouser, pullover, dress,
    coat), labels 0.. as they are. Target: the other half (sandal, shirt, sneaker, bag, ankle boot),
    keeping their labels, so that a target classifier has every label's output and the
    source's five-way classifier never fits it: each transfer run gets a new, seeded head (the
    outputs of the absent source labels are trained towards zero alike in every regime).
    """
    from convnets.data.idx import write_idx

    dataset = load_dataset(setting.data, data_dir=setting.data_dir)
    half = dataset.num_classes // 2
    folders = (setting.out / "data" / "source", setting.out / "data" / "target")
    for folder, keep in zip(folders, (range(half), range(half, dataset.num_classes)), strict=True):
        if (folder / "t10k-labels-idx1-ubyte").exists():
            continue  # written by an earlier (interrupted) run of the experiment: the same bytes
        folder.mkdir(parents=True, exist_ok=True)
        for split, prefix in ((dataset.train, "train"), (dataset.test, "t10k")):
            mask = torch.isin(split.labels, torch.tensor(list(keep)))
            images = split.images[mask]
            images = images[:, 0] if images.shape[1] == 1 else images.permute(0, 2, 3, 1)
            write_idx(folder / f"{prefix}-images-idx3-ubyte", images.contiguous().numpy())
            # Labels last: their presence marks a complete folder.
            write_idx(folder / f"{prefix}-labels-idx1-ubyte", split.labels[mask].to(torch.uint8).numpy())
    names = list(dataset.classes)
    return folders[0], folders[1], names[:half], names[half:]


@experiment("transfer-split", "pretrain on half of Fashion-MNIST's classes, transfer to the other half with 1-100 "
            "images per class: scratch, frozen trunk, fine-tune all")
def transfer_split(setting: Setting) -> Result:
    model = "resnet20"
    source, target, source_names, target_names = split_folders(setting)
    sizes = setting.pick((1, 5), (1, 10, 100), (1, 3, 10, 30, 100))
    steps = setting.pick(4, 150, 1000)  # about this many optimizer steps per transfer run
    pretrain = setting.pick(dict(epochs=1, batch_size=16, train_per_class=10, test_per_class=5),
                            dict(epochs=3, test_per_class=200), dict(epochs=30))
    (source_run,) = setting.run_all([Run("source", 0, model, dict(data=str(source), seed=0, **pretrain))],
                                    "transfer-split pretraining").values()
    weights = str(source_run.out / "last.safetensors")
    planned = []
    for per_class in sizes:
        n_train = per_class * len(target_names)
        batch, epochs = _transfer_schedule(n_train, steps, 1)
        for regime in SPLIT_REGIMES:
            extra = {**TRANSFER_REGIMES[regime], **({"weights": weights} if regime != "scratch" else {})}
            planned += [Run(f"{_slug(regime)}-{per_class}", seed, model,
                            {**dict(data=str(target), batch_size=batch, epochs=epochs, train_per_class=per_class,
                                    test_per_class=setting.pick(2, 20, 100), augment="standard", seed=seed,
                                    cache_dir=str(setting.out / "runs" / "features")), **extra})
                        for seed in setting.seed_list]
    runs = setting.run_all(planned, "transfer-split")
    # Each run on every target test image, prepared as it trained (pretrained runs normalise by the source's
    # statistics, runs from scratch by the target's own).
    acc: dict[str, dict[int, float]] = {}
    for (arm, seed), run in runs.items():
        (member,), batches = _members_and_test_set(setting, [run], setting.pick(5, None, None))
        labels = _labels(batches)
        acc.setdefault(arm, {})[seed] = scores(_probabilities(member, batches, "none"), labels).accuracy
    slugs = {regime: _slug(regime) for regime in SPLIT_REGIMES}
    table = markdown_table(
        ["images per class", *[f"{r} (accuracy, %)" for r in SPLIT_REGIMES], "frozen - scratch (paired)",
         "frozen - fine-tune all (paired)"],
        [[str(n), *[arm_interval(acc[f"{slugs[r]}-{n}"]) for r in SPLIT_REGIMES],
          arm_interval(_paired(acc, f"{slugs[SPLIT_REGIMES[1]]}-{n}", f"{slugs['scratch']}-{n}")),
          arm_interval(_paired(acc, f"{slugs[SPLIT_REGIMES[1]]}-{n}", f"{slugs['fine-tune all']}-{n}"))]
         for n in sizes])
    frozen, tuned, scratch = (slugs[SPLIT_REGIMES[1]], slugs["fine-tune all"], slugs["scratch"])
    low, high = sizes[0], sizes[-1]
    verdicts = [
        compare(acc, f"{frozen}-{low}", f"{scratch}-{low}", f"at {low} image(s) per class the frozen trunk beats "
                "training from scratch"),
        compare(acc, f"{frozen}-{low}", f"{tuned}-{low}", f"at {low} image(s) per class the frozen trunk beats "
                "fine-tuning everything"),
        compare(acc, f"{tuned}-{high}", f"{frozen}-{high}", f"at {high} images per class fine-tuning everything "
                "beats the frozen trunk"),
    ]

    def draw(ax) -> None:
        for regime in SPLIT_REGIMES:
            ivs = [mean_interval(list(acc[f"{slugs[regime]}-{n}"].values())) for n in sizes]
            ax.errorbar(sizes, [i.mean for i in ivs], yerr=[i.half_width if math.isfinite(i.half_width) else 0
                                                            for i in ivs], marker="o", capsize=3, label=regime)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(list(sizes), [str(n) for n in sizes])
        ax.set(xlabel="labelled target images per class", ylabel="test accuracy (mean, 95% interval)",
               title=f"{model}: pretrained on {len(source_names)} classes, transferred to the other "
               f"{len(target_names)}")
        ax.legend(fontsize=8)

    figure = plot(setting.out / "transfer-split.png", draw)
    first = next(iter(runs.values()))
    notes = [
        f"source classes: {', '.join(source_names)} ({source_run.config['epochs']} epochs, source test accuracy "
        f"{source_run.test_accuracy:.4f}, one pretraining seed); target classes: {', '.join(target_names)}",
        f"about {steps} optimizer steps per transfer run, SGD at the recipe's lr 0.1 (pretrained layers that still "
        f"train at 0.01), augment standard; accuracy of the last weights on "
        f"{'all' if setting.budget != 'tiny' else 'a few'} target test images; mean [95% interval] over "
        f"{setting.seeds} seed(s), a seed drawing the labelled images, the head's initialisation and the order",
        f"the target keeps its labels ({', '.join(map(str, range(len(source_names), 2 * len(source_names))))}), so "
        "every regime has a new classifier; its outputs for the absent source labels are a handicap shared by all",
        f"batch {first.config['batch_size']} at the smallest size; the frozen regime trains the head on cached "
        "features of the unaugmented images",
    ]
    return Result("transfer-split", "features learnt on some classes transfer to new classes of the same domain: "
                  "with very few labelled images a frozen trunk and a new head win; with more, fine-tuning wins",
                  table, {"model": model, "sizes": list(sizes), "steps": steps, "accuracy": acc,
                          "source_classes": source_names, "target_classes": target_names,
                          "source_accuracy": source_run.test_accuracy}, figure, notes, verdicts=verdicts)


def _paired(acc: dict[str, dict[int, float]], arm: str, reference: str) -> dict[int, float]:
    return {seed: acc[arm][seed] - acc[reference][seed] for seed in acc[reference] if seed in acc[arm]}


# ---------------------------------------------------------------------------------------------
# augmentation


def augmentation_plan(setting: Setting) -> tuple[list[Run], dict[str, dict[str, Any]], int]:
    """The runs of the augmentation experiment, the data sizes by label, and the steps of every run.

    resnet20 (He et al.'s CIFAR net, 0.27M parameters) overfits 1% of Fashion-MNIST within a few hundred
    steps, where LeNet-5 underfits: the claim is about a network that can overfit. Every run takes the
    same optimizer steps, so that the small-data runs are not simply trained less.
    """
    model = "resnet20"
    sizes: tuple[int | None, ...] = setting.pick((5, 20), (60, 600, None), (60, 600, None))
    presets = setting.pick(("none", "standard"), ("none", "standard"), AUGMENT_PRESETS)
    batch = setting.pick(16, 128, 128)
    # small: 400 steps of 128 (100 epochs of 1% = 600 images, 9 of 10%, one of all 60,000: 468 steps, as the
    # epochs round), 18 runs (wall time in docs/RESULTS.md); full: 30 epochs of all.
    steps = setting.pick(6, 400, 30 * 468)
    monitor = setting.pick(5, 20, 100)  # test images per class evaluated after each epoch (the curves only)
    (n_all, *counts), _ = _train_sizes(setting.data, setting.data_dir, (None, *sizes))
    sizes_by_label: dict[str, dict[str, Any]] = {}
    runs = []
    for per_class, n_train in zip(sizes, counts, strict=True):
        size_batch = min(batch, n_train)
        epochs = max(1, round(steps / (n_train // size_batch)))
        label = _size_label(per_class)
        sizes_by_label[label] = {"per_class": per_class, "n_train": n_train, "fraction": n_train / n_all,
                                 "epochs": epochs, "batch_size": size_batch}
        runs += [Run(f"{preset}-{label}", seed, model,
                     dict(augment=preset, epochs=epochs, batch_size=size_batch, train_per_class=per_class,
                          test_per_class=monitor, seed=seed))
                 for preset in presets for seed in setting.seed_list]
    return runs, sizes_by_label, steps


@experiment("augmentation", "no vs standard augmentation (all four presets at full) on resnet20 with 1%, 10% and "
            "100% of the training data")
def augmentation(setting: Setting) -> Result:
    planned, plan, steps = augmentation_plan(setting)
    model = planned[0].model
    presets = list(dict.fromkeys(r.config["augment"] for r in planned))
    final = setting.pick(5, None, None)  # the reported accuracy: the last weights on this many per class (None: all)
    runs = setting.run_all(planned, "augmentation")
    members, batches = _members_and_test_set(setting, list(runs.values()), final)
    labels = _labels(batches)
    acc: dict[str, dict[int, float]] = {}
    for (arm, seed), member in zip(runs, members, strict=True):
        acc.setdefault(arm, {})[seed] = scores(_probabilities(member, batches, "none"), labels).accuracy
    train_acc = seed_values(runs, lambda run: run.rows[-1]["train_acc"])
    sizes_l = list(plan)

    def header(label: str) -> str:
        p = plan[label]
        return f"{100 * p['fraction']:.3g}% ({p['n_train']:,} images)"

    def gain(preset: str, s: str) -> dict[int, float]:
        """The paired gain of ``preset`` over none at size ``s``, by seed."""
        return {seed: acc[f"{preset}-{s}"][seed] - acc[f"none-{s}"][seed] for seed in acc[f"none-{s}"]}

    others = [p for p in presets if p != "none"]
    table = markdown_table(["augmentation (accuracy, %)", *map(header, sizes_l)],
                           [[preset, *[arm_interval(acc[f"{preset}-{s}"]) for s in sizes_l]] for preset in presets]
                           + [[f"{p} - none (paired, points)", *[arm_interval(gain(p, s)) for s in sizes_l]]
                              for p in others])
    smallest, largest = sizes_l[0], sizes_l[-1]
    gains = {s: gain("standard", s) for s in sizes_l}
    verdicts = [
        compare(acc, f"standard-{smallest}", f"none-{smallest}",
                f"standard augmentation raises accuracy at {header(smallest)}", claimed=+1),
        compare({"smallest": gains[smallest], "largest": gains[largest]}, "smallest", "largest",
                f"its gain at {header(smallest)} exceeds its gain at {header(largest)}", claimed=+1),
    ]

    def draw(axes) -> None:
        xs = [100 * plan[s]["fraction"] for s in sizes_l]
        for preset in presets:
            axes[0].plot(xs, [statistics.fmean(acc[f"{preset}-{s}"].values()) for s in sizes_l], marker="o",
                         label=preset)
            if preset != "none":
                diffs = [mean_interval(list(gain(preset, s).values())) for s in sizes_l]
                axes[1].errorbar(xs, [100 * d.mean for d in diffs],
                                 yerr=[100 * d.half_width if math.isfinite(d.half_width) else 0 for d in diffs],
                                 marker="o", capsize=3, label=preset)
        axes[1].axhline(0, color="grey", lw=1)
        axes[0].set(ylabel="test accuracy (mean over seeds)", title=f"{model} on {setting.data}, {steps} steps per run")
        axes[1].set(ylabel="points over no augmentation", title="paired gain over none, 95% interval")
        for ax in axes:
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(xs, [f"{x:.3g}%" for x in xs])
            ax.set_xlabel("fraction of the training data")
            ax.legend(fontsize=8)

    figure = plot(setting.out / "augmentation.png", draw, panels=2, size=(6, 4.2))

    def fit(s: str) -> str:
        return ", ".join(f"{p} {statistics.fmean(train_acc[f'{p}-{s}'].values()):.3f}/"
                         f"{statistics.fmean(acc[f'{p}-{s}'].values()):.3f}" for p in presets)

    notes = [
        f"every run takes about {steps} optimizer steps: " + ", ".join(
            f"{plan[s]['epochs']} epoch(s) of {plan[s]['n_train']:,} at batch {plan[s]['batch_size']}"
            for s in sizes_l) + f"; {model}'s recipe otherwise (SGD 0.1, cosine)",
        "accuracy: the last weights on " + ("all" if final is None else f"{final} per class of the")
        + f" test images ({len(labels):,}); each cell mean [95% interval] over {setting.seeds} seed(s); a seed "
        "draws the training subset, the initialisation and the data order, the same for both presets",
        f"last-epoch training accuracy (augmented batches) / test accuracy, means: at {header(smallest)}: "
        f"{fit(smallest)}; at {header(largest)}: {fit(largest)}",
        "a longer schedule at 100% would be the next lever: there every run sees each image about once",
    ]
    rows = [{"arm": arm, "seed": seed, "test_accuracy": value, "train_accuracy": train_acc[arm][seed],
             "steps": runs[arm, seed].steps, "seconds": runs[arm, seed].seconds}
            for arm, values in acc.items() for seed, value in values.items()]
    return Result("augmentation", "augmentation helps most when data is scarce", table,
                  {"model": model, "data": setting.data, "steps": steps, "sizes": plan, "presets": presets,
                   "accuracy": acc, "runs": rows}, figure, notes, verdicts=verdicts)


# ---------------------------------------------------------------------------------------------
# ensembles and multi-crop

# The test-time views compared: the library's three, and ten-crop with 1-pixel shifts (see the ensemble notes).
VIEWS = ("none", "mirror", "ten-crop", "ten-crop 1px")


def _view_args(view: str, member: Member) -> tuple[str, dict[str, Any]]:
    """The library's view name and keyword arguments of ``view`` for ``member``'s images."""
    h = member.input_size[1]
    if view == "ten-crop 1px":
        return "ten-crop", {**view_kwargs("ten-crop", h, member.mean, member.std), "pad": 1}
    return view, view_kwargs(view, h, member.mean, member.std)


def _models(k: int) -> str:
    return f"{k} model{'s' if k > 1 else ''}"


@experiment("ensemble", "1, 3 and 5 averaged models and 1, 2 and 10 test-time views against their inference cost")
def ensemble(setting: Setting) -> Result:
    model = setting.pick("lenet5", "lenet5", "resnet20")
    sizes = setting.pick((1, 3), (1, 3, 5), (1, 3, 5))
    pool = max(sizes)  # models per replicate: replicate s ensembles its own first k, so replicates share no model
    # Trained with pad-and-crop and mirrors (augment=standard), so that the test-time views are ones
    # the models saw in training; the recipe (epochs, optimizer) otherwise. The full budget keeps the
    # 30 epochs resnet20's recipe had before it was fitted to a 10-minute CPU run (8).
    # small: half lenet5's recipe (4 of 8 epochs), 15 models (wall time in docs/RESULTS.md).
    budget = setting.pick(dict(epochs=1, batch_size=32, train_per_class=20, test_per_class=5),
                          dict(epochs=4, test_per_class=100), dict(epochs=30))
    final = setting.pick(5, None, None)
    rounds = setting.pick(2, 7, 10)  # timing rounds, every configuration once per round
    planned = [Run(f"member{i}", rep, model, dict(augment="standard", seed=rep * pool + i, **budget))
               for rep in setting.seed_list for i in range(pool)]
    runs = setting.run_all(planned, "ensemble")
    members, batches = _members_and_test_set(setting, list(runs.values()), final)
    member = dict(zip(runs, members, strict=True))
    labels = _labels(batches)
    probs = {(key, v): torch.cat([tta(m.model, x, *_view_args(v, m)[:1], **_view_args(v, m)[1]) for x, _ in batches])
             for key, m in member.items() for v in VIEWS}
    first = members[0]
    c, h, _ = first.input_size
    macs = count(first.model, first.input_size).macs
    # acc["k x view"][replicate]: replicate s averages the probabilities of its members 0..k-1.
    acc: dict[str, dict[int, float]] = {}
    for k in sizes:
        for v in VIEWS:
            for rep in setting.seed_list:
                logp = [probs[(f"member{i}", rep), v].clamp_min(1e-12).log() for i in range(k)]
                acc.setdefault(f"{k} x {v}", {})[rep] = scores(combine_outputs(logp, "prob", torch.full((k,), 1 / k)),
                                                               labels).accuracy
    # Each of the ten views alone (one model, the library's ten-crop): which crops lose accuracy.
    single_views = {}
    for rep in setting.seed_list:
        m = member["member0", rep]
        name, kwargs = _view_args("ten-crop", m)
        stacked = [tta_views(x, name, **kwargs) for x, _ in batches]
        with torch.no_grad():
            for j in range(10):
                pred = torch.cat([m.model(views[j]).argmax(1) for views in stacked])
                single_views.setdefault(j, {})[rep] = (pred == labels).float().mean().item()

    x = batches[0][0][:256]  # the timing batch
    nets = {k: Ensemble([member[f"member{i}", 0].model for i in range(k)], combine="logit").eval() for k in sizes}
    configs = [(k, v) for k in sizes for v in VIEWS]
    times: dict[tuple[int, str], list[float]] = {cfg: [] for cfg in configs}
    for _ in range(rounds):  # interleaved, so that load from other processes falls on every configuration alike
        for k, v in configs:
            name, kwargs = _view_args(v, first)
            times[k, v].append(median_latency_ms(lambda k=k, name=name, kwargs=kwargs: tta(nets[k], x, name, **kwargs),
                                                 repeats=3, warmup=1))
    rows = []
    for k, v in configs:
        name, kwargs = _view_args(v, first)
        n_views = tta_views(x[:1], name, **kwargs).shape[0]
        iv = mean_interval(list(acc[f"{k} x {v}"].values()))
        rows.append({"models": k, "views": v, "n_views": n_views, "cost": k * n_views,
                     "macs_per_image": k * n_views * macs, "ms_per_image": statistics.median(times[k, v]) / len(x),
                     "accuracy": iv.mean, "interval": iv.to_dict(), "by_replicate": acc[f"{k} x {v}"]})
    base = rows[0]
    for r in rows:
        r["gain_points"] = 100 * (r["accuracy"] - base["accuracy"])
        r["measured_cost"] = r["ms_per_image"] / base["ms_per_image"]
    table = markdown_table(
        ["models", "test-time views", "cost (models x views)", "MACs per image", "ms per image (measured)",
         "accuracy (%, mean [95% CI])", "gain (points, paired)"],
        [[r["models"], r["views"], f"{r['cost']}x", f"{r['macs_per_image'] / 1e6:.2f}M",
          f"{r['ms_per_image']:.4f} ({r['measured_cost']:.1f}x)", Interval(**r["interval"]).format(100),
          arm_interval({s: acc[f"{r['models']} x {r['views']}"][s] - acc["1 x none"][s] for s in setting.seed_list})
          if r is not base else ""] for r in rows])
    most = max(sizes)
    verdicts = [
        compare(acc, f"{most} x none", "1 x none", f"an ensemble of {most} beats one model"),
        compare(acc, "1 x mirror", "1 x none", "mirror views help one model"),
        compare(acc, "1 x ten-crop", "1 x none", "ten-crop views help one model"),
    ]

    def draw(axes) -> None:
        for ax, key, xlabel in ((axes[0], "cost", "inference cost: models x views (counted MACs, relative)"),
                                (axes[1], "ms_per_image", "measured ms per image (this CPU)")):
            for k in sizes:
                sel = [r for r in rows if r["models"] == k]
                ax.plot([r[key] for r in sel], [r["accuracy"] for r in sel], marker="o", label=_models(k))
                for r in sel:  # the colour says how many models; the label which views
                    ax.annotate(r["views"], (r[key], r["accuracy"]), fontsize=7, xytext=(3, -9),
                                textcoords="offset points")
            ax.set(xscale="log", xlabel=xlabel, ylabel="test accuracy (mean over replicates)")
            ax.minorticks_off()
            ax.legend(fontsize=8)
        costs = sorted({r["cost"] for r in rows})
        axes[0].set_xticks(costs, [f"{c}x" for c in costs])
        axes[0].set_title(f"{model} on {setting.data}: ensembles and test-time views")

    figure = plot(setting.out / "ensemble.png", draw, panels=2, size=(6, 4.4))
    pad = view_kwargs("ten-crop", h, first.mean, first.std)["pad"]
    shift = round(get_preset("standard").pad_crop * h)  # the training's largest shift, as the Augmenter rounds it
    names = ["centre", "top-left", "top-right", "bottom-left", "bottom-right"]
    view_acc = {j: statistics.fmean(single_views[j].values()) for j in range(10)}
    centre, corners = view_acc[0], statistics.fmean(view_acc[j] for j in (1, 2, 3, 4))
    crop_gap = mean_interval([acc["1 x ten-crop 1px"][s] - acc["1 x ten-crop"][s] for s in setting.seed_list])
    notes = [
        f"{len(planned)} {model} models trained alike (augment=standard: mirrors and pad-and-crop) but for the seed: "
        f"{setting.seeds} replicate(s) of {pool}, each replicate's k-model ensemble its own first k members (no "
        f"model shared between replicates); one {model} costs {macs:,} MACs per {c}x{h}x{h} image",
        f"accuracy: members' view-averaged probabilities, averaged across members (combine_outputs 'prob'), on "
        f"{len(labels):,} test images; mean [95% interval] over the replicates; gains paired by replicate",
        f"ten-crop (evaluate.view_kwargs) pads {h}x{h} images by {pad} px of black (1/8 of the side) and crops back "
        f"at the centre and the corners: each corner moves the object {pad} px on both axes, a shift the training's "
        f"pad-and-crop (up to {shift} px per axis) drew for that corner once in {(2 * shift + 1) ** 2} images",
        "each view alone (one model, mean over replicates): "
        + ", ".join(f"{n} {100 * view_acc[j]:.2f}%" for j, n in enumerate(names))
        + f"; the corners average {100 * (corners - centre):+.2f} points against the centre: "
        + ("the loss is the shifted corners" if corners < centre else "the corners do not lose against the centre"),
        f"the same ten views with 1-pixel shifts ('ten-crop 1px') against the 1/8-pad ten-crop: "
        f"{crop_gap.format(100)} points (paired); the most accurate views for one model here: "
        f"{max(VIEWS[1:], key=lambda v: statistics.fmean(acc[f'1 x {v}'].values()))}",
        f"ms per image: one Ensemble forward over all the views of a batch of {len(x)}, the median of {rounds} "
        f"interleaved rounds, {torch.get_num_threads()} thread(s)",
    ]
    return Result("ensemble", "ensembles and multi-crop buy a little accuracy for a multiplied inference cost: "
                  "worth it in benchmarks and competitions, rarely in production", table,
                  {"model": model, "data": setting.data, "models": len(planned), "pool": pool,
                   "macs_one_model": macs, "rows": rows, "single_views": single_views}, figure, notes,
                  verdicts=verdicts)
