"""Bad input around PyTorch's tools (principle 3): scripted and traced graphs, and ``reset_classifier``.

A scripted or fx-traced model is the network alone (see ``tests/test_torch_tools.py``), so what it
cannot do is refused when it runs, and tracing leaves the eager model's own checks in place.
"""

from pathlib import Path

import pytest
import torch

import convnets
from badinput import Case, check_case, params
from convnets.layers import ClassifierHead


def googlenet() -> convnets.ConvNet:
    return convnets.create_model("googlenet", num_classes=4, small_input=True).eval()


def traced_then_eager(x: torch.Tensor) -> None:
    model = convnets.create_model("resnet20").eval()
    torch.fx.symbolic_trace(model)
    model(x)


def traced_then_forward_head(x: torch.Tensor) -> None:
    model = convnets.create_model("resnet20").eval()
    torch.fx.symbolic_trace(model)
    model.forward_head(x)


def meta_model() -> convnets.ConvNet:
    with torch.device("meta"):
        return convnets.create_model("resnet20")


CASES = [
    # A traced GoogLeNet computes the logits only: asking it for the auxiliary outputs must not
    # return the logits as if they were (logits, aux), which unpacks silently for a batch of two.
    Case("traced-googlenet-return-aux", 3,
         call=lambda tmp: torch.fx.symbolic_trace(googlenet())(torch.randn(2, 3, 8, 8), True),
         expect=r"a scripted or fx-traced GoogLeNet returns the logits only: call the model itself"),
    # Tracing switches the checks off only while it runs.
    Case("eager-after-trace-channels", 3, call=lambda tmp: traced_then_eager(torch.randn(2, 1, 32, 32)),
         expect=r"resnet20 expects \(N, 3, H, W\) with H, W >= 4, got \(2, 1, 32, 32\): 1 channel"),
    Case("eager-after-trace-integers", 3,
         call=lambda tmp: traced_then_eager(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)),
         expect=r"takes floating-point images, got torch\.uint8"),
    Case("eager-after-trace-forward-head-pooled", 3,
         call=lambda tmp: traced_then_forward_head(torch.randn(2, 64)),
         expect=r"forward_head takes the feature map of forward_features, \(N, 64, H, W\); got shape \(2, 64\)"),
    Case("reset-classifier-meta-negative", 3, call=lambda tmp: meta_model().reset_classifier(-1),
         expect=r"num_classes must be a whole number from 0 to 100,000.*got -1"),
    Case("classifier-head-like-not-tensor", 3, call=lambda tmp: ClassifierHead(8, 0).reset(3, like=torch.float16),
         expect=r"like must be a tensor, whose dtype and device the new layer takes; got a dtype"),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check_case(case, tmp_path, capsys)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*deprecated:DeprecationWarning")
def test_scripted_googlenet_refuses_return_aux() -> None:
    """TorchScript raises its own error type (torch.jit.Error), with the message."""
    scripted = torch.jit.script(googlenet())
    with pytest.raises(torch.jit.Error, match=r"returns the logits only"):
        scripted(torch.randn(2, 3, 8, 8), True)
