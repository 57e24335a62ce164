"""Architecture experiments: the inception module's 1x1 bottleneck, and EfficientNet's compound scaling.

Counted MACs come from :func:`convnets.count` on the real modules; times are medians of forward
passes on the machine the experiment runs on; accuracies come from training runs on
Fashion-MNIST (or ``--data``) under one budget per comparison.
"""

from __future__ import annotations

import statistics
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from convnets.analysis import count
from convnets.data.datasets import Dataset, load_dataset
from convnets.experiments import (
    Result,
    Run,
    Setting,
    Trained,
    compare,
    experiment,
    markdown_table,
    plot,
    seed_values,
    standard_error,
)
from convnets.experiments.stats import Interval, mean_interval
from convnets.export import median_latency_ms
from convnets.layers import ClassifierHead, ConvBNAct
from convnets.models.base import ConvNet, StageInfo
from convnets.models.efficientnet import ALPHA, B0_STAGES, BETA, GAMMA, EfficientNet, Scaling
from convnets.models.inception import GOOGLENET_STAGES, InceptionModule, InceptionSpec


def _interleaved_ms(modules: dict[str, nn.Module], x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median forward time (ms) of each module on ``x``, timed in turns.

    One pass of each per round, so that a load on the shared machine slows all of them alike
    instead of whichever happened to be measured at the time.
    """
    runs = {}
    for name, module in modules.items():
        module.eval()

        def run(module: nn.Module = module) -> None:
            with torch.inference_mode():
                module(x)

        runs[name] = run
    times: dict[str, list[float]] = {name: [] for name in modules}
    for run in runs.values():
        median_latency_ms(run, repeats=1, warmup=2)
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(median_latency_ms(run, repeats=1, warmup=0))
    return {name: statistics.median(t) for name, t in times.items()}


def _set_threads(setting: Setting) -> None:
    # Timings obey --threads as the training runs do: on a shared machine 1 thread is the steady measure.
    if setting.threads:
        torch.set_num_threads(setting.threads)


def _recipe(setting: Setting, *, epochs: int, train_per_class: int | None, test_per_class: int | None,
            label_smoothing: float) -> dict[str, Any]:
    """The training settings shared by every arm of a comparison, so that only the network differs.

    AdamW with a cosine schedule is forgiving of the learning rate on short runs; no augmentation
    at the CPU budgets, whose few epochs leave the nets underfitted rather than overfitted.
    ``train_per_class`` and ``test_per_class`` apply to the small budget (tiny uses a handful,
    full the whole dataset).
    """
    # tiny: one epoch of 6 steps (no max_steps: Setting.train needs the epoch's metrics line).
    return dict(
        epochs=epochs,
        batch_size=setting.pick(16, 128, 128),
        train_per_class=setting.pick(10, train_per_class, None),
        test_per_class=setting.pick(5, test_per_class, None),
        optimizer="adamw", lr=2e-3, weight_decay=0.05, schedule="cosine",
        warmup_epochs=setting.pick(0, min(0.3, epochs / 5), 1), label_smoothing=label_smoothing,
        augment=setting.pick("none", "none", "standard"), seed=0,
        # On a CPU with native bf16, "auto" autocasts to bf16, which trains nets this small 2-3x
        # slower than fp32 (measured at 1 thread); the GPU budget keeps the default.
        precision=setting.pick("fp32", "fp32", "auto"),
    )


def _dataset(setting: Setting) -> Dataset:
    return load_dataset(setting.data, data_dir=setting.data_dir)


def _noise(accuracy: float, data: Dataset, test_per_class: int | None) -> float:
    """The binomial standard error of a test accuracy: gaps within about twice it are noise."""
    n = min(len(data.test), test_per_class * data.num_classes) if test_per_class else len(data.test)
    return standard_error(accuracy, n)


def _millions(n: float) -> str:
    return f"{n / 1e6:,.2f}M"


# ------------------------------------------------------------------------------------------ bottleneck

COURSE_MODULE = GOOGLENET_STAGES[0][0]  # GoogLeNet's 3a: its 5x5 branch is the course's 28x28x192 -> 32 example
COURSE_INPUT = (192, 28, 28)

# GoogLeNet's first three modules (3a, 3b, 4a) at a quarter of their widths, for a network that
# trains on a CPU: two modules at 14x14, a max-pool, one at 7x7.
QUARTER_STAGES: tuple[tuple[InceptionSpec, ...], ...] = (
    (InceptionSpec("3a", 16, 24, 32, 4, 8, 8), InceptionSpec("3b", 32, 32, 48, 8, 24, 16)),
    (InceptionSpec("4a", 48, 24, 52, 4, 12, 16),),
)
QUARTER_STEM = 48  # a quarter of GoogLeNet's 192 stem channels


class _SmallInception(ConvNet):
    """A 3x3 stem conv and max-pool, inception modules in stages with max-pools between, pooled linear head.

    ``bottleneck`` picks the module kind and is the only difference between the two networks the
    experiment trains. The modules use BatchNorm (torchvision's variant) so that both train under
    one recipe without the original's careful start; the "5x5" branch keeps its real 5x5 kernel.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, *, bottleneck: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(OrderedDict(conv=ConvBNAct(in_chans, QUARTER_STEM, 3), pool=nn.MaxPool2d(2)))
        width, reduction, built, info = QUARTER_STEM, 2, [], []
        for i, specs in enumerate(QUARTER_STAGES):
            stage: OrderedDict[str, nn.Module] = OrderedDict()
            if i > 0:
                stage["pool"] = nn.MaxPool2d(2)
                reduction *= 2
            for spec in specs:
                module = InceptionModule(width, spec, bottleneck=bottleneck, batch_norm=True)
                stage[spec.name] = module
                width = module.out_channels
            built.append(nn.Sequential(stage))
            info.append(StageInfo(f"stages.{i}", width, reduction))
        self.stages = nn.Sequential(*built)
        self.head = ClassifierHead(width, num_classes)
        self._finish(in_chans=in_chans, stage_info=info, input_size=(in_chans, 28, 28), min_input_size=reduction)


def small_inception(num_classes: int = 10, in_chans: int = 1, *, bottleneck: bool = True) -> ConvNet:
    """GoogLeNet's modules 3a, 3b and 4a at a quarter width on a one-conv stem (the bottleneck experiment's net)."""
    return _SmallInception(num_classes, in_chans, bottleneck=bottleneck)


def _cost_rows(setting: Setting) -> list[dict[str, Any]]:
    """Counted MACs, parameters and interleaved forward times of the 5x5 branch and of module 3a, both ways."""
    batch = setting.pick(1, 8, 8)
    rounds = setting.pick(3, 30, 100)
    modules = {kind: InceptionModule(COURSE_INPUT[0], COURSE_MODULE, bottleneck=kind == "bottleneck")
               for kind in ("naive", "bottleneck")}
    parts = {f"{part} {kind}": module.branch5x5 if part == "5x5 branch" else module
             for part in ("5x5 branch", "module 3a") for kind, module in modules.items()}
    ms = _interleaved_ms(parts, torch.randn(batch, *COURSE_INPUT), rounds)
    rows = []
    for name, module in parts.items():
        c = count(module, COURSE_INPUT)
        part, kind = name.rsplit(" ", 1)
        rows.append({"part": part, "kind": kind, "macs": c.macs, "params": c.params,
                     "out_channels": c.output_shape[1], "ms": ms[name], "batch": batch})
    return rows


def _train_inception(setting: Setting) -> dict[tuple[str, int], Trained]:
    # small: 1,000 images per class for 2 epochs (312 steps), both nets x 3 seeds (wall time in docs/RESULTS.md).
    recipe = _recipe(setting, epochs=setting.pick(1, 2, 20), train_per_class=1000, test_per_class=None,
                     label_smoothing=0.0)
    return setting.run_all([Run(f"inception-{kind}", seed, "small_inception", {
        **recipe, "seed": seed, "model_kwargs": {"bottleneck": kind == "bottleneck"}}, builder=small_inception)
        for kind in ("naive", "bottleneck") for seed in setting.seed_list], "bottleneck")


@experiment("bottleneck", "the inception 5x5 branch with a 1x1 bottleneck: ~10x fewer MACs, no accuracy lost")
def bottleneck(setting: Setting) -> Result:
    _set_threads(setting)
    costs = _cost_rows(setting)
    runs = _train_inception(setting)
    acc = {arm.removeprefix("inception-"): values for arm, values in seed_values(runs).items()}
    trained = {arm.removeprefix("inception-"): run for (arm, seed), run in runs.items() if seed == 0}
    nets = []
    for kind, run in trained.items():
        net = small_inception(10, 1, bottleneck=kind == "bottleneck")
        c = count(net, (1, 28, 28))
        widths = [m.out_channels for m in net.modules() if isinstance(m, InceptionModule)]
        mine = [r for (arm, _), r in runs.items() if arm == f"inception-{kind}"]
        nets.append({"kind": kind, "params": c.params, "macs": c.macs, "module_widths": widths,
                     "test_accuracy": statistics.fmean(acc[kind].values()), "by_seed": acc[kind],
                     "interval": mean_interval(list(acc[kind].values())).to_dict(),
                     "train_seconds": statistics.fmean(r.seconds for r in mine), "steps": run.steps,
                     "elapsed": [r["elapsed"] for r in run.rows], "test_acc_curve": [r["test_acc"] for r in run.rows]})
    by = {(r["part"], r["kind"]): r for r in costs}
    cost_table = markdown_table(
        ["28x28x192 input", "kind", "MACs", "params", "out channels", f"ms (batch {costs[0]['batch']})",
         "MACs naive / bottleneck"],
        [[r["part"], r["kind"], f"{r['macs']:,}", f"{r['params']:,}", r["out_channels"], f"{r['ms']:.2f}",
          f"{by[(r['part'], 'naive')]['macs'] / r['macs']:.2f}x" if r["kind"] == "bottleneck" else ""]
         for r in costs])
    net_table = markdown_table(
        ["small inception net (28x28x1)", "params", "MACs", "test accuracy (%, mean [95% CI])",
         "training seconds (mean)", "steps"],
        [[n["kind"], f"{n['params']:,}", f"{n['macs']:,}", Interval(**n["interval"]).format(100),
          f"{n['train_seconds']:.0f}", n["steps"]] for n in nets])

    def draw(axes) -> None:
        ax = axes[0]
        labels = ["5x5 branch", "module 3a"]
        for i, kind in enumerate(("naive", "bottleneck")):
            xs = [j + (i - 0.5) * 0.38 for j in range(len(labels))]
            bars = ax.bar(xs, [by[(p, kind)]["macs"] / 1e6 for p in labels], width=0.38, label=f"{kind}: MACs")
            for x, p in zip(xs, labels, strict=True):
                ax.annotate(f"{by[(p, kind)]['ms']:.1f} ms", (x, by[(p, kind)]["macs"] / 1e6), ha="center",
                            va="bottom", fontsize=8, color=bars[0].get_facecolor())
        ax.set_xticks(range(len(labels)), labels)
        ax.set(ylabel="MACs (millions)", title="28x28x192 input (labels: measured time)")
        ax.legend(fontsize=8)
        ax = axes[1]
        for n in nets:
            ax.plot(n["elapsed"], n["test_acc_curve"], marker="o",
                    label=f"{n['kind']}: {_millions(n['macs'])} MACs, {n['params'] / 1e3:.0f}K params")
        ax.set(xlabel="training seconds (a point per epoch)", ylabel="test accuracy",
               title=f"small inception net on {setting.data}, same epochs and seed")
        ax.legend(fontsize=8)

    figure = plot(setting.out / "bottleneck.png", draw, panels=2)
    branch = by[("5x5 branch", "naive")]["macs"] / by[("5x5 branch", "bottleneck")]["macs"]
    time_ratio = by[("5x5 branch", "naive")]["ms"] / by[("5x5 branch", "bottleneck")]["ms"]
    module_time = by[("module 3a", "naive")]["ms"] / by[("module 3a", "bottleneck")]["ms"]
    naive, neck = nets
    gap = neck["test_accuracy"] - naive["test_accuracy"]
    noise = _noise(naive["test_accuracy"], _dataset(setting), trained["naive"].config["test_per_class"])
    notes = [
        f"5x5 branch: {branch:.2f}x fewer counted MACs with the bottleneck, {time_ratio:.2f}x faster measured; "
        f"whole module 3a: {by[('module 3a', 'naive')]['macs'] / by[('module 3a', 'bottleneck')]['macs']:.2f}x fewer "
        f"MACs, {module_time:.2f}x faster (the naive module also passes all {COURSE_INPUT[0]} input channels "
        f"through its pool branch, so its output is wider: {by[('module 3a', 'naive')]['out_channels']} channels "
        f"against {by[('module 3a', 'bottleneck')]['out_channels']})",
        f"trained with the same budget, {setting.seeds} seed(s) each, paired: bottleneck net "
        f"{neck['test_accuracy']:.4f} vs naive {naive['test_accuracy']:.4f} mean test accuracy ({gap * 100:+.2f} "
        "points; one standard error of the test "
        f"accuracy is {noise * 100:.2f} points) with {naive['macs'] / neck['macs']:.1f}x fewer MACs, "
        f"{naive['params'] / neck['params']:.1f}x fewer parameters and "
        f"{naive['train_seconds'] / max(neck['train_seconds'], 1e-9):.1f}x less training time",
        "in the small net the naive modules pass their input on through the pool branch, so their widths grow "
        f"({' -> '.join(map(str, naive['module_widths']))} channels against "
        f"{' -> '.join(map(str, neck['module_widths']))} with the pool projection): part of the naive net's extra "
        "cost is this growth, not the 5x5 convolutions alone",
    ]
    notes.append("the verdict reads the paired accuracy difference by the common rule: 'no accuracy lost' predicts "
                 "a tie (inconclusive) or a gain (reproduced); only a loss whose interval excludes zero contradicts it")
    verdicts = [compare(acc, "bottleneck", "naive", "the bottleneck net is more accurate than the naive one "
                        "(the claim only needs it not to be less)")]
    return Result("bottleneck", "a 1x1 bottleneck before the inception module's 5x5 convolution cuts its cost about "
                  "10x (120,422,400 -> 12,443,648 MACs at 28x28x192 -> 32) without losing accuracy",
                  cost_table + "\n\n" + net_table, {"costs": costs, "nets": nets}, figure, notes, verdicts=verdicts)


# ------------------------------------------------------------------------------------------ scaling

RULES = ("compound", "depth", "width", "resolution")


def efficientnet_variant(num_classes: int = 10, in_chans: int = 1, *, width: float = 1.0, depth: float = 1.0,
                         resolution: int = 224, dropout: float = 0.2, drop_path: float = 0.0,
                         small_input: bool = True) -> EfficientNet:
    """EfficientNet-B0's structure with any width and depth multipliers (the scaling experiment's nets).

    Built from the family class because the registered builders cannot express these variants:
    ``efficientnet_b*`` take no multipliers and :func:`~convnets.models.efficientnet.efficientnet_scaled`
    scales depth, width and resolution together from the full B0, while the experiment scales one
    coefficient at a time from a base small enough to train on a CPU. No stochastic depth by
    default: a few epochs leave these nets underfitted, and it would regularise deep ones more.
    """
    return EfficientNet(Scaling(width, depth, resolution, dropout), num_classes, in_chans, drop_path=drop_path,
                        small_input=small_input)


@dataclass(frozen=True)
class _Net:
    """The counted size of one scaled network."""

    macs: int
    params: int
    blocks: int  # MBConv blocks in the seven stages


def _net(s: Scaling, in_chans: int, num_classes: int, cache: dict[Any, _Net]) -> _Net:
    """Counted MACs, parameters and blocks of the network ``s`` describes."""
    # Built on the CPU: for nets this small that is faster than on the meta device, whose weight
    # initialisation runs through decompositions.
    model = efficientnet_variant(num_classes, in_chans, width=s.width, depth=s.depth, resolution=s.resolution,
                                 dropout=s.dropout)
    # Many multipliers round to the same network: its parameter shapes and image side identify it,
    # and counting it once saves most of the time the MAC matching takes.
    key = (s.resolution, tuple(p.shape for p in model.parameters()))
    if key not in cache:
        c = count(model, (in_chans, s.resolution, s.resolution))
        cache[key] = _Net(c.macs, c.params, sum(len(stage) for stage in model.stages[: len(B0_STAGES)]))
    return cache[key]


def _pixels(side: float, native: int) -> int:
    """A whole image side to train at, never one the data loader would reach by zero-padding.

    ``load_dataset`` pads images (rather than resizing them) to a side up to 25% larger than their
    own (see :func:`~convnets.data.datasets.resize_images`): that adds a blank border and no
    resolution, so such sides are taken down to the native one. The mapping stays monotonic.
    """
    pixels = round(side)
    return native if native < pixels <= native * 1.25 else pixels


def _match(scaled: Callable[[float], Scaling], macs_of: Callable[[Scaling], int], target: int) -> Scaling:
    """The network ``scaled(m)``, m >= 1, whose counted MACs come closest to ``target``.

    Counted MACs grow in steps with any one coefficient (channels round to multiples of 8, layer
    counts round up, images have whole pixels), so the target is rarely hit exactly: bisect for
    the step that crosses it and keep the closer of its two sides.
    """
    lo, hi = 1.0, 2.0
    while macs_of(scaled(hi)) < target:
        lo, hi = hi, hi * 2
    while hi / lo > 1 + 1e-3:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs_of(scaled(mid)) < target else (lo, mid)
    return min((scaled(lo), scaled(hi)), key=lambda s: abs(macs_of(s) - target))


def _variants(base: Scaling, phis: tuple[float, ...], native: int,
              macs_of: Callable[[Scaling], int]) -> list[tuple[str, float, Scaling]]:
    """(rule, phi, scaling) of the base and, per phi, the compound net and the three single-coefficient nets
    matched to its MACs. Dropout stays the base's in all of them, so that only the scaled dimension differs."""
    variants = [("base", 0.0, base)]
    for phi in phis:
        compound = replace(base, width=base.width * BETA**phi, depth=base.depth * ALPHA**phi,
                           resolution=_pixels(base.resolution * GAMMA**phi, native))
        target = macs_of(compound)
        single: dict[str, Callable[[float], Scaling]] = {
            "depth": lambda m: replace(base, depth=base.depth * m),
            "width": lambda m: replace(base, width=base.width * m),
            "resolution": lambda m: replace(base, resolution=_pixels(base.resolution * m, native)),
        }
        variants.append(("compound", phi, compound))
        variants += [(rule, phi, _match(scaled, macs_of, target)) for rule, scaled in single.items()]
    return variants


@experiment("scaling", "EfficientNet's compound scaling vs depth-, width- and resolution-only scaling at matched MACs")
def scaling(setting: Setting) -> Result:
    data = _dataset(setting)
    native, in_chans, classes = data.image_size[0], data.channels, data.num_classes
    # A CPU-sized base: B0's stages at reduced width and depth, stride-1 stem, and images below the
    # data's resolution (28x28 Fashion-MNIST downsampled to 16x16, the smallest side these nets take),
    # so that scaling the resolution up adds real pixels instead of upsampled ones. One phi: at phi=1
    # the compound net has 3.6x the base's MACs (channels round up to multiples of 8 and layers to
    # whole layers, which jump at these sizes), and resolution alone reaches 3.5x at 28 px, the data's
    # own side; beyond it, it could only invent pixels. (phi=0.5 gives 3.3x: no new point.)
    base = setting.pick(Scaling(0.25, 0.25, 16, 0.2), Scaling(0.5, 0.5, 16, 0.2), Scaling(1.0, 1.0, 16, 0.2))
    phis = (1.0,)
    recipe = _recipe(setting, epochs=setting.pick(1, 2, 30), train_per_class=1000, test_per_class=200,
                     label_smoothing=0.1)
    cache: dict[Any, _Net] = {}

    def net(s: Scaling) -> _Net:
        return _net(s, in_chans, classes, cache)

    variants = _variants(base, phis, native, lambda s: net(s).macs)
    arms = {f"{rule}-phi{phi:g}": (rule, phi, s) for rule, phi, s in variants}
    runs = setting.run_all([
        Run(arm, seed, "efficientnet_variant", dict(image_size=s.resolution, **{**recipe, "seed": seed}, model_kwargs={
            "width": s.width, "depth": s.depth, "resolution": s.resolution, "dropout": s.dropout}),
            builder=efficientnet_variant)
        for arm, (_, _, s) in arms.items() for seed in setting.seed_list], "scaling")
    acc = seed_values(runs)
    rows = []
    for arm, (rule, phi, s) in arms.items():
        n = net(s)
        mine = [run for (a, _), run in runs.items() if a == arm]
        rows.append({"rule": rule, "phi": phi, "width": s.width, "depth": s.depth, "resolution": s.resolution,
                     "blocks": n.blocks, "macs": n.macs, "params": n.params,
                     "test_accuracy": statistics.fmean(acc[arm].values()), "by_seed": acc[arm],
                     "interval": mean_interval(list(acc[arm].values())).to_dict(),
                     "train_accuracy": statistics.fmean(r.rows[-1]["train_acc"] for r in mine),
                     "train_seconds": statistics.fmean(r.seconds for r in mine), "steps": mine[0].steps})
    top = max(phis)
    verdicts = [compare(acc, f"compound-phi{top:g}", f"{rule}-phi{top:g}", f"at phi={top:g} compound scaling beats "
                        f"{rule}-only scaling at matched MACs") for rule in RULES[1:]]
    base_macs = rows[0]["macs"]
    targets = {r["phi"]: r["macs"] for r in rows if r["rule"] == "compound"}
    table = markdown_table(
        ["phi", "rule", "width (B0 = 1)", "depth (B0 = 1)", "blocks", "image", "MACs", "x base", "vs compound",
         "params", "test accuracy (%, mean [95% CI])", "training s"],
        [[f"{r['phi']:g}", r["rule"], f"{r['width']:.3f}", f"{r['depth']:.3f}", r["blocks"], r["resolution"],
          f"{r['macs']:,}", f"{r['macs'] / base_macs:.2f}", f"{r['macs'] / targets[r['phi']] - 1:+.1%}"
          if r["phi"] in targets else "", f"{r['params']:,}", Interval(**r["interval"]).format(100),
          f"{r['train_seconds']:.0f}"] for r in rows])

    def line(rule: str) -> list[dict[str, Any]]:
        return [rows[0], *[r for r in rows if r["rule"] == rule]]

    def draw(axes) -> None:
        for rule in RULES:
            sel = line(rule)
            xs = [r["macs"] / 1e6 for r in sel]
            axes[0].plot(xs, [r["test_accuracy"] for r in sel], marker="o", label=rule)
            axes[1].plot(xs, [r["train_seconds"] for r in sel], marker="o", label=rule)
        axes[0].set(xlabel="MACs (millions)", ylabel="test accuracy",
                    title=f"scaling a small EfficientNet on {setting.data}")
        axes[1].set(xlabel="MACs (millions)", ylabel="training seconds (same steps)",
                    title="cost on this CPU at matched MACs")
        for ax in axes:
            ax.legend(fontsize=8)

    figure = plot(setting.out / "scaling.png", draw, panels=2)
    noise = _noise(rows[0]["test_accuracy"], data, recipe["test_per_class"])
    notes = []
    for phi in phis:
        at = sorted((r for r in rows if r["phi"] == phi), key=lambda r: -r["test_accuracy"])
        notes.append(f"phi={phi:g} (~{targets[phi] / base_macs:.1f}x the base's MACs), best first: "
                     + ", ".join(f"{r['rule']} {r['test_accuracy']:.4f}" for r in at)
                     + f" (base {rows[0]['test_accuracy']:.4f}; one standard error of a test accuracy here is "
                     f"{noise * 100:.2f} points)")
    worst = max((abs(r["macs"] / targets[r["phi"]] - 1), r["rule"], r["phi"]) for r in rows if r["phi"])
    notes.append(f"single-coefficient nets match the compound net's counted MACs to within {worst[0]:.1%} "
                 f"(worst: {worst[1]} at phi={worst[2]:g}): channels round to multiples of 8, layer counts up to "
                 "whole layers and images to whole pixels")
    fits = sorted(rows, key=lambda r: r["train_accuracy"])
    notes.append(f"every net trains the same {rows[0]['steps']} steps; last-epoch training accuracy runs from "
                 f"{fits[0]['train_accuracy']:.4f} ({fits[0]['rule']}, phi={fits[0]['phi']:g}) to "
                 f"{fits[-1]['train_accuracy']:.4f} ({fits[-1]['rule']}, phi={fits[-1]['phi']:g}): where all still "
                 "underfit, the ranking measures how fast a net learns as much as what it can hold")
    seconds = {r["rule"]: r["train_seconds"] for r in rows if r["phi"] == top}
    notes.append(f"training time at phi={top:g} for the same steps and matched MACs, relative to compound: "
                 + ", ".join(f"{rule} {seconds[rule] / seconds['compound']:.2f}x" for rule in RULES[1:]))
    notes.append(f"the base sees the {native}x{native} images downsampled to {base.resolution}x{base.resolution}: "
                 f"scaling resolution up to {native} adds pixels the data really has; sides {native + 1} to "
                 f"{int(native * 1.25)} are never used (the loader would zero-pad to them: MACs without resolution)")
    notes.append(f"accuracies: mean [95% interval] over {setting.seeds} seed(s); the verdicts pair the rules seed by "
                 "seed (same training subset and order)")
    notes.append(f"compound: depth x alpha^phi, width x beta^phi, resolution x gamma^phi with alpha={ALPHA}, "
                 f"beta={BETA}, gamma={GAMMA}, from a base of width {base.width}, depth {base.depth} and "
                 f"{base.resolution}x{base.resolution} images (native {native}x{native})")
    return Result("scaling", "scaling depth, width and resolution together (EfficientNet's compound scaling) "
                  "reaches a higher accuracy than scaling any one of them to the same MACs",
                  table, {"base": vars(base), "phis": list(phis), "rows": rows}, figure, notes, verdicts=verdicts)
