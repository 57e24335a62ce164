"""Make ``timm_layouts.json`` and ``timm_outputs.safetensors``: timm's own key layouts and logits, for the tests.

Run it where timm is installed (it is not a test dependency)::

    /work/tvenv/bin/python tests/data/make_timm_fixtures.py

No weights are stored. Every tensor of a checkpoint is a function of its key name and shape
(:func:`fill_state`, integer hashing, so any torch version gives the same bits), so the tests
rebuild the exact state dict timm was run with from the key list alone. The script loads that
state into timm's model (random weights, BatchNorm running statistics away from 0 and 1), runs
it on a fixed input (:func:`fixed_input`) and keeps the logits. ``tests/test_timm_layouts.py``
loads the same state with ``convnets.weights.load`` and compares.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
LAYOUTS_FILE = HERE / "timm_layouts.json"
OUTPUTS_FILE = HERE / "timm_outputs.safetensors"

# timm model -> input (N, C, H, W) its logits are kept for. The smallest variant of each key scheme, plus
# the ones that exercise a path of their own: tf_ "same" padding with BatchNorm eps 1e-3, depth scaling (B1),
# MobileNet v2's width multiplier. VGG runs at 224, the one size where its head is defined as ours (7x7 maps).
WITH_OUTPUTS = {
    "efficientnet_b0": (2, 3, 64, 64),
    "efficientnet_b1": (2, 3, 64, 64),
    "tf_efficientnet_b0": (2, 3, 66, 66),  # 66: TensorFlow pads its stride-2 convolutions unevenly here
    "mobilenetv2_100": (2, 3, 64, 64),
    "mobilenetv2_050": (2, 3, 64, 64),
    "mobilenetv2_140": (2, 3, 64, 64),
    "vgg11_bn": (1, 3, 224, 224),
    "resnet18": (2, 3, 64, 64),
    "resnet50": (2, 3, 64, 64),
}
# Key layouts only: every other variant we claim, and checkpoints we must refuse (widths and depths we lack).
KEYS_ONLY = [
    *(f"efficientnet_b{i}" for i in range(2, 8)),
    *(f"tf_efficientnet_b{i}" for i in range(1, 8)),
    "mobilenetv2_035", "mobilenetv2_075",
    "vgg11", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "mobilenetv1_100", "mobilenetv1_125", "mobilenetv2_110d", "efficientnet_b8", "mobilenetv3_large_100",
]


def _uniform(seed: int, n: int, chunk: int = 1 << 16) -> torch.Tensor:
    """``n`` values in [-1, 1), float64, from integer hashing: the same bits on every machine and torch version.

    Hashed ``chunk`` values at a time, in place: VGG's 133 million weights take a second instead of ten.
    """
    out = torch.empty(n, dtype=torch.float64)
    for start in range(0, n, chunk):
        x = torch.arange(start, min(start + chunk, n), dtype=torch.int64)
        x.mul_(2654435761).add_(seed).bitwise_and_(2**32 - 1)  # below 2**63 for n < 2**31
        for _ in range(3):  # a multiply-xorshift mixer; every product stays below 2**63
            x.bitwise_xor_(x >> 16).mul_(0x45D9F3B).bitwise_and_(2**32 - 1)
        out[start:start + len(x)] = x
    return out.div_(2**31).sub_(1)


def _seed(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)


def value(key: str, shape: list[int]) -> torch.Tensor:
    """The tensor stored under ``key``: He-scaled weights, BatchNorm statistics away from 0 and 1."""
    leaf = key.rpartition(".")[2]
    if leaf == "num_batches_tracked":
        return torch.tensor(0, dtype=torch.int64)
    u = _uniform(_seed(key), math.prod(shape)).view(shape)
    if leaf == "weight" and len(shape) >= 2:  # conv or linear: uniform with the variance 2 / fan-in
        out = u * math.sqrt(6 / math.prod(shape[1:]))
    elif leaf == "weight":  # BatchNorm scale
        out = 1 + 0.3 * u
    elif leaf == "running_var":
        out = 1 + 0.5 * u
    else:  # bias, BatchNorm shift, running_mean
        out = 0.2 * u
    return out.float()


def fill_state(keys: list[tuple[str, list[int]]]) -> dict[str, torch.Tensor]:
    """The state dict of a key list ``[(key, shape), ...]``, every tensor from :func:`value`."""
    return {key: value(key, shape) for key, shape in keys}


def fixed_input(shape: tuple[int, ...]) -> torch.Tensor:
    """The images the logits are computed for: values in [-2, 2), about what normalised photos span."""
    return (2 * _uniform(_seed("input"), math.prod(shape))).float().view(shape)


def main() -> None:
    import timm
    from safetensors.torch import save_file

    layouts, outputs = {}, {}
    for name in [*WITH_OUTPUTS, *KEYS_ONLY]:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        keys = [(k, list(t.shape)) for k, t in model.state_dict().items()]
        layouts[name] = {"timm": timm.__version__, "state_dict": keys}
        if name not in WITH_OUTPUTS:
            continue
        model = timm.create_model(name, pretrained=False).eval()
        model.load_state_dict(fill_state(keys))
        x = fixed_input(WITH_OUTPUTS[name])
        with torch.no_grad():
            logits = model(x)
        spread = float((logits[-1] - logits[0]).abs().max() / logits.abs().max())
        print(f"{name}: logits {tuple(logits.shape)}, max |logit| {float(logits.abs().max()):.3g}, "
              f"images differ by {spread:.3f} of it")
        assert spread > 0.05 or len(x) == 1, f"{name}: the logits hardly depend on the image"
        layouts[name]["input"] = list(WITH_OUTPUTS[name])
        outputs[name] = logits.contiguous()
    LAYOUTS_FILE.write_text(json.dumps(layouts, separators=(",", ":")) + "\n")
    save_file(outputs, OUTPUTS_FILE, metadata={"timm": timm.__version__, "torch": torch.__version__})
    print(f"wrote {LAYOUTS_FILE} ({LAYOUTS_FILE.stat().st_size:,} bytes), {OUTPUTS_FILE} "
          f"({OUTPUTS_FILE.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
