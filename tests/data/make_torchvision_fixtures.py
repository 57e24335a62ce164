"""Make ``torchvision_outputs.safetensors``: torchvision's logits for one model of every layout we claim, for the tests.

Run it where torchvision is installed (it is not a test dependency)::

    /work/tvenv/bin/python tests/data/make_torchvision_fixtures.py

As for timm (``make_timm_fixtures.py``, whose :func:`fill_state` and :func:`fixed_input` this reuses),
no weights are stored: every tensor is a function of its key name and shape. The keys and shapes are
those of ``peer_state_dicts.json`` (checked here against torchvision's own state dict); a model that
file does not cover has its key list stored in the outputs file's metadata. The script builds each
torchvision model, loads the filled state (random weights, BatchNorm statistics away from 0 and 1),
runs it in eval mode on a fixed input and keeps the logits. ``tests/test_torchvision_logits.py``
loads the same state into ours and compares.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, NamedTuple

import torch

HERE = Path(__file__).resolve().parent
OUTPUTS_FILE = HERE / "torchvision_outputs.safetensors"
PEER_FILE = HERE / "peer_state_dicts.json"


def _sibling(name: str) -> Any:
    """A module of this folder, by path: this file runs as a script and is loaded by path by the tests."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_timm_fixtures = _sibling("make_timm_fixtures")
fill_state = _timm_fixtures.fill_state
fixed_input = _timm_fixtures.fixed_input


class Fixture(NamedTuple):
    """One torchvision model whose logits are kept.

    Attributes:
        builder: the torchvision builder (``torchvision.models.<builder>``); its layout is ``torchvision:<builder>``.
        input: the (N, C, H, W) input the logits are computed for.
        kwargs: builder arguments.
        dtype: what the model runs in, both torchvision's and ours.
    """

    builder: str
    input: tuple[int, int, int, int]
    kwargs: dict[str, Any] = {}  # noqa: RUF012 (a NamedTuple field, never mutated)
    dtype: torch.dtype = torch.float32


# One model per torchvision layout family we claim, at small inputs where the model allows (64 px); AlexNet
# and VGG at 224, their published size, where the adaptive pool before the classifier is the identity.
# ResNet-50 has the bottleneck of the deeper ResNets (stride on the 3x3, our resnet50_torchvision), B5 the
# BatchNorm eps 1e-3 that torchvision builds B5-B7 with.
FIXTURES = {
    "alexnet": Fixture("alexnet", (2, 3, 224, 224)),
    "vgg11": Fixture("vgg11", (1, 3, 224, 224)),
    "vgg11_bn": Fixture("vgg11_bn", (1, 3, 224, 224)),
    "resnet18": Fixture("resnet18", (2, 3, 64, 64)),
    "resnet50": Fixture("resnet50", (2, 3, 64, 64)),
    # Ours has no transform_input: the layout's preprocessing (mean = std = 0.5) replaces it, so the
    # network proper is compared with transform_input=False on the same input ...
    "googlenet": Fixture("googlenet", (2, 3, 64, 64), {"aux_logits": False, "init_weights": False,
                                                       "transform_input": False}),
    # ... and the published configuration (transform_input=True, the weights' own setting) on
    # ImageNet-normalised images, which ours must match on the same pixels normalised with 0.5/0.5.
    "googlenet_transform_input": Fixture("googlenet", (2, 3, 64, 64), {"aux_logits": False, "init_weights": False,
                                                                       "transform_input": True}),
    "mobilenet_v2": Fixture("mobilenet_v2", (2, 3, 64, 64)),
    "efficientnet_b0": Fixture("efficientnet_b0", (2, 3, 64, 64)),
    # With these random weights B5's activations grow to 1e4 over its 39 residual blocks, and torchvision's own
    # float32 logits differ from its float64 ones by 0.66 of their maximum: float32 rounding, not the layout,
    # would decide. In float64 both libraries compute the same function to far below 1e-4.
    "efficientnet_b5": Fixture("efficientnet_b5", (2, 3, 64, 64), dtype=torch.float64),
}


def peer_keys(fixture: Fixture) -> list[tuple[str, list[int]]] | None:
    """The fixture's keys and shapes from ``peer_state_dicts.json`` (None if it lacks the model).

    That file holds GoogLeNet with its auxiliary classifiers; built without them, their keys go.
    """
    peers = json.loads(PEER_FILE.read_text())
    entry = peers.get(f"torchvision:{fixture.builder}")
    if entry is None:
        return None
    aux = fixture.kwargs.get("aux_logits", True)
    return [(k, s) for k, s in entry["state_dict"] if aux or not k.startswith("aux")]


def keys_of(name: str, metadata: dict[str, str]) -> list[tuple[str, list[int]]]:
    """The keys and shapes of fixture ``name``: from ``peer_state_dicts.json`` or the outputs file's metadata."""
    stored = json.loads(metadata["state_dicts"])
    if name in stored:
        return [(k, s) for k, s in stored[name]]
    return peer_keys(FIXTURES[name])


def main() -> None:
    import torchvision
    from safetensors.torch import save_file

    outputs, stored = {}, {}
    for name, fixture in FIXTURES.items():
        model = getattr(torchvision.models, fixture.builder)(**fixture.kwargs).eval()
        actual = [(k, list(t.shape)) for k, t in model.state_dict().items()]
        keys = peer_keys(fixture)
        if keys is None:
            stored[name] = keys = actual
        assert keys == actual, f"{name}: peer_state_dicts.json differs from torchvision {torchvision.__version__}"
        model.load_state_dict(fill_state(keys))
        x = fixed_input(fixture.input)
        with torch.no_grad():
            logits = model.to(fixture.dtype)(x.to(fixture.dtype)).float()
            # How well the fixture is conditioned: torchvision's float32 against its float64 logits.
            rounding = (model.float()(x) - model.double()(x.double())).abs().max() / logits.abs().max()
        spread = float((logits[-1] - logits[0]).abs().max() / logits.abs().max())
        print(f"{name}: logits {tuple(logits.shape)}, max |logit| {float(logits.abs().max()):.3g}, "
              f"images differ by {spread:.3f} of it; float32 rounding {float(rounding):.1e} of it")
        assert spread > 0.05 or len(x) == 1, f"{name}: the logits hardly depend on the image"
        outputs[name] = logits.contiguous()
    metadata = {"torchvision": torchvision.__version__, "torch": torch.__version__,
                "state_dicts": json.dumps(stored, separators=(",", ":"))}
    save_file(outputs, OUTPUTS_FILE, metadata=metadata)
    print(f"wrote {OUTPUTS_FILE} ({OUTPUTS_FILE.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
