"""Round 2, hostile: what a user points the Python API and the model commands at (principles 1, 2, 3, 6, 8, 9, 10).

The table holds what must fail, in one line naming the input, argument, file or tensor, with nothing
lost or left behind; the tests after it show what must work instead of failing: inputs of another
float type are cast, the checkpoints of other training code (Lightning, ``AveragedModel``, PyTorch's
tutorial) load, every loading path gives the same logits, a report is written even when the output
is piped into ``head``, and a terminal that cannot show a class name gets it escaped.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import convnets
from badinput import Case, check_case, params, run_cli
from convnets.evaluate import evaluate, load_member, write_report
from convnets.export import export_onnx, load_model_or_run, quantize_int8
from convnets.training.rundir import RunDirectory
from convnets.weights import cached_download, load, load_weights, save_weights

DIGITS_META = dict(model="lenet5", num_classes=10, in_chans=1, input_size=[1, 32, 32], mean=[0.3], std=[0.3],
                   classes=[str(i) for i in range(10)], dataset="digits")


def lenet() -> convnets.ConvNet:
    return convnets.create_model("lenet5").eval()


def meta_lenet() -> convnets.ConvNet:
    with torch.device("meta"):
        return convnets.create_model("lenet5")


def raw_file(name: str, state: dict[str, torch.Tensor] | None = None, **meta: object) -> Callable[[Path], Path]:
    """A setup: ``tmp/name``, a safetensors file of ``state`` (random LeNet-5 weights) with DIGITS_META and ``meta``,
    written with safetensors itself (save_weights refuses what some cases need)."""

    def setup(tmp: Path) -> Path:
        tensors = state if state is not None else lenet().state_dict()
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        header = {"format": "pt", **{k: json.dumps(v) for k, v in {**DIGITS_META, **meta}.items()}}
        save_file(tensors, str(tmp / name), metadata=header)
        return tmp / name

    return setup


def with_values(value: float, key: str = "") -> dict[str, torch.Tensor]:
    """LeNet-5 weights whose float tensors (or only ``key``) are all ``value``."""
    return {k: torch.full_like(v, value) if v.is_floating_point() and key in k else v
            for k, v in lenet().state_dict().items()}


def saved(name: str, obj: object) -> Callable[[Path], None]:
    return lambda tmp: torch.save(obj, tmp / name)


def nothing_but(*names: str) -> Callable[[Path], None]:
    def after(tmp: Path) -> None:
        assert sorted(p.name for p in tmp.iterdir()) == sorted(names)

    return after


def unchanged_bytes(name: str) -> Callable[[Path], None]:
    """A setup/after pair's after: ``name`` still holds what ``remember`` recorded."""

    def after(tmp: Path) -> None:
        assert (tmp / name).read_bytes() == (tmp / f"{name}.before").read_bytes(), f"{name} was changed"

    return after


def remember(name: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / f"{name}.before").write_bytes((tmp / name).read_bytes())

    return setup


def both(*setups: Callable[[Path], object]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for s in setups:
            s(tmp)

    return setup


def exported(name: str = "m.onnx") -> Callable[[Path], None]:
    return lambda tmp: export_onnx(lenet(), tmp / name, torch.randn(2, 1, 32, 32))


def quantized(tmp: Path) -> None:
    exported()(tmp)
    quantize_int8(tmp / "m.onnx", tmp / "m.int8.onnx", torch.randn(4, 1, 32, 32))


def stopped_run(tmp: Path) -> None:
    """A run whose best.safetensors was removed; its last.safetensors is there."""
    (tmp / "run").mkdir()
    (tmp / "run" / "config.json").write_text(json.dumps({"model": "lenet5", "data": "digits", "out": "run"}))
    raw_file("run/last.safetensors")(tmp)


class _Tensor(torch.Tensor):
    """A tensor subclass: pickled by its class, which torch.load(weights_only=True) will not import."""


# ---- a local server that answers with a login page

LOGIN_PAGE = b"<!DOCTYPE html><html><body><form action='/login'>Sign in to download</form></body></html>\n"


class _LoginPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/loop"):
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(LOGIN_PAGE)))
        self.end_headers()
        self.wfile.write(LOGIN_PAGE)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def login_server() -> str:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LoginPage)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


SERVER: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _server_url(login_server: str) -> None:
    SERVER["url"] = login_server


def no_cache_entry(tmp: Path) -> None:
    assert list((tmp / "cache").rglob("*")) == [], "something was left in the cache"


X = torch.randn(2, 1, 32, 32)

CASES = [
    # ---- 3: a model's input is checked, and the message says what to do
    Case("forward-uint8", 3, call=lambda tmp: lenet()((X * 50).to(torch.uint8)),
         expect=r"lenet5 takes floating-point images, got torch\.uint8: convert them \(x\.float\(\) / 255"),
    Case("forward-int64", 3, call=lambda tmp: lenet()(X.long()), expect=r"floating-point images, got torch\.int64"),
    Case("forward-bool", 3, call=lambda tmp: lenet()(X > 0), expect=r"floating-point images, got torch\.bool"),
    Case("forward-numpy", 3, call=lambda tmp: lenet()(X.numpy()),
         expect=r"takes a torch\.Tensor of images \(N, 1, 32, 32\), got a numpy\.ndarray: .*torch\.from_numpy"),
    Case("forward-list", 3, call=lambda tmp: lenet()(X.tolist()),
         expect=r"got a list: convert it with torch\.as_tensor"),
    Case("forward-channels-last-layout", 3,
         call=lambda tmp: convnets.create_model("resnet20")(torch.randn(2, 32, 32, 3)),
         expect=r"got \(2, 32, 32, 3\): 32 channels; it looks like \(N, H, W, C\) images: x\.permute\(0, 3, 1, 2\)"),
    Case("forward-input-on-meta", 3, call=lambda tmp: lenet()(torch.empty(1, 1, 32, 32, device="meta")),
         expect=r"lenet5 is on cpu, the input on meta: move one of them"),
    Case("forward-one-channel-grammar", 3,
         call=lambda tmp: convnets.create_model("resnet20")(torch.randn(1, 1, 32, 32)),
         expect=r"1 channel; build it with in_chans=1"),
    Case("forward-features-one-image", 3, call=lambda tmp: lenet().forward_features(torch.randn(1, 32, 32)),
         expect=r"3-d tensor of shape \(1, 32, 32\) \(add a batch dimension: x\.unsqueeze\(0\)\)"),
    Case("forward-head-pooled-features", 3,
         call=lambda tmp: convnets.create_model("resnet20").forward_head(torch.randn(2, 64)),
         expect=r"resnet20\.forward_head takes the feature map of forward_features, \(N, 64, H, W\); got shape "
                r"\(2, 64\); .*model\.head\.fc\(x\)"),
    Case("forward-head-other-channels", 3,
         call=lambda tmp: convnets.create_model("resnet20").forward_head(torch.randn(2, 32, 8, 8)),
         expect=r"\(N, 64, H, W\); got shape \(2, 32, 8, 8\)"),
    # Forgetting model.eval() before predicting one small image: BatchNorm's ValueError said nothing of eval().
    Case("forward-one-image-in-training-mode", 3,
         call=lambda tmp: convnets.create_model("resnet20").train()(torch.randn(1, 3, 4, 4)),
         expect=r"resnet20 is in training mode.*a batch of 1 4x4 image\(s\) leaves one value per channel: call "
                r"model\.eval\(\) to predict"),
    Case("list-models-not-a-pattern", 3, call=lambda tmp: convnets.list_models(None),
         expect=r"a model pattern is a string such as 'resnet\*'; got None"),
    Case("reset-classifier-negative", 3, call=lambda tmp: lenet().reset_classifier(-1),
         expect=r"num_classes must be a whole number from 0 to 100,000.*got -1"),
    Case("reset-classifier-fraction", 3, call=lambda tmp: lenet().reset_classifier(2.5), expect=r"got 2\.5"),
    Case("reset-classifier-text", 3, call=lambda tmp: lenet().reset_classifier("10"), expect=r"got '10'"),
    Case("reset-classifier-bool", 3, call=lambda tmp: lenet().reset_classifier(True), expect=r"got True"),
    # A billion classes tried to allocate 256 GB.
    Case("reset-classifier-billion", 3, call=lambda tmp: lenet().reset_classifier(10**9), expect=r"got 1000000000"),
    # ---- 3: weights= of a kind load() does not take
    Case("weights-bool", 3, call=lambda tmp: convnets.create_model("lenet5", weights=True),
         expect=r"weights must be a tag .*, a path, an http\(s\) URL or a state dict; got True"),
    Case("weights-int", 3, call=lambda tmp: load_weights(3), expect=r"weights must be .*; got 3"),
    Case("weights-empty-string", 3, call=lambda tmp: convnets.create_model("lenet5", weights=""),
         expect=r"got an empty string"),
    Case("weights-bytes", 3, call=lambda tmp: convnets.create_model("lenet5", weights=b"w.safetensors"),
         expect=r"got b'w\.safetensors' \(a path as bytes: decode it\)"),
    Case("weights-a-model", 3, call=lambda tmp: convnets.create_model("lenet5", weights=lenet()),
         expect=r"got a LeNet5 model: pass its state_dict\(\)"),
    # PyTorch copies nothing into meta tensors (a warning per layer): the "loaded" model had no weights.
    Case("weights-into-a-meta-model", 3, call=lambda tmp: load_weights(tmp / "w.safetensors", meta_lenet()),
         expect=r"lenet5 is on the meta device \(shapes without values\): the weights of weights file "
                r"w\.safetensors cannot go into it", setup=raw_file("w.safetensors")),
    Case("model-name-is-a-file", 3, call=lambda tmp: convnets.create_model("run/best.safetensors"),
         expect=r"Unknown model 'run/best\.safetensors'.*load_weights"),
    # ---- 3: files that are not weights, named for what they are
    Case("evaluate-training-state", 3, ["evaluate", "{tmp}/state.pt"],
         r"state\.pt: not a readable safetensors file: it is a PyTorch checkpoint, saved with torch\.save",
         setup=saved("state.pt", {"epoch": 3, "model": lenet().state_dict()})),
    Case("evaluate-config-json", 3, ["evaluate", "{tmp}/config.json"], r"config\.json: .*it is JSON text",
         setup=lambda tmp: (tmp / "config.json").write_text('{"model": "lenet5"}')),
    Case("export-an-onnx-file", 3, ["export", "{tmp}/m.onnx", "--out", "{tmp}/x"],
         r"m\.onnx: not a weights file: it is an ONNX model", setup=exported(), after=nothing_but("m.onnx")),
    Case("load-a-numpy-archive", 3, call=lambda tmp: load(tmp / "w.npz", lenet()),
         expect=r"w\.npz: not a weights file: it is a zip archive that is not a PyTorch checkpoint",
         setup=lambda tmp: np.savez(tmp / "w.npz", w=np.zeros(3))),
    Case("evaluate-best-removed", 3, ["evaluate", "{tmp}/run"],
         r"run has no best\.safetensors \(removed\?\) but has last\.safetensors.*give .*run/last\.safetensors",
         setup=stopped_run, after=lambda tmp: nothing_but("config.json", "last.safetensors")(tmp / "run")),
    Case("evaluate-api-a-model", 3, call=lambda tmp: evaluate(lenet(), "digits"),
         expect=r"run directory or a weights file saved by convnets, got a LeNet5 model .*save_weights"),
    # A second source that is not a path is named before the first is loaded.
    Case("evaluate-api-not-a-path", 3, call=lambda tmp: evaluate([tmp / "w.safetensors", 7], "digits"),
         expect=r"got 7", setup=raw_file("w.safetensors")),
    Case("save-weights-object-metadata", 3,
         call=lambda tmp: save_weights(lenet(), tmp / "w.safetensors", {"note": object()}),
         expect=r"cannot save .*w\.safetensors: metadata field 'note' = <object .*> is not JSON", after=nothing_but()),
    Case("save-weights-number-key", 3, call=lambda tmp: save_weights(lenet(), tmp / "w.safetensors", {1: 2}),
         expect=r"metadata keys are strings, got 1", after=nothing_but()),
    # A file read_metadata would refuse is not written (it would make evaluate fail later, far from the cause).
    Case("save-weights-unreadable-metadata", 3,
         call=lambda tmp: save_weights(lenet(), tmp / "w.safetensors", {"input_size": [1, 0, 32]}),
         expect=r"cannot save .*'input_size' = \[1, 0, 32\] must be \[channels, height, width\]", after=nothing_but()),
    Case("export-nan-check-inputs", 3,
         call=lambda tmp: export_onnx(lenet(), tmp / "m.onnx", torch.full((2, 1, 32, 32), float("nan"))),
         expect=r"check_inputs hold NaN or infinite values \(2048 of 2048\)", after=nothing_but()),
    Case("quantize-nan-calibration", 3,
         call=lambda tmp: quantize_int8(tmp / "m.onnx", tmp / "q.onnx", torch.full((4, 1, 32, 32), float("inf"))),
         expect=r"calibration hold NaN or infinite", setup=exported(), after=nothing_but("m.onnx")),
    Case("quantize-a-text-file", 3,
         call=lambda tmp: quantize_int8(tmp / "m.onnx", tmp / "q.onnx", torch.randn(4, 1, 32, 32)),
         expect=r"m\.onnx: not an ONNX model", setup=lambda tmp: (tmp / "m.onnx").write_text("my notes\n"),
         after=nothing_but("m.onnx")),
    Case("quantize-other-image-size", 3,
         call=lambda tmp: quantize_int8(tmp / "m.onnx", tmp / "q.onnx", torch.randn(4, 3, 32, 32)),
         expect=r"calibration images are 3x32x32; m\.onnx takes 1x32x32", setup=exported(),
         after=nothing_but("m.onnx")),
    Case("quantize-int8-again", 3,
         call=lambda tmp: quantize_int8(tmp / "m.int8.onnx", tmp / "q.onnx", torch.randn(4, 1, 32, 32)),
         expect=r"m\.int8\.onnx is quantized already: quantize the fp32 export", setup=quantized,
         after=nothing_but("m.onnx", "m.int8.onnx")),
    Case("cache-dir-of-no-user", 3,
         call=lambda tmp: cached_download("http://127.0.0.1:9/w.pth", cache_dir="~no-such-user-convnets/cache"),
         expect=r"the cache directory = '~no-such-user-convnets/cache'.*give an absolute path"),
    # ---- 1: a pickle that asks for classes is refused, and the message says what it holds and what to do
    Case("whole-pickled-model", 1, ["export", "{tmp}/model.pth", "--out", "{tmp}/x"],
         r"model\.pth: cannot be read as a plain tensor checkpoint: it holds a whole pickled model",
         setup=saved("model.pth", lenet()), after=nothing_but("model.pth")),
    Case("whole-pickled-model-api", 1, call=lambda tmp: load(tmp / "model.pth", lenet()),
         expect=r"model\.pth: cannot be read as a plain tensor checkpoint: it holds a whole pickled model "
                r"\(torch\.save\(model\)\); save its weights instead: torch\.save\(model\.state_dict\(\), PATH\)",
         setup=saved("model.pth", lenet())),
    Case("tensor-subclass-pickle", 1, call=lambda tmp: load(tmp / "w.pth", lenet()),
         expect=r"objects other than tensors \(.*_Tensor\)\. Unpickling those could run code",
         setup=saved("w.pth", {k: v.as_subclass(_Tensor) for k, v in lenet().state_dict().items()})),
    Case("numpy-arrays-pickle", 1, call=lambda tmp: load(tmp / "w.pth", lenet()),
         expect=r"NumPy arrays rather than tensors; convert them with torch\.from_numpy",
         setup=saved("w.pth", {k: v.numpy() for k, v in lenet().state_dict().items()})),
    # ---- 2: nothing the user has is replaced
    Case("quantize-into-its-own-input", 2,
         call=lambda tmp: quantize_int8(tmp / "m.onnx", tmp / "m.onnx", torch.randn(4, 1, 32, 32)),
         expect=r"would replace the fp32 model it is made from", setup=both(exported(), remember("m.onnx")),
         after=unchanged_bytes("m.onnx")),
    Case("save-weights-refused-keeps-the-file", 2,
         call=lambda tmp: save_weights(lenet(), tmp / "w.safetensors", {"std": [0]}),
         expect=r"'std' = \[0\] must be positive", setup=both(raw_file("w.safetensors"), remember("w.safetensors")),
         after=unchanged_bytes("w.safetensors")),
    # ---- 6 and 8: a web page in place of the file is not cached, and nothing is left behind
    Case("download-a-login-page", 6,
         call=lambda tmp: load(SERVER["url"] + "/files/lenet5.safetensors", cache_dir=tmp / "cache"),
         expect=r"cannot download .*/files/lenet5\.safetensors: the server sent a web page \(text/html\), not the "
                r"file \(a login or error page\?\)", after=no_cache_entry),
    Case("download-a-login-page-for-a-pth", 8,
         call=lambda tmp: load(SERVER["url"] + "/login?next=/w.pth", lenet(), cache_dir=tmp / "cache"),
         expect=r"web page", after=no_cache_entry),
    Case("download-redirect-loop", 8, call=lambda tmp: load(SERVER["url"] + "/loop/w.pth", cache_dir=tmp / "cache"),
         expect=r"the server answered 302 [^\n]*infinite loop\.$", after=no_cache_entry),
    # ---- 9: our own keys with one that belongs to no model name it
    Case("own-keys-and-a-stray-one", 9,
         call=lambda tmp: load({**lenet().state_dict(), "criterion.weight": torch.ones(3)}, lenet()),
         expect=r"10 of its 11 keys are convnets' own.*the other 1 belong to no model \(criterion\.weight\)"),
    # ---- 10: weights that can only give a meaningless accuracy are refused, not evaluated
    # NaN weights (a diverged run's last.safetensors) reported an accuracy of 0.1000 on digits.
    Case("evaluate-nan-weights", 10, ["evaluate", "{tmp}/w.safetensors", "--out", "{tmp}/eval"],
         r"weights file w\.safetensors holds NaN or infinite values in head\.fc\.bias, .* and 7 more: the "
         r"training that made them diverged",
         setup=raw_file("w.safetensors", with_values(float("nan"))), after=nothing_but("w.safetensors")),
    Case("evaluate-inf-bias", 10, call=lambda tmp: load_weights(tmp / "w.safetensors"),
         expect=r"NaN or infinite values in head\.fc\.bias",
         setup=raw_file("w.safetensors", with_values(float("inf"), "head.fc.bias"))),
    # float8 weights (a quantization experiment's file): PyTorch has no isfinite for them, a traceback.
    Case("evaluate-nan-float8-weights", 10, ["evaluate", "{tmp}/w.safetensors", "--out", "{tmp}/eval"],
         r"weights file w\.safetensors holds NaN or infinite values in head\.fc\.bias",
         setup=raw_file("w.safetensors", {k: v.to(torch.float8_e4m3fn) for k, v in with_values(float("nan"),
                                                                                               "head.fc").items()}),
         after=nothing_but("w.safetensors")),
    # Finite weights whose logits overflow float32: argmax still picked a class for every image.
    Case("evaluate-overflowing-outputs", 10, call=lambda tmp: evaluate(tmp / "w.safetensors", "digits"),
         expect=r"gives NaN or infinite outputs for 360 of 360 test images",
         setup=raw_file("w.safetensors", with_values(3e38, "head.fc"))),
    # Integer weights were cast into the float layers: 0.37 became 0, silently.
    Case("integer-weights-into-float-layers", 10,
         call=lambda tmp: load({k: v.long() if "conv.weight" in k else v for k, v in lenet().state_dict().items()},
                               lenet()),
         expect=r"different kinds of values \(2\):\n    stages\.0\.conv\.weight: torch\.int64 in the state dict, "
                r"torch\.float32 in the model"),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # evaluate's default report goes to runs/evaluate/ in the working directory
    check_case(case, tmp_path, capsys)
    if case.argv[:1] == ["evaluate"]:
        assert not (tmp_path / "runs").exists(), "a failed evaluate wrote under runs/"


# ---------------------------------------------------------------------------------------------
# What works instead
# ---------------------------------------------------------------------------------------------


def test_inputs_of_another_float_type_are_cast_to_the_models() -> None:
    model = convnets.create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        assert model(x.double()).dtype == torch.float32
        torch.testing.assert_close(model(x.double()), reference)
        torch.testing.assert_close(model(x.half()), reference, atol=2e-2, rtol=0)  # x rounded to half first
        torch.testing.assert_close(model.forward_features(x.contiguous(memory_format=torch.channels_last)),
                                   model.forward_features(x), atol=1e-4, rtol=0)  # other kernels, other rounding
        assert model.to(torch.bfloat16)(x).dtype == torch.bfloat16  # a bf16 model takes float32 images


def test_a_meta_model_takes_an_input_too_large_to_allocate() -> None:
    with torch.device("meta"):
        model = convnets.create_model("resnet50").eval()
    out = model.forward_features(torch.empty(1, 3, 100_000, 100_000, device="meta"))
    assert out.shape == (1, 2048, 3125, 3125)


def test_summary_of_a_huge_input_counts_without_allocating(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(["summary", "resnet50", "--input", "3x100000x100000"], capsys)
    assert status == 0 and "3x100000x100000" in out and "[1, 1000]" in out


def test_reset_classifier_zero_gives_features_to_forward_head() -> None:
    model = convnets.create_model("resnet20").eval()
    model.reset_classifier(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model.forward_head(model.forward_features(x)).shape == (2, model.num_features) == (2, 64)


@pytest.mark.parametrize("written, name", [("LeNet-5", "lenet5"), ("ResNet 50", "resnet50"), ("VGG-16", "vgg16"),
                                           ("mobilenetv2", "mobilenet_v2"), (" ResNet20 ", "resnet20")])
def test_model_names_as_the_papers_write_them(written: str, name: str) -> None:
    assert convnets.model_entry(written).name == name


def test_list_patterns_ignore_case_and_separators() -> None:
    assert convnets.list_models("ResNet-5*") == convnets.list_models("resnet5*") != []
    assert convnets.list_models("MobileNetV*") == convnets.list_models("mobilenet_v*") != []


# ---- one loading path


def trained_like(tmp: Path) -> tuple[convnets.ConvNet, Path]:
    """A 1-channel, 3-class ResNet-20 with BatchNorm statistics and eps 1e-3, saved as a run directory would hold it."""
    model = convnets.create_model("resnet20", num_classes=3, in_chans=1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = 1e-3
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    run = tmp / "run"
    meta = dict(model="resnet20", num_classes=3, in_chans=1, input_size=[1, 32, 32], mean=[0.5], std=[0.25],
                classes=["a", "b", "c"], dataset="somewhere")
    save_weights(model, run / "best.safetensors", meta)
    return model.eval(), run


def test_every_loading_path_gives_the_same_logits(tmp_path: Path) -> None:
    """create_model(name, weights=file) used to build the default 3-channel model and refuse the file; with a
    10-class default it would have replaced a 3-class head with a random one. Now every path is load()."""
    model, run = trained_like(tmp_path)
    best = run / "best.safetensors"
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        reference = model(x)
        paths = {
            "load_weights": load_weights(best),
            "load": load(best),
            "create_model(weights=file)": convnets.create_model("resnet20", weights=best),
            "create_model(weights=run)": convnets.create_model("ResNet-20", weights=str(run)),
            "create_model(weights=state dict)": convnets.create_model("resnet20", num_classes=3, in_chans=1,
                                                                      weights=model.state_dict()),
            "evaluate": load_member(run).model,
            "export": load_model_or_run(str(run))[0],
        }
        for label, loaded in paths.items():
            loaded.eval()
            expected_eps = 1e-5 if "state dict" in label else 1e-3  # a bare state dict does not carry the eps
            assert loaded.stem.bn.eps == expected_eps, label
            if expected_eps == 1e-3:
                assert torch.equal(loaded(x), reference), label


def test_create_model_with_a_file_and_another_class_count_replaces_only_the_head(tmp_path: Path, caplog) -> None:
    model, run = trained_like(tmp_path)
    with caplog.at_level("WARNING", logger="convnets.weights"):
        five = convnets.create_model("resnet20", num_classes=5, weights=run / "best.safetensors").eval()
    assert five.num_classes == 5 and five.in_chans == 1 and "new classifier" in caplog.text
    assert torch.equal(five.stem.conv.weight, model.stem.conv.weight)


def reference_lenet() -> tuple[convnets.ConvNet, torch.Tensor, torch.Tensor]:
    model = lenet()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        return model, x, model(x)


@pytest.mark.parametrize("wrap", [
    pytest.param(lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3, "global_step": 9,
                             "pytorch-lightning_version": "2.4.0"}, id="lightning"),
    pytest.param(lambda sd: {"state_dict": {f"net.{k}": v for k, v in sd.items()}, "epoch": 3}, id="lightning-net"),
    pytest.param(lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {"state": {}}, "epoch": 3},
                 id="pytorch-tutorial"),
    pytest.param(lambda sd: {"state_dict": sd, "optimizer": {}, "epoch": 3, "state_dict_ema": sd}, id="timm-train"),
    pytest.param(lambda sd: {"module.n_averaged": torch.tensor(4), **{f"module.{k}": v for k, v in sd.items()}},
                 id="averaged-model"),
])
def test_checkpoints_of_other_training_code_load(wrap: Callable, tmp_path: Path) -> None:
    model, x, reference = reference_lenet()
    torch.save(wrap(model.state_dict()), tmp_path / "checkpoint.ckpt")
    loaded = load(tmp_path / "checkpoint.ckpt", convnets.create_model("lenet5")).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), reference)


def test_a_real_averaged_model_state_dict_loads() -> None:
    model, x, reference = reference_lenet()
    averaged = torch.optim.swa_utils.AveragedModel(model)
    loaded = load(averaged.state_dict(), convnets.create_model("lenet5")).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), reference)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_weights_of_another_float_type_load_as_float32(dtype: torch.dtype, tmp_path: Path) -> None:
    model, x, reference = reference_lenet()
    state = {k: v.to(dtype) for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        loaded = load(tmp_path / name, convnets.create_model("lenet5")).eval()
        assert {p.dtype for p in loaded.parameters()} == {torch.float32}
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), reference, atol=0.05 if dtype == torch.bfloat16 else 2e-3, rtol=0)


def test_a_safetensors_file_with_a_dtype_per_tensor_loads(tmp_path: Path) -> None:
    model, x, reference = reference_lenet()
    dtypes = [torch.float16, torch.float32, torch.float64]
    state = {k: v.to(dtypes[i % 3]).contiguous() for i, (k, v) in enumerate(model.state_dict().items())}
    save_file(state, str(tmp_path / "mixed.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path / "mixed.safetensors", lenet())(x), reference, atol=2e-3, rtol=0)


def test_sparse_and_non_contiguous_tensors_load() -> None:
    model, x, reference = reference_lenet()
    state = dict(model.state_dict())
    state["stages.0.conv.weight"] = state["stages.0.conv.weight"].to_sparse()
    state["head.fc.weight"] = state["head.fc.weight"].t().contiguous().t()  # a transposed view
    with torch.no_grad():
        assert torch.equal(load(state, convnets.create_model("lenet5")).eval()(x), reference)


def test_a_safetensors_file_is_read_by_its_content_not_its_name(tmp_path: Path) -> None:
    """Saved without the suffix, it was taken for a .pth and refused with PyTorch's unpickling advice."""
    model, x, reference = reference_lenet()
    save_weights(model, tmp_path / "lenet5-weights", DIGITS_META)
    with torch.no_grad():
        assert torch.equal(load_weights(tmp_path / "lenet5-weights").eval()(x), reference)


def test_a_whole_pickled_model_never_runs_its_code(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"

    class Evil(torch.nn.Module):
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"model": lenet().state_dict(), "hook": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(convnets.weights.WeightsError, match=r"objects other than tensors \(builtins\.getattr, "
                       r"pathlib\.Path, pathlib\.PosixPath\)"):
        load(tmp_path / "evil.pth", lenet())
    assert not marker.exists()


def test_a_missing_file_with_a_suffix_is_a_missing_file_not_an_unknown_tag() -> None:
    """'model.ckpt' (no such file) was looked up as a weights tag: "no 'model.ckpt' weights for lenet5"."""
    with pytest.raises(FileNotFoundError, match=r"no weights file at model\.ckpt"):
        convnets.create_model("lenet5", weights="model.ckpt")


# ---- the commands


def test_a_report_is_written_even_when_the_output_is_piped_into_head(tmp_path: Path) -> None:
    """`convnets evaluate RUN | head -1` returned 0 without writing evaluation.txt/.json/.png: the table was printed
    first, and the closed pipe ended the command before the report was written."""
    raw_file("w.safetensors")(tmp_path)
    command = [sys.executable, "-m", "convnets", "evaluate", str(tmp_path / "w.safetensors"), "--out",
               str(tmp_path / "eval")]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}) as reader_gone:
        reader_gone.stdout.close()  # what `head` does once it has its lines
        err = reader_gone.stderr.read().decode()
    assert reader_gone.returncode == 0 and "Traceback" not in err, err
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["confusion.png", "evaluation.json",
                                                                     "evaluation.txt"]


def test_a_terminal_that_cannot_show_a_class_name_gets_it_escaped(tmp_path: Path) -> None:
    """With an ASCII-only terminal a class called 'Ü-ber' was a UnicodeEncodeError traceback after the work."""
    names = ["naïve", "Ü-ber"]
    rng = np.random.default_rng(0)
    for name in names:
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
    save_weights(convnets.create_model("lenet5", num_classes=2), tmp_path / "w.safetensors",
                 {**DIGITS_META, "num_classes": 2, "classes": names, "dataset": str(tmp_path / "data")})
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "convnets", "evaluate", str(tmp_path / "w.safetensors"), "--out",
                           str(tmp_path / "eval")], env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert b"na\\xefve" in done.stdout and b"Traceback" not in done.stderr
    assert "Ü-ber" in (tmp_path / "eval" / "evaluation.txt").read_text(encoding="utf-8")


def test_out_of_memory_is_one_line_and_other_runtime_errors_keep_their_traceback(
        monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    import convnets.cli.latency as latency

    def too_large(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 153600000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(latency, "run", too_large)
    status, _, err = run_cli(["latency", "resnet18", "--input", "3x20000x20000"], capsys)
    assert status == 2 and err.strip() == ("convnets latency: error: out of memory: 143.1 GiB could not be "
                                           "allocated; use a smaller batch size or input size")

    def bug(args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(latency, "run", bug)
    with pytest.raises(RuntimeError, match="mat1"):
        run_cli(["latency", "lenet5"], capsys)


@pytest.mark.parametrize("argv", [
    ["output-size", "-n", "99999999999999999999999", "-f", "3"],
    ["conv", "-f", "999999999999999999999", "--input", "28x28x3"],
    ["depthwise", "--input", "1000000000x1000000000x1000000000", "--filters", "1000000000"],
    ["one-by-one", "--filters", "99999999999999999999999999999999999999"],
])
def test_cost_of_numbers_beyond_pytorch_is_computed_and_says_it_was_not_counted(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """These were tracebacks from PyTorch's size overflow (a C++ stack dump for the first)."""
    status, out, err = run_cli(["cost", *argv], capsys)
    assert status == 0 and not err
    assert "Check: not counted: these sizes are beyond what a PyTorch tensor can describe" in out


def test_cost_that_is_partly_countable_says_which(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(["cost", "inception-module", "--kernel", "3", "--bottleneck", str(10**20)], capsys)
    assert status == 0
    assert "the 1 counted formula(s) match" in out and "3 not counted" in out
    assert "more multiplications: a bottleneck this wide saves nothing" in out


def test_huge_counts_get_their_own_unit(capsys: pytest.CaptureFixture[str]) -> None:
    """A summary for a batch of 10^11 printed "4055104.00T"."""
    from convnets.analysis.formatting import human

    assert human(4_055_104 * 10**12) == "4.06E" and human(2 * 10**15) == "2.00P" and human(3 * 10**12) == "3.00T"
    status, out, _ = run_cli(["summary", "resnet20", "--batch", str(10**11)], capsys)
    assert status == 0 and "MACs:   4.06E (4,055,104,000,000,000,000) for a batch of 100000000000" in out


def test_an_http_url_in_capitals_is_a_url(tmp_path: Path) -> None:
    """'HTTP://...' was refused: 'only local paths and http(s) URLs are supported'."""
    with pytest.raises(convnets.weights.DownloadError, match=r"cannot download HTTP://127\.0\.0\.1:9/w\.pth"):
        load("HTTP://127.0.0.1:9/w.pth", lenet(), cache_dir=tmp_path / "cache")


def test_a_run_being_trained_can_be_evaluated(tmp_path: Path) -> None:
    """Decided: evaluate reads a live run. best.safetensors is replaced atomically, so it reads a whole file (the best
    so far), and it writes only RUN/eval, which training never touches; the run's lock is not needed to read."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "lenet5", "data": "digits", "out": str(run)}))
    save_weights(lenet(), run / "best.safetensors", DIGITS_META)
    with RunDirectory(run, "train"):  # held as a training process holds it
        report = evaluate(run)
        write_report(report, run / "eval")
    assert report.members[0].images == 360 and (run / "eval" / "evaluation.json").is_file()
