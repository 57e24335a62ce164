"""Parameter and multiply-accumulate (MAC) counting on the meta device.

The counting rule, the papers' own (and the rule behind torchvision's published figures):

- MAC(conv)   = N * H_out * W_out * C_out * (C_in / groups) * k_h * k_w  (any number of spatial dims);
- MAC(linear) = rows * in * out  (a matrix product ``(m, k) @ (k, n)`` counts ``m * k * n``);
- FLOPs = 2 * MACs;
- not counted: bias adds, BatchNorm, activations, pooling, LRN, element-wise adds (residuals)
  and the squeeze-excite multiply;
- params are trainable parameters (``requires_grad``); BatchNorm running statistics are buffers
  and never params.

How: the model is copied onto the meta device (shapes without storage, so even VGG-19 costs no
real arithmetic) and run once on an empty meta input in eval mode. A ``TorchDispatchMode``
sees every convolution and matrix product at the ATen level, so a convolution written with
``F.conv2d`` inside a custom module is counted as well as an ``nn.Conv2d``; forward hooks keep
a stack of the modules being run, and each MAC is credited to every module on that stack.

Extension protocol: a module that defines ``count_macs(self, inputs: tuple, output) -> int``
is trusted for its own MACs and nothing inside it is counted (LeNet-5's partially connected C3
layer computes with a dense, masked weight but has fewer real connections).
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from convnets.analysis.formatting import check_whole
from convnets.errors import ConfigError

_MAX_BYTES = 2**63 - 1

aten = torch.ops.aten

COUNTING_RULE = (
    "MACs = multiply-accumulates: conv N*H_out*W_out*C_out*(C_in/groups)*k_h*k_w, linear rows*in*out; "
    "FLOPs = 2 x MACs. Not counted: bias adds, BatchNorm, activations, pooling, LRN, element-wise adds, "
    "squeeze-excite multiply. Params = trainable parameters (BatchNorm running stats are buffers, not params)."
)

ROOT = "(model)"


@dataclass
class LayerCount:
    """What one module did during the counted forward pass.

    Attributes:
        path: module path as in ``named_modules()`` (``stages.2.1.conv1``); the model itself is ``(model)``.
        type_name: class name of the module.
        depth: number of path components (0 for the model itself).
        output_shape: shape of its (last) output; a tuple of shapes for several tensors, () if none.
        params: parameters the module holds, itself and its children (trainable or not).
        trainable_params: of those, the ones with ``requires_grad``.
        macs: MACs of all its calls, children included.
        calls: how many times it ran (0: never run, e.g. GoogLeNet's auxiliary heads at inference).
        leaf: True when it has no child modules.
        own_params: parameters held by the module itself, not by a child.
        self_macs: MACs of its own code, not of a child (a leaf's MACs; a ``count_macs`` result).
        order: position of its first call in the forward pass (-1: never run).
    """

    path: str
    type_name: str
    depth: int
    output_shape: tuple = ()
    params: int = 0
    trainable_params: int = 0
    macs: int = 0
    calls: int = 0
    leaf: bool = True
    own_params: int = 0
    self_macs: int = 0
    order: int = -1


@dataclass
class Counts:
    """Totals and per-module records of one counted forward pass.

    Attributes:
        params: trainable parameters of the whole model.
        macs: multiply-accumulates of one forward pass of ``batch`` inputs.
        input_size: the (C, H, W) counted.
        batch: batch size N counted.
        frozen_params: parameters with ``requires_grad=False``.
        unused_params: trainable parameters of modules that never ran (auxiliary heads).
        output_shape: shape of the model's output.
        layers: one :class:`LayerCount` per module, in the order of their first call; modules
            that never ran last.
    """

    params: int
    macs: int
    input_size: tuple[int, ...]
    batch: int = 1
    frozen_params: int = 0
    unused_params: int = 0
    output_shape: tuple = ()
    layers: list[LayerCount] = field(default_factory=list, repr=False)  # hundreds of records

    @property
    def flops(self) -> int:
        """FLOPs by the convention of the papers: 2 x MACs."""
        return 2 * self.macs

    def layer(self, path: str) -> LayerCount:
        """The record of the module at ``path`` (``""`` or ``"(model)"`` for the model itself)."""
        for rec in self.layers:
            if rec.path == (path or ROOT):
                return rec
        raise KeyError(f"no module {path!r} in the counted model")


def count(
    model: nn.Module,
    input_size: Sequence[int] | None = None,
    batch: int = 1,
    forward_kwargs: dict[str, Any] | None = None,
) -> Counts:
    """Count the parameters and MACs of ``model`` for one forward pass, without computing anything.

    The model is left exactly as it was (mode, parameters, buffers, hooks, device): the forward
    pass runs on a meta copy. See the module docstring for the counting rule.

    Args:
        model: any ``nn.Module`` whose forward takes one image batch.
        input_size: (C, H, W) of one input; defaults to ``model.input_size``.
        batch: the batch size N the MACs are counted for.
        forward_kwargs: extra keyword arguments for the forward call (``{"return_aux": True}``).

    Returns:
        The totals and a record per module.

    Raises:
        ConfigError: ``model`` is not a module; no input size given and the model has none; a size
            or ``batch`` that is not a positive whole number; a convnets model given other than (C, H, W).
        InputShapeError: a convnets model that cannot take ``input_size`` (channels, minimum size).
    """
    _check_module(model)
    size = _resolve_input_size(model, input_size)
    batch = check_whole(batch, "batch")
    # A meta tensor holds no data, but torch still sizes its storage in 64-bit bytes.
    if math.prod((batch, *size)) * _float_dtype(model).itemsize > _MAX_BYTES:
        raise ConfigError(f"input size {size} with batch {batch} is beyond what a PyTorch tensor can describe "
                          "(2^63 bytes)")
    if hasattr(model, "check_input"):  # a convnets model names the shape it expects before anything is copied
        model.check_input(torch.empty(batch, *size, device="meta"))
    try:
        return _count_on(meta_copy(model), "meta", model, size, batch, forward_kwargs)
    except (NotImplementedError, RuntimeError) as err:
        # A forward pass that reads values (a boolean mask used as an index, .item()) cannot run
        # on meta tensors, which have shapes but no values. Such a model is counted on a CPU copy
        # instead; an ordinary error (a shape mismatch) is raised as is, and a model that only
        # exists on meta has nothing to fall back on.
        if _on_meta(model) or not (isinstance(err, NotImplementedError) or "meta" in str(err)):
            raise
        return _count_on(cpu_copy(model), "cpu", model, size, batch, forward_kwargs)


def _count_on(
    shadow: nn.Module,
    device: str,
    model: nn.Module,
    size: tuple[int, ...],
    batch: int,
    forward_kwargs: dict[str, Any] | None,
) -> Counts:
    counter = _Counter(shadow)
    x = torch.zeros(batch, *size, device=device, dtype=_float_dtype(model))
    with counter.recording(), torch.no_grad():
        out = shadow(x, **(forward_kwargs or {}))
    return counter.result(model, size, batch, _shape_of(out))


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` on the meta device, in eval mode and with none of its hooks.

    Why a copy rather than ``torch.func.functional_call`` on the model itself: a functional call
    would still fire the user's own forward hooks (with meta tensors) and need the train/eval
    flags flipped and restored; a copy cannot touch the original at all. The copy never copies
    weights: every parameter and buffer is pre-seeded in the deepcopy memo with an empty meta
    tensor of the same shape, so copying a real ResNet-152 costs no more than copying a meta one.
    """
    return _shadow_copy(model, lambda t: torch.empty_like(t, device="meta"))


def cpu_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` on the CPU, with real values, in eval mode and with none of its hooks."""
    return _shadow_copy(model, lambda t: t.detach().to("cpu", copy=True))


def _shadow_copy(model: nn.Module, transfer: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    memo: dict[int, Any] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            memo[id(param)] = nn.Parameter(transfer(param), param.requires_grad)
        for buf in module.buffers(recurse=False):
            memo[id(buf)] = transfer(buf)
        for attr, value in vars(module).items():
            # The user's hooks (closures that may hold large objects) are neither copied nor run.
            if "hooks" in attr and isinstance(value, dict):
                memo[id(value)] = type(value)()
    return copy.deepcopy(model, memo).eval()


def _on_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def _check_module(model: object) -> None:
    if isinstance(model, nn.Module):
        return
    if isinstance(model, str):
        hint = f"; build it first: convnets.create_model({model!r})"
    elif isinstance(model, type) and issubclass(model, nn.Module):
        hint = f"; pass an instance, {model.__name__}(...), not the class"
    else:
        hint = ""
    raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}{hint}")


def _resolve_input_size(model: nn.Module, input_size: Sequence[int] | None) -> tuple[int, ...]:
    size = input_size if input_size is not None else getattr(model, "input_size", None)
    if size is None:
        raise ConfigError(f"{type(model).__name__} has no input_size attribute: pass input_size=(C, H, W)")
    expected = "(C, H, W)" if hasattr(model, "check_input") else "(C, H, W) or one size per input dimension"
    try:
        values = () if isinstance(size, (str, bytes)) else tuple(size)
    except TypeError:  # not a sequence at all (a single number)
        values = ()
    if not values or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in values):
        raise ConfigError(f"input size must be {expected} in positive whole numbers, got {size!r}")
    values = tuple(int(s) for s in values)
    if hasattr(model, "check_input") and len(values) != 3:  # a convnets model takes images (C, H, W)
        label = getattr(model, "name", "") or type(model).__name__
        raise ConfigError(f"input size of {label} must be (C, H, W), got {values}")
    return values


def _float_dtype(model: nn.Module) -> torch.dtype:
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def _shape_of(out: Any) -> tuple:
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        return tuple(_shape_of(o) for o in out if isinstance(o, (torch.Tensor, tuple, list)))
    return ()


def _prod(values: Sequence[int]) -> int:
    return math.prod(int(v) for v in values)


def _conv_macs(args: tuple, out: torch.Tensor) -> int:
    # aten.convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    x, weight, transposed = args[0], args[1], args[6]
    if transposed:
        # Every input pixel is multiplied by a (C_out/groups) x k footprint: the mirror of the rule.
        return _prod(x.shape) * _prod(weight.shape[1:])
    # weight is (C_out, C_in/groups, *k): each output value costs C_in/groups * prod(k) MACs.
    return _prod(out.shape) * _prod(weight.shape[1:])


def _mm_macs(args: tuple, out: torch.Tensor) -> int:
    # (m, k) @ (k, n), or batched (b, m, k) @ (b, k, n): every element of a meets n columns.
    a, b = args[0], args[1]
    return _prod(a.shape) * b.shape[-1]


def _addmm_macs(args: tuple, out: torch.Tensor) -> int:
    # addmm(bias, a, b) / baddbmm(bias, a, b): the bias add is not counted.
    return _mm_macs(args[1:], out)


_MAC_RULES = {
    aten.convolution.default: _conv_macs,
    aten._convolution.default: _conv_macs,
    aten.mm.default: _mm_macs,
    aten.addmm.default: _addmm_macs,
    aten.bmm.default: _mm_macs,
    aten.baddbmm.default: _addmm_macs,
}


def _batch_norm_shapes(args: tuple) -> tuple[torch.Tensor, ...]:
    x, channels = args[0], args[0].shape[1]
    return torch.empty_like(x), x.new_empty(channels), x.new_empty(channels)


# Ops whose meta kernel is a slow Python decomposition (BatchNorm: ~2 ms a call, most of the time
# of `convnets list`) but whose output shapes are plain; none of them has MACs.
_SHAPE_ONLY = {aten.native_batch_norm.default: _batch_norm_shapes}


class _MacMode(TorchDispatchMode):
    """Sees every ATen op of the forward pass and hands the MAC-bearing ones to the counter."""

    def __init__(self, counter: _Counter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        shapes = _SHAPE_ONLY.get(func)
        if shapes is not None and args[0].is_meta:
            return shapes(args)
        out = func(*args, **(kwargs or {}))
        rule = _MAC_RULES.get(func)
        if rule is not None:
            self.counter.add_macs(rule(args, out))
        return out


class _Counter:
    """Module stack and per-module tallies of one forward pass over a meta copy."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.paths = {id(m): (p or ROOT) for p, m in model.named_modules()}
        self.records = {
            p or ROOT: LayerCount(
                p or ROOT, type(m).__name__, len(p.split(".")) if p else 0, leaf=not any(m.children())
            )
            for p, m in model.named_modules()
        }
        self.stack: list[str] = []
        # Depth of modules with their own count_macs on the stack: nothing is counted inside them.
        self.opaque = 0
        self.calls_seen = 0

    @contextmanager
    def recording(self) -> Iterator[None]:
        handles = []
        for module in self.model.modules():
            handles.append(module.register_forward_pre_hook(self._enter))
            handles.append(module.register_forward_hook(self._exit))
        try:
            with _MacMode(self):
                yield
        finally:
            for handle in handles:
                handle.remove()

    def add_macs(self, macs: int) -> None:
        if self.opaque:
            return
        self._credit(macs)

    def _credit(self, macs: int) -> None:
        for path in self.stack:
            self.records[path].macs += macs
        self.records[self.stack[-1]].self_macs += macs

    def _enter(self, module: nn.Module, inputs: tuple) -> None:
        path = self.paths[id(module)]
        self.stack.append(path)
        if self.records[path].order < 0:
            self.records[path].order = self.calls_seen
            self.calls_seen += 1
        if hasattr(module, "count_macs"):
            self.opaque += 1

    def _exit(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        rec = self.records[self.stack[-1]]
        rec.calls += 1
        rec.output_shape = _shape_of(output)
        if hasattr(module, "count_macs"):
            self.opaque -= 1
            if self.opaque == 0:
                self._credit(int(module.count_macs(inputs, output)))
        self.stack.pop()

    def result(self, original: nn.Module, size: tuple[int, ...], batch: int, output_shape: tuple) -> Counts:
        # Params are read from the user's model (reading has no side effect); the copy has the
        # same module paths and the same requires_grad flags.
        held = _params_by_module(original)
        for path, rec in self.records.items():
            params = held[path].values()
            rec.params = sum(p.numel() for p in params)
            rec.trainable_params = sum(p.numel() for p in params if p.requires_grad)
        for path, module in original.named_modules():
            self.records[path or ROOT].own_params = sum(p.numel() for p in module.parameters(recurse=False))
        everything = held[ROOT].values()
        return Counts(
            params=sum(p.numel() for p in everything if p.requires_grad),
            macs=self.records[ROOT].macs,
            input_size=size,
            batch=batch,
            frozen_params=sum(p.numel() for p in everything if not p.requires_grad),
            unused_params=_unused_params(original, self.records),
            output_shape=output_shape,
            layers=sorted(self.records.values(), key=lambda r: r.order if r.order >= 0 else len(self.records)),
        )


def _params_by_module(model: nn.Module) -> dict[str, dict[int, nn.Parameter]]:
    """For every module path, the parameters it holds with its children, each tensor once.

    One pass that credits each module's own parameters to all its ancestors: calling
    ``module.parameters()`` on every module instead costs O(modules x depth) generator calls.
    """
    held: dict[str, dict[int, nn.Parameter]] = {}
    for path, module in model.named_modules():
        held[path or ROOT] = {}
        own = {id(p): p for p in module.parameters(recurse=False)}
        parts = path.split(".") if path else []
        for i in range(len(parts) + 1):
            held[".".join(parts[:i]) or ROOT].update(own)
    return held


def _unused_params(model: nn.Module, records: dict[str, LayerCount]) -> int:
    """Trainable parameters held directly by modules that never ran."""
    used: set[int] = set()
    every: dict[int, nn.Parameter] = {}
    for path, module in model.named_modules():
        for param in module.parameters(recurse=False):
            every[id(param)] = param
            if records[path or ROOT].calls:
                used.add(id(param))
    return sum(p.numel() for i, p in every.items() if i not in used and p.requires_grad)
