"""Cost experiments: the 1x1 convolution, and normal vs depthwise-separable convolution.

Counted MACs come from :func:`convnets.count` on real ``nn.Conv2d`` layers; times are medians of
repeated forward passes on the machine the experiment runs on.
"""

from __future__ import annotations

import torch
from torch import nn

from convnets.analysis import count
from convnets.experiments import Result, Setting, experiment, plot
from convnets.export import median_latency_ms


def _time_ms(module: nn.Module, x: torch.Tensor, repeats: int) -> float:
    module.eval()

    def run() -> None:
        with torch.inference_mode():
            module(x)

    return median_latency_ms(run, repeats=repeats, warmup=2)


@experiment("one-by-one", "1x1 convolutions shrink channels cheaply and equal a per-pixel fully connected layer")
def one_by_one(setting: Setting) -> Result:
    budget, out = setting.budget, setting.out
    h, c_in, c_out = 28, 192, 32  # the course's 28x28x192 -> 28x28x32
    repeats = {"tiny": 3, "small": 20, "full": 50}[budget]
    x = torch.randn(8, c_in, h, h)
    rows = []
    for k in (1, 3, 5):
        conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
        formula = h * h * c_out * k * k * c_in
        counted = count(conv, (c_in, h, h)).macs
        rows.append({"kernel": k, "formula_macs": formula, "counted_macs": counted,
                     "ms_batch8": _time_ms(conv, x, repeats)})
    # The same 1x1 layer as a fully connected layer applied at every pixel.
    conv = nn.Conv2d(c_in, c_out, 1)
    linear = nn.Linear(c_in, c_out)
    linear.weight.data.copy_(conv.weight.data.view(c_out, c_in))
    linear.bias.data.copy_(conv.bias.data)
    with torch.no_grad():
        diff = (conv(x) - linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)).abs().max().item()
    table = ["| conv to 32 channels | MACs (formula) | MACs (counted) | ms per batch of 8 |", "|---|---:|---:|---:|"]
    table += [f"| {r['kernel']}x{r['kernel']} | {r['formula_macs']:,} | {r['counted_macs']:,} | {r['ms_batch8']:.2f} |"
              for r in rows]
    figure = plot(out / "one_by_one.png", lambda ax: (
        ax.bar([f"{r['kernel']}x{r['kernel']}" for r in rows], [r["counted_macs"] / 1e6 for r in rows]),
        ax.set(ylabel="MACs (millions)", title="28x28x192 -> 28x28x32: the 1x1 conv is the cheap one")))
    notes = [f"1x1 conv vs the same weights as a per-pixel fully connected layer: max |difference| = {diff:.2e}",
             "formula = n_H x n_W x n_C' x f x f x n_C; counted on the meta device by convnets.count"]
    return Result("one-by-one", "a 1x1 convolution mixes channels at each pixel: it is a fully connected "
                  "layer per position, and shrinking 192 channels to 32 costs 4.8M multiplications",
                  "\n".join(table), {"rows": rows, "max_abs_difference": diff}, figure, notes)


@experiment("depthwise", "normal vs depthwise-separable convolution: formula, counted MACs, measured time")
def depthwise(setting: Setting) -> Result:
    budget, out = setting.budget, setting.out
    h, c_in = {"tiny": (14, 32), "small": (28, 128), "full": (56, 128)}[budget]
    outs = {"tiny": (16, 64), "small": (16, 32, 64, 128, 256, 512), "full": (16, 32, 64, 128, 256, 512)}[budget]
    kernels = {"tiny": (3,), "small": (3, 5), "full": (3, 5, 7)}[budget]
    repeats = {"tiny": 3, "small": 15, "full": 40}[budget]
    x = torch.randn(8, c_in, h, h)
    rows = []
    for f in kernels:
        for c_out in outs:
            normal = nn.Conv2d(c_in, c_out, f, padding=f // 2, bias=False)
            separable = nn.Sequential(nn.Conv2d(c_in, c_in, f, padding=f // 2, groups=c_in, bias=False),
                                      nn.Conv2d(c_in, c_out, 1, bias=False))
            macs_n, macs_s = count(normal, (c_in, h, h)).macs, count(separable, (c_in, h, h)).macs
            t_n, t_s = _time_ms(normal, x, repeats), _time_ms(separable, x, repeats)
            rows.append({"f": f, "c_out": c_out, "formula_ratio": 1 / c_out + 1 / f**2,
                         "counted_ratio": macs_s / macs_n, "normal_macs": macs_n, "separable_macs": macs_s,
                         "normal_ms": t_n, "separable_ms": t_s, "measured_speedup": t_n / t_s})
    table = ["| f | n_C' | 1/n_C' + 1/f^2 | counted MAC ratio | MAC speed-up | measured speed-up |",
             "|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {r['f']} | {r['c_out']} | {r['formula_ratio']:.4f} | {r['counted_ratio']:.4f} | "
              f"{1 / r['counted_ratio']:.1f}x | {r['measured_speedup']:.2f}x |" for r in rows]

    def draw(ax) -> None:
        for f in kernels:
            sel = [r for r in rows if r["f"] == f]
            xs = [r["c_out"] for r in sel]
            line = ax.plot(xs, [1 / r["counted_ratio"] for r in sel], marker="o", label=f"{f}x{f}: MAC ratio")
            ax.plot(xs, [r["measured_speedup"] for r in sel], marker="s", linestyle="--", color=line[0].get_color(),
                    label=f"{f}x{f}: measured")
        ax.set(xscale="log", yscale="log", xlabel="output channels n_C'", ylabel="speed-up of separable over normal",
               title=f"depthwise-separable conv on {h}x{h}x{c_in} (batch 8, this CPU)")
        ax.minorticks_off()
        ax.set_xticks(list(outs), [str(o) for o in outs])
        ticks = [0.2, 0.5, 1, 2, 5, 10, 20, 50]
        ax.set_yticks(ticks, [f"{t:g}x" for t in ticks])
        ax.legend(fontsize=8)

    figure = plot(out / "depthwise.png", draw)
    real = _mobilenet_layers(setting)
    table += ["", "| MobileNet layer (input, batch 1) | standard 3x3 MACs | separable MACs | MAC ratio | "
              "standard ms | separable ms | measured speed-up | GMAC/s standard / separable |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {r['side']}x{r['side']}x{r['c_in']} -> {r['c_out']} | {r['normal_macs']:,} | "
              f"{r['separable_macs']:,} | {r['normal_macs'] / r['separable_macs']:.1f}x | {r['normal_ms']:.2f} | "
              f"{r['separable_ms']:.2f} | {r['measured_speedup']:.2f}x | "
              f"{r['normal_macs'] / r['normal_ms'] / 1e6:.1f} / {r['separable_macs'] / r['separable_ms'] / 1e6:.1f} |"
              for r in real]
    worst = min(rows, key=lambda r: r["measured_speedup"] * r["counted_ratio"])
    notes = ["counted ratio equals 1/n_C' + 1/f^2 exactly in every row" if all(
        abs(r["counted_ratio"] - r["formula_ratio"]) < 1e-12 for r in rows) else "counted ratio differs from formula!",
             f"measured speed-up falls furthest short of the MAC ratio at f={worst['f']}, n_C'={worst['c_out']}: "
             f"{worst['measured_speedup']:.2f}x measured vs {1 / worst['counted_ratio']:.1f}x fewer MACs (depthwise "
             "convs do little arithmetic per byte moved, so they run far below the CPU's peak)",
             "MobileNet layers (Howard et al. 2017, Table 1: the depthwise 3x3 + pointwise pair at these input "
             "shapes) against a standard 3x3 conv of the same input and output: medians of "
             f"{setting.pick(2, 15, 40)} interleaved rounds at batch 1, {torch.get_num_threads()} thread(s), fp32, "
             "on the machine below; measured speed-up " + ", ".join(
                 f"{r['measured_speedup']:.1f}x at {r['side']}x{r['side']}x{r['c_in']}" for r in real)
             + f" against {min(r['normal_macs'] / r['separable_macs'] for r in real):.1f}-"
             f"{max(r['normal_macs'] / r['separable_macs'] for r in real):.1f}x fewer MACs; where the speed-up "
             "exceeds the MAC ratio, the last column shows the standard convolution running at fewer multiply-adds "
             "per second than the separable pair at that shape on this CPU (PyTorch eager, batch 1)"]
    return Result("depthwise", "a depthwise-separable convolution costs 1/n_C' + 1/f^2 of a normal one",
                  "\n".join(table), {"input": [c_in, h, h], "rows": rows, "mobilenet_layers": real}, figure, notes)


# MobileNet v1's separable layers as (input side, input channels, output channels) (Howard et al. 2017, Table 1):
# the first at 112x112x32, then 56x56x128, 14x14x512 and the last at 7x7x1024.
MOBILENET_LAYERS = ((112, 32, 64), (56, 128, 128), (14, 512, 512), (7, 1024, 1024))


def _mobilenet_layers(setting: Setting) -> list[dict]:
    """Counted MACs and interleaved forward times of MobileNet's real layer shapes, separable vs standard 3x3."""
    from convnets.experiments.architecture import _interleaved_ms

    layers = setting.pick(MOBILENET_LAYERS[2:], MOBILENET_LAYERS, MOBILENET_LAYERS)
    rounds = setting.pick(2, 15, 40)
    rows = []
    for side, c_in, c_out in layers:
        normal = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        separable = nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False),
                                  nn.Conv2d(c_in, c_out, 1, bias=False))
        ms = _interleaved_ms({"normal": normal, "separable": separable}, torch.randn(1, c_in, side, side), rounds)
        rows.append({"side": side, "c_in": c_in, "c_out": c_out, "normal_macs": count(normal, (c_in, side, side)).macs,
                     "separable_macs": count(separable, (c_in, side, side)).macs, "normal_ms": ms["normal"],
                     "separable_ms": ms["separable"], "measured_speedup": ms["normal"] / ms["separable"]})
    return rows
