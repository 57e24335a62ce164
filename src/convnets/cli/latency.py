"""``convnets latency``: batch-1 and batched latency of PyTorch eager and ONNX Runtime, beside params and MACs."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from convnets.analysis import count
from convnets.cli.options import integer, number, size_type
from convnets.device import set_threads
from convnets.errors import ConfigError
from convnets.export import export_onnx, load_model_or_run, onnx_latency_ms, quantize_int8, torch_latency_ms


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "latency", help="batch-1 and batched latency of PyTorch eager and ONNX Runtime, beside params and MACs",
        description="Median latency over repeated runs on this machine, for each model: PyTorch eager fp32 and "
        "the exported ONNX model (fp32, and int8 with --int8). Nothing is written outside a temporary directory.")
    p.add_argument("sources", nargs="+", metavar="RUN_OR_MODEL")
    p.add_argument("--batch", type=number(int, 1), nargs="+", default=[1, 32], help="batch sizes (default 1 32)")
    p.add_argument("--input", type=size_type(3, "CxHxW"), metavar="CxHxW",
                   help="input size (default: the model's input size)")
    p.add_argument("--int8", action="store_true",
                   help="also quantize to int8 (calibrated on random inputs: latency does not depend on the values)")
    p.add_argument("--repeats", type=number(int, 1), default=20, help="timed runs per figure (default 20)")
    p.add_argument("--threads", type=integer, help="CPU threads for both runtimes (default: all)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # A size given twice would be measured twice, two different medians for one figure.
    repeated = sorted({b for b in args.batch if args.batch.count(b) > 1})
    if repeated:
        raise ConfigError(f"--batch {repeated[0]} is given twice; each batch size is measured once")
    set_threads(args.threads)
    # Every source is loaded and its input size checked before anything is measured.
    models = []
    for source in args.sources:
        model, meta = load_model_or_run(source)
        size = args.input or tuple(meta.get("input_size", model.input_size))
        models.append((model, size, count(model, size)))
    print(f"{'model':<24} {'params':>10} {'MACs':>9} {'batch':>5} {'eager ms':>9} {'onnx ms':>8} "
          + (f"{'int8 ms':>8} " if args.int8 else "") + f"{'images/s (best)':>15}")
    for model, size, counts in models:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = export_onnx(model, Path(tmp) / "m.onnx", torch.randn(2, *size)).path
            int8_path = quantize_int8(onnx_path, Path(tmp) / "m8.onnx", torch.randn(32, *size)) if args.int8 else None
            for batch in args.batch:
                x = torch.randn(batch, *size)
                eager = torch_latency_ms(model, x, repeats=args.repeats)
                ort = onnx_latency_ms(onnx_path, x, repeats=args.repeats)
                q = onnx_latency_ms(int8_path, x, repeats=args.repeats) if int8_path else None
                best = min(t for t in (eager, ort, q) if t is not None)
                print(f"{model.name:<24} {counts.params / 1e6:>9.2f}M {counts.macs / 1e6:>8.1f}M {batch:>5} "
                      f"{eager:>9.2f} {ort:>8.2f} " + (f"{q:>8.2f} " if q is not None else "")
                      + f"{1000 * batch / best:>15,.0f}")
    # median_latency_ms stops a figure's runs after 20 s (at least 3 runs): --repeats 1000 on a big model
    # would otherwise take hours. Said here, so that a median of fewer runs than asked is not taken for one of all.
    print(f"\nMedian of {args.repeats} timed runs per figure on this machine (fewer where a figure's runs "
          "passed 20 s); MACs per image (see `convnets summary`).")
    return 0
