"""Weights files, metadata, URLs and the download cache: bad inputs and faults (principles 1, 3, 6, 8, 9).

The table holds what must fail, in one line naming the file, field or URL, leaving nothing behind;
the tests after it show what must work: one loading path (a torchvision EfficientNet-B5 gives the
same logits through ``create_model(weights=...)`` and ``load_peer_weights``), GoogLeNet checkpoints
without auxiliary heads, our own checkpoints with wrapper prefixes and one input channel
fine-tuned from the command line, a download cache keyed by the whole URL, and downloads that stop
at their deadline and leave nothing half-written, even when killed.

Downloads come from a local HTTP server on 127.0.0.1 (:func:`server`), never from the internet.
"""

from __future__ import annotations

import _thread
import functools
import hashlib
import http.server
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import convnets
from badinput import Case, check_case, expect_cli_error, params, run_cli
from convnets.errors import ConfigError, DownloadError, LayoutError
from convnets.weights import (
    IMAGENET_MEAN,
    cache_path,
    cached_download,
    convert_state_dict,
    detect_layout,
    download,
    load,
    load_peer_weights,
    load_weights,
    read_metadata,
    read_state_dict,
    save_weights,
    weights_preprocessing,
)

REFERENCE = Path(__file__).resolve().parent / "data" / "peer_state_dicts.json"

# ---- a local server

BODIES: dict[str, bytes] = {}  # URL path -> the body served with 200; any other path is a 404


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves BODIES, and misbehaves on purpose under /drip/ (a byte every 0.2 s), /slow/ (a byte every
    20 s: the server that hung downloads silently) and /short/ (closes after half of what it announced)."""

    def do_GET(self) -> None:
        kind = self.path.split("/")[1]
        if kind in ("drip", "slow"):
            self._headers(1000)
            try:
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2 if kind == "drip" else 20)
            except OSError:  # the client gave up: what the tests expect
                pass
        elif kind == "short":
            body = BODIES["/files/lenet5.safetensors"]
            self._headers(2 * len(body))
            self.wfile.write(body)
        elif self.path in BODIES:
            self._headers(len(BODIES[self.path]))
            self.wfile.write(BODIES[self.path])
        else:
            self.send_error(404)

    def _headers(self, length: int) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass


@functools.cache
def server() -> str:
    """The base URL of a server on 127.0.0.1, started once (its threads end with the tests)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}"


# ---- files the cases start from

LENET_META = dict(model="lenet5", num_classes=10, in_chans=1, input_size=[1, 32, 32], mean=[0.3], std=[0.3],
                  classes=[f"c{i}" for i in range(10)])


def lenet_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in convnets.create_model("lenet5").state_dict().items()}


def lenet_file(path: Path, seed: int = 0, **raw: str | None) -> Path:
    """A LeNet-5 weights file of ours; ``raw`` replaces metadata fields by the text stored (None removes one)."""
    meta = {"format": "pt", **{k: json.dumps(v) for k, v in LENET_META.items()}}
    for key, text in raw.items():
        if text is None:
            meta.pop(key)
        else:
            meta[key] = text
    save_file(lenet_state(seed), str(path), metadata=meta)
    return path


def writes(name: str, **raw: str | None):
    """A case's setup: ``tmp/name`` is a LeNet-5 file with the metadata fields ``raw`` changed."""
    return lambda tmp: lenet_file(tmp / name, **raw)


def served(tmp: Path) -> None:
    """The setup of the URL cases: the server is up and serves a LeNet-5 file."""
    server()
    BODIES.setdefault("/files/lenet5.safetensors", lenet_file(tmp / "served.safetensors").read_bytes())
    BODIES.setdefault("/text/lenet5.safetensors", b"these are not weights\n" * 40)


def nothing_cached(tmp: Path) -> None:
    """No file, no .part file and no empty entry folder in the case's cache."""
    assert list((tmp / "cache").rglob("*")) == []


def evil_pth(tmp: Path) -> None:
    torch.save({"stem.conv.weight": torch.zeros(1), "payload": _Payload(tmp / "code-ran")}, tmp / "evil.pth")


class _Payload:
    """An object whose unpickling would run code: it must never be unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def cut(tmp: Path) -> None:
    path = lenet_file(tmp / "w.safetensors")
    path.write_bytes(path.read_bytes()[:300])


def own_pth(tmp: Path, name: str = "own.pth", prefix: str = "module.", **extra: torch.Tensor) -> Path:
    torch.save({**{prefix + k: v for k, v in lenet_state().items()}, **extra}, tmp / name)
    return tmp / name


TRANSFER = ["transfer", "lenet5", "--data", "digits", "--out", "{tmp}/run", "--no-progress", "--epochs", "1"]


def url(path: str) -> str:
    return server() + path


def payload_did_not_run(tmp: Path) -> None:
    assert not (tmp / "code-ran").exists()


def no_run(tmp: Path) -> None:
    assert not (tmp / "run").exists(), "a run directory was made for weights that cannot load"


def timm_file(timm_name: str, drop: str = "") -> Callable[[Path], None]:
    """Setup: ``{tmp}/timm.safetensors``, timm's checkpoint of ``timm_name`` (tests/data/timm_layouts.json) without
    the keys starting with ``drop``."""

    def setup(tmp: Path) -> None:
        from test_timm_layouts import fixtures, keys_of

        keys = [(k, s) for k, s in keys_of(timm_name) if not (drop and k.startswith(drop))]
        save_file(fixtures.fill_state(keys), tmp / "timm.safetensors")

    return setup


CASES = [
    # 1: a .pth whose pickle asks for code is refused before any of it runs.
    Case("pickle-with-code", 1, [*TRANSFER, "--weights", "{tmp}/evil.pth"], r"evil\.pth.*plain tensor checkpoint",
         setup=evil_pth, after=payload_did_not_run),
    # 3: --weights is checked before training starts, whatever it points at.
    Case("empty-file", 3, [*TRANSFER, "--weights", "{tmp}/w.safetensors"], r"w\.safetensors: the file is empty",
         setup=lambda tmp: (tmp / "w.safetensors").write_bytes(b"")),
    Case("truncated-safetensors", 3, [*TRANSFER, "--weights", "{tmp}/w.safetensors"],
         r"w\.safetensors: not a readable safetensors file", setup=cut),
    Case("text-renamed-safetensors", 3, [*TRANSFER, "--weights", "{tmp}/notes.safetensors"],
         r"notes\.safetensors: not a readable safetensors file",
         setup=lambda tmp: (tmp / "notes.safetensors").write_text("my notes about the weights\n" * 20)),
    Case("truncated-pth", 3, [*TRANSFER, "--weights", "{tmp}/cut.pth"], r"cut\.pth: cannot be read",
         setup=lambda tmp: (tmp / "cut.pth").write_bytes(own_pth(tmp).read_bytes()[:500])),
    Case("directory", 3, [*TRANSFER, "--weights", "{tmp}/weights"], r"weights is a directory, not a weights file",
         setup=lambda tmp: (tmp / "weights").mkdir()),
    Case("missing-file", 3, [*TRANSFER, "--weights", "{tmp}/nope.pth"], r"no weights file at .*nope\.pth"),
    Case("unknown-tag", 3, [*TRANSFER, "--weights", "cifar"], r"no 'cifar' weights for lenet5; known for it: "
         r"fashion-mnist"),
    Case("other-scheme", 3, [*TRANSFER, "--weights", "ftp://example.org/lenet5.pth"],
         r"only local paths and http\(s\) URLs"),
    Case("other-architecture", 3, ["transfer", "resnet20", "--data", "digits", "--out", "{tmp}/run", "--weights",
                                   "{tmp}/lenet.safetensors", "--no-progress"],
         r"does not fit resnet20.*missing.*stem\.conv\.weight", setup=writes("lenet.safetensors")),
    Case("timm-width-we-lack", 3, ["transfer", "mobilenet_v1", "--data", "digits", "--out", "{tmp}/run", "--weights",
                                   "{tmp}/timm.safetensors", "--no-progress"],
         r"a timm MobileNet v1 with stem width 40: only timm:mobilenetv1_100 \(width 32\) is supported",
         setup=timm_file("mobilenetv1_125"), after=no_run),
    Case("timm-truncated", 3, ["transfer", "efficientnet_b0", "--data", "digits", "--out", "{tmp}/run", "--weights",
                               "{tmp}/timm.safetensors", "--no-progress"],
         r"timm:efficientnet_b0 checkpoint timm\.safetensors does not fit efficientnet_b0.*missing.*"
         r"stages\.2\.0\.se\.reduce\.weight", setup=timm_file("efficientnet_b0", drop="blocks.2.0.se.")),
    Case("tag-without-model", 3, [], r"'fashion-mnist' is a weights tag: name the model",
         call=lambda tmp: load("fashion-mnist")),
    Case("list-not-state-dict", 3, [], r"holds a list, not a state dict",
         setup=lambda tmp: torch.save([torch.zeros(1)], tmp / "list.pth"),
         call=lambda tmp: load(tmp / "list.pth", convnets.create_model("lenet5"))),
    Case("non-tensor-values", 3, [], r"not a state dict of tensors: 'epoch'",
         setup=lambda tmp: torch.save({"epoch": 3, "stem.conv.weight": torch.zeros(1)}, tmp / "odd.pth"),
         call=lambda tmp: load(tmp / "odd.pth", convnets.create_model("lenet5"))),
    Case("builder-arguments-with-a-model", 3, [], r"builder arguments \(num_classes\) are for a model load\(\) builds",
         setup=writes("w.safetensors"), call=lambda tmp: load(tmp / "w.safetensors", convnets.create_model("lenet5"),
                                                               num_classes=3)),
    Case("sha256-not-hex", 3, [], r"sha256 must be 8 to 64 hex digits", setup=writes("w.safetensors"),
         call=lambda tmp: load(tmp / "w.safetensors", sha256="xyz")),
    # 6: metadata is checked field by field, and against the tensors, before any model is built.
    Case("num-classes-billion", 6, [*TRANSFER, "--weights", "{tmp}/w.safetensors"],
         r"'num_classes' = 1000000000 disagrees with the file's tensors: its classifier head\.fc has 10 outputs",
         setup=writes("w.safetensors", num_classes="1000000000")),
    Case("input-size-two-numbers", 6, [*TRANSFER, "--weights", "{tmp}/w.safetensors"],
         r"'input_size' = \[1, 32\] must be \[channels, height, width\]",
         setup=writes("w.safetensors", input_size="[1, 32]")),
    Case("mean-not-json", 6, [*TRANSFER, "--weights", "{tmp}/w.safetensors"], r"metadata field 'mean' is not JSON",
         setup=writes("w.safetensors", mean="[0.3,")),
    Case("num-classes-negative", 6, [], r"'num_classes' = -3 must be a whole number >= 0",
         setup=writes("w.safetensors", num_classes="-3"), call=lambda tmp: load_weights(tmp / "w.safetensors")),
    Case("num-classes-fraction", 6, [], r"'num_classes' = 10\.5 must be a whole number",
         setup=writes("w.safetensors", num_classes="10.5"), call=lambda tmp: load_weights(tmp / "w.safetensors")),
    Case("num-classes-text", 6, [], r"'num_classes' is not JSON",
         setup=writes("w.safetensors", num_classes="ten"), call=lambda tmp: load_weights(tmp / "w.safetensors")),
    Case("in-chans-zero", 6, [], r"'in_chans' = 0 must be a whole number from 1 to",
         setup=writes("w.safetensors", in_chans="0"), call=lambda tmp: load_weights(tmp / "w.safetensors")),
    Case("mean-three-for-one-channel", 6, [], r"'mean' = \[0\.5, 0\.5, 0\.5\] has 3 values for 1 input channel",
         setup=writes("w.safetensors", mean="[0.5, 0.5, 0.5]"), call=lambda tmp: read_metadata(tmp / "w.safetensors")),
    Case("std-zero", 6, [], r"'std' = \[0\] must be positive",
         setup=writes("w.safetensors", std="[0]"), call=lambda tmp: load_weights(tmp / "w.safetensors")),
    Case("unknown-model", 6, [], r"'model' = 'lenet9' is not a model convnets knows",
         setup=writes("w.safetensors", model='"lenet9"'), call=lambda tmp: load_weights(tmp / "w.safetensors")),
    Case("model-kwargs-not-object", 6, [], r"'model_kwargs' = 'width=2' must be a JSON object",
         setup=writes("w.safetensors", model_kwargs='"width=2"'), call=lambda tmp: load_weights(tmp / "w.safetensors")),
    Case("model-kwargs-unknown", 6, [], r"cannot build lenet5 with .*banana",
         setup=writes("w.safetensors", model_kwargs='{"banana": 1}'),
         call=lambda tmp: load_weights(tmp / "w.safetensors")),
    Case("classes-wrong-count", 6, [], r"'classes' = \['a', 'b', 'c'\] names 3 classes but num_classes is 10",
         setup=writes("w.safetensors", classes='["a", "b", "c"]'),
         call=lambda tmp: load_weights(tmp / "w.safetensors")),
    # 6: downloads have an overall deadline, and a file whose sha256 differs is not cached.
    Case("server-drips", 6, [], r"not finished after 1.5 s \(\d+ bytes? of 1000 bytes\); the server is too slow",
         setup=served, after=nothing_cached,
         call=lambda tmp: cached_download(url("/drip/lenet5.safetensors"), cache_dir=tmp / "cache", deadline=1.5)),
    Case("server-byte-every-20s", 6, [], r"no data for 1 s after \d+ bytes?; the server stalled",
         setup=served, after=nothing_cached,
         call=lambda tmp: cached_download(url("/slow/lenet5.safetensors"), cache_dir=tmp / "cache", deadline=1)),
    Case("sha256-mismatch", 6, [], r"sha256 mismatch for .*lenet5\.safetensors: expected 0{64}, got [0-9a-f]{64}; "
         r"the file was not kept", setup=served, after=nothing_cached,
         call=lambda tmp: load(url("/files/lenet5.safetensors"), sha256="0" * 64, cache_dir=tmp / "cache")),
    Case("sha256-in-name-mismatch", 6, [], r"sha256 mismatch for .*lenet5-deadbeef\.safetensors: expected deadbeef",
         setup=lambda tmp: (served(tmp), BODIES.setdefault("/files/lenet5-deadbeef.safetensors",
                                                           BODIES["/files/lenet5.safetensors"])),
         after=nothing_cached,
         call=lambda tmp: load(url("/files/lenet5-deadbeef.safetensors"), cache_dir=tmp / "cache")),
    # 8: a failed download leaves nothing in the cache: no partial file, no empty folder.
    Case("url-404", 8, [], r"cannot download .*/files/lenet6\.safetensors: the server answered 404",
         setup=served, after=nothing_cached,
         call=lambda tmp: load(url("/files/lenet6.safetensors"), cache_dir=tmp / "cache")),
    Case("connection-closed-early", 8, [], r"the connection closed after \d+ bytes of \d+ bytes",
         setup=served, after=nothing_cached,
         call=lambda tmp: load(url("/short/lenet5.safetensors"), cache_dir=tmp / "cache")),
    Case("unreadable-download", 8, [], r"not a readable safetensors file.*removed from the cache",
         setup=served, after=nothing_cached,
         call=lambda tmp: load(url("/text/lenet5.safetensors"), cache_dir=tmp / "cache")),
    Case("nobody-listening", 8, [], r"cannot download http://127\.0\.0\.1:9/lenet5\.pth", after=nothing_cached,
         call=lambda tmp: load("http://127.0.0.1:9/lenet5.pth", cache_dir=tmp / "cache")),
    # 3: --layout (the peer layout that keys cannot tell) is a known layout, of the file's kind, with --weights.
    Case("layout-unknown", 3, [*TRANSFER, "--weights", "{tmp}/timm.safetensors", "--layout", "timm:tf_efficientnet_b9"],
         r"--layout: unknown layout 'timm:tf_efficientnet_b9'; known: .*timm:tf_efficientnet_b0, .*keras:vgg16",
         setup=timm_file("efficientnet_b0"), after=no_run),
    Case("layout-without-weights", 3, ["train", "lenet5", "--data", "digits", "--out", "{tmp}/run", "--layout",
                                       "timm:efficientnet_b0"], r"--layout.*give the file with --weights",
         after=no_run),
    Case("layout-for-a-tag", 3, [*TRANSFER, "--weights", "fashion-mnist", "--layout", "timm:efficientnet_b0"],
         r"--layout.*registered weights \('fashion-mnist'\) have their own", after=no_run),
    Case("layout-of-keras-for-a-state-dict", 3, [*TRANSFER, "--weights", "{tmp}/own.pth", "--layout", "keras:vgg16"],
         r"keras:vgg16 is a layout of Keras weights files; own\.pth is a PyTorch state dict", setup=own_pth,
         after=no_run),
    Case("layout-not-the-file-s", 3, ["transfer", "efficientnet_b0", "--data", "digits", "--out", "{tmp}/run",
                                      "--weights", "{tmp}/own.pth", "--layout", "timm:efficientnet_b0"],
         r"timm:efficientnet_b0: \d+ key\(s\) that no rename rule covers", setup=own_pth, after=no_run),
    Case("layout-on-a-convnets-file", 3, [*TRANSFER, "--weights", "{tmp}/w.safetensors", "--layout",
                                          "timm:efficientnet_b0"],
         r"w\.safetensors is a convnets weights file; --layout \(layout=\) is for torchvision, timm and Keras "
         r"checkpoints", setup=writes("w.safetensors"), after=no_run),
    Case("api-layout-for-a-tag", 3, [], r"layout 'timm:efficientnet_b0' .*registered weights \('fashion-mnist'\) "
         r"have their own",
         call=lambda tmp: load("fashion-mnist", model_name="resnet20", layout="timm:efficientnet_b0")),
    Case("api-layout-unknown", 3, [], r"weights_layout must be one of torchvision:alexnet, .*got 'tf_efficientnet_b0'",
         call=lambda tmp: convnets.TrainConfig(model="efficientnet_b0", weights="w.pth",
                                               weights_layout="tf_efficientnet_b0")),
    # 9: our own checkpoints, wrapper prefixes and all, are read as ours: errors speak of our keys.
    Case("own-prefixed-other-architecture", 9, [], r"does not fit resnet20.*missing.*\n    stem\.conv\.weight",
         setup=own_pth, call=lambda tmp: convnets.create_model("resnet20", weights=str(tmp / "own.pth"))),
    Case("own-prefixes-collide", 9, [], r"two keys become 'stem\.conv\.weight'",
         setup=lambda tmp: torch.save({"module.stem.conv.weight": torch.zeros(1), "stem.conv.weight": torch.zeros(1)},
                                      tmp / "two.pth"),
         call=lambda tmp: convnets.create_model("resnet20", weights=str(tmp / "two.pth"))),
    Case("own-pth-names-no-model", 9, [], r"own\.pth: no model name in its metadata; pass the model",
         setup=own_pth, call=lambda tmp: load_weights(tmp / "own.pth")),
    Case("own-one-channel-into-three", 9, [], r"different shapes.*stages\.0\.conv\.weight: \(6, 1, 5, 5\) in the "
         r".*\(6, 3, 5, 5\) in the model", setup=own_pth,
         call=lambda tmp: convnets.create_model("lenet5", in_chans=3, weights=str(tmp / "own.pth"))),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check_case(case, tmp_path, capsys)


# ---------------------------------------------------------------------------------------------
# One loading path
# ---------------------------------------------------------------------------------------------


def as_peer(model: torch.nn.Module, peer: str) -> dict[str, torch.Tensor]:
    """``model``'s weights under a peer's key names: the inverse of the layout's rename rules.

    The converter passes tensors through unchanged, so converting the published key layout (meta
    tensors, nothing allocated) tells which peer key becomes which of ours.
    """
    layout = [(k, s) for k, s in json.loads(REFERENCE.read_text())[peer]["state_dict"]]
    keys = {k: torch.empty(s, device="meta") for k, s in layout}
    name_of = {id(t): k for k, t in keys.items()}
    _, ours = convert_state_dict(keys, peer)
    own = model.state_dict()
    return {name_of[id(t)]: own[k].contiguous() for k, t in ours.items() if k in own}  # a model without aux heads


def perturbed(name: str, **kwargs) -> torch.nn.Module:
    """A model whose BatchNorm statistics are not the identity, so that eps and statistics matter."""
    model = convnets.create_model(name, **kwargs).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def test_efficientnet_b5_from_torchvision_is_the_same_model_through_every_path(tmp_path: Path) -> None:
    source = perturbed("efficientnet_b5")
    path = tmp_path / "efficientnet_b5.safetensors"
    save_file(as_peer(source, "torchvision:efficientnet_b5"), str(path))
    by_name = convnets.create_model("efficientnet_b5", weights=str(path)).eval()  # also train/transfer --weights
    by_importer = load_peer_weights(path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = by_name(x)
        assert by_name.stem.bn.eps == by_importer.stem.bn.eps == 1e-3
        assert torch.equal(logits, by_importer(x))  # max difference 0
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eps = 1e-3
        assert torch.equal(logits, source(x))  # the weights with the eps they were trained with
        # Our own file of the imported model records the eps, so evaluate/export rebuild the same network.
        save_weights(by_name, tmp_path / "ours.safetensors", {"model": "efficientnet_b5", "num_classes": 1000})
        assert read_metadata(tmp_path / "ours.safetensors")["bn_eps"] == 1e-3
        assert torch.equal(load_weights(tmp_path / "ours.safetensors").eval()(x), logits)
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eps = 1e-5
        assert (source(x) - logits).abs().max() > 1e-5  # the bug this guards: PyTorch's eps gives other logits


def test_googlenet_checkpoint_without_auxiliary_heads_loads(tmp_path: Path, caplog) -> None:
    # What torchvision's googlenet(weights=...) and any fine-tune of it save: no aux1/aux2.
    source = perturbed("googlenet_torchvision", aux_logits=False)
    for norm in source.modules():  # the eps torchvision's BasicConv2d builds, which the layout restores
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.eps = 1e-3
    path = tmp_path / "googlenet.pth"
    torch.save(as_peer(source, "torchvision:googlenet"), path)  # the aux keys of the layout are absent
    with caplog.at_level(logging.WARNING, logger="convnets.weights"):
        model = convnets.create_model("googlenet_torchvision", weights=str(path)).eval()
    assert model.aux is None and "no auxiliary classifiers: the model's are removed" in caplog.text
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
        assert torch.equal(load_peer_weights(path).eval()(x), source(x))
    # Our own GoogLeNet fine-tuned without them loads into the default build too.
    own = perturbed("googlenet", aux_logits=False, num_classes=10, in_chans=1, small_input=True)
    torch.save(own.state_dict(), tmp_path / "own.pth")
    again = convnets.create_model("googlenet", num_classes=10, in_chans=1, small_input=True,
                                  weights=str(tmp_path / "own.pth")).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), own(x))


def test_timm_efficientnet_is_not_taken_for_mobilenet_v1() -> None:
    # timm's efficientnet_b0 shares conv_stem, bn1 and blocks.0.0.conv_dw with timm's mobilenetv1_100.
    def bn(prefix: str, n: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{leaf}": torch.empty(n, device="meta") for leaf in ("weight", "bias", "running_mean",
                                                                                 "running_var")}

    state = {"conv_stem.weight": torch.empty(32, 3, 3, 3, device="meta"), **bn("bn1", 32),
             "blocks.0.0.conv_dw.weight": torch.empty(32, 1, 3, 3, device="meta"), **bn("blocks.0.0.bn1", 32),
             "blocks.0.0.se.conv_reduce.weight": torch.empty(8, 32, 1, 1, device="meta"),
             "blocks.0.0.se.conv_expand.weight": torch.empty(32, 8, 1, 1, device="meta"),
             "blocks.0.0.conv_pw.weight": torch.empty(16, 32, 1, 1, device="meta"), **bn("blocks.0.0.bn2", 16),
             "conv_head.weight": torch.empty(1280, 320, 1, 1, device="meta"), **bn("bn2", 1280),
             "classifier.weight": torch.empty(1000, 1280, device="meta")}
    # Only its first block is here: not mobilenetv1_100, and none of the timm EfficientNets either (a whole
    # one is timm:efficientnet_b0: tests/test_timm_layouts.py).
    expected = r"timm EfficientNet-like state dict with \(stem, blocks per stage, head\) = \(32, \(1,\), 1280\), " \
               r"none of timm's efficientnet_b0-b7"
    with pytest.raises(LayoutError, match=expected):
        detect_layout(state)
    with pytest.raises(LayoutError, match=expected):
        load_peer_weights(state)


# ---------------------------------------------------------------------------------------------
# Our own checkpoints (principle 9)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_own_checkpoints_with_wrapper_prefixes_load(tmp_path: Path, prefix: str, suffix: str) -> None:
    state = lenet_state(seed=3)
    path = tmp_path / f"wrapped{suffix}"
    wrapped = {prefix + k: v for k, v in state.items()}
    if suffix == ".pth":
        torch.save(wrapped, path)
    else:
        save_file(wrapped, str(path))
    for model in (convnets.create_model("lenet5", weights=str(path)),
                  load_weights(path, convnets.create_model("lenet5")), load(path, model_name="lenet5")):
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_a_one_channel_own_pth_is_fine_tuned_from_the_command_line(tmp_path: Path, capsys) -> None:
    own_pth(tmp_path, "own.pth", prefix="_orig_mod.")  # torch.save(torch.compile(model).state_dict())
    pre = weights_preprocessing(tmp_path / "own.pth", "lenet5")
    assert pre["input_size"] == (1, None, None) and pre["mean"] is None  # not ImageNet's 3x224
    status, _, err = run_cli(["transfer", "lenet5", "--weights", str(tmp_path / "own.pth"), "--data", "digits",
                              "--freeze", "all-but-head", "--epochs", "1", "--max-steps", "2", "--out",
                              str(tmp_path / "run"), "--no-progress"], capsys)
    assert status == 0, err
    meta = read_metadata(tmp_path / "run" / "last.safetensors")
    digits = convnets.data.load_dataset("digits", image_size=32)
    assert meta["input_size"] == [1, 32, 32]
    assert meta["mean"] == pytest.approx(list(digits.mean)) and meta["std"] == pytest.approx(list(digits.std))
    tuned = read_state_dict(tmp_path / "run" / "last.safetensors")
    assert torch.equal(tuned["stages.0.conv.weight"], lenet_state()["stages.0.conv.weight"])  # the trunk came in


def test_preprocessing_of_files_without_metadata(tmp_path: Path) -> None:
    googlenet = tmp_path / "googlenet.pth"
    torch.save(as_peer(convnets.create_model("googlenet_torchvision"), "torchvision:googlenet"), googlenet)
    assert weights_preprocessing(googlenet, "googlenet_torchvision")["mean"] == (0.5, 0.5, 0.5)  # was ImageNet's
    resnet = tmp_path / "resnet18.pth"
    torch.save(as_peer(convnets.create_model("resnet18"), "torchvision:resnet18"), resnet)
    pre = weights_preprocessing(resnet, "resnet18")
    assert pre["input_size"] == (3, 224, 224) and pre["mean"] == IMAGENET_MEAN
    # A run directory stands for its best.safetensors, with the preprocessing it was trained with.
    (tmp_path / "run").mkdir()
    lenet_file(tmp_path / "run" / "best.safetensors")
    assert weights_preprocessing(tmp_path / "run", "lenet5")["mean"] == (0.3,)
    assert torch.equal(convnets.create_model("lenet5", weights=str(tmp_path / "run")).stages[0].conv.weight,
                       lenet_state()["stages.0.conv.weight"])


def test_old_module_names_still_import() -> None:
    from convnets.importers import load_peer_weights as old_loader
    from convnets.pretrained import weights_preprocessing as old_preprocessing

    assert old_loader is load_peer_weights and old_preprocessing is weights_preprocessing


# ---------------------------------------------------------------------------------------------
# The download cache and downloads (principles 6 and 8)
# ---------------------------------------------------------------------------------------------


def test_two_urls_ending_in_the_same_name_are_two_cache_entries(tmp_path: Path) -> None:
    BODIES["/a/lenet5.safetensors"] = lenet_file(tmp_path / "a.safetensors", seed=1).read_bytes()
    BODIES["/b/lenet5.safetensors"] = lenet_file(tmp_path / "b.safetensors", seed=2).read_bytes()
    cache = tmp_path / "cache"
    a, b = (load(url(f"/{x}/lenet5.safetensors"), cache_dir=cache) for x in "ab")
    assert torch.equal(a.stages[0].conv.weight, lenet_state(1)["stages.0.conv.weight"])
    assert torch.equal(b.stages[0].conv.weight, lenet_state(2)["stages.0.conv.weight"])
    files = sorted(p for p in cache.rglob("*") if p.is_file())
    assert files == sorted(cache_path(url(f"/{x}/lenet5.safetensors"), cache) for x in "ab") and len(files) == 2


def test_a_download_shows_progress(tmp_path: Path, capsys) -> None:
    served(tmp_path)
    download(url("/files/lenet5.safetensors"), tmp_path / "w.safetensors", progress=True)
    err = capsys.readouterr().err
    assert "w.safetensors" in err and "100%" in err
    assert (tmp_path / "w.safetensors").read_bytes() == BODIES["/files/lenet5.safetensors"]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_a_damaged_cached_copy_is_downloaded_again(tmp_path: Path, caplog) -> None:
    served(tmp_path)
    body = BODIES["/files/lenet5.safetensors"]
    digest = hashlib.sha256(body).hexdigest()
    source = url("/files/lenet5.safetensors")
    cached = cached_download(source, sha256=digest, cache_dir=tmp_path / "cache")
    cached.write_bytes(body[:-5] + b"xxxxx")  # a disk error, a copy stopped half-way
    with caplog.at_level(logging.WARNING, logger="convnets.weights"):
        assert cached_download(source, sha256=digest, cache_dir=tmp_path / "cache") == cached
    assert "has another sha256 (damaged?): downloading it again" in caplog.text
    assert cached.read_bytes() == body


def test_ctrl_c_during_a_download_leaves_nothing(tmp_path: Path) -> None:
    served(tmp_path)
    # Python's own Ctrl-C handler, whatever the test runner inherited: a shell starts a background job
    # with SIGINT ignored, and then interrupt_main does nothing.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        timer = threading.Timer(0.5, _thread.interrupt_main)
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            cached_download(url("/drip/lenet5.safetensors"), cache_dir=tmp_path / "cache", deadline=60)
        timer.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert list((tmp_path / "cache").rglob("*")) == []


def test_a_killed_download_is_cleaned_up_when_the_cache_is_next_used(tmp_path: Path, caplog) -> None:
    served(tmp_path)
    cache = tmp_path / "cache"
    killed = url("/drip/lenet5.safetensors")
    code = ("import sys; from convnets.weights.io import cached_download; "
            "cached_download(sys.argv[1], cache_dir=sys.argv[2], deadline=600)")
    proc = subprocess.Popen([sys.executable, "-c", code, killed, str(cache)])
    try:
        deadline = time.monotonic() + 60
        while not list(cache.glob("*/.*.part")) and time.monotonic() < deadline:
            time.sleep(0.1)
        partial = list(cache.glob("*/.*.part"))
        assert len(partial) == 1
        # While it downloads, using the cache leaves its file alone (it is locked) ...
        cached_download(url("/files/lenet5.safetensors"), cache_dir=cache)
        assert partial[0].exists()
    finally:
        proc.kill()  # kill -9: no handler runs, the partial file stays behind
        proc.wait()
    assert partial[0].exists()
    # ... and once its process is dead, the next use of the cache removes it.
    with caplog.at_level(logging.WARNING, logger="convnets.weights"):
        cached_download(url("/files/lenet5.safetensors"), cache_dir=cache)
    assert not partial[0].exists() and "left by an interrupted download" in caplog.text
    assert sorted(p for p in cache.rglob("*") if p.is_file()) == [cache_path(url("/files/lenet5.safetensors"), cache)]


def test_a_url_on_the_command_line_uses_the_cache_and_keeps_no_unreadable_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served(tmp_path)
    monkeypatch.setenv("CONVNETS_CACHE", str(tmp_path / "cache"))
    transfer = [a.replace("{tmp}", str(tmp_path)) for a in TRANSFER]
    expect_cli_error([*transfer, "--weights", url("/text/lenet5.safetensors")], r"not a readable safetensors file"
                     r".*removed from the cache", capsys)
    nothing_cached(tmp_path)
    status, _, err = run_cli([*transfer, "--weights", url("/files/lenet5.safetensors"), "--max-steps", "1"], capsys)
    assert status == 0, err
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == [
        cache_path(url("/files/lenet5.safetensors"), tmp_path / "cache")]


def test_the_deadline_and_stall_limits_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="deadline must be a positive number of seconds, got 0"):
        download(url("/files/lenet5.safetensors"), tmp_path / "w", deadline=0)
    with pytest.raises(DownloadError, match="not an http"):
        download("file:///etc/passwd", tmp_path / "w")
    assert list(tmp_path.iterdir()) == []
