"""The classic networks side by side: the same data and budget, accuracy against cost.

Every network trains on the same images for the same number of epochs, each with its own recipe
(:data:`convnets.training.config.RECIPES`: the optimizer and learning rate it needs), and is
set beside the dataset's published benchmark figures. At the small budget the ImageNet networks
run at 32x32 with their ``small_input`` stems (same parameters, stride-1 first layer); at the
full budget they see the images resized to their native input size.
"""

from __future__ import annotations

import inspect
from typing import Any

from convnets.analysis import count
from convnets.data.datasets import load_dataset
from convnets.experiments import Result, Setting, experiment, markdown_table, plot, standard_error
from convnets.registry import model_entry

MODELS = ("lenet5_classic", "lenet5", "alexnet", "vgg16", "googlenet", "resnet20", "resnet18", "mobilenet_v1",
          "mobilenet_v2", "efficientnet_b0")

# Fashion-MNIST's own benchmark table (zalandoresearch/fashion-mnist README, not verified by its
# authors): test accuracy of each family as submitted there, at that submitter's budget.
PUBLISHED = {"vgg16": 0.935, "googlenet": 0.937, "resnet18": 0.949, "mobilenet_v1": 0.950}
PUBLISHED_OTHERS = {"human": 0.835, "2-conv nets (low)": 0.876, "2-conv nets (high)": 0.939}


def _small_input_kwargs(model: str) -> dict[str, Any]:
    return {"small_input": True} if "small_input" in inspect.signature(model_entry(model).builder).parameters else {}


@experiment("classic", "LeNet-5 to EfficientNet trained on the same data and budget: accuracy against cost")
def classic(setting: Setting) -> Result:
    models = setting.pick(("lenet5", "resnet20"), MODELS, MODELS)
    budget: dict[str, Any] = setting.pick(dict(train_per_class=5, test_per_class=5, epochs=1, batch_size=16),
                                          dict(train_per_class=400, test_per_class=100, epochs=2, batch_size=64),
                                          dict(epochs=30))
    rows, runs = [], {}
    for model in models:
        native = setting.budget == "full"
        kwargs = {} if native else _small_input_kwargs(model)
        image_size = model_entry(model).input_size[1] if native else 32
        run = setting.train(model, model, image_size=image_size, model_kwargs=kwargs, seed=0, **budget)
        net = run.model()
        cost = count(net, (net.in_chans, image_size, image_size))
        runs[model] = run
        rows.append({"model": model, "params": cost.params, "macs": cost.macs, "image_size": image_size,
                     "seconds": run.seconds, "images_per_s": run.rows[-1]["images_per_s"],
                     "test_accuracy": run.test_accuracy, "published": PUBLISHED.get(model),
                     "optimizer": run.config["optimizer"], "lr": run.config["lr"]})

    table = markdown_table(
        ["model", "params", "MACs", "input", "recipe", "train time", "test accuracy", "published (its own budget)"],
        [[r["model"], f"{r['params']:,}", f"{r['macs'] / 1e6:,.1f}M", f"{r['image_size']}px",
          f"{r['optimizer']} {r['lr']:g}", f"{r['seconds']:.0f} s", f"{r['test_accuracy']:.4f}",
          f"{r['published']:.3f}" if r["published"] else ""] for r in rows])

    def draw(ax) -> None:
        for i, r in enumerate(sorted(rows, key=lambda r: (r["test_accuracy"], r["macs"]))):
            ax.scatter(r["macs"], r["test_accuracy"], s=30, zorder=3)
            # Alternate labels above and below: networks at the same accuracy would overwrite each other.
            ax.annotate(r["model"], (r["macs"], r["test_accuracy"]), fontsize=7, xytext=(4, 4 if i % 2 else -10),
                        textcoords="offset points")
            if r["published"]:
                ax.scatter(r["macs"], r["published"], s=40, facecolors="none", edgecolors="black", zorder=3)
        ax.axhline(PUBLISHED_OTHERS["human"], color="grey", linestyle=":", lw=1, label="human (0.835)")
        ax.axhspan(PUBLISHED_OTHERS["2-conv nets (low)"], PUBLISHED_OTHERS["2-conv nets (high)"], color="grey",
                   alpha=0.12, label="published 2-conv nets")
        ax.scatter([], [], s=40, facecolors="none", edgecolors="black", label="published figure, same family")
        ax.set(xscale="log", xlabel="MACs per image (this run's input size)", ylabel="test accuracy",
               title=f"{setting.data}: every network on the same data and budget")
        ax.legend(fontsize=7, loc="center right")

    figure = plot(setting.out / "classic.png", draw, size=(8, 5))
    best = max(rows, key=lambda r: r["test_accuracy"])
    cheapest = min((r for r in rows if r["test_accuracy"] >= best["test_accuracy"] - 0.01), key=lambda r: r["macs"])
    first = runs[models[0]]
    num_classes = net.num_classes
    stuck = [r for r in rows if r["test_accuracy"] <= 1 / num_classes + 0.02]
    per_class = first.config["test_per_class"]
    n_test = per_class * num_classes if per_class else len(load_dataset(setting.data, data_dir=setting.data_dir).test)
    noise = 100 * standard_error(best["test_accuracy"], n_test)
    notes = [f"budget: {first.config['train_per_class'] or 'all'} training images per class, "
             f"{first.config['epochs']} epochs, batch {first.config['batch_size']}, each network with its own "
             f"recipe; test accuracy on {first.config['test_per_class'] or 'all'} test images per class",
             f"best: {best['model']} at {best['test_accuracy']:.4f}; the cheapest within one point of it: "
             f"{cheapest['model']} ({cheapest['macs'] / 1e6:,.1f}M MACs vs {best['macs'] / 1e6:,.1f}M)",
             f"one standard error of a test accuracy near the best is {noise:.1f} points on {n_test:,} test "
             f"images: two networks closer than about {2.8 * noise:.1f} points are a tie at this budget",
             *([f"at chance (1/{num_classes}) after this budget: {', '.join(r['model'] for r in stuck)}: "
                "still predicting one class"] if stuck else []),
             "published figures come from the dataset's benchmark table, each at its submitter's own (much "
             "longer) budget and preprocessing: they show where each family ends, not a same-budget comparison"]
    return Result("classic", "each generation of these architectures buys more accuracy per multiplication: "
                  "under one budget the later designs match or beat the earlier ones at a fraction of their MACs",
                  table, {"rows": rows, "budget": first.config}, figure, notes)
