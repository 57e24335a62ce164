"""``convnets train``: the command-line face of :func:`convnets.training.train`."""

from __future__ import annotations

import argparse

from convnets.cli.options import add_layout_option, integer, parse_model_args, real
from convnets.device import DEVICE_HELP
from convnets.training.config import AUGMENT_PRESETS, OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig, read_config_file


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (from scratch, or from --weights)",
        description="Train MODEL on --data and write a run directory: config, metrics, weights, curves, report. "
        "Unset options take the model's recipe. Under torchrun, trains on every process (DDP).",
        # --channels would otherwise be read as --channels-last, --weight as --weight-decay...: only whole names.
        allow_abbrev=False,
    )
    add_run_arguments(p)
    add_transfer_arguments(p, weights_required=False)
    p.set_defaults(run=run, config_defaults={})


def add_transfer_arguments(p: argparse.ArgumentParser, *, weights_required: bool) -> None:
    from convnets.transfer import FREEZE_HELP

    p.add_argument("--weights", required=weights_required,
                   help="a registered tag (fashion-mnist, imagenet), a weights file (.safetensors/.pth) or a URL")
    add_layout_option(p, dest="weights_layout")
    p.add_argument("--freeze", help=FREEZE_HELP)
    p.add_argument("--pretrained-lr-scale", type=real,
                   help="learning-rate multiplier of the pretrained layers that still train (transfer: 0.1)")
    p.add_argument("--cache-features", action="store_true", default=None,
                   help="run the frozen trunk once and train the head on cached features (needs all-but-head)")
    p.add_argument("--cache-dir", help="where cached features go (default ~/.cache/convnets/features)")
    p.add_argument("--train-per-class", type=integer, help="keep only N training examples per class (seeded)")
    p.add_argument("--test-per-class", type=integer, help="evaluate on only N test examples per class (fixed choice)")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registered model name (convnets list)")
    p.add_argument("--data", default=None, help="fashion-mnist (default), digits, cifar10, or an image folder")
    p.add_argument("--data-dir", help="where named datasets are looked up")
    p.add_argument("--config", help="JSON or TOML file with TrainConfig fields (options given here win)")
    p.add_argument("--out", help="run directory (default runs/MODEL-DATA)")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the run in --out from its last checkpoint")
    p.add_argument("--epochs", type=integer)
    p.add_argument("--batch-size", type=integer, help="per process")
    p.add_argument("--lr", type=real, help="peak learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--momentum", type=real)
    p.add_argument("--weight-decay", type=real, help="L2 penalty on conv/linear weights")
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument("--warmup-epochs", type=real)
    p.add_argument("--label-smoothing", type=real)
    p.add_argument("--grad-clip", type=real, help="clip the gradient norm to this value")
    p.add_argument("--augment", choices=AUGMENT_PRESETS)
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--image-size", type=integer, help="resize or pad images to this side")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="builder argument, e.g. small_input=true, width=0.5, shortcut=A (repeatable)")
    p.add_argument("--seed", type=integer)
    p.add_argument("--deterministic", action="store_true", default=None, help="deterministic kernels (slower)")
    p.add_argument("--nan-policy", choices=("stop", "skip"))
    p.add_argument("--max-steps", type=integer, help="stop with a checkpoint after this many steps")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--workers", dest="num_workers", type=integer, help="decoding processes for image folders")
    p.add_argument("--threads", type=integer, help="CPU threads for the model (default: one per core)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.add_argument("--ema", type=real, metavar="DECAY",
                   help="also keep, evaluate and save a moving average of the weights with this decay (0.999), "
                   "warmed up as TensorFlow's: step n uses min(DECAY, (1+n)/(10+n))")
    p.add_argument("--accumulate", type=integer, metavar="N",
                   help="make one optimizer step per N batches (effective batch = batch size x N)")
    p.add_argument("--sync-every", type=integer, metavar="N",
                   help="steps between the host's looks at the device: loss check, progress (default 1 on the CPU, "
                   "50 on accelerators)")
    p.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                   help="torch.compile the training step (backend: inductor, the default; eager)")
    p.add_argument("--tensorboard", action="store_true", default=None,
                   help="also write TensorBoard logs to OUT/tensorboard (pip install 'convnets[tensorboard]')")


def given_fields(args: argparse.Namespace) -> set[str]:
    """The TrainConfig fields typed on the command line (what a resume must not ignore)."""
    fields = set(TrainConfig.__dataclass_fields__) - {"model", "model_kwargs"}
    return {k for k, v in vars(args).items() if k in fields and v is not None} | (
        {"model_kwargs"} if args.model_arg else set())


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config: the command's defaults, then the ``--config`` file, then the options given (they win)."""
    fields = {f for f in TrainConfig.__dataclass_fields__} - {"model", "model_kwargs"}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    from_file = read_config_file(args.config) if args.config else {}
    # The command's own defaults (transfer: --freeze auto) start a run; a resumed run keeps its values.
    defaults = {} if args.resume else args.config_defaults
    values = {**defaults, **from_file, **given, "model": args.model}
    model_kwargs = parse_model_args(args.model_arg)
    if model_kwargs:
        # Made in one call: TrainConfig remembers the fields it was given (a resume must not ignore them),
        # and a copy made with dataclasses.replace would count every field as given.
        TrainConfig(**values)  # the file's model_kwargs checked first, as a mapping
        values["model_kwargs"] = {**values.get("model_kwargs", {}), **model_kwargs}
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    from convnets.training.loop import train

    train(config_from_args(args), given=given_fields(args))
    return 0
