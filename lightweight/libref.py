"""The library references the course's own implementations are compared with.

- torchao, the library for fast CPU quantization: :func:`torchao_` applies ``int8-weight-only``
  (``Int8WeightOnlyConfig``), ``int4-weight-only`` (``PrototypeInt4WeightOnlyConfig``: torchao
  0.18's ``Int4WeightOnlyConfig`` needs a GPU package on CPU) or ``int8-dynamic``
  (``Int8DynamicActivationInt8WeightConfig``), and counts the layers it really converted: torchao
  skips a layer whose size its group size does not divide (SmolLM2's hidden size 576 with the
  default 128) with only a log message, so a partial conversion is an error here.
- torch.ao's dynamic INT8 (:func:`ao_dynamic_int8`), kept where only it has a fast CPU kernel:
  ``quantize_dynamic`` runs ``nn.Linear`` layers with fbgemm's (x86) or qnnpack's (ARM) INT8
  kernels, weights quantized per output channel ahead of time, activations per tensor on the fly.
  ``torch.ao.quantization`` is deprecated in favour of torchao but still ships with the pinned torch.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
import torch.nn as nn

from .measure import safetensors_bytes

TORCHAO_METHODS = ("int8-weight-only", "int4-weight-only", "int8-dynamic")


def _require_torchao():
    try:
        import torchao  # noqa: F401
    except ImportError as e:
        raise ModuleNotFoundError("torchao is missing: install it with `pip install torchao==0.18.0` "
                                  "(the README's `make test` does it)") from e


def _config(method: str, group_size: int):
    from torchao.quantization import (Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig)

    if method == "int8-weight-only":
        return Int8WeightOnlyConfig()
    if method == "int8-dynamic":
        return Int8DynamicActivationInt8WeightConfig()
    from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

    return PrototypeInt4WeightOnlyConfig(group_size=group_size)


def _converted(layer: nn.Linear) -> bool:
    return type(layer.weight) is not nn.Parameter or type(layer.weight.data) is not torch.Tensor


def torchao_(model: nn.Module, method: str, group_size: int = 32, skip: Iterable[str] = ("lm_head",)) -> list[str]:
    """Quantize the model's ``nn.Linear`` layers (except ``skip``) in place with torchao's ``method``
    (see :data:`TORCHAO_METHODS`). Returns the converted names; ``ValueError`` if some were skipped.
    Int4 takes BF16 models (``model.to(torch.bfloat16)`` first)."""
    if method not in TORCHAO_METHODS:
        raise ValueError(f"method must be one of {TORCHAO_METHODS}, got {method!r}")
    _require_torchao()
    from torchao.quantization import quantize_

    skip = set(skip)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in skip]
    if not names:
        raise ValueError("the model has no nn.Linear layer to quantize")
    if method == "int4-weight-only":
        bad = [n for n in names if model.get_submodule(n).in_features % group_size]
        if bad:
            raise ValueError(f"group size {group_size} does not divide the input size of {len(bad)} layers "
                             f"(e.g. {bad[0]}): torchao would leave them in floating point; use 32 or 64")
    chosen = set(names)
    quantize_(model, _config(method, group_size), filter_fn=lambda m, fqn: fqn in chosen)
    left = [n for n in names if not _converted(model.get_submodule(n))]
    if left:
        raise ValueError(f"torchao left {len(left)} of {len(names)} layers unconverted (e.g. {left[0]})")
    return names


def ao_dynamic_int8(model: nn.Module, skip: Iterable[str] = ()) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers, except those named in ``skip``, run torch.ao's
    dynamic INT8 kernels (per-channel INT8 weights; activations quantized on the fly with one scale
    per tensor, in 7 bits on x86)."""
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise ValueError("the model has no nn.Linear layer to quantize")
    skip = set(skip)
    names = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if skip - names:
        raise ValueError(f"no nn.Linear named {sorted(skip - names)} in the model")
    with warnings.catch_warnings():  # torch.ao warns that it is deprecated, at every call
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        spec = {n: per_channel_dynamic_qconfig for n in sorted(names - skip)}
        return quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8)


def is_ao_int8_linear(module: nn.Module) -> bool:
    """Whether ``module`` is one of torch.ao's dynamic INT8 ``Linear`` layers (what :func:`ao_dynamic_int8` makes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return isinstance(module, DynamicQuantizedLinear)


def ao_int8_weight(layer: nn.Module) -> dict[str, torch.Tensor]:
    """What a torch.ao dynamic INT8 ``Linear`` stores for its weight, counted alike by the stored size
    (:func:`ao_linear_weight_bytes`) and by the bytes read per token (``roofline.read_bytes_per_token``):
    INT8 values, one FP32 scale and one INT8 zero-point per output channel."""
    if not is_ao_int8_linear(layer):
        raise TypeError(f"expected a torch.ao dynamic INT8 Linear, got {type(layer).__name__}")
    w = layer.weight()
    return {"int8": w.int_repr(), "scale": w.q_per_channel_scales().float(),
            "zero_point": w.q_per_channel_zero_points().to(torch.int8)}


def ao_linear_weight_bytes(model: nn.Module) -> tuple[int, int]:
    """``(fp32_bytes, int8_bytes)`` on disk of the ``nn.Linear`` weights of ``model`` and of its
    :func:`ao_dynamic_int8` copy (:func:`ao_int8_weight` of every converted layer, the output head included)."""
    fp32 = {n: m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    int8 = {f"{n}.{k}": t for n, m in ao_dynamic_int8(model).named_modules() if is_ao_int8_linear(m)
            for k, t in ao_int8_weight(m).items()}
    return safetensors_bytes(fp32), safetensors_bytes(int8)
