"""The deploy path against eager PyTorch, and what int8 costs in accuracy.

1. MobileNetV2-224, batch 1, on this machine: PyTorch eager fp32 vs ONNX Runtime fp32 vs ONNX
   Runtime int8 (static, calibrated), interleaved rounds, median latency of each. Goal: the
   deploy path at least 3x faster than eager fp32.
2. The project's own MobileNet weights on Fashion-MNIST: test accuracy of PyTorch fp32 and of the
   int8 model on the whole test set. Goal: int8 loses under 1 point.

    python benchmarks/bench_deploy.py --out runs/bench_deploy.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

import convnets
from convnets.export import (
    accuracy_of,
    dataset_images,
    export_onnx,
    onnx_latency_ms,
    quantize_int8,
    run_onnx,
    session,
    torch_latency_ms,
)
from convnets.weights import get_weights, read_metadata, weights_path


def latency(rounds: int, repeats: int, tmp: Path) -> dict:
    model = convnets.create_model("mobilenet_v2").eval()
    calib = torch.randn(64, 3, 224, 224)
    fp32 = export_onnx(model, tmp / "mv2.onnx", calib[:4]).path
    int8 = quantize_int8(fp32, tmp / "mv2.int8.onnx", calib)
    x = torch.randn(1, 3, 224, 224)
    times: dict[str, list[float]] = {"eager fp32": [], "onnxruntime fp32": [], "onnxruntime int8": []}
    for _ in range(rounds):
        times["eager fp32"].append(torch_latency_ms(model, x, repeats=repeats))
        times["onnxruntime fp32"].append(onnx_latency_ms(fp32, x, repeats=repeats))
        times["onnxruntime int8"].append(onnx_latency_ms(int8, x, repeats=repeats))
    medians = {k: statistics.median(v) for k, v in times.items()}
    base = medians["eager fp32"]
    return {k: {"ms": v, "speedup": base / v, "rounds": times[k]} for k, v in medians.items()}


def int8_accuracy(model_name: str, tag: str, tmp: Path) -> dict:
    path = weights_path(get_weights(model_name, tag))
    meta = read_metadata(path)
    model = convnets.create_model(model_name, weights=tag).eval()
    x, y = dataset_images(meta, "test")
    calib, _ = dataset_images(meta, "train", 512)
    fp32 = export_onnx(model, tmp / "own.onnx", x[:64]).path
    int8 = quantize_int8(fp32, tmp / "own.int8.onnx", calib)
    with torch.inference_mode():
        acc_torch = accuracy_of(model, x, y)
    s8 = session(int8)
    acc_int8 = accuracy_of(lambda b: run_onnx(s8, b), x, y)
    return {"weights": f"{model_name}:{tag}", "torch_fp32": acc_torch, "onnx_int8": acc_int8,
            "change_points": 100 * (acc_int8 - acc_torch), "dataset_images": len(y)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--weights", default="mobilenet_v2:fashion-mnist", help="MODEL:TAG for the int8 accuracy")
    parser.add_argument("--out")
    args = parser.parse_args()
    result = {"machine": f"{platform.machine()}, torch threads {torch.get_num_threads()}", "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        result["mobilenet_v2_224_batch1"] = lat = latency(args.rounds, args.repeats, tmp)
        for name, row in lat.items():
            print(f"MobileNetV2-224 batch 1, {name:<17} {row['ms']:8.2f} ms  {row['speedup']:5.2f}x", flush=True)
        model_name, tag = args.weights.split(":")
        result["int8_accuracy"] = acc = int8_accuracy(model_name, tag, tmp)
        print(f"{acc['weights']} on Fashion-MNIST test: fp32 {acc['torch_fp32']:.4f}, int8 {acc['onnx_int8']:.4f} "
              f"({acc['change_points']:+.2f} points)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
