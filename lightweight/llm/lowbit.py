"""Our own INT8 / INT4 weights run by PyTorch's CPU low-bit kernels, so that a smaller weight is
also a faster one.

- :class:`Int8WeightOnlyLinear`: per-channel symmetric INT8 (``QTensor`` from
  :func:`lightweight.quantize.quantize_tensor` with ``bits=8, group_size=None``), run by
  ``torch.ops.aten._weight_int8pack_mm``, which reads the int8 matrix directly.
- :class:`Int4WeightOnlyLinear`: 4-bit groups of 32/64/128/256 (symmetric or with zero-points, from
  round-to-nearest or GPTQ), packed by ``torch.ops.aten._convert_weight_to_int4pack_for_cpu`` and
  run by ``torch.ops.aten._weight_int4pack_mm_for_cpu``.

Both kernels are fast only with BF16 activations; with FP32 activations they fall back to scalar
code (measure it: ``act_dtype=torch.float32``). :func:`swap_` puts them into a Llama model.
:func:`probe_int4_kernel` measures whether the int4 kernel is vectorised on this machine.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..calibration import set_module
from ..measure import speed_ratio
from ..quantize import QTensor, QuantizedLinear, quantize_tensor, unpack_int4

INT4_GROUP_SIZES = (32, 64, 128, 256)  # what the aten int4 kernel accepts
INT8_IN_MULTIPLE = 16  # _weight_int8pack_mm silently returns wrong values for other input sizes
ACT_DTYPES = (torch.bfloat16, torch.float32)


def _check_act_dtype(act_dtype: torch.dtype) -> None:
    if act_dtype not in ACT_DTYPES:
        raise ValueError(f"act_dtype must be torch.bfloat16 or torch.float32, got {act_dtype}")


def qtensor_of(module: QuantizedLinear) -> QTensor:
    """The ``QTensor`` (integers, scales, zero-points: 0 where none is stored) that a :class:`QuantizedLinear` stores."""
    if not isinstance(module, QuantizedLinear):
        raise TypeError(f"expected a QuantizedLinear, got {type(module).__name__}")
    q = unpack_int4(module.qweight) if module.qweight.dtype == torch.uint8 else module.qweight
    scale = module.scale.float()
    zero = torch.zeros_like(scale) if module.zero is None else module.zero.float()
    return QTensor(q, scale, zero, module.bits, module.group_size)


class _LowBitLinear(nn.Module):
    """Shared parts: bias, optional input scale (AWQ's ``x / s``), activation dtype, flattening."""

    def __init__(self, linear: nn.Module, act_dtype: torch.dtype):
        super().__init__()
        _check_act_dtype(act_dtype)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.act_dtype = act_dtype
        bias = getattr(linear, "bias", None)
        self.register_buffer("bias", None if bias is None else bias.detach().to(act_dtype).clone())
        s = getattr(linear, "input_scale", None)
        self.register_buffer("input_scale", None if s is None else s.detach().to(act_dtype).clone())

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in) -> (..., out)`` in the dtype of ``x``; the kernel runs in ``act_dtype``."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected inputs (..., {self.in_features}), got {tuple(x.shape)}")
        flat = x.reshape(-1, self.in_features).to(self.act_dtype)
        if self.input_scale is not None:
            flat = flat / self.input_scale
        y = self._kernel(flat.contiguous())
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


class Int8WeightOnlyLinear(_LowBitLinear):
    """Per-channel symmetric INT8 weights ``(out, in)`` + one scale per row, run by
    ``aten._weight_int8pack_mm`` (activations stay floats). ``(..., in) -> (..., out)``.

    ``in_features`` must be a multiple of 16: for other sizes the kernel returns wrong numbers
    without an error, so this class refuses them."""

    def __init__(self, linear: nn.Module, qtensor: QTensor | None = None, act_dtype: torch.dtype = torch.bfloat16):
        if linear.in_features % INT8_IN_MULTIPLE:
            raise ValueError(f"_weight_int8pack_mm gives wrong results when in_features ({linear.in_features}) "
                             f"is not a multiple of {INT8_IN_MULTIPLE}; keep this layer in floating point")
        super().__init__(linear, act_dtype)
        qt = qtensor if qtensor is not None else quantize_tensor(linear.weight, bits=8)
        if qt.bits != 8 or qt.group_size != self.in_features or not bool((qt.zero == 0).all()):
            raise ValueError("Int8WeightOnlyLinear needs symmetric per-channel INT8 (bits=8, group_size=None)")
        if tuple(qt.q.shape) != (self.out_features, self.in_features):
            raise ValueError(f"integers of shape {tuple(qt.q.shape)} do not fit a "
                             f"({self.out_features}, {self.in_features}) layer")
        self.register_buffer("weight_int8", qt.q.contiguous())
        self.register_buffer("scale", qt.scale[:, 0].to(act_dtype).contiguous())

    def dequantized_weight(self) -> torch.Tensor:
        """The FP32 weight ``(out, in)`` this layer computes with."""
        return self.weight_int8.float() * self.scale.float()[:, None]

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, self.weight_int8, self.scale)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, act_dtype={self.act_dtype}"


def int4_scales_and_zeros(qt: QTensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The ``(in / g, out, 2)`` table of the aten int4 kernel. It stores unsigned nibbles
    ``u = q + 8`` and computes ``w = (u - 8) · scale + zero``; ours is ``w = (q - z) · s``, so
    ``scale = s`` and ``zero = -z · s``."""
    return torch.stack([qt.scale.t(), (-qt.zero * qt.scale).t()], dim=-1).to(dtype).contiguous()


def pack_int4_for_cpu(qt: QTensor) -> torch.Tensor:
    """Our 4-bit integers ``(out, in)`` in ``[-8, 7]`` as the aten kernel's packed ``uint8 (out, in / 2)``."""
    if qt.bits != 4:
        raise ValueError(f"expected 4-bit integers, got bits={qt.bits}")
    if qt.q.numel() and (qt.q.min() < -8 or qt.q.max() > 7):
        raise ValueError("4-bit integers must lie in [-8, 7]")
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu((qt.q.to(torch.int32) + 8).contiguous(), 1)


class Int4WeightOnlyLinear(_LowBitLinear):
    """4-bit weights in groups of ``g`` inputs (one scale and one zero per group), packed two per byte
    and run by ``aten._weight_int4pack_mm_for_cpu``. ``(..., in) -> (..., out)``.

    Built from our own ``QTensor`` (round-to-nearest by default, or GPTQ's result)."""

    def __init__(self, linear: nn.Module, qtensor: QTensor | None = None, group_size: int = 32,
                 act_dtype: torch.dtype = torch.bfloat16):
        super().__init__(linear, act_dtype)
        qt = qtensor if qtensor is not None else quantize_tensor(linear.weight, bits=4, group_size=group_size)
        if qt.bits != 4:
            raise ValueError(f"Int4WeightOnlyLinear needs 4-bit integers, got bits={qt.bits}")
        if qt.group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"the int4 kernel takes groups of {INT4_GROUP_SIZES}, got {qt.group_size}")
        if self.in_features % qt.group_size:
            raise ValueError(f"group size {qt.group_size} does not divide in_features {self.in_features}")
        if tuple(qt.q.shape) != (self.out_features, self.in_features):
            raise ValueError(f"integers of shape {tuple(qt.q.shape)} do not fit a "
                             f"({self.out_features}, {self.in_features}) layer")
        self.group_size = qt.group_size
        self.register_buffer("weight_int4pack", pack_int4_for_cpu(qt))
        self.register_buffer("scales_and_zeros", int4_scales_and_zeros(qt, act_dtype))
        # The integers once more, unpacked (int8, outside the state dict and the bytes a step reads):
        # the packed layout is the kernel's own, and reading the weight back through a scalar kernel
        # would take minutes.
        self.int4_values = qt.q.to(torch.int8).contiguous()

    def dequantized_weight(self) -> torch.Tensor:
        """The FP32 weight ``(out, in)`` this layer computes with: ``q · scale + zero`` with the
        kernel's own (``act_dtype``-rounded) scale-and-zero table."""
        table = self.scales_and_zeros.float().repeat_interleave(self.group_size, dim=0)  # (in, out, 2)
        return self.int4_values.float() * table[..., 0].t() + table[..., 1].t()

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.weight_int4pack, self.group_size,
                                                          self.scales_and_zeros)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, group_size={self.group_size}, act_dtype={self.act_dtype}"


def untie_lm_head_(model: nn.Module) -> nn.Module:
    """Give a causal LM's ``lm_head`` its own copy of the (tied) embedding matrix, in place, so it can
    be quantized while the embedding stays float (decoding reads one embedding row per token)."""
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError("the model has no nn.Linear lm_head")
    head.weight = nn.Parameter(head.weight.detach().clone())
    if hasattr(model, "config"):
        model.config.tie_word_embeddings = False
    return model


def swap_(model: nn.Module, bits: int = 4, group_size: int = 32, act_dtype: torch.dtype = torch.bfloat16,
          lm_head: bool | int = False, qtensors: dict[str, QTensor] | None = None,
          skip: Iterable[str] = ()) -> list[str]:
    """Replace the model's linear layers by :class:`Int8WeightOnlyLinear` (``bits=8``, per channel) or
    :class:`Int4WeightOnlyLinear` (``bits=4``, groups of ``group_size``), in place.

    Integers come from ``qtensors[name]`` when given (GPTQ results, for instance), from an existing
    :class:`QuantizedLinear`, or else from round-to-nearest. ``lm_head=True`` unties and quantizes the
    output head too (the largest matrix) with ``bits``; ``lm_head=8`` or ``4`` gives it that many
    bits instead (INT8 per channel, INT4 in groups); otherwise it stays as it is. Layers the kernel
    cannot run (an INT8 input size that is not a multiple of 16) stay float. Returns the names left
    float."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    if lm_head not in (False, True, 4, 8):
        raise ValueError(f"lm_head must be False, True, 4 or 8, got {lm_head!r}")
    _check_act_dtype(act_dtype)
    qtensors, skip = dict(qtensors or {}), set(skip)
    head_bits = bits if lm_head is True else lm_head
    if head_bits:
        untie_lm_head_(model)
    skip.add("lm_head")
    targets = {n: m for n, m in model.named_modules()
               if isinstance(m, (nn.Linear, QuantizedLinear)) and n not in skip}
    if not targets:
        raise ValueError("the model has no linear layer to swap")
    unknown = set(qtensors) - set(targets) - ({"lm_head"} if head_bits else set())
    if unknown:
        raise ValueError(f"qtensors name layers that are not swapped: {sorted(unknown)}")
    left_float = []
    for name, layer in targets.items():
        qt = qtensors.get(name) or (qtensor_of(layer) if isinstance(layer, QuantizedLinear) else None)
        if bits == 8 and layer.in_features % INT8_IN_MULTIPLE:
            left_float.append(name)
            continue
        new = (Int8WeightOnlyLinear(layer, qt, act_dtype) if bits == 8
               else Int4WeightOnlyLinear(layer, qt, group_size, act_dtype))
        set_module(model, name, new)
    if head_bits:
        head = model.lm_head
        new = (Int8WeightOnlyLinear(head, qtensors.get("lm_head"), act_dtype) if head_bits == 8
               else Int4WeightOnlyLinear(head, qtensors.get("lm_head"), group_size, act_dtype))
        set_module(model, "lm_head", new)
    return left_float


def lowbit_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> module of every low-bit layer of the model."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (Int8WeightOnlyLinear, Int4WeightOnlyLinear))}


def dense_copy(model: nn.Module) -> nn.Module:
    """An FP32 copy of ``model`` whose low-bit layers are ``nn.Linear`` layers holding the weights they
    compute with (an AWQ input scale folded in): the same integers, run by a dense matmul. Where the
    low-bit kernels are scalar (:func:`probe_int4_kernel`), this scores a path's quality in seconds
    instead of hours; it differs from the kernel only by the BF16 rounding of activations."""
    dense = copy.deepcopy(model)
    for name, layer in lowbit_layers(dense).items():
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        weight = layer.dequantized_weight()
        if layer.input_scale is not None:
            weight = weight / layer.input_scale.float()
        with torch.no_grad():
            linear.weight.copy_(weight)
            if layer.bias is not None:
                linear.bias.copy_(layer.bias.float())
        set_module(dense, name, linear)
    return dense.float()


__all__ = ["Int8WeightOnlyLinear", "Int4WeightOnlyLinear", "swap_", "untie_lm_head_", "qtensor_of",
           "pack_int4_for_cpu", "int4_scales_and_zeros", "lowbit_layers", "dense_copy", "KernelProbe",
           "probe_int4_kernel"]


# ----------------------------------------------------------------------------- is the kernel fast here?
PROBE_SHAPE = (1536, 576)  # SmolLM2's gate/up projection (out, in)
# Measured on one thread of an Intel Xeon: the vectorised int4 kernel 1.1x (AVX2) to 1.7x (AVX-512) the
# speed of the BF16 matmul, the scalar fallback (ATEN_CPU_CAPABILITY=default) 0.13x. Half separates them.
VECTORISED_RATIO = 0.5


@dataclass(frozen=True)
class KernelProbe:
    """Median seconds of one batch-1 product with SmolLM2's gate/up shape on one thread: aten's int4
    kernel (g32, BF16 activations) and a BF16 ``F.linear`` of the same weights, interleaved in one run."""

    int4_s: float
    bf16_s: float

    @property
    def ratio(self) -> float:
        """BF16 time / int4 time: > 1 when the int4 kernel beats the BF16 matmul."""
        return self.bf16_s / self.int4_s

    @property
    def vectorised(self) -> bool:
        """Whether the int4 kernel runs vectorised code here. It reads 4× fewer weight bytes than BF16,
        so its vectorised paths (x86 AVX2/AVX-512 outside MSVC builds, NEON on ARM) are about as fast
        or faster; its scalar fallback (Windows' MSVC builds, ``ATEN_CPU_CAPABILITY=default``) is
        several times slower."""
        return self.ratio >= VECTORISED_RATIO


def probe_int4_kernel(repeats: int = 30, seed: int = 0) -> KernelProbe:
    """Measure, not assume, whether aten's int4 kernel is fast on this machine (under a second). One
    thread: the question is which code the kernel runs, not how well threads share a busy machine."""
    out_features, in_features = PROBE_SHAPE
    linear = nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed)))
    int4 = Int4WeightOnlyLinear(linear, quantize_tensor(linear.weight, bits=4, group_size=32))
    weight = linear.weight.detach().to(torch.bfloat16)
    x = torch.randn(1, in_features, generator=torch.Generator().manual_seed(seed + 1)).to(torch.bfloat16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            times = speed_ratio(lambda: F.linear(x, weight), lambda: int4(x), repeats=repeats)
    finally:
        torch.set_num_threads(threads)
    return KernelProbe(int4_s=times["candidate_s"], bf16_s=times["baseline_s"])
