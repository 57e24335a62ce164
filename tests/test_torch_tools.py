"""Every model through PyTorch's own tools: TorchScript, torch.fx, torch.compile, torch.export, and
``reset_classifier`` keeping the model's dtype and device.

Modelled on timm's model tests (huggingface/pytorch-image-models ``tests/test_models.py``):
``test_model_forward_torchscript`` (script, eval, one forward), ``test_model_forward_fx`` (trace,
eval, outputs equal to eager), ``test_model_backward_fx`` (trace in training mode, every parameter
gets a gradient) and the ``reset_classifier(0)`` checks of ``test_model_default_cfgs`` (features of
``num_features`` come out; ``num_classes`` reads 0). Here the scripted and traced outputs must equal
eager's exactly, in training mode as well (same seed, so that dropout and drop-path draw the same).
"""

from pathlib import Path

import pytest
import torch

import convnets
from convnets.errors import InputShapeError
from convnets.layers import ClassifierHead, conv2d_fp32_under_cpu_autocast
from convnets.models.vgg import VGG

ALL_MODELS = convnets.list_models()

# torch 2.13 deprecates torch.jit.script, save and load with a warning at each call: they are what is tested.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:DeprecationWarning")

# Over ~4 s each on two shared cores (pytest --durations): scripting compiles every distinct block
# (deep nets), or building VGG draws its 130M weights. Still run in CI; their smaller relatives and
# the families' cases below run in the quick set.
SLOW_TO_SCRIPT = {
    "efficientnet_b3", "efficientnet_b4", "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
    "resnet101", "resnet152", "resnet101_torchvision", "resnet152_torchvision", "plain101", "plain152",
    "resnet110", "plain110", *convnets.list_models("vgg*"),
}


def smallest_input(model: convnets.ConvNet, batch: int = 2) -> torch.Tensor:
    """A random batch at the smallest size the model takes (2 images: BatchNorm trains on batches)."""
    height, width = model.fixed_input_size or (model.min_input_size, model.min_input_size)
    return torch.randn(batch, model.in_chans, height, width)


def model_params(names: list[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TO_SCRIPT else n for n in names]


@pytest.mark.parametrize("name", model_params(ALL_MODELS))
def test_script_and_fx_trace_equal_eager(name: str) -> None:
    """timm's forward_torchscript, forward_fx and backward_fx checks, with outputs equal to eager's.

    In training mode too: dropout, drop-path (EfficientNet) and batch statistics are traced, and
    the same seed makes the same draws.
    """
    torch.manual_seed(0)
    model = convnets.create_model(name, num_classes=5).eval()
    x = smallest_input(model)
    # optimized_execution(False): TorchScript's profiling runs would only add time; the graph is the same.
    with torch.no_grad(), torch.jit.optimized_execution(False):
        eager = model(x)
        assert eager.shape == (2, 5) and torch.isfinite(eager).all()
        assert torch.equal(torch.jit.script(model)(x), eager)
        assert torch.equal(torch.fx.symbolic_trace(model)(x), eager)
    traced = torch.fx.symbolic_trace(model.train())
    torch.manual_seed(1)
    eager = model(x)
    torch.manual_seed(1)
    out = traced(x)
    assert torch.equal(out, eager)
    out.square().mean().backward()
    # GoogLeNet's auxiliary classifiers are not part of forward(x): the graph is the inference network.
    missing = [n for n, p in traced.named_parameters() if p.grad is None and not n.startswith("aux.")]
    assert not missing


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "efficientnet_b0"])
def test_tensorflow_padding_scripts_and_traces(name: str) -> None:
    """``tf_same=True`` (Keras weights) pads by the input's size: a wrapped function in the fx graph."""
    model = convnets.create_model(name, num_classes=3, tf_same=True, **({"width": 0.25} if "mobilenet" in name else {}))
    model.eval()
    x = torch.randn(2, 3, 33, 35)  # odd sizes: TensorFlow pads one pixel more on the right/bottom
    traced = torch.fx.symbolic_trace(model)
    assert "pad_same" in traced.code
    with torch.no_grad(), torch.jit.optimized_execution(False):
        eager = model(x)
        assert torch.equal(torch.jit.script(model)(x), eager)
        assert torch.equal(traced(x), eager)


def test_traced_efficientnet_drops_paths_in_training_mode_only() -> None:
    model = convnets.create_model("efficientnet_b0", num_classes=3, small_input=True, drop_path=0.5)
    model.head.drop.p = 0.0  # only drop-path draws
    x = smallest_input(model)
    traced_train = torch.fx.symbolic_trace(model.train())
    assert "bernoulli_" in traced_train.code
    model.eval()
    traced_eval = torch.fx.symbolic_trace(model)
    assert "bernoulli_" not in traced_eval.code
    with torch.no_grad():
        assert torch.equal(traced_eval(x), model(x))
    model.train()
    draws = {traced_train(x).sum().item() for _ in range(4)}
    assert len(draws) > 1  # a different set of blocks dropped at each call


def test_traced_depthwise_conv_stays_fp32_under_cpu_autocast() -> None:
    """The autocast test of DepthwiseConv2d runs when the traced graph runs, not once at tracing."""
    model = convnets.create_model("mobilenet_v2", num_classes=3, width=0.25, small_input=True).eval()
    traced = torch.fx.symbolic_trace(model)
    assert "conv2d_fp32_under_cpu_autocast" in traced.code
    x = smallest_input(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(traced(x), model(x))
        dw = model.stages[1][0].dw.conv
        inputs = torch.randn(2, dw.in_channels, 8, 8)
        assert conv2d_fp32_under_cpu_autocast(inputs, dw.weight, dw.bias, dw.stride, dw.padding, dw.dilation,
                                              dw.groups).dtype == torch.float32
        assert dw(inputs).dtype == torch.float32


def test_googlenet_graphs_are_the_inference_network_and_refuse_return_aux() -> None:
    model = convnets.create_model("googlenet", num_classes=4, small_input=True).eval()
    x = torch.randn(2, 3, 40, 40)  # the auxiliary classifiers' 5x5 pools need 5x5 maps at 4a and 4d
    logits = model(x)
    scripted, traced = torch.jit.script(model), torch.fx.symbolic_trace(model)
    assert torch.equal(scripted(x), logits) and torch.equal(traced(x), logits)
    with pytest.raises(torch.jit.Error, match="returns the logits only"):
        scripted(x, True)
    with pytest.raises(convnets.errors.ConfigError, match="returns the logits only"):
        traced(x, True)
    # The model itself still gives the auxiliary outputs.
    _, aux = model(x, return_aux=True)
    assert [a.shape for a in aux] == [(2, 4), (2, 4)]


@pytest.mark.parametrize("tool", ["script", "fx"])
def test_eager_model_keeps_its_input_checks_after_scripting_or_tracing(tool: str) -> None:
    model = convnets.create_model("resnet20").eval()
    graph = torch.jit.script(model) if tool == "script" else torch.fx.symbolic_trace(model)
    assert torch.equal(graph(torch.ones(1, 3, 8, 8)), model(torch.ones(1, 3, 8, 8)))
    with pytest.raises(InputShapeError, match=r"resnet20 expects \(N, 3, H, W\) with H, W >= 4, got \(1, 2, 8, 8\)"):
        model(torch.ones(1, 2, 8, 8))
    with pytest.raises(InputShapeError, match=r"forward_head takes the feature map"):
        model.forward_head(torch.ones(1, 64))
    # The graph is the network alone: a wrong input fails in the layer that cannot take it.
    with pytest.raises(RuntimeError, match="channels"):
        graph(torch.ones(1, 2, 8, 8))


# ---- reset_classifier keeps the model's dtype and device


def meta_devices() -> list[str]:
    return ["meta", "cuda"] if torch.cuda.is_available() else ["meta"]


@pytest.mark.parametrize("device", meta_devices())
@pytest.mark.parametrize("name", ALL_MODELS)
def test_reset_classifier_keeps_dtype_and_device(name: str, device: str) -> None:
    with torch.device(device):
        model = convnets.create_model(name, num_classes=5)
    model.to(torch.bfloat16).eval()
    model.reset_classifier(0)
    assert model.num_classes == 0
    features = model.forward_features(smallest_input(model).to(device=device, dtype=torch.bfloat16))
    assert model.forward_head(features).shape == (2, model.num_features)  # timm: num_features after reset(0)
    model.reset_classifier(7)
    heads = [model.head] + (list(model.aux.values()) if getattr(model, "aux", None) is not None else [])
    for head in heads:
        weights = [w for w in [*head.parameters(), *head.buffers()] if w.is_floating_point()]
        assert weights and {(w.dtype, w.device.type) for w in weights} == {(torch.bfloat16, device)}
    assert model.forward_head(features).shape == (2, 7)


@pytest.mark.parametrize("name", ["resnet20", "lenet5", "lenet5_classic"])
def test_float64_model_classifies_after_reset(name: str) -> None:
    model = convnets.create_model(name).double().eval()
    x = smallest_input(model)  # float32 images, cast to the model's float64
    model.reset_classifier(0)
    features = model(x)
    model.reset_classifier(3)
    logits = model(x)
    assert features.dtype == logits.dtype == torch.float64
    assert logits.shape == (2, 3)
    # The fresh layer is the one applied to those features.
    assert torch.allclose(logits, model.head.fc(features))


def test_classifier_head_reset_alone_follows_its_own_weights() -> None:
    head = ClassifierHead(8, 4, hidden=(6,)).to(torch.float64)
    head.reset(0)
    head.reset(2, like=torch.zeros(1, dtype=torch.bfloat16))  # its hidden layer wins over like
    assert head.fc.weight.dtype == torch.float64
    bare = ClassifierHead(8, 0)
    bare.reset(3, like=torch.zeros(1, dtype=torch.float16))
    assert bare.fc.weight.dtype == torch.float16
    bare.reset(3)
    assert bare.fc.weight.dtype == torch.float16  # its own fc now decides


# ---- torch.compile and torch.export, one small model per family


def small_vgg() -> VGG:
    # VGG's five pooled stages and FC head, thin: VGG-11's own 133M weights would only slow the test.
    return VGG(((8,), (8,), (16, 16), (16, 16), (16, 16)), num_classes=10)


def create(name: str, **kwargs: object):  # noqa: ANN202
    return lambda: convnets.create_model(name, **kwargs)


# One small member of each registered family (case id: (family, builder)), at its smallest input.
FAMILIES = {
    "lenet5": ("lenet", create("lenet5")),
    "lenet5_classic": ("lenet", create("lenet5_classic")),  # RBF output, partial C3: other operations
    "alexnet": ("alexnet", create("alexnet", num_classes=10, small_input=True)),
    "vgg": ("vgg", small_vgg),
    "resnet50": ("resnet", create("resnet50", num_classes=10, small_input=True)),
    "plain18": ("plain", create("plain18", num_classes=10, small_input=True)),
    "resnet20": ("resnet_cifar", create("resnet20")),
    "plain20": ("plain_cifar", create("plain20")),
    "nin": ("nin", create("nin")),
    "googlenet": ("inception", create("googlenet", num_classes=10, small_input=True)),
    "mobilenet_v1": ("mobilenet_v1", create("mobilenet_v1", num_classes=10, width=0.25, small_input=True)),
    "mobilenet_v2": ("mobilenet_v2", create("mobilenet_v2", num_classes=10, width=0.25, small_input=True)),
    "efficientnet_b0": ("efficientnet", create("efficientnet_b0", num_classes=10, small_input=True)),
}


def test_every_family_has_a_compile_and_export_case() -> None:
    registered = {convnets.registry.model_entry(name).family for name in ALL_MODELS}
    assert {family for family, _ in FAMILIES.values()} == registered


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_compile_whole_graph_equals_eager(family: str) -> None:
    """torch.compile with fullgraph=True: the input checks trace too, without a graph break.

    The "aot_eager" backend runs Dynamo and AOTAutograd without generating kernels (inductor would
    spend minutes compiling C++ on two cores); what is tested is that the model is one graph.
    """
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = FAMILIES[family][1]().eval()
    x = smallest_input(model)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    # The checks are traced: a wrong input gets the clear error, not a layer's (with fullgraph=True,
    # Dynamo reports it as a graph break quoting the same message).
    with pytest.raises(InputShapeError, match=r"expects \(N, \d+, "):
        torch.compile(model, backend="eager")(torch.randn(2, model.in_chans + 1, *x.shape[2:]))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fx_trace_then_script_equals_eager(family: str) -> None:
    """timm's forward_fx_torchscript: the traced graph, wrapped functions included, scripts too."""
    torch.manual_seed(0)
    model = FAMILIES[family][1]().eval()
    x = smallest_input(model)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        assert torch.equal(torch.jit.script(torch.fx.symbolic_trace(model))(x), model(x))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_equals_eager(family: str) -> None:
    torch.manual_seed(0)
    model = FAMILIES[family][1]().eval()
    x = smallest_input(model)
    exported = torch.export.export(model, (x,)).module()
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x), rtol=1e-5, atol=1e-6)
        other = torch.randn_like(x)  # the graph computes, not a recording of one output
        torch.testing.assert_close(exported(other), model(other), rtol=1e-5, atol=1e-6)


def test_scripted_model_saves_and_loads(tmp_path: Path) -> None:
    model = convnets.create_model("mobilenet_v2", num_classes=3, width=0.25, small_input=True).eval()
    x = smallest_input(model)
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(model), path)
    loaded = torch.jit.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
