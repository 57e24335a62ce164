"""``convnets export``: ONNX checked against PyTorch, optional int8, with accuracy and latency."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from convnets.cli.options import number, parse_model_args, path_text
from convnets.errors import ConfigError, DataError
from convnets.evaluate import trained_data
from convnets.export import (
    accuracy_of,
    check_export_targets,
    dataset_images,
    export_onnx,
    load_model_or_run,
    onnx_latency_ms,
    quantize_int8,
    run_onnx,
    session,
    settle_batchnorm,
    torch_latency_ms,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export to ONNX (checked against PyTorch), optionally int8, with accuracy and latency",
        description="Export a run (or a registered model with random weights) to ONNX, check ONNX Runtime against "
        "PyTorch on real images, optionally quantize to int8 and measure the accuracy change on the test set. "
        "Only MODEL.onnx and MODEL.int8.onnx are written to --out, each only once complete; an existing file of "
        "those names is replaced only if convnets exported it.")
    p.add_argument("source", metavar="RUN_OR_MODEL")
    p.add_argument("--onnx", action="store_true", default=True, help="export to ONNX (the default and only format)")
    p.add_argument("--int8", action="store_true", help="also write a statically quantized int8 model")
    p.add_argument("--out", type=path_text, help="output directory (default: RUN/export or ./export-MODEL)")
    p.add_argument("--calibration-images", type=number(int, 1), default=512,
                   help="training images that calibrate the int8 ranges (default 512)")
    p.add_argument("--data", help="dataset of a run's accuracy check and calibration (default: the one it was "
                   "trained on)")
    p.add_argument("--data-dir")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="builder argument of a registered model name")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    model, meta = load_model_or_run(args.source, **parse_model_args(args.model_arg))
    path = Path(args.source)
    out = Path(args.out) if args.out else (path / "export" if path.is_dir() else Path(f"export-{model.name}"))
    if out.suffix.lower() == ".onnx" and not out.is_dir():  # a file name where the folder goes
        raise ConfigError(f"--out {out} names a file, but --out is the folder the export goes into (as "
                          f"FOLDER/{model.name}.onnx); give a folder, e.g. --out {out.parent / 'export'}")
    onnx_path, int8_path = out / f"{model.name}.onnx", out / f"{model.name}.int8.onnx"
    check_export_targets(onnx_path, *([int8_path] if args.int8 else []))  # before any work
    data_args = {"data": args.data, "data_dir": args.data_dir}
    if meta and not args.data:
        data_args["data"], data_args["data_dir"] = trained_data(path, meta)
        data_args["data_dir"] = args.data_dir or data_args["data_dir"]
    try:
        data = dataset_images(meta, "test", **data_args)
    except FileNotFoundError as err:
        if args.data or not meta:
            raise
        # The training data is often not where the model is deployed: the export does not need it.
        missing = f"{args.source} was trained on {data_args['data']!r}, which is not found from here ({err})"
        if args.int8:
            raise DataError(f"{missing}: --int8 calibrates on its training images; pass --data with its "
                            "location") from err
        print(f"note: {missing}: checked on random inputs, without accuracy; pass --data with its location for "
              "both")
        data = None
    check = data[0][:64] if data else torch.randn(8, *model.input_size)
    if not meta:  # random weights: statistics that let the outputs depend on the inputs the check compares
        settle_batchnorm(model, torch.randn(8, *model.input_size))
    result = export_onnx(model, onnx_path, check)
    print(f"wrote {result.path}: max |ONNX - PyTorch| = {result.max_abs_diff:.2e} on {len(check)} "
          f"{'test images' if data else 'random inputs'} (largest {'logit' if model.num_classes else 'feature'} "
          f"{result.max_logit:.2f})")
    x1 = check[:1]
    rows = [("PyTorch eager fp32", torch_latency_ms(model, x1), None),
            ("ONNX Runtime fp32", onnx_latency_ms(result.path, x1), None)]
    if data:
        x, y = data
        rows[0] = (*rows[0][:2], accuracy_of(lambda b: model(b), x, y))
        sess = session(result.path)
        rows[1] = (*rows[1][:2], accuracy_of(lambda b: run_onnx(sess, b), x, y))
    if args.int8:
        calib = dataset_images(meta, "train", args.calibration_images, **data_args)
        calib_x = calib[0] if calib else torch.randn(64, *model.input_size)
        quantize_int8(result.path, int8_path, calib_x)
        acc = None
        if data:
            sess8 = session(int8_path)
            acc = accuracy_of(lambda b: run_onnx(sess8, b), *data)
        rows.append(("ONNX Runtime int8", onnx_latency_ms(int8_path, x1), acc))
        print(f"wrote {int8_path} (calibrated on {len(calib_x)} {'training images' if calib else 'random inputs'})")
    base = rows[0][1]
    print(f"\n{'runtime':<22} {'batch-1 ms':>10} {'speed-up':>9} {'accuracy':>9}")
    for name, ms, acc in rows:
        print(f"{name:<22} {ms:>10.2f} {base / ms:>8.2f}x {'-' if acc is None else f'{acc:.4f}':>9}")
    if not data:
        print("accuracy: - (the test data was not found)" if meta else
              "accuracy: - (a registered name has random weights and no test data)")
    elif args.int8:
        print(f"int8 changes test accuracy by {100 * (rows[-1][2] - rows[0][2]):+.2f} points")
    return 0
