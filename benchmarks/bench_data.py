"""Loading + augmentation throughput: convnets' batched pipeline against a per-image Pillow pipeline.

Both sides apply the ``standard`` preset (mirror, pad-and-crop by 1/8 of the side, +-20 colour
shift per channel, AlexNet PCA colour with sigma 0.1, normalisation) and deliver float batches.
The baseline is what one would write by hand: a ``torch.utils.data.Dataset`` whose
``__getitem__`` distorts one image with Pillow and numpy, run through a ``torch.utils.data.DataLoader``
with the same number of workers.

Two cases: Fashion-MNIST (28x28, in memory) and a folder of generated 224x224 JPEGs.

    python benchmarks/bench_data.py                       # defaults: 60,000 Fashion-MNIST, 2,000 JPEGs
    python benchmarks/bench_data.py --fm-images 10000 --jpegs 500 --workers 2
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from convnets.data import TensorSplit, load_dataset, load_image_folder, make_loader
from convnets.data.augment import PRESETS, pca_basis

CFG = PRESETS["standard"]


class PillowPipeline(torch.utils.data.Dataset):
    """The per-image baseline: every augmentation of the standard preset, one image at a time."""

    def __init__(self, source, labels, mean, std, pixel_cov, size: int, channels: int) -> None:
        self.source, self.labels = source, labels  # a uint8 (N, H, W) array or a list of paths
        self.mean, self.std = np.array(mean, np.float32), np.array(std, np.float32)
        eigvals, eigvecs = pca_basis(pixel_cov)
        self.eigvals, self.eigvecs = eigvals.numpy(), eigvecs.numpy()
        self.pad, self.size, self.channels = round(CFG.pad_crop * size), size, channels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        rng = np.random.default_rng()
        if isinstance(self.source, np.ndarray):
            image = Image.fromarray(self.source[i])
        else:
            image = Image.open(self.source[i]).convert("RGB" if self.channels == 3 else "L")
        if rng.random() < CFG.hflip:
            image = ImageOps.mirror(image)
        image = ImageOps.expand(image, self.pad, fill=0)
        left, top = rng.integers(0, 2 * self.pad + 1, 2)
        image = image.crop((left, top, left + self.size, top + self.size))
        x = np.asarray(image, np.float32).reshape(self.size, self.size, self.channels) / 255
        shift = rng.uniform(-CFG.color_shift, CFG.color_shift, self.channels) / 255
        shift += self.eigvecs @ (rng.normal(0, CFG.pca_std, self.channels) * np.sqrt(self.eigvals))
        x = (np.clip(x + shift, 0, 1) - self.mean) / self.std
        return torch.from_numpy(x.transpose(2, 0, 1).copy()), int(self.labels[i])


def throughput(batches, device: torch.device) -> tuple[float, int]:
    """Images per second over one pass, counting until the last batch is on ``device``."""
    start, n = time.perf_counter(), 0
    for x, _ in batches:
        x = x.to(device)
        n += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start), n


def baseline_loader(dataset: PillowPipeline, batch_size: int, workers: int):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=False
    )


def make_jpegs(root: Path, count: int, size: int = 224, classes: int = 10) -> None:
    """Photo-like 224x224 JPEGs: smooth colour gradients plus noise, ~15-25 kB each."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(count):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        a = rng.uniform(0, 255, (3, 3))
        rgb = a[:, 0, None, None] + a[:, 1, None, None] * xx + a[:, 2, None, None] * yy
        rgb = rgb.transpose(1, 2, 0) * 0.5 + rng.normal(0, 12, (size, size, 3))
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)


def run_case(name, ours, baseline, device, repeats) -> dict:
    best_ours = best_base = 0.0
    for _ in range(repeats):
        best_base = max(best_base, throughput(baseline, device)[0])
        rate, n = throughput(ours, device)
        best_ours = max(best_ours, rate)
    print(
        f"{name:<28} {n:>7} images  per-image Pillow {best_base:>10,.0f} img/s   convnets {best_ours:>10,.0f} img/s"
        f"   speed-up {best_ours / best_base:5.1f}x",
        flush=True,
    )
    return {"case": name, "images": n, "baseline": best_base, "convnets": best_ours}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fm-images", type=int, default=60000, help="Fashion-MNIST training images per pass")
    parser.add_argument("--jpegs", type=int, default=2000, help="generated 224x224 JPEGs")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, the same for both pipelines")
    parser.add_argument("--repeats", type=int, default=2, help="passes per pipeline; the best is reported")
    parser.add_argument("--device", default="cpu", help="where batches go (and where convnets augments)")
    parser.add_argument("--folder", help="reuse or keep the JPEG folder here (default: a temporary one)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads of the main process (default: torch's)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, workers {args.workers}, batch {args.batch_size}, device {device}, "
        f"load average before {os.getloadavg()[0]:.2f}"
    )

    if args.fm_images:
        data = load_dataset("fashion-mnist")
        n = min(args.fm_images, len(data.train))
        data.train = TensorSplit(data.train.images[:n], data.train.labels[:n])
        ours = make_loader(data, batch_size=args.batch_size, augment="standard", device=device)
        base = PillowPipeline(
            data.train.images[:, 0].numpy(), data.train.labels.numpy(), data.mean, data.std, data.pixel_cov, 28, 1
        )
        run_case(
            "fashion-mnist 28x28", ours, baseline_loader(base, args.batch_size, args.workers), device, args.repeats
        )

    if args.jpegs:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(args.folder or tmp) / "jpegs224"
            if not root.is_dir():
                start = time.perf_counter()
                make_jpegs(root, args.jpegs)
                print(f"generated {args.jpegs} JPEGs in {root} ({time.perf_counter() - start:.1f} s)")
            data = load_image_folder(root, image_size=224, val_fraction=0, stats_samples=256, num_workers=args.workers)
            ours = make_loader(
                data, batch_size=args.batch_size, augment="standard", device=device, num_workers=args.workers
            )
            paths, labels = zip(*data.train.samples, strict=True)
            base = PillowPipeline(list(paths), np.array(labels), data.mean, data.std, data.pixel_cov, 224, 3)
            run_case(
                "jpeg folder 224x224", ours, baseline_loader(base, args.batch_size, args.workers), device, args.repeats
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
