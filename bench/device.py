"""The benchmark in the device's own terms: FLOPs per image, and the fraction of the device's peak they reach.

    flops_per_image("resnet56")                 # 251.5e6: torch.utils.flop_counter, one 3x32x32 image
    peak("NVIDIA H200", "bf16")                 # Peak(989.4, 'NVIDIA H200, dense BF16 tensor cores')
    layer_bound(model, x, batch=64, seconds=2)  # images/s of the network's convolutions and linear layers alone

FLOPs are counted by ``torch.utils.flop_counter`` on the network as built (convolutions and matrix products, 2 per
multiply-add; BatchNorm, ReLU and pooling are not counted): the work the network defines, whatever forward path
(folded or not) computes it. Peaks are the vendors' published dense figures (no structured sparsity) for the
precision the sweep computes in: fp32 on CUDA cores, tf32 and bf16 on tensor cores. A device not in the table, or
a CPU (whose peak depends on its clock and vector units), gets no fraction: the bench says so.

Where no peak is known, ``layer_bound`` gives the device's limit for this network in its own terms: the
convolutions and linear layers alone, each run on an input of the shape it meets in the network, with the kernels
the forward pass uses (oneDNN on a CPU, cuDNN/cuBLAS on a GPU). No forward path that keeps those layers can be
faster: folding, compiling and the tally remove everything else, so a path's rate over this bound says how much
is left to gain.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass

import torch

from llmpi import models
from llmpi.compute import runtime


@functools.cache
def flops_per_image(arch: str) -> float:
    """FLOPs of one forward pass of ``arch`` on one CIFAR image (3x32x32), counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    model = models.build(arch).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    return float(counter.get_total_flops())


@dataclass(frozen=True)
class Peak:
    tflops: float
    what: str


# Dense peak TFLOP/s (fp32 CUDA cores, tf32 and bf16 tensor cores), from the vendors' data sheets. Matched in order,
# as whole words, against torch.cuda.get_device_name ("NVIDIA H100 PCIe" before the SXM default "NVIDIA H100 80GB").
# V100 has no TF32 (tf32 computes as fp32 there) and no BF16 tensor cores.
PEAKS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),
    ("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0}),
    ("H100", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),  # SXM5
    ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
    ("A10", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0}),
    ("L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05}),
    ("L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0}),
    ("V100", {"fp32": 15.7, "tf32": 15.7}),
]


def peak(device_name: str, precision: str) -> Peak | None:
    """The dense peak for ``precision`` on the device called ``device_name``, or None where unknown."""
    for key, table in PEAKS:
        if re.search(rf"\b{re.escape(key)}\b", device_name):
            if precision not in table:
                return None
            core = "CUDA cores" if precision == "fp32" or key == "V100" else "tensor cores"
            return Peak(table[precision], f"{key}, dense {precision.upper()} {core}")
    return None


def in_device_terms(device_name: str, precision: str, arch: str, images_per_second: float) -> dict:
    """FLOPs per image, achieved TFLOP/s, and the fraction of the peak (None, with the reason, where unknown)."""
    flops = flops_per_image(arch)
    achieved = flops * images_per_second / 1e12
    top = peak(device_name, precision)
    return {
        "flops_per_image": flops,
        "tflops": achieved,
        "peak_tflops": top.tflops if top else None,
        "peak_of": top.what if top else f"no peak known for {device_name} in {precision}",
        "fraction_of_peak": achieved / top.tflops if top else None,
    }


def describe_terms(terms: dict) -> str:
    text = f"{terms['flops_per_image'] / 1e6:.1f} MFLOP/image, {terms['tflops']:.3f} TFLOP/s"
    if terms["fraction_of_peak"] is None:
        return f"{text} ({terms['peak_of']})"
    return f"{text} = {100 * terms['fraction_of_peak']:.1f}% of {terms['peak_tflops']:g} ({terms['peak_of']})"


def layer_bound(model: torch.nn.Module, x: torch.Tensor, batch: int, seconds: float) -> float:
    """Images/s of ``model``'s convolutions and linear layers alone, back to back, at ``batch`` images.

    Each layer runs on a random input of the shape, dtype and memory format it receives in a forward pass of ``x``;
    nothing between the layers (normalisation, activations, additions, pooling) runs. ``model`` and ``x`` are as the
    forward pass uses them (device, dtype, memory format). Repeated for at least ``seconds`` after a warm-up.
    """
    met: list[tuple[torch.nn.Module, torch.Tensor]] = []

    def record(module: torch.nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        met.append((module, torch.randn_like(inputs[0])))  # same shape, dtype, device and strides (memory format)

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hooks = [m.register_forward_hook(record) for m in layers]
    try:
        with torch.no_grad():
            model(x[:batch])
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for module, inp in met:  # warm-up: each kernel chosen and its primitive built
            module(inp)
        runtime.synchronize(x.device)
        count, t0 = 0, time.perf_counter()
        while count == 0 or time.perf_counter() - t0 < seconds:
            for module, inp in met:
                module(inp)
            runtime.synchronize(x.device)
            count += 1
    return count * batch / (time.perf_counter() - t0)
