"""Bad input to evaluate, export, latency, fit-device and experiment, and to the Python API behind them.

One tiny real run (LeNet-5 on digits, one epoch) is trained per module; each case that needs a run
copies it into its own directory, so a case can check that the run and the user's files are untouched.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from badinput import Case, check_case, params
from convnets import count, create_model, summary
from convnets.analysis import cost
from convnets.evaluate import Ensemble, evaluate
from convnets.export import export_onnx, median_latency_ms, quantize_int8
from convnets.fit import fit_device
from convnets.training import TrainConfig, train
from convnets.weights import cache_root
from convnets.weights.specs import PACKAGE_DIR

TRAINED: dict[str, Path] = {}  # filled once per module by the fixture below

DIGITS_META = dict(model="lenet5", num_classes=10, in_chans=1, input_size=[1, 32, 32], mean=[0.3], std=[0.3],
                   classes=[str(i) for i in range(10)], dataset="digits")


@pytest.fixture(scope="module", autouse=True)
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    train(TrainConfig(model="lenet5", data="digits", image_size=32, batch_size=64, epochs=1, progress=False,
                      device="cpu", out=str(out)))
    TRAINED["run"] = out
    return out


# ---- setups: each makes files in the case's own directory


def a_run(name: str = "run") -> Callable[[Path], None]:
    """A copy of the trained run at ``tmp/name``."""
    return lambda tmp: shutil.copytree(TRAINED["run"], tmp / name)


def weights_file(name: str = "w.safetensors", num_classes: int = 10, metadata: bool = True,
                 **meta_changes: object) -> Callable[[Path], None]:
    """LeNet-5 weights as convnets saves them (random values) with DIGITS_META changed by ``meta_changes``.

    Written with safetensors itself: save_weights refuses to write the damaged metadata some cases need.
    """

    def setup(tmp: Path) -> None:
        meta = {**DIGITS_META, "num_classes": num_classes, **meta_changes} if metadata else {}
        state = {k: v.contiguous() for k, v in create_model("lenet5", num_classes=num_classes).state_dict().items()}
        save_file(state, str(tmp / name), metadata={"format": "pt", **{k: json.dumps(v) for k, v in meta.items()}})

    return setup


def image_folder(name: str = "folder", classes: int = 3, per_class: int = 3) -> Callable[[Path], None]:
    """``tmp/name/CLASS/i.png``: small random RGB images."""

    def setup(tmp: Path) -> None:
        rng = np.random.default_rng(0)
        for c in range(classes):
            (tmp / name / f"class{c}").mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp / name / f"class{c}" / f"{i}.png")

    return setup


def both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for s in setups:
            s(tmp)

    return setup


def file_with(name: str, content: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(content)

    return setup


# ---- afters: what must hold once the command has failed


def unchanged(name: str, content: str) -> Callable[[Path], None]:
    def after(tmp: Path) -> None:
        assert (tmp / name).read_text() == content, f"{name} was changed"

    return after


def absent(*names: str) -> Callable[[Path], None]:
    def after(tmp: Path) -> None:
        for name in names:
            assert not (tmp / name).exists(), f"{name} was written although the command failed"

    return after


def nothing_but(*names: str) -> Callable[[Path], None]:
    """The case's directory holds only ``names`` (no report, export, temporary or hidden file)."""

    def after(tmp: Path) -> None:
        assert sorted(p.name for p in tmp.iterdir()) == sorted(names)

    return after


def never_made(path: Path) -> Callable[[Path], None]:
    def after(tmp: Path) -> None:
        assert not path.exists(), f"{path} was made"

    return after


def no_eval_written(tmp: Path) -> None:
    """No report in the run, and none in the case's working directory (the default ``runs/evaluate/NAME``)."""
    assert not (tmp / "runs").exists(), "the report was written although the command failed"
    assert sorted(p.name for p in (tmp / "run").iterdir()) == sorted(p.name for p in TRAINED["run"].iterdir())


def mismatched_export(path: Path) -> None:
    """An export whose ONNX Runtime output is made to differ from PyTorch's."""
    from convnets import export

    real = export.run_onnx
    with mock.patch.object(export, "run_onnx", lambda sess, x: real(sess, x) + 1.0):
        export_onnx(create_model("lenet5"), path, torch.randn(2, 1, 32, 32))


RUN, RUN2 = "{tmp}/run", "{tmp}/run2"
TWO_RUNS = both(a_run("run"), a_run("run2"))
MINE = "my own notes\n"

CASES = [
    # ---- evaluate: options (3)
    Case("evaluate-top-k-negative", 3, ["evaluate", RUN, "--top-k", "-3"], r"--top-k.*>= 1", a_run(),
         after=no_eval_written),
    Case("evaluate-top-k-zero", 3, ["evaluate", RUN, "--top-k", "0"], r"--top-k.*>= 1", a_run(), after=no_eval_written),
    Case("evaluate-batch-size-zero", 3, ["evaluate", RUN, "--batch-size", "0"], r"--batch-size.*>= 1", a_run(),
         after=no_eval_written),
    Case("evaluate-device-banana", 3, ["evaluate", RUN, "--device", "banana"], r"device.*'banana'", a_run(),
         after=no_eval_written),
    # cuda:99 is refused on a CPU build (no CUDA) and on a GPU machine (no 100th device) alike.
    Case("evaluate-device-absent-cuda", 3, ["evaluate", RUN, "--device", "cuda:99"], r"cuda", a_run(),
         after=no_eval_written),
    Case("evaluate-tta-unknown", 3, ["evaluate", RUN, "--tta", "five-crop"], r"--tta.*five-crop", a_run()),
    Case("evaluate-combine-unknown", 3, ["evaluate", RUN, RUN2, "--combine", "median"], r"--combine", TWO_RUNS),
    Case("ensemble-weights-negative", 3, ["evaluate", RUN, RUN2, "--ensemble-weights=-1,2"],
         r"ensemble weights must be finite numbers >= 0", TWO_RUNS, after=no_eval_written),
    Case("ensemble-weights-sum-zero", 3, ["evaluate", RUN, RUN2, "--ensemble-weights", "0,0"],
         r"at least one of them > 0", TWO_RUNS, after=no_eval_written),
    Case("ensemble-weights-cancel-out", 3, ["evaluate", RUN, RUN2, "--ensemble-weights=1,-1"], r">= 0", TWO_RUNS),
    Case("ensemble-weights-nan", 3, ["evaluate", RUN, RUN2, "--ensemble-weights", "nan,1"], r"finite", TWO_RUNS),
    Case("ensemble-weights-words", 3, ["evaluate", RUN, RUN2, "--ensemble-weights", "two,one"],
         r"--ensemble-weights.*comma-separated numbers", TWO_RUNS),
    Case("ensemble-weights-too-many", 3, ["evaluate", RUN, RUN2, "--ensemble-weights", "1,2,3"],
         r"3 ensemble weights for 2 models", TWO_RUNS),
    Case("ensemble-weights-for-one-model", 3, ["evaluate", RUN, "--ensemble-weights", "1,2"],
         r"2 ensemble weights for 1 model", a_run()),
    # ---- evaluate: sources and data (3, 4)
    Case("evaluate-missing-path", 3, ["evaluate", "{tmp}/nothing-here"], r"neither a run directory"),
    Case("evaluate-directory-not-a-run", 3, ["evaluate", "{tmp}/notes"], r"notes: a directory without best\.safetensors"
         r".*not a convnets run", file_with("notes/todo.txt", MINE),
         after=both(unchanged("notes/todo.txt", MINE), absent("runs"), nothing_but("notes"))),
    Case("evaluate-run-stopped-before-weights", 3, ["evaluate", "{tmp}/early"], r"no weights yet",
         file_with("early/config.json", "{}")),
    Case("evaluate-weights-without-metadata", 3, ["evaluate", "{tmp}/w.safetensors"],
         r"metadata lacks model, classes, input_size, mean, std; evaluate needs weights saved by convnets",
         weights_file(metadata=False)),
    Case("evaluate-not-safetensors", 3, ["evaluate", "{tmp}/w.safetensors"], r"not a readable safetensors",
         file_with("w.safetensors", "this is text")),
    Case("evaluate-damaged-metadata-size", 3, ["evaluate", "{tmp}/w.safetensors"], r"input_size.*\[channels, height",
         weights_file(input_size=[1, 0, 32])),
    Case("evaluate-metadata-classes-vs-head", 3, ["evaluate", "{tmp}/w.safetensors"], r"3 classes but num_classes is 1",
         weights_file(classes=["a", "b", "c"])),
    Case("evaluate-data-missing", 3, ["evaluate", RUN, "--data", "{tmp}/no-such-data"], r"no-such-data", a_run(),
         after=no_eval_written),
    Case("evaluate-trained-on-data-not-here", 3, ["evaluate", "{tmp}/w.safetensors"],
         r"trained on 'my-photos'.*pass --data", weights_file(dataset="my-photos")),
    Case("evaluate-data-other-class-count", 4, ["evaluate", RUN, "--data", "{tmp}/folder"],
         r"predicts 10 classes \(0, 1, 2, 3, \.\.\.\) but .*folder has 3 \(class0, class1, class2\)",
         both(a_run(), image_folder()), after=no_eval_written),
    # The same count under other names: an accuracy matched by index (0.15 for digits on Fashion-MNIST), written
    # after a warning line; export refuses the same data.
    Case("evaluate-data-other-class-names", 4, ["evaluate", RUN, "--data", "{tmp}/folder", "--out", "{tmp}/eval"],
         r"predicts the classes 0, 1, 2, 3, \.\.\. but .*folder has class0, class1, class2, class3, \.\.\.: "
         r"evaluate it on the data it was trained on \(digits\)", both(a_run(), image_folder(classes=10, per_class=1)),
         after=absent("eval")),
    Case("ensemble-different-classes", 4, ["evaluate", RUN, "{tmp}/w.safetensors"], r"different classes",
         both(a_run(), weights_file(classes=[f"c{i}" for i in range(10)]))),
    Case("ensemble-different-class-count", 4, ["evaluate", RUN, "{tmp}/w.safetensors"], r"different classes",
         both(a_run(), weights_file(num_classes=4, classes=["0", "1", "2", "3"]))),
    # ---- evaluate: output (2)
    Case("evaluate-out-is-a-file", 2, ["evaluate", RUN, "--out", "{tmp}/report.txt"], r"report\.txt.*is a file",
         both(a_run(), file_with("report.txt", MINE)), after=unchanged("report.txt", MINE)),
    Case("evaluate-out-has-their-report", 2, ["evaluate", RUN, "--out", "{tmp}/mine"],
         r"evaluation\.txt exists and is not an evaluation report of convnets",
         both(a_run(), file_with("mine/evaluation.txt", MINE)),
         after=both(unchanged("mine/evaluation.txt", MINE), absent("mine/evaluation.json", "mine/confusion.png"))),
    Case("evaluate-out-has-their-json", 2, ["evaluate", RUN, "--out", "{tmp}/mine"], r"evaluation\.json exists",
         both(a_run(), file_with("mine/evaluation.json", '{"mine": 1}')),
         after=unchanged("mine/evaluation.json", '{"mine": 1}')),
    # Even --force does not replace a folder with a report file: refused before evaluating, not after.
    Case("evaluate-force-report-file-is-a-folder", 2, ["evaluate", RUN, "--out", "{tmp}/mine", "--force"],
         r"mine/confusion\.png is a directory, where the report writes a file",
         both(a_run(), file_with("mine/confusion.png/notes.txt", MINE)),
         after=both(unchanged("mine/confusion.png/notes.txt", MINE),
                    absent("mine/evaluation.json", "mine/evaluation.txt"))),
    # A report never goes into convnets' installed package (where the shipped weights are) or the weights cache.
    Case("evaluate-out-inside-the-package", 2, ["evaluate", RUN, "--out", str(PACKAGE_DIR / "eval")],
         r"pretrained/eval is inside convnets' installed package .*--out", a_run(),
         after=never_made(PACKAGE_DIR / "eval")),
    Case("evaluate-out-inside-the-weights-cache", 2, ["evaluate", RUN, "--out", str(cache_root() / "eval")],
         r"eval is inside the weights download cache", a_run(), after=never_made(cache_root() / "eval")),
    # An empty --out ("$DIR" unset) silently meant runs/evaluate/NAME; a folder under a file was found after the
    # whole evaluation.
    Case("evaluate-out-empty", 3, ["evaluate", RUN, "--out", ""], r"--out: must be a path; got ''", a_run()),
    Case("evaluate-out-under-a-file", 2, ["evaluate", RUN, "--out", "{tmp}/report.txt/sub"],
         r"report\.txt is a file, not a folder", both(a_run(), file_with("report.txt", MINE)),
         after=unchanged("report.txt", MINE)),
    # ---- export
    Case("export-out-empty", 3, ["export", RUN, "--out", ""], r"--out: must be a path; got ''", a_run(),
         after=absent("run/export")),
    # Calibrating on no image made an int8 model 23 points worse, reported as a result (10).
    Case("export-calibration-zero", 10, ["export", "lenet5", "--int8", "--calibration-images", "0", "--out", "{tmp}"],
         r"--calibration-images.*>= 1", after=nothing_but()),
    Case("export-calibration-negative", 3, ["export", RUN, "--int8", "--calibration-images", "-5"],
         r"--calibration-images", a_run(), after=absent("run/export")),
    Case("export-directory-not-a-run", 3, ["export", "{tmp}/notes"], r"without best\.safetensors",
         file_with("notes/todo.txt", MINE), after=nothing_but("notes")),
    Case("export-missing-path", 3, ["export", "{tmp}/runs/nope"], r"no such run directory or weights file"),
    # A folder named in Latin-1 (held with surrogates): PyTorch's exporter refused the path with a TypeError.
    Case("export-out-not-utf8", 3, ["export", "lenet5", "--out", "{tmp}/e\udce9"],
         r"e\\xe9: the ONNX tools cannot write into a folder whose name is not UTF-8; choose another --out",
         after=nothing_but()),
    Case("export-unknown-model", 3, ["export", "lenet6", "--out", "{tmp}/x"], r"unknown model 'lenet6'",
         after=nothing_but()),
    Case("export-model-arg-on-weights", 3, ["export", RUN, "--model-arg", "width=2"], r"--model-arg.*width",
         a_run(), after=absent("run/export")),
    Case("export-weights-without-model-name", 3, ["export", "{tmp}/w.safetensors", "--out", "{tmp}/x"],
         r"no model name", weights_file(metadata=False), after=absent("x")),
    Case("export-data-other-class-count", 4, ["export", RUN, "--data", "{tmp}/folder"], r"10 classes but .*has 3",
         both(a_run(), image_folder()), after=absent("run/export")),
    # The same count under other names: labels matched by index would make an accuracy that measures nothing.
    Case("export-data-other-class-names", 4, ["export", RUN, "--data", "{tmp}/folder"],
         r"predicts the classes \['0', '1', '2', '3', \.\.\. \(10 in all\)\] but .*folder has \['class0', 'class1'",
         both(a_run(), image_folder(classes=10, per_class=1)), after=absent("run/export")),
    # --out is a folder: a file name there used to become a folder called model.onnx holding lenet5.onnx.
    Case("export-out-a-file-name", 3, ["export", "lenet5", "--out", "{tmp}/model.onnx"],
         r"--out .*model\.onnx names a file, but --out is the folder the export goes into \(as FOLDER/lenet5\.onnx\)",
         after=nothing_but()),
    Case("export-out-is-a-file", 2, ["export", "lenet5", "--out", "{tmp}/notes.txt"], r"notes\.txt.*is a file",
         file_with("notes.txt", MINE), after=unchanged("notes.txt", MINE)),
    Case("export-out-has-their-onnx", 2, ["export", "lenet5", "--out", "{tmp}/theirs"],
         r"lenet5\.onnx exists and is not an ONNX file exported by convnets",
         both(file_with("theirs/lenet5.onnx", MINE), file_with("theirs/notes.txt", MINE)),
         after=both(unchanged("theirs/lenet5.onnx", MINE), unchanged("theirs/notes.txt", MINE))),
    # The int8 target is checked before the fp32 file is written: nothing is written at all.
    Case("export-out-has-their-int8", 2, ["export", "lenet5", "--int8", "--out", "{tmp}/theirs"],
         r"lenet5\.int8\.onnx exists", file_with("theirs/lenet5.int8.onnx", MINE),
         after=both(unchanged("theirs/lenet5.int8.onnx", MINE), absent("theirs/lenet5.onnx"))),
    # ---- latency
    Case("latency-batch-zero", 3, ["latency", "lenet5", "--batch", "1", "0"], r"--batch.*>= 1"),
    Case("latency-repeats-zero", 3, ["latency", "lenet5", "--repeats", "0"], r"--repeats.*>= 1"),
    Case("latency-input-zero", 3, ["latency", "lenet5", "--input", "3x0x9"], r"--input.*3x0x9"),
    Case("latency-input-garbage", 3, ["latency", "lenet5", "--input", "garbage"], r"--input.*CxHxW"),
    Case("latency-input-wrong-channels", 3, ["latency", "lenet5", "--input", "3x32x32"],
         r"lenet5 expects \(N, 1, 32, 32\).*3 channels"),
    Case("latency-threads-negative", 3, ["latency", "lenet5", "--threads", "-3"], r"threads must be a whole number"),
    # The second source is checked before the first is measured.
    Case("latency-second-source-bad", 3, ["latency", "lenet5", "{tmp}/notes"], r"without best\.safetensors",
         file_with("notes/todo.txt", MINE)),
    # ---- fit-device
    Case("fit-device-latency-zero", 3, ["fit-device", "--family", "mobilenet_v1", "--latency-ms", "0"],
         r"latency_ms must be a finite number of milliseconds > 0"),
    Case("fit-device-latency-nan", 3, ["fit-device", "--family", "mobilenet_v1", "--latency-ms", "nan"], r"latency"),
    Case("fit-device-latency-negative", 3, ["fit-device", "--family", "efficientnet", "--latency-ms=-5"], r"> 0"),
    # An empty batch timed nothing and picked the largest candidate at 0.5 ms (10).
    Case("fit-device-batch-zero", 10, ["fit-device", "--family", "mobilenet_v2", "--latency-ms", "5", "--batch", "0"],
         r"--batch.*>= 1"),
    Case("api-fit-device-repeats", 10, call=lambda tmp: fit_device("mobilenet_v1", 5.0, repeats=0),
         expect=r"repeats.*>= 1"),
    Case("fit-device-repeats-zero", 3, ["fit-device", "--family", "mobilenet_v2", "--latency-ms", "5", "--repeats",
                                        "0"], r"--repeats"),
    Case("fit-device-family-unknown", 3, ["fit-device", "--family", "resnet", "--latency-ms", "5"], r"--family"),
    # ---- experiment
    Case("experiment-threads-zero", 3, ["experiment", "one-by-one", "--threads", "0", "--out", "{tmp}/x"],
         r"threads must be a whole number from 1", after=nothing_but()),
    Case("experiment-budget-unknown", 3, ["experiment", "one-by-one", "--budget", "huge"], r"--budget.*huge"),
    Case("experiment-out-is-a-file", 3, ["experiment", "one-by-one", "--budget", "tiny", "--out", "{tmp}/notes.txt"],
         r"notes\.txt.*is a file", file_with("notes.txt", MINE), after=unchanged("notes.txt", MINE)),
    # ---- Python API: evaluation and export (3)
    Case("api-evaluate-top-k", 3, call=lambda tmp: evaluate(TRAINED["run"], top_k=0), expect=r"top_k.*>= 1"),
    Case("api-evaluate-batch-size", 3, call=lambda tmp: evaluate(TRAINED["run"], batch_size=2.5),
         expect=r"batch_size.*whole number"),
    Case("api-evaluate-views", 3, call=lambda tmp: evaluate(TRAINED["run"], views="sideways"), expect=r"views"),
    Case("api-evaluate-nothing", 3, call=lambda tmp: evaluate([]), expect=r"at least one"),
    Case("api-evaluate-weights-zero-sum", 3, call=lambda tmp: evaluate([TRAINED["run"]] * 2, weights=[0, 0]),
         expect=r"at least one of them > 0"),
    Case("api-evaluate-weights-not-numbers", 3, call=lambda tmp: evaluate([TRAINED["run"]] * 2, weights=["a", 1]),
         expect=r"must be numbers"),
    Case("api-ensemble-negative-weights", 3,
         call=lambda tmp: Ensemble([create_model("lenet5")] * 2, weights=[2, -1]), expect=r">= 0"),
    Case("api-export-not-a-convnet", 3,
         call=lambda tmp: export_onnx(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), tmp / "m.onnx", torch.randn(2, 4)),
         expect=r"convnets model", after=nothing_but()),
    Case("api-export-empty-check-batch", 3,
         call=lambda tmp: export_onnx(create_model("lenet5"), tmp / "m.onnx", torch.randn(0, 1, 32, 32)),
         expect=r"check_inputs.*N >= 1", after=nothing_but()),
    Case("api-export-check-batch-wrong-channels", 3,
         call=lambda tmp: export_onnx(create_model("lenet5"), tmp / "m.onnx", torch.randn(2, 3, 32, 32)),
         expect=r"3 channels", after=nothing_but()),
    Case("api-export-tolerance", 3,
         call=lambda tmp: export_onnx(create_model("lenet5"), tmp / "m.onnx", torch.randn(2, 1, 32, 32), tolerance=-1),
         expect=r"tolerance", after=nothing_but()),
    Case("api-export-opset", 3,
         call=lambda tmp: export_onnx(create_model("lenet5"), tmp / "m.onnx", torch.randn(2, 1, 32, 32), opset=99),
         expect=r"opset must be from 7 to", after=nothing_but()),
    # The file is ONNX whatever it is called: a .pt name would promise a PyTorch file, a number is no path.
    Case("api-export-pt-name", 3,
         call=lambda tmp: export_onnx(create_model("lenet5"), tmp / "model.pt", torch.randn(2, 1, 32, 32)),
         expect=r"an ONNX export is written to a path ending in \.onnx; got PosixPath\('.*model\.pt'\)",
         after=nothing_but()),
    Case("api-quantize-out-a-number", 3,
         call=lambda tmp: quantize_int8(tmp / "m.onnx", 8, torch.randn(4, 1, 32, 32)),
         expect=r"path ending in \.onnx; got 8"),
    Case("api-quantize-no-calibration", 3,
         call=lambda tmp: quantize_int8(tmp / "m.onnx", tmp / "m8.onnx", torch.empty(0, 1, 32, 32)),
         expect=r"calibration.*N >= 1"),
    # A failed check leaves neither the file nor its temporary directory (8).
    Case("api-export-mismatch-leaves-nothing", 8, call=lambda tmp: mismatched_export(tmp / "lenet5.onnx"),
         expect=r"differs from PyTorch by", after=nothing_but()),
    Case("api-latency-no-repeats", 3, call=lambda tmp: median_latency_ms(lambda: None, repeats=0), expect=r"repeats"),
    Case("api-fit-device-budget", 3, call=lambda tmp: fit_device("mobilenet_v1", float("inf")), expect=r"latency_ms"),
    Case("api-fit-device-batch", 3, call=lambda tmp: fit_device("mobilenet_v1", 5.0, batch=0), expect=r"batch"),
    Case("api-fit-device-family", 3, call=lambda tmp: fit_device("vgg", 5.0), expect=r"family must be one of"),
    # ---- Python API: counting, summaries and the cost examples (3)
    Case("api-count-wrong-channels", 3, call=lambda tmp: count(create_model("lenet5"), (3, 32, 32)),
         expect=r"lenet5 expects \(N, 1, 32, 32\).*3 channels"),
    Case("api-count-too-small", 3, call=lambda tmp: count(create_model("resnet18"), (3, 16, 16)),
         expect=r"16x16.*smaller than its minimum"),
    Case("api-count-negative", 3, call=lambda tmp: count(create_model("resnet20"), (3, -32, 32)),
         expect=r"positive whole numbers, got \(3, -32, 32\)"),
    Case("api-count-not-whole", 3, call=lambda tmp: count(create_model("resnet20"), (3, 32.5, 32)),
         expect=r"positive whole numbers"),
    Case("api-count-two-numbers", 3, call=lambda tmp: count(create_model("resnet20"), (32, 32)),
         expect=r"input size of resnet20 must be \(C, H, W\)"),
    Case("api-count-text-size", 3, call=lambda tmp: count(create_model("resnet20"), "3x32x32"), expect=r"input size"),
    Case("api-count-batch", 3, call=lambda tmp: count(create_model("lenet5"), batch=0), expect=r"batch.*>= 1"),
    Case("api-count-a-name", 3, call=lambda tmp: count("resnet18"), expect=r"create_model\('resnet18'\)"),
    Case("api-count-a-class", 3, call=lambda tmp: count(nn.Conv2d), expect=r"an instance.*not the class"),
    Case("api-summary-depth", 3, call=lambda tmp: summary(create_model("lenet5"), depth=0), expect=r"depth.*>= 1"),
    Case("api-summary-wrong-size", 3, call=lambda tmp: summary(create_model("alexnet"), (1, 224, 224)),
         expect=r"alexnet expects \(N, 3, H, W\)"),
    Case("api-forward-wrong-channels", 3, call=lambda tmp: create_model("resnet20")(torch.randn(2, 1, 32, 32)),
         expect=r"resnet20 expects \(N, 3, H, W\) with H, W >= \d+, got \(2, 1, 32, 32\)"),
    Case("api-forward-no-batch-dim", 3, call=lambda tmp: create_model("lenet5")(torch.randn(1, 32, 32)),
         expect=r"3-d tensor.*unsqueeze\(0\)"),
    Case("api-forward-wrong-size", 3, call=lambda tmp: create_model("lenet5")(torch.randn(1, 1, 28, 28)),
         expect=r"28x28 images; resize or pad them to 32x32"),
    Case("api-forward-too-small", 3, call=lambda tmp: create_model("mobilenet_v2")(torch.randn(1, 3, 8, 8)),
         expect=r"mobilenet_v2 expects .*8x8 images, smaller than its minimum"),
    Case("api-cost-zero-channels", 3, call=lambda tmp: cost.Volume(28, 28, 0), expect=r"n_C.*>= 1"),
    Case("api-cost-filters", 3, call=lambda tmp: cost.depthwise_separable(cost.Volume(6, 6, 3), filters=0),
         expect=r"filters n_C'"),
    Case("api-cost-float-kernel", 3, call=lambda tmp: cost.Conv(8, 2.5), expect=r"filter size f.*2\.5"),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # evaluate's default report goes to runs/evaluate/ in the working directory
    check_case(case, tmp_path, capsys)
    if case.argv[:1] == ["evaluate"]:
        assert not (tmp_path / "runs").exists(), "a failed evaluate wrote under runs/"


def test_the_cases_cover_the_principles_of_this_area() -> None:
    by_principle = {p: sum(c.principle == p for c in CASES) for p in (2, 3, 4, 8, 10)}
    assert by_principle[3] >= 30 and min(by_principle.values()) >= 1, by_principle


def test_an_interrupted_export_leaves_no_file_and_keeps_the_previous_one(tmp_path: Path) -> None:
    """Ctrl-C in the middle of an export: the earlier export stays whole and nothing else is left."""
    from convnets import export

    target = tmp_path / "lenet5.onnx"
    export_onnx(create_model("lenet5"), target, torch.randn(2, 1, 32, 32))
    before = target.read_bytes()

    def interrupted(path, **props):
        raise KeyboardInterrupt

    with mock.patch.object(export, "_mark", interrupted), pytest.raises(KeyboardInterrupt):
        export_onnx(create_model("lenet5"), target, torch.randn(2, 1, 32, 32))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["lenet5.onnx"]


def test_a_killed_exports_temporary_directory_is_removed_by_the_next_export(tmp_path: Path) -> None:
    from convnets.export import STAGING_PREFIX, _running

    dead = 2**22 + 12345  # above the default pid_max of 4,194,304: no process has it
    assert not _running(dead)
    stale = tmp_path / f"{STAGING_PREFIX}{dead}-x1y2"
    stale.mkdir()
    (stale / "lenet5.onnx").write_bytes(b"half written")
    export_onnx(create_model("lenet5"), tmp_path / "lenet5.onnx", torch.randn(2, 1, 32, 32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet5.onnx"]


def test_a_read_only_out_is_refused_before_the_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A read-only --out was found when the report was written, after the whole evaluation had run."""
    import errno

    import convnets.cli.evaluate
    import convnets.weights.io
    from badinput import expect_cli_error

    shutil.copytree(TRAINED["run"], tmp_path / "run")
    (tmp_path / "ro").mkdir()

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    def no_evaluation(*args: object, **kwargs: object) -> None:
        raise AssertionError("evaluated before --out was checked")

    monkeypatch.setattr(convnets.weights.io.tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(convnets.cli.evaluate, "evaluate", no_evaluation)
    for out in (tmp_path / "ro", tmp_path / "ro" / "new"):
        expect_cli_error(["evaluate", str(tmp_path / "run"), "--out", str(out)],
                         rf"{out}: Read-only file system \(choose a writable --out\)", capsys)
    assert list((tmp_path / "ro").iterdir()) == []


def test_the_confusion_picture_of_a_thousand_classes_stays_small(tmp_path: Path) -> None:
    """ImageNet's 1000 classes sized the figure by its cells: a 60,610 x 55,080 pixel canvas, 13 GB to draw
    after the whole evaluation (past 65,536 pixels matplotlib refuses it with a traceback)."""
    from convnets.evaluate import CONFUSION_LABELLED, plot_confusion

    n = 1000
    confusion = torch.zeros(n, n, dtype=torch.int64)
    confusion[torch.arange(n), torch.arange(n)] = 5
    confusion[0, 1] = 2
    path = plot_confusion(confusion, [f"class {i}" for i in range(n)], tmp_path / "confusion.png", "resnet18")
    with Image.open(path) as image:
        assert max(image.size) <= (1.0 + 0.55 * CONFUSION_LABELLED) * 110 + 1
