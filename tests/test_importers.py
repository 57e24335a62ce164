"""Peer-checkpoint importers: every published layout maps onto our models, values land where they should."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import convnets
from convnets.weights import (
    LAYOUTS,
    DownloadError,
    LayoutError,
    WeightsMismatchError,
    cache_path,
    convert_state_dict,
    detect_layout,
    load_peer_weights,
    strip_wrapper_prefixes,
)

# The exact key/shape layouts of the published torchvision/timm checkpoints (names and shapes only,
# no weights), kept with the tests so that a clone of the repository runs them as they are.
REFERENCE = Path(__file__).resolve().parent / "data" / "peer_state_dicts.json"


@functools.cache
def reference() -> dict[str, list[tuple[str, list[int]]]]:
    return {peer: [(k, s) for k, s in entry["state_dict"]] for peer, entry in json.loads(REFERENCE.read_text()).items()}


PEERS = list(reference())


def peer_state(peer: str, *, device: str = "meta", fill: str = "zeros") -> dict[str, torch.Tensor]:
    """A state dict with exactly the peer's keys and shapes; ``fill="index"``: tensor i holds the value i."""
    out = {}
    for i, (key, shape) in enumerate(reference()[peer]):
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(i, dtype=torch.int64, device=device)
        elif fill == "index":
            out[key] = torch.full(shape, float(i), device=device)
        elif fill == "randn":
            out[key] = torch.randn(shape, device=device)
        else:
            out[key] = torch.zeros(shape, device=device)
    return out


def meta_model(name: str, **kwargs) -> convnets.ConvNet:
    with torch.device("meta"):  # building on meta allocates nothing: EfficientNet-B7 and VGG are instant
        return convnets.create_model(name, **kwargs)


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


# ---------------------------------------------------------------------------------------------
# Every published layout
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("peer", PEERS)
def test_layout_is_detected(peer: str) -> None:
    assert detect_layout(peer_state(peer)) == peer


@pytest.mark.parametrize("peer", PEERS)
def test_layout_fills_every_parameter_and_buffer(peer: str) -> None:
    name, ours = convert_state_dict(peer_state(peer))
    assert name == LAYOUTS[peer].model
    expected = meta_model(name).state_dict()
    assert shapes(ours) == shapes(expected)  # same keys, same shapes: nothing missing, nothing left over
    assert len(ours) == len(reference()[peer])


@pytest.mark.parametrize("peer", PEERS)
def test_mapping_agrees_with_module_order(peer: str) -> None:
    # An independent cross-check of the rules (which never use positions): both libraries register
    # modules in forward order, so the i-th peer key is the i-th of ours. It catches swaps the shapes
    # cannot, e.g. conv1/conv2 of a basic block or bn weight/bias. GoogLeNet registers its main ``fc``
    # after the auxiliary classifiers, we before them.
    renamed = list(convert_state_dict(peer_state(peer))[1])
    ours = list(meta_model(LAYOUTS[peer].model).state_dict())
    if peer == "torchvision:googlenet":
        ours = [k for k in ours if not k.startswith("head.")] + [k for k in ours if k.startswith("head.")]
    assert renamed == ours


# torchvision's VGG configurations A, B, D, E: widths, "M" for a max-pool (as torchvision writes them).
TORCHVISION_VGG_CFGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def torchvision_vgg_state(depth: int, batch_norm: bool) -> dict[str, torch.Tensor]:
    """The keys/shapes torchvision's make_layers gives, written out independently of the importer."""
    state, index, cin = {}, 0, 3
    for item in TORCHVISION_VGG_CFGS[depth]:
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.empty(item, cin, 3, 3, device="meta")
        state[f"features.{index}.bias"] = torch.empty(item, device="meta")
        if batch_norm:
            index += 1
            for leaf in ("weight", "bias", "running_mean", "running_var"):
                state[f"features.{index}.{leaf}"] = torch.empty(item, device="meta")
            state[f"features.{index}.num_batches_tracked"] = torch.empty((), dtype=torch.int64, device="meta")
        index, cin = index + 2, item
    for i, (fin, fout) in zip((0, 3, 6), ((512 * 7 * 7, 4096), (4096, 4096), (4096, 1000)), strict=True):
        state[f"classifier.{i}.weight"] = torch.empty(fout, fin, device="meta")
        state[f"classifier.{i}.bias"] = torch.empty(fout, device="meta")
    return state


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_every_torchvision_vgg_variant(depth: int, batch_norm: bool) -> None:
    state = torchvision_vgg_state(depth, batch_norm)
    peer = f"torchvision:vgg{depth}{'_bn' if batch_norm else ''}"
    if peer in PEERS:  # the generator agrees with the published layout where we have it
        assert shapes(state) == {k: tuple(s) for k, s in reference()[peer]}
    assert detect_layout(state) == peer
    name, ours = convert_state_dict(state)
    assert name == f"vgg{depth}{'_bn' if batch_norm else ''}"
    assert shapes(ours) == shapes(meta_model(name).state_dict())


# ---------------------------------------------------------------------------------------------
# Values land in the right place
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "pairs"),
    [
        ("torchvision:resnet18", {
            "conv1.weight": "stem.conv.weight",
            "bn1.running_mean": "stem.bn.running_mean",
            "layer1.1.conv2.weight": "stages.0.1.conv2.conv.weight",
            "layer2.0.bn1.bias": "stages.1.0.conv1.bn.bias",
            "layer2.0.downsample.0.weight": "stages.1.0.shortcut.conv.weight",
            "layer3.0.downsample.1.running_var": "stages.2.0.shortcut.bn.running_var",
            "layer4.1.bn2.num_batches_tracked": "stages.3.1.conv2.bn.num_batches_tracked",
            "fc.weight": "head.fc.weight",
        }),
        ("torchvision:mobilenet_v2", {
            "features.0.0.weight": "stem.conv.weight",
            "features.1.conv.0.0.weight": "stages.0.0.dw.conv.weight",  # t = 1: no expansion
            "features.1.conv.1.weight": "stages.0.0.project.conv.weight",
            "features.1.conv.2.running_var": "stages.0.0.project.bn.running_var",
            "features.2.conv.0.0.weight": "stages.1.0.expand.conv.weight",
            "features.2.conv.1.0.weight": "stages.1.0.dw.conv.weight",
            "features.2.conv.3.bias": "stages.1.0.project.bn.bias",
            "features.7.conv.2.weight": "stages.3.0.project.conv.weight",
            "features.17.conv.1.1.weight": "stages.6.0.dw.bn.weight",
            "features.18.0.weight": "stages.7.conv.weight",
            "classifier.1.bias": "head.fc.bias",
        }),
    ],
)
def test_values_land_in_the_right_place(peer: str, pairs: dict[str, str]) -> None:
    state = peer_state(peer, device="cpu", fill="index")
    _, ours = convert_state_dict(state)
    for peer_key, our_key in pairs.items():
        assert torch.equal(ours[our_key], state[peer_key]), f"{peer_key} should become {our_key}"
    # And every tensor is passed through, not copied: each peer tensor sits under exactly one of our keys.
    assert sorted(map(id, ours.values())) == sorted(map(id, state.values()))


# ---------------------------------------------------------------------------------------------
# Loading files
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return peer_state("torchvision:resnet18", device="cpu", fill="randn")


@pytest.fixture(scope="module")
def resnet18_file(resnet18_state: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("peer") / "resnet18.pth"
    torch.save(resnet18_state, path)
    return path


def assert_loaded(model: convnets.ConvNet, state: dict[str, torch.Tensor]) -> None:
    """``model`` holds exactly the tensors of the peer ``state``, renamed."""
    _, ours = convert_state_dict(state)
    got = model.state_dict()
    assert set(got) == set(ours)
    for key, value in ours.items():
        assert torch.equal(got[key], value), key


def test_loads_pth_with_ddp_prefix(resnet18_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save({f"module.{k}": v for k, v in resnet18_state.items()}, path)
    model = load_peer_weights(path)
    assert model.name == "resnet18" and model.num_classes == 1000
    assert_loaded(model, resnet18_state)


def test_loads_safetensors_with_compile_prefix(resnet18_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = tmp_path / "resnet18.safetensors"
    save_file({f"module._orig_mod.{k}": v.contiguous() for k, v in resnet18_state.items()}, str(path))
    model = convnets.create_model("resnet18")
    assert load_peer_weights(path, model) is model
    assert_loaded(model, resnet18_state)


def test_strip_wrapper_prefixes_refuses_collisions() -> None:
    t = torch.zeros(1)
    assert list(strip_wrapper_prefixes({"module._orig_mod.fc.weight": t})) == ["fc.weight"]
    with pytest.raises(LayoutError, match="fc.weight"):
        strip_wrapper_prefixes({"module.fc.weight": t, "fc.weight": t})


def test_num_classes_replaces_the_head(
    resnet18_file: Path, resnet18_state: dict[str, torch.Tensor], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="convnets.weights"):
        model = load_peer_weights(resnet18_file, num_classes=3)
    assert "1000 classes" in caplog.text and "head.fc.weight" in caplog.text
    assert model.head.fc.weight.shape == (3, 512)
    got = model.state_dict()
    for key, value in convert_state_dict(resnet18_state)[1].items():
        assert key.startswith("head.fc") or torch.equal(got[key], value), key
    # A given model of another width gets the same treatment.
    other = load_peer_weights(resnet18_file, convnets.create_model("resnet18", num_classes=5))
    assert other.head.fc.weight.shape == (5, 512)


def test_googlenet_aux_heads(caplog: pytest.LogCaptureFixture) -> None:
    state = peer_state("torchvision:googlenet", device="cpu", fill="index")
    with caplog.at_level(logging.WARNING, logger="convnets.weights"):
        model = load_peer_weights(state, num_classes=3)
    # The main and both auxiliary classifiers are new; the auxiliary hidden layers are kept.
    assert "aux.4a.head.fc.weight" in caplog.text and "aux.4d.head.fc.bias" in caplog.text
    assert "transform_input" in caplog.text  # the input normalisation those weights expect
    got = model.state_dict()
    assert got["aux.4d.head.fc.weight"].shape == (3, 1024) and got["head.fc.weight"].shape == (3, 1024)
    assert torch.equal(got["aux.4d.head.hidden.0.fc.weight"], state["aux2.fc1.weight"])
    assert torch.equal(got["stages.1.4e.branch5x5.conv.conv.weight"], state["inception4e.branch3.1.conv.weight"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="convnets.weights"):
        bare = load_peer_weights(state, convnets.create_model("googlenet_torchvision", aux_logits=False))
    assert "no auxiliary classifiers" in caplog.text
    assert_loaded(bare, {k: v for k, v in state.items() if not k.startswith("aux")})


def test_efficientnet_b7_keeps_torchvision_bn_eps(caplog: pytest.LogCaptureFixture) -> None:
    state = peer_state("torchvision:efficientnet_b7")  # meta tensors into a meta model: nothing allocated
    model = meta_model("efficientnet_b7")
    with caplog.at_level(logging.WARNING, logger="convnets.weights"):
        load_peer_weights(state, model)
    assert model.stem.bn.eps == 1e-3 and "eps" in caplog.text


# ---------------------------------------------------------------------------------------------
# Refusals, each naming what is wrong
# ---------------------------------------------------------------------------------------------


def test_mis_shaped_key_is_named(resnet18_state: dict[str, torch.Tensor]) -> None:
    state = dict(resnet18_state, **{"layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)})
    with pytest.raises(WeightsMismatchError, match=r"stages\.0\.0\.conv1\.conv\.weight: \(64, 64, 1, 1\)"):
        load_peer_weights(state)


def test_missing_key_is_named(resnet18_state: dict[str, torch.Tensor]) -> None:
    state = {k: v for k, v in resnet18_state.items() if k != "layer4.1.bn2.running_var"}
    with pytest.raises(WeightsMismatchError, match=r"missing(.|\n)*stages\.3\.1\.conv2\.bn\.running_var"):
        load_peer_weights(state)


def test_unexpected_keys_are_named(resnet18_state: dict[str, torch.Tensor]) -> None:
    # A key no rule covers is refused by the converter, never silently dropped ...
    with pytest.raises(LayoutError, match=r"layer1\.0\.se\.weight"):
        convert_state_dict(dict(resnet18_state, **{"layer1.0.se.weight": torch.zeros(1)}), "torchvision:resnet18")
    # ... and one the rules map to a layer the model lacks is refused by the fit check.
    with pytest.raises(WeightsMismatchError, match=r"not in the model(.|\n)*stages\.4\.0\.conv1\.conv\.weight"):
        extra = dict(resnet18_state, **{"layer5.0.conv1.weight": torch.zeros(1)})
        load_peer_weights(extra, layout="torchvision:resnet18")


def test_unknown_layout_lists_the_known_ones() -> None:
    with pytest.raises(LayoutError, match=r"torchvision:resnet50.*timm:mobilenetv1_100"):
        detect_layout({"backbone.stem.weight": torch.zeros(1)})
    with pytest.raises(LayoutError, match="Known layouts"):
        convert_state_dict({"fc.weight": torch.zeros(1)}, layout="torchvision:resnet9000")


def test_wide_resnet_is_not_taken_for_resnet50() -> None:
    state = peer_state("torchvision:resnet50")
    state["layer1.0.conv1.weight"] = torch.empty(128, 64, 1, 1, device="meta")
    with pytest.raises(LayoutError, match="128 wide"):
        detect_layout(state)


def test_truncated_files_are_refused(
    resnet18_file: Path, resnet18_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    cut = tmp_path / "cut.pth"
    cut.write_bytes(resnet18_file.read_bytes()[: resnet18_file.stat().st_size // 2])
    with pytest.raises(ValueError, match="cannot be read"):
        load_peer_weights(cut)
    st = tmp_path / "cut.safetensors"
    save_file({k: v.contiguous() for k, v in resnet18_state.items()}, str(st))
    st.write_bytes(st.read_bytes()[:100_000])
    with pytest.raises(ValueError, match="truncated"):
        load_peer_weights(st)


class _Payload:
    """An object whose unpickling would run code: it must never be unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2), "payload": _Payload(marker)}, path)
    with pytest.raises(ValueError, match="plain tensor checkpoint"):
        load_peer_weights(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def server(resnet18_file: Path) -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server giving the resnet18 checkpoint under any name; yields (base URL, paths hit)."""
    hits: list[str] = []
    body = resnet18_file.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # keep the test output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_url_downloads_once_into_the_cache(
    server: tuple[str, list[str]], resnet18_file: Path, resnet18_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    base, hits = server
    digest = hashlib.sha256(resnet18_file.read_bytes()).hexdigest()
    url = f"{base}/resnet18-{digest[:8]}.pth"  # torchvision's naming: the hash prefix is checked
    cache = tmp_path / "cache"
    assert_loaded(load_peer_weights(url, cache_dir=cache), resnet18_state)
    assert hits == [f"/resnet18-{digest[:8]}.pth"]
    assert [p for p in cache.rglob("*") if p.is_file()] == [cache_path(url, cache)]
    assert cache_path(url, cache).name == f"resnet18-{digest[:8]}.pth"
    assert_loaded(load_peer_weights(url, cache_dir=cache, sha256=digest), resnet18_state)
    assert len(hits) == 1  # the second load used the cache


def test_cache_dir_from_environment(
    server: tuple[str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = server
    monkeypatch.setenv("CONVNETS_CACHE", str(tmp_path / "env-cache"))
    load_peer_weights(f"{base}/r18.pth")
    assert cache_path(f"{base}/r18.pth", tmp_path / "env-cache").is_file()


@pytest.mark.parametrize(("name", "sha256"), [("r18.pth", "0" * 64), ("resnet18-deadbeef.pth", None)])
def test_wrong_hash_is_refused_and_not_cached(
    server: tuple[str, list[str]], tmp_path: Path, name: str, sha256: str | None
) -> None:
    base, hits = server
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        load_peer_weights(f"{base}/{name}", cache_dir=cache, sha256=sha256)
    assert hits == [f"/{name}"]
    assert list(cache.iterdir()) == []  # no partial or bad file left behind


def test_unreachable_url_is_a_connection_error(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError, match="cannot download"):
        load_peer_weights("http://127.0.0.1:9/none.pth", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_local_file_hash(resnet18_file: Path, tmp_path: Path) -> None:
    digest = hashlib.sha256(resnet18_file.read_bytes()).hexdigest()
    assert load_peer_weights(resnet18_file, sha256=digest).name == "resnet18"
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_peer_weights(resnet18_file, sha256="f" * 64)
    # A local name that merely looks like torchvision's convention is not taken for a hash.
    dated = tmp_path / "resnet18-20240101.pth"
    dated.write_bytes(resnet18_file.read_bytes())
    assert load_peer_weights(dated).name == "resnet18"
