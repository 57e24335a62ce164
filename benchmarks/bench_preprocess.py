"""What the published recipes change, measured on real photos: old decoding against each weights' recipe.

Before issue 12, every image folder was decoded the same way whatever the weights: the shorter side
fitted to the input size and centre-cropped, bilinear, JPEG draft (``decode_image`` then; it no longer
drafts). Each weights
spec now brings its publisher's recipe (:class:`convnets.data.preprocess.Preprocessing`). For each
torchvision spec this prints the mean and largest per-pixel difference (of 255) between the two on
scikit-learn's china.jpg and flower.jpg, and the same for the Keras layouts' recipes. The old
decoding is taken at the recipe's own size (before, peer files were fed at 224 whatever the model:
for EfficientNet-B1..B7 the size changed too, which no pixel difference can show).

It also measures what decoding every pixel costs against Pillow's JPEG draft (decoding at 1/2, 1/4 or
1/8 scale), which convnets used before and no longer does (a decoded image cannot be drafted, so a
file and its pixels gave two answers): on china.jpg upscaled 4x (2560x1708, re-encoded at quality
95, as a phone photo is large), how far the draft moves the pixels and how much longer the full
decode takes, timed side by side in one run (ratios only). The rows are the fit to 224 of image
folders without a published recipe (drafted to cover 224 before) and two published recipes (drafted
to cover twice the resize with the former ``draft=True``).

    python benchmarks/bench_preprocess.py            # writes benchmarks/results/preprocess.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import sklearn.datasets
import torch
from PIL import Image

from convnets.data.images import decode_image
from convnets.data.preprocess import Preprocessing
from convnets.weights import list_weights
from convnets.weights.keras import KERAS_LAYOUTS
from convnets.weights.load import layout_preprocessing

PHOTOS = Path(sklearn.datasets.__file__).parent / "images"


def cpu() -> tuple[str, str]:
    """The CPU's model name and which of avx512_bf16/amx_bf16 it has (from ``lscpu``)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.machine(), "unknown"
    name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                platform.machine())
    return name, " ".join(f for f in ("avx512_bf16", "amx_bf16") if f in out) or "neither avx512_bf16 nor amx_bf16"


def pixel_difference(prep: Preprocessing, path: Path) -> tuple[float, float]:
    """Mean and largest |new - old| per pixel and channel, on 0..255."""
    old = decode_image(path, prep.size, prep.channels).float()
    new = prep.load(path).float()
    return (new - old).abs().mean().item(), (new - old).abs().max().item()


def recipes() -> dict[str, Preprocessing]:
    out = {f"{s.model} imagenet ({s.peer})": Preprocessing.from_spec(s) for s in list_weights()
           if s.peer and s.peer.startswith("torchvision:")}
    for name in ("keras:resnet50", "keras:vgg16", "keras:mobilenet_1.0", "keras:mobilenet_v2_1.0",
                 "keras:efficientnet_b0", "keras:efficientnet_b7"):
        out[name] = layout_preprocessing(KERAS_LAYOUTS[name].layout)
    return out


def drafted_load(prep: Preprocessing, path: Path, side: int) -> torch.Tensor:
    """``prep.load`` with the JPEG decoded at the smallest scale that covers ``side`` (the former draft)."""
    with Image.open(path) as image:
        image.draft("RGB", (side, side))
        return torch.from_numpy(np.asarray(prep.resize_and_crop(image.convert("RGB"))).copy()).permute(2, 0, 1)


def draft_measurement(repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        photo = Image.open(PHOTOS / "china.jpg")
        big = Path(tmp) / "china-4x.jpg"
        photo.resize((photo.width * 4, photo.height * 4), Image.BICUBIC).save(big, quality=95)
        rows = {}
        for name, prep, side in (("fit 224 bilinear (image folders)", Preprocessing((224, 224)), 224),
                                 ("resnet 256->224 bilinear", Preprocessing((224, 224), 256), 512),
                                 ("efficientnet_b2 288->288 bicubic", Preprocessing((288, 288), 288, "bicubic"), 576)):
            loads = {"full": lambda p=prep: p.load(big), "draft": lambda p=prep, s=side: drafted_load(p, big, s)}
            a, b = loads["full"]().float(), loads["draft"]().float()
            seconds = {}
            for label in ("full", "draft") * 2:  # interleaved, best of two rounds
                start = time.perf_counter()
                for _ in range(repeats):
                    loads[label]()
                seconds[label] = min(seconds.get(label, float("inf")), (time.perf_counter() - start) / repeats)
            diff = (a - b).abs()
            rows[name] = {"mean_abs_diff_255": diff.mean().item(), "max_abs_diff_255": diff.max().item(),
                          "full_over_draft_time": seconds["full"] / seconds["draft"]}
        return {"image": "china.jpg upscaled 4x (2560x1708), JPEG quality 95", "repeats": repeats, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "preprocess.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = {}
    for name, prep in recipes().items():
        row = {"recipe": prep.describe()}
        for photo in ("china.jpg", "flower.jpg"):
            mean, largest = pixel_difference(prep, PHOTOS / photo)
            row[photo] = {"mean_abs_diff_255": round(mean, 3), "max_abs_diff_255": largest}
        rows[name] = row
        print(f"{name:<58} {row['recipe'].split(', mean')[0]:<42} china {row['china.jpg']['mean_abs_diff_255']:6.2f}"
              f"  flower {row['flower.jpg']['mean_abs_diff_255']:6.2f}  (mean |new - old| of 255)")
    draft = draft_measurement(args.repeats)
    for name, row in draft["rows"].items():
        print(f"draft on {draft['image']}, {name}: mean {row['mean_abs_diff_255']:.3f}, max "
              f"{row['max_abs_diff_255']:.0f} (of 255); the full decode takes {row['full_over_draft_time']:.2f}x the "
              "draft's time")
    name, flags = cpu()
    result = {"command": "python benchmarks/bench_preprocess.py", "cpu": name, "cpu_flags": flags,
              "torch": torch.__version__, "pillow": Image.__version__,
              "old_vs_published": rows, "draft": draft}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
