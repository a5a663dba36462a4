"""Library references that the course's own implementations are compared with.

torch.ao's ``quantize_dynamic`` runs ``nn.Linear`` layers with fbgemm's INT8 kernels: weights
quantized per output channel ahead of time, activations quantized per tensor on the fly. ``torch.ao.quantization`` is
deprecated in favour of torchao but still ships with the pinned torch.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

from .measure import safetensors_bytes


def ao_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers run torch.ao's dynamic INT8 kernels."""
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise ValueError("the model has no nn.Linear layer to quantize")
    with warnings.catch_warnings():  # torch.ao warns that it is deprecated, at every call
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def ao_linear_weight_bytes(model: nn.Module) -> tuple[int, int]:
    """``(fp32_bytes, int8_bytes)`` on disk of the ``nn.Linear`` weights of ``model`` and of its
    :func:`ao_dynamic_int8` copy (INT8 values plus one FP32 scale and one zero-point per output channel)."""
    fp32 = {n: m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    int8 = {}
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    for n, m in ao_dynamic_int8(model).named_modules():
        if isinstance(m, DynamicQuantizedLinear):
            w = m.weight()
            int8[f"{n}.int8"] = w.int_repr()
            int8[f"{n}.scale"] = w.q_per_channel_scales().float()
            int8[f"{n}.zero_point"] = w.q_per_channel_zero_points().to(torch.int8)
    return safetensors_bytes(fp32), safetensors_bytes(int8)
