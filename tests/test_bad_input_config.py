"""Bad training configs and model arguments (principle 3): every field and option checked before work starts.

Each case fails with a message naming the field (or builder argument) and its allowed range, and
before anything happens: no run directory is made, and the cases that point ``--data`` or
``--weights`` at paths that do not exist show that neither was looked at (the config error comes first).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import convnets
from badinput import Case, check_case, expect_cli_error, params, run_cli
from convnets.cli import build_parser
from convnets.cli.train import config_from_args
from convnets.errors import ConfigError, UnknownArgumentError
from convnets.registry import BUILDER_ARGUMENTS, list_models, model_entry
from convnets.training import TrainConfig
from convnets.training.config import FIELDS, resolve
from convnets.transfer import freeze, freeze_paths

RUN = "{tmp}/run"  # every CLI case writes here, if it writes at all: it must not
MISSING_DATA = "{tmp}/no-such-data"  # a config error must come before the data is looked for


def no_run(tmp: Path) -> None:
    assert not (tmp / "run").exists(), "a run directory was made for a config that was refused"


def train(*options: str, model: str = "lenet5") -> list[str]:
    return ["train", model, "--data", "digits", "--out", RUN, "--no-progress", *options]


def transfer(*options: str, model: str = "lenet5") -> list[str]:
    return ["transfer", model, "--data", "digits", "--weights", "fashion-mnist", "--out", RUN, "--no-progress",
            *options]


def file(name: str, content: str | bytes | Any) -> Any:
    """A setup writing ``content`` (text, bytes, or a value written as JSON; ``{tmp}`` replaced) to ``tmp/name``."""

    def setup(tmp: Path) -> None:
        path = tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text((content if isinstance(content, str) else json.dumps(content)).replace("{tmp}", str(tmp)))

    return setup


def with_config(name: str, *options: str, model: str = "lenet5") -> list[str]:
    return ["train", model, "--config", "{tmp}/" + name, "--out", RUN, "--no-progress", *options]


def api_train(tmp: Path, given_model: Any = None, **fields: Any) -> None:
    convnets.train(TrainConfig(**{"model": "lenet5", "data": "digits", "out": str(tmp / "run"),
                                  "progress": False, **fields}), model=given_model)


def with_classifier(outputs: int) -> torch.nn.Module:
    model = convnets.create_model("lenet5")
    model.head.fc = torch.nn.Linear(model.head.fc.in_features, outputs)
    return model


C = Case
CASES = [
    # --- ranges of command-line options (the library checks them: the Python API gets the same)
    C("grad-clip-negative", 3, train("--grad-clip", "-1"), r"grad_clip must be > 0.*got -1", after=no_run),
    C("grad-clip-zero", 3, train("--grad-clip", "0"), r"grad_clip must be > 0.*got 0", after=no_run),
    C("label-smoothing-5", 3, train("--label-smoothing", "5"), r"label_smoothing must be >= 0 and < 1.*got 5",
      after=no_run),
    C("label-smoothing-1", 3, train("--label-smoothing", "1"), r"label_smoothing must be >= 0 and < 1", after=no_run),
    C("momentum-1.5", 3, train("--momentum", "1.5"), r"momentum must be >= 0 and < 1.*got 1.5", after=no_run),
    C("weight-decay-negative", 3, train("--weight-decay", "-0.1"), r"weight_decay must be >= 0", after=no_run),
    C("warmup-negative", 3, train("--warmup-epochs", "-1"), r"warmup_epochs must be >= 0", after=no_run),
    C("warmup-longer-than-run", 3, train("--epochs", "2", "--warmup-epochs", "3"),
      r"warmup_epochs \(3.0\) must be shorter than the run \(2 epochs\)", after=no_run),
    C("threads-negative", 3, train("--threads", "-3"), r"threads must be a whole number from 1 to \d+.*got -3",
      after=no_run),
    C("threads-huge", 3, train("--threads", "100000"), r"threads must be a whole number from 1 to \d+", after=no_run),
    C("image-size-0", 3, train("--image-size", "0"), r"image_size must be a whole number from 1 to 4,096.*got 0",
      after=no_run),
    C("image-size-negative", 3, train("--image-size", "-5"), r"image_size must be a whole number from 1 to 4,096",
      after=no_run),
    C("image-size-20000", 3, train("--image-size", "20000"), r"image_size must be .* to 4,096.*got 20000",
      after=no_run),
    C("train-per-class-0", 3, train("--train-per-class", "0"), r"train_per_class must be a whole number >= 1.*got 0",
      after=no_run),
    C("test-per-class-negative", 3, train("--test-per-class", "-2"), r"test_per_class must be a whole number >= 1",
      after=no_run),
    C("max-steps-0", 3, train("--max-steps", "0"), r"max_steps must be a whole number >= 1", after=no_run),
    C("epochs-0", 3, train("--epochs", "0"), r"epochs must be a whole number >= 1.*got 0", after=no_run),
    C("batch-size-0", 3, train("--batch-size", "0"), r"batch_size must be a whole number from 1 to 16,777,216",
      after=no_run),
    C("lr-zero", 3, train("--lr", "0"), r"lr must be > 0.*got 0", after=no_run),
    C("lr-nan", 3, train("--lr", "nan"), r"lr must be > 0.*got nan", after=no_run),
    C("lr-inf", 3, train("--lr", "inf"), r"lr must be > 0.*got inf", after=no_run),
    C("seed-negative", 3, train("--seed", "-1"), r"seed must be a whole number from 0", after=no_run),
    # Python's int() and float() read "1_0" as 10 and other scripts' digits: on the command line that is a typo
    C("epochs-underscore", 2, train("--epochs", "1_0"), r"argument --epochs: must be a whole number; got '1_0'",
      after=no_run),
    C("batch-size-arabic-digits", 2, train("--batch-size", "\u0661\u0660"), r"argument --batch-size: must be a whole "
      r"number", after=no_run),
    C("lr-underscore", 2, train("--lr", "0.1_0"), r"argument --lr: must be a number; got '0.1_0'", after=no_run),
    C("ema-fullwidth-digits", 2, train("--ema", "\uff10.9"), r"argument --ema: must be a number", after=no_run),
    C("workers-negative", 3, train("--workers", "-1"), r"num_workers must be a whole number from 0 to 256",
      after=no_run),
    C("device-banana", 3, train("--device", "banana"), r"device must be cpu, cuda, cuda:N or mps.*'banana'",
      after=no_run),
    # cuda:99 is absent on a CPU build and on any real machine alike.
    C("device-cuda-99", 3, train("--device", "cuda:99"), r"device 'cuda:99': .*(no CUDA|CUDA devices)",
      after=no_run),
    C("option-before-data", 3, ["train", "lenet5", "--data", MISSING_DATA, "--grad-clip", "-1", "--out", RUN],
      r"grad_clip must be > 0", after=no_run),
    C("unknown-model", 3, train(model="lenet6"), r"Unknown model 'lenet6'.*Did you mean: lenet5", after=no_run),
    C("cache-features-unfrozen", 3, train("--cache-features"),
      r"cache_features needs everything but the classifier frozen.*all-but-head.*got freeze=None", after=no_run),
    # --- --model-arg: keys the builder does not take, values out of range
    C("model-arg-resnet20-small-input", 3, train("--model-arg", "small_input=true", model="resnet20"),
      r"resnet20 takes no argument 'small_input'; it takes shortcut='A'$", after=no_run),
    C("model-arg-lenet5-width", 3, train("--model-arg", "width=0.5"),
      r"lenet5 takes no argument 'width'; it takes no arguments but num_classes, in_chans", after=no_run),
    C("model-arg-misspelt", 3, train("--model-arg", "widht=0.5", model="mobilenet_v2"),
      r"mobilenet_v2 takes no argument 'widht' \(did you mean width\?\); it takes width=1.0, image_size=None, "
      r"dropout=0.2, small_input=False", after=no_run),
    C("model-arg-width-negative", 3, train("--model-arg", "width=-1", model="mobilenet_v1"),
      r"mobilenet_v1: width must be > 0 and <= 4 \(the width multiplier.*got -1", after=no_run),
    C("model-arg-width-word", 3, train("--model-arg", "width=wide", model="mobilenet_v1"),
      r"width must be > 0 and <= 4.*got 'wide'", after=no_run),
    C("model-arg-shortcut-z", 3, train("--model-arg", "shortcut=Z", model="resnet20"),
      r"resnet20: shortcut must be one of 'A', 'B', 'C', or None \(no shortcut, the plain net\); got 'Z'",
      after=no_run),
    C("model-arg-small-input-yes", 3, train("--model-arg", "small_input=yes", model="resnet18"),
      r"small_input must be true or false; got 'yes'", after=no_run),
    C("model-arg-dropout-1.5", 3, train("--model-arg", "dropout=1.5", model="mobilenet_v2"),
      r"dropout must be >= 0 and < 1; got 1.5", after=no_run),
    C("model-arg-image-size-16", 3, train("--model-arg", "image_size=16", model="mobilenet_v2"),
      r"image_size must be a whole number from 32 to 4,096", after=no_run),
    C("model-arg-num-classes", 3, train("--model-arg", "num_classes=3"),
      r"model_kwargs cannot set num_classes: .* come from the data", after=no_run),
    C("model-arg-no-equals", 3, train("--model-arg", "small_input"), r"--model-arg takes KEY=VALUE", after=no_run),
    C("model-arg-before-data", 3, ["train", "resnet20", "--data", MISSING_DATA, "--model-arg", "small_input=true",
                                   "--out", RUN], r"resnet20 takes no argument 'small_input'", after=no_run),
    # --- config files: types named by field, syntax with line and column, shape, unknown fields
    C("file-epochs-word", 3, with_config("c.json"), r"c\.json: epochs must be a whole number >= 1.*got 'three'",
      setup=file("c.json", {"epochs": "three"}), after=no_run),
    C("file-batch-size-fraction", 3, with_config("c.json"),
      r"c\.json: batch_size must be a whole number from 1 to 16,777,216.*16\.5",
      setup=file("c.json", {"batch_size": 16.5}), after=no_run),
    C("file-model-kwargs-string", 3, with_config("c.json"),
      r"c\.json: model_kwargs must be a mapping of builder arguments.*got 'width=0.5'",
      setup=file("c.json", {"model_kwargs": "width=0.5"}), after=no_run),
    C("file-lr-true", 3, with_config("c.json"), r"c\.json: lr must be > 0.*got True",
      setup=file("c.json", {"lr": True}), after=no_run),
    C("file-augment-number", 3, with_config("c.json"),
      r"c\.json: augment must be one of none, light, standard, heavy.*got 3",
      setup=file("c.json", {"augment": 3}), after=no_run),
    C("file-seed-bool", 3, with_config("c.json"), r"seed must be a whole number.*got True",
      setup=file("c.json", {"seed": True}), after=no_run),
    C("file-lr-nan", 3, with_config("c.json"), r"lr must be > 0.*got nan",
      setup=file("c.json", '{"lr": NaN}'), after=no_run),
    C("file-device-number", 3, with_config("c.json"), r"device must be a non-empty string.*got 5",
      setup=file("c.json", {"device": 5}), after=no_run),
    C("file-threads-zero", 3, with_config("c.json"), r"c\.json: threads must be a whole number from 1",
      setup=file("c.json", {"threads": 0}), after=no_run),
    C("file-freeze-number", 3, with_config("c.json"), r"freeze must be a string.*got 2",
      setup=file("c.json", {"freeze": 2}), after=no_run),
    C("file-bad-json", 3, with_config("c.json"), r"c\.json: not valid JSON at line 2, column \d+",
      setup=file("c.json", '{"epochs": 3,\n "lr": 0.1,,\n}'), after=no_run),
    C("file-bad-toml", 3, with_config("c.toml"), r"c\.toml: not valid TOML.*line 2",
      setup=file("c.toml", 'epochs = 3\nlr = = 0.1\n'), after=no_run),
    C("file-toml-type", 3, with_config("c.toml"), r"c\.toml: epochs must be a whole number >= 1.*got 'three'",
      setup=file("c.toml", 'epochs = "three"\n'), after=no_run),
    C("file-yaml", 3, with_config("c.yaml"), r"not valid JSON .*a TOML file needs the \.toml suffix",
      setup=file("c.yaml", "epochs: 3\n"), after=no_run),
    C("file-top-level-list", 3, with_config("c.json"), r"a config file is a table of TrainConfig fields.*holds a list",
      setup=file("c.json", [1, 2]), after=no_run),
    C("file-missing", 3, with_config("missing.json"), r"config file .*missing\.json cannot be read: No such file",
      after=no_run),
    C("file-is-a-directory", 3, with_config("adir"), r"config file .*adir cannot be read",
      setup=lambda tmp: (tmp / "adir").mkdir(), after=no_run),
    C("file-binary", 3, with_config("c.json"), r"config file .*c\.json is not text",
      setup=file("c.json", b"\x89PNG\r\n\x1a\n\xff\xfe"), after=no_run),
    C("file-unknown-field", 3, with_config("c.json"), r"unknown config fields \['epochz'\] \(did you mean epochs\?\)",
      setup=file("c.json", {"epochz": 3}), after=no_run),
    C("file-before-data", 3, with_config("c.json"), r"c\.json: epochs must be",
      setup=file("c.json", {"data": MISSING_DATA, "epochs": -1}), after=no_run),
    # --- transfer: freeze forms, stages the model lacks, the pretrained learning-rate scale
    C("freeze-range-backwards", 3, transfer("--freeze", "stages.9-3"),
      r"freeze 'stages.9-3': a frozen range starts at stages.0.*use none \| all-but-head \| auto", after=no_run),
    C("freeze-no-such-module", 3, transfer("--freeze", "stages.x"),
      r"freeze 'stages.x': lenet5 has no stages.x; its stages are stem, stages.0, stages.1", after=no_run),
    C("freeze-too-many-stages", 3, transfer("--freeze", "5"), r"cannot freeze 5 stages: lenet5 has 2", after=no_run),
    C("freeze-range-past-end", 3, transfer("--freeze", "stages.0-7"), r"lenet5 has no stages.7", after=no_run),
    C("freeze-range-not-a-number", 3, transfer("--freeze", "stages.0-x"), r"a range is stages.0-B", after=no_run),
    C("freeze-empty-path", 3, transfer("--freeze", "stem,,stages.0"), r"an empty path between commas",
      after=no_run),
    C("pretrained-lr-scale-zero", 3, transfer("--pretrained-lr-scale", "0"), r"pretrained_lr_scale must be > 0",
      after=no_run),
    C("pretrained-lr-scale-negative", 3, transfer("--pretrained-lr-scale", "-0.1"),
      r"pretrained_lr_scale must be > 0.*got -0.1", after=no_run),
    C("freeze-before-weights", 3, ["transfer", "lenet5", "--data", MISSING_DATA, "--weights", "{tmp}/none.pth",
                                   "--freeze", "stages.x", "--out", RUN], r"freeze 'stages.x'", after=no_run),
    C("transfer-file-cache-unfrozen", 3,
      ["transfer", "lenet5", "--config", "{tmp}/c.json", "--weights", "fashion-mnist", "--out", RUN],
      r"cache_features needs everything but the classifier frozen.*got freeze='1'",
      setup=file("c.json", {"freeze": "1", "cache_features": True}), after=no_run),
    # --- the Python API: TrainConfig, convnets.train, convnets.create_model
    C("api-grad-clip", 3, call=lambda tmp: TrainConfig(model="lenet5", grad_clip=-1), expect=r"grad_clip must be > 0"),
    C("api-epochs-bool", 3, call=lambda tmp: TrainConfig(model="lenet5", epochs=True),
      expect=r"epochs must be a whole number >= 1.*got True"),
    C("api-batch-size-fraction", 3, call=lambda tmp: TrainConfig(model="lenet5", batch_size=16.5),
      expect=r"batch_size must be a whole number from 1 to 16,777,216.*got 16.5"),
    C("api-model-kwargs-string", 3, call=lambda tmp: TrainConfig(model="lenet5", model_kwargs="width=0.5"),
      expect=r"model_kwargs must be a mapping"),
    C("api-train-per-class-0", 3, call=lambda tmp: TrainConfig(model="lenet5", train_per_class=0),
      expect=r"train_per_class must be a whole number >= 1.*got 0"),
    C("api-momentum-inf", 3, call=lambda tmp: TrainConfig(model="lenet5", momentum=math.inf),
      expect=r"momentum must be >= 0 and < 1.*got inf"),
    C("api-checkpoint-minutes-0", 3, call=lambda tmp: TrainConfig(model="lenet5", checkpoint_minutes=0),
      expect=r"checkpoint_minutes must be > 0"),
    C("api-precision", 3, call=lambda tmp: TrainConfig(model="lenet5", precision="fp8"),
      expect=r"precision must be one of auto, fp32, bf16, fp16; got 'fp8'"),
    C("api-nan-policy", 3, call=lambda tmp: TrainConfig(model="lenet5", nan_policy="ignore"),
      expect=r"nan_policy must be one of stop, skip"),
    C("api-model-not-text", 3, call=lambda tmp: TrainConfig(model=None), expect=r"model must be a non-empty string"),
    C("api-train-small-input", 3, call=lambda tmp: api_train(tmp, model="resnet20",
                                                             model_kwargs={"small_input": True}),
      expect=r"resnet20 takes no argument 'small_input'; it takes shortcut='A'", after=no_run),
    C("api-train-device", 3, call=lambda tmp: api_train(tmp, device="banana"), expect=r"device must be",
      after=no_run),
    C("api-train-freeze", 3, call=lambda tmp: api_train(tmp, freeze="stages.x", data=str(tmp / "no-such-data")),
      expect=r"freeze 'stages.x'", after=no_run),
    C("api-from-file-no-model", 3, call=lambda tmp: TrainConfig.from_file(tmp / "c.json"),
      expect=r"c\.json: no model", setup=file("c.json", {"epochs": 1})),
    C("api-from-file-missing", 3, call=lambda tmp: TrainConfig.from_file(tmp / "gone.json", model="lenet5"),
      expect=r"config file .*gone\.json cannot be read"),
    C("api-create-small-input", 3, call=lambda tmp: convnets.create_model("resnet20", small_input=True),
      expect=r"resnet20 takes no argument 'small_input'; it takes num_classes=10, in_chans=3, shortcut='A'"),
    C("api-create-num-classes-huge", 3, call=lambda tmp: convnets.create_model("lenet5", num_classes=10**9),
      expect=r"num_classes must be a whole number from 0 to 100,000.*got 1000000000"),
    C("api-create-num-classes-float", 3, call=lambda tmp: convnets.create_model("lenet5", num_classes=2.5),
      expect=r"num_classes must be a whole number"),
    C("api-create-num-classes-bool", 3, call=lambda tmp: convnets.create_model("lenet5", num_classes=True),
      expect=r"num_classes must be a whole number.*got True"),
    C("api-create-in-chans-0", 3, call=lambda tmp: convnets.create_model("resnet18", in_chans=0),
      expect=r"in_chans must be a whole number from 1 to 1,024; got 0"),
    C("api-create-width-word", 3, call=lambda tmp: convnets.create_model("mobilenet_v2", width="wide"),
      expect=r"width must be > 0 and <= 4.*got 'wide'"),
    C("api-create-shortcut", 3, call=lambda tmp: convnets.create_model("resnet18", shortcut="Z"),
      expect=r"shortcut must be one of 'A', 'B', 'C'"),
    C("api-create-name-not-text", 3, call=lambda tmp: convnets.create_model(5), expect=r"named by a string"),
    C("api-scaled-phi-huge", 3, call=lambda tmp: convnets.efficientnet_scaled(100),
      expect=r"phi must be >= 0 and <= 10"),
    C("api-freeze-paths", 3, call=lambda tmp: freeze_paths(convnets.create_model("resnet20"), "4"),
      expect=r"cannot freeze 4 stages: resnet20 has 3; its stages are stem, stages.0, stages.1, stages.2; use none"),
    C("api-freeze-number", 3, call=lambda tmp: freeze(convnets.create_model("resnet20"), 2),
      expect=r"freeze must be text: none \| all-but-head .*; got 2"),
    C("api-freeze-none", 3, call=lambda tmp: freeze_paths(convnets.create_model("resnet20"), None),
      expect=r"freeze must be text: .*; got None"),
    # --- the trainer's options: weight average, accumulation, host looks, compile, TensorBoard, model=
    C("ema-zero", 3, train("--ema", "0"), r"ema must be > 0 and < 1.*got 0", after=no_run),
    C("ema-one", 3, train("--ema", "1"), r"ema must be > 0 and < 1.*got 1", after=no_run),
    C("ema-negative", 3, train("--ema", "-1"), r"ema must be > 0 and < 1.*got -1", after=no_run),
    C("ema-word", 2, train("--ema", "x"), r"--ema: must be a number; got 'x'", after=no_run),
    C("accumulate-zero", 3, train("--accumulate", "0"), r"accumulate must be a whole number from 1 to 65,536.*got 0",
      after=no_run),
    C("accumulate-past-the-epoch", 3, train("--accumulate", "100", "--batch-size", "64"),
      r"--accumulate 100: an epoch has only 22 batches of 64, not one optimizer step", after=no_run),
    C("sync-every-zero", 3, train("--sync-every", "0"), r"sync_every must be a whole number from 1.*got 0",
      after=no_run),
    C("compile-unknown-backend", 3, train("--compile", "warp-drive"),
      r"compile 'warp-drive' is not a torch.compile backend; known: (?!.*TESTING_ONLY).*inductor.*aot_eager",
      after=no_run),
    C("api-ema-word", 3, call=lambda tmp: TrainConfig(model="lenet5", ema="x"), expect=r"ema must be > 0 and < 1"),
    C("api-ema-bool", 3, call=lambda tmp: TrainConfig(model="lenet5", ema=True), expect=r"ema must be.*got True"),
    C("api-accumulate-fraction", 3, call=lambda tmp: TrainConfig(model="lenet5", accumulate=1.5),
      expect=r"accumulate must be a whole number"),
    C("api-compile-empty", 3, call=lambda tmp: TrainConfig(model="lenet5", compile=""),
      expect=r"compile must be a non-empty string"),
    C("api-compile-true", 3, call=lambda tmp: TrainConfig(model="lenet5", compile=True),
      expect=r"compile must be a non-empty string.*got True"),
    C("api-tensorboard-word", 3, call=lambda tmp: TrainConfig(model="lenet5", tensorboard="yes"),
      expect=r"tensorboard must be true or false"),
    C("api-train-model-number", 3, call=lambda tmp: convnets.train(TrainConfig(model="mine"), model=42),
      expect=r"train\(model=...\) takes a ConvNet or a builder returning one, not int"),
    C("api-train-model-plain-module", 3,
      call=lambda tmp: convnets.train(TrainConfig(model="mine"), model=torch.nn.Linear(2, 2)),
      expect=r"takes a ConvNet or a builder returning one, not Linear"),
    C("api-train-builder-not-a-convnet", 3,
      call=lambda tmp: api_train(tmp, model="mine", given_model=lambda **kw: torch.nn.Linear(2, 2)),
      expect=r"the builder of mine returned a Linear, not a ConvNet", after=no_run),
    C("api-train-module-other-classes", 3,
      call=lambda tmp: api_train(tmp, model="mine", given_model=convnets.create_model("lenet5", num_classes=3)),
      expect=r"the model given for mine has 3 classes and 1 input channels; the data has 10 classes and 1 input "
             r"channels: build it for the data, or pass a builder", after=no_run),
    # A classifier swapped after building keeps the old num_classes: an IndexError at the first batch (fewer
    # outputs) or a refused weights file after the whole run (more).
    C("api-train-module-classifier-replaced-narrower", 3,
      call=lambda tmp: api_train(tmp, model="mine", given_model=with_classifier(7)),
      expect=r"the model given for mine has 10 classes but a classifier of 7 outputs and 1 input channels; the "
             r"data has 10 classes", after=no_run),
    C("api-train-module-classifier-replaced-wider", 3,
      call=lambda tmp: api_train(tmp, model="mine", given_model=with_classifier(13)),
      expect=r"has 10 classes but a classifier of 13 outputs", after=no_run),
    C("api-train-builder-ignores-num-classes", 3,
      call=lambda tmp: api_train(tmp, model="mine", given_model=lambda **kw: convnets.create_model("lenet5",
                                                                                                  num_classes=4)),
      expect=r"the model given for mine has 4 classes and 1 input channels; the builder of mine was asked for 10 "
             r"classes and 1 input channels: build what it is asked for", after=no_run),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check_case(case, tmp_path, capsys)


# --- what still works: edge values inside the ranges, config files, options beside them


def test_edge_values_inside_the_ranges_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    status, _, err = run_cli(["train", "lenet5", "--data", "digits", "--out", str(out), "--no-progress",
                              "--device", "cpu", "--label-smoothing", "0", "--grad-clip", "1.0", "--momentum", "0",
                              "--weight-decay", "0", "--warmup-epochs", "0", "--epochs", "1", "--max-steps", "1",
                              "--train-per-class", "16", "--test-per-class", "1", "--batch-size", "16",
                              "--seed", "0", "--threads", "1", "--workers", "0", "--image-size", "32"], capsys)
    assert status == 0, err
    saved = json.loads((out / "config.json").read_text())
    assert (saved["label_smoothing"], saved["grad_clip"], saved["momentum"], saved["train_per_class"]) == (
        0.0, 1.0, 0.0, 16)


@pytest.mark.parametrize(("option", "text", "value"), [
    ("--epochs", "12", 12), ("--epochs", " +3 ", 3), ("--seed", "-1", -1), ("--lr", "1e-3", 1e-3),
    ("--lr", ".5", 0.5), ("--lr", "2.", 2.0), ("--momentum", "9E-1", 0.9), ("--label-smoothing", "-0", 0.0)])
def test_numbers_in_every_usual_spelling_are_read(option: str, text: str, value: float) -> None:
    args = build_parser().parse_args(["train", "lenet5", option, text])
    assert getattr(args, option[2:].replace("-", "_")) == value


def test_config_file_with_options_beside_it(tmp_path: Path) -> None:
    """The file fills the run's config, options given beside it win, and --model-arg adds to its model_kwargs."""
    path = tmp_path / "c.toml"
    path.write_text('data = "digits"\nlr = 0.5\nepochs = 2\n[model_kwargs]\nwidth = 0.25\n')
    args = build_parser().parse_args(["train", "mobilenet_v1", "--config", str(path), "--lr", "0.01",
                                      "--model-arg", "small_input=true"])
    config = config_from_args(args)
    assert (config.data, config.lr, config.epochs) == ("digits", 0.01, 2)
    assert config.model_kwargs == {"width": 0.25, "small_input": True}


def test_transfer_defaults_do_not_override_the_config_file(tmp_path: Path) -> None:
    """`convnets transfer` defaults to --freeze auto and a 0.1 scale, below what a --config file says."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"freeze": "none", "pretrained_lr_scale": 0.5}))
    from_file = config_from_args(build_parser().parse_args(["transfer", "lenet5", "--config", str(path),
                                                            "--weights", "fashion-mnist"]))
    assert (from_file.freeze, from_file.pretrained_lr_scale) == ("none", 0.5)
    plain = config_from_args(build_parser().parse_args(["transfer", "lenet5", "--weights", "fashion-mnist"]))
    assert (plain.freeze, plain.pretrained_lr_scale) == ("auto", 0.1)
    given = config_from_args(build_parser().parse_args(["transfer", "lenet5", "--config", str(path),
                                                        "--weights", "fashion-mnist", "--freeze", "1"]))
    assert given.freeze == "1"


def test_config_file_resume_is_kept_unless_given(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"resume": True}))
    assert config_from_args(build_parser().parse_args(["train", "lenet5", "--config", str(path)])).resume is True


def test_paths_may_be_path_objects_and_are_kept_as_text(tmp_path: Path) -> None:
    config = TrainConfig(model="lenet5", data=Path("digits"), out=tmp_path / "run", cache_dir=tmp_path)
    assert (config.data, config.out) == ("digits", str(tmp_path / "run"))
    json.dumps(config.to_dict())  # what config.json will hold


@pytest.mark.parametrize("value", [None, True, 0, -1, 1.5, 10**400, -math.inf, math.nan, "x", "", [], {}, [1]])
def test_any_value_of_any_field_is_accepted_or_refused_by_name(value: Any) -> None:
    """A deterministic fuzz: whatever a JSON file holds, a field either takes it or says which field refused it."""
    for name in [*FIELDS, "threads"]:
        if name == "model":
            continue
        try:
            TrainConfig(model="lenet5", **{name: value})
        except ConfigError as err:
            assert str(err).startswith(name + " must be"), err


def test_resolve_accepts_valid_edge_values() -> None:
    config = resolve(TrainConfig(model="resnet20", label_smoothing=0.0, grad_clip=1e-6, momentum=0.0,
                                 pretrained_lr_scale=1e-3, weight_decay=0, warmup_epochs=0, image_size=4096,
                                 freeze="stages.0-2", model_kwargs={"shortcut": None}, device="cpu",
                                 checkpoint_minutes=0.01, seed=2**63 - 1))
    assert (config.optimizer, config.freeze) == ("sgd", "stages.0-2")


def test_cache_features_with_a_frozen_trunk_is_accepted() -> None:
    assert resolve(TrainConfig(model="resnet20", cache_features=True, freeze="all-but-head")).cache_features
    assert resolve(TrainConfig(model="resnet20", cache_features=True, freeze="auto")).freeze == "auto"


def test_unknown_builder_argument_is_also_a_type_error() -> None:
    # Python raises TypeError for an unexpected keyword: code catching that keeps working.
    with pytest.raises(TypeError, match="small_input"):
        convnets.create_model("resnet20", small_input=True)
    assert issubclass(UnknownArgumentError, ConfigError)


def test_builder_arguments_edge_values_build() -> None:
    import torch

    with torch.device("meta"):
        assert convnets.create_model("lenet5", num_classes=0).num_classes == 0  # features out, as timm
        assert convnets.create_model("resnet20", num_classes=100_000, in_chans=1024).num_classes == 100_000
        assert convnets.create_model("resnet20", shortcut=None).shortcut is None
        assert convnets.create_model("mobilenet_v1", width=4, image_size=4096, dropout=0).width == 4
        assert convnets.create_model("mobilenet_v2", width=1).width == 1  # an int where a float is expected


def test_every_builder_argument_has_a_rule_its_default_passes() -> None:
    """A new builder argument must get a rule in BUILDER_ARGUMENTS, and no rule may refuse a default."""
    for name in list_models():
        for argument, parameter in model_entry(name).arguments().items():
            assert argument in BUILDER_ARGUMENTS, f"{name}({argument}=...) has no rule in BUILDER_ARGUMENTS"
            if parameter.default is not parameter.empty:
                assert BUILDER_ARGUMENTS[argument].test(parameter.default), (name, argument, parameter.default)


@pytest.mark.parametrize(("model", "size", "hint"), [
    ("resnet20", "2", None),  # resnet20's builder takes no small_input: never suggested
    ("mobilenet_v1", "16", "--model-arg small_input=true"),
])
def test_small_input_hint_only_for_models_that_take_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       model: str, size: str, hint: str | None) -> None:
    status, _, err = run_cli(["train", model, "--data", "digits", "--image-size", size, "--out",
                              str(tmp_path / "run"), "--no-progress", "--device", "cpu"], capsys)
    assert status == 2 and f"{model} needs images of at least" in err, err
    assert (hint in err) if hint else ("small_input" not in err), err
    assert not (tmp_path / "run").exists()


def test_options_are_checked_before_joining_the_process_group(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str],
                                                               tmp_path: Path) -> None:
    # Under torchrun a rank that refused its options only after joining would leave the other ranks
    # blocked in init_process_group, where neither Ctrl-C nor SIGTERM reaches Python.
    from convnets.training import distributed

    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)

    def joined(device: str | None = None) -> None:
        raise AssertionError("joined the process group before the options were checked")

    monkeypatch.setattr(distributed, "setup", joined)
    expect_cli_error(["train", "lenet5", "--data", "digits", "--compile", "nosuch", "--out", str(tmp_path / "run")],
                     "nosuch", capsys)
    assert not (tmp_path / "run").exists()


def test_a_backend_whose_package_is_missing_is_refused_before_the_data(tmp_path: Path, capsys, monkeypatch) -> None:
    # torch lists tvm and openxla whether or not their packages are installed; they failed at the first step.
    monkeypatch.setattr(convnets.training.config, "_installed", lambda module: module != "tvm")
    expect_cli_error(["train", "lenet5", "--data", str(tmp_path / "no-such-data"), "--compile", "tvm", "--out",
                      str(tmp_path / "run")], r"--compile tvm needs the tvm package, which is not installed: pip "
                                              r"install apache-tvm, or choose another backend", capsys)
    assert not (tmp_path / "run").exists()


def test_a_backend_that_fails_at_the_first_step_is_one_line_and_the_folder_can_be_reused(tmp_path: Path,
                                                                                        capsys) -> None:
    import torch._dynamo

    def no_compiler(graph: Any, inputs: Any) -> Any:
        raise ImportError("no C++ compiler found")

    if "convnets_test_no_compiler" not in torch._dynamo.list_backends(exclude_tags=()):
        torch._dynamo.register_backend(no_compiler, name="convnets_test_no_compiler")
    out = str(tmp_path / "run")
    expect_cli_error(["train", "lenet5", "--data", "digits", "--max-steps", "2", "--compile",
                      "convnets_test_no_compiler", "--out", out, "--no-progress"],
                     r"--compile convnets_test_no_compiler: torch.compile could not compile lenet5 \(ImportError: "
                     r"no C\+\+ compiler found\); choose another backend or leave out --compile", capsys)
    status, _, err = run_cli(["train", "lenet5", "--data", "digits", "--max-steps", "2", "--out", out,
                              "--no-progress"], capsys)
    assert status == 0, err


def test_numpy_numbers_from_a_sweep_are_taken_as_their_values() -> None:
    """np.arange seeds and np.float32 rates were refused as "must be a whole number >= 1; got np.int64(3)"."""
    import numpy as np

    config = TrainConfig(model="lenet5", epochs=np.int64(3), seed=np.arange(5)[4], lr=np.float32(0.5),
                         ema=np.float32(0.75), deterministic=np.bool_(True), num_workers=np.int32(0))
    assert (config.epochs, config.seed, config.lr, config.ema, config.deterministic) == (3, 4, 0.5, 0.75, True)
    assert type(config.epochs) is int and type(config.lr) is float and type(config.deterministic) is bool
    json.dumps(config.to_dict())  # what config.json holds
    with pytest.raises(ConfigError, match=r"epochs must be a whole number >= 1.*got 0"):
        TrainConfig(model="lenet5", epochs=np.int64(0))


def test_numpy_numbers_in_model_kwargs_are_taken_as_their_values() -> None:
    # Only the fields themselves were converted: a swept width was "width must be > 0 and <= 4 ...; got
    # np.float32(0.5)", and config.json could not hold it.
    import numpy as np

    config = resolve(TrainConfig(model="mobilenet_v2", model_kwargs={"width": np.float32(0.5)}))
    assert config.model_kwargs == {"width": 0.5} and type(config.model_kwargs["width"]) is float
    json.dumps(config.to_dict())
