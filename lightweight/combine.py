"""Chapter 5: stacking the chapters' techniques and counting what the result stores.

- Weight formats that stack: symmetric quantization keeps a pruned zero at exactly 0, so a pruned
  then quantized layer can be stored as its non-zero integers plus a bitmask.
- :func:`stored_bytes`: the bytes a file of the compressed model holds, counted from real tensors.
- Pipelines in the order that works (Deep Compression's: prune -> fine-tune -> quantize), each
  returning the model and one :class:`Stage` per step with its quality and size.
- :func:`pareto_front` and :func:`bits_per_weight` for reading the trade-offs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import lowrank as L
from . import prune as P
from .calibration import replace_linears, set_module
from .data import CharCorpus, DigitsSplits
from .distill import distill_classifier
from .models import DigitsMLP
from .quantize import QuantizedLinear, pack_int4, quantize_tensor, unpack_int4
from .train import train_classifier, train_lm


# ----------------------------------------------------------------------------- formats
def fit_group_size(in_features: int, group_size: int | None) -> int | None:
    """The group size to use on a layer with ``in_features`` inputs: per row (``None``) when the row is
    no longer than one group, else the largest divisor of ``in_features`` not above ``group_size``."""
    if group_size is not None and group_size <= 0:
        raise ValueError(f"group_size must be positive or None, got {group_size}")
    if group_size is None or in_features <= group_size:
        return None
    return max(d for d in range(1, group_size + 1) if in_features % d == 0)


class QuantizedConv2d(nn.Module):
    """Weight-only quantized ``nn.Conv2d`` (groups = 1): integers ``qweight`` ``(c_out, c_in k k)`` int8 and
    one FP16 scale per output channel; ``forward`` dequantizes and runs a float convolution.
    ``(N, c_in, H, W) -> (N, c_out, H', W')``."""

    def __init__(self, conv: nn.Conv2d, bits: int = 4):
        super().__init__()
        if conv.groups != 1:
            raise TypeError("QuantizedConv2d takes an nn.Conv2d with groups=1")
        self.bits, self.shape = bits, tuple(conv.weight.shape)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        qt = quantize_tensor(conv.weight.detach().flatten(1), bits)
        self.register_buffer("qweight", qt.q)
        self.register_buffer("scale", qt.scale.to(torch.float16))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.qweight.float() * self.scale.float()).view(self.shape)
        return F.conv2d(x, w.to(x.dtype), self.bias, self.stride, self.padding, self.dilation)


class QuantizedEmbedding(nn.Module):
    """``nn.Embedding`` with per-row symmetric integer weights ``qweight`` ``(num, dim)`` and FP16 scales.
    ``(...) int64 -> (..., dim)``."""

    def __init__(self, embedding: nn.Embedding, bits: int = 8):
        super().__init__()
        self.bits = bits
        qt = quantize_tensor(embedding.weight.detach(), bits)
        self.register_buffer("qweight", qt.q)
        self.register_buffer("scale", qt.scale.to(torch.float16))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.qweight.float() * self.scale.float())


QUANTIZED = (QuantizedLinear, QuantizedConv2d, QuantizedEmbedding)


def quantize_model_(model: nn.Module, bits: int = 4, group_size: int | None = 128, embedding_bits: int | None = 8) -> nn.Module:
    """Weight-only, symmetric round-to-nearest quantization of a whole model, in place: every
    ``nn.Linear`` -> :class:`QuantizedLinear` (``bits``, group size from :func:`fit_group_size`), every
    ``nn.Conv2d`` -> :class:`QuantizedConv2d` (``bits``, per channel), every ``nn.Embedding`` ->
    :class:`QuantizedEmbedding` (``embedding_bits``; ``None`` leaves embeddings in FP32).
    A weight that is exactly 0 stays 0, so a pruned model keeps its zeros."""
    if not 2 <= bits <= 8 or (embedding_bits is not None and not 2 <= embedding_bits <= 8):
        raise ValueError(f"bits must be between 2 and 8, got {bits} and {embedding_bits}")
    if any(isinstance(m, nn.Linear) for m in model.modules()):
        replace_linears(model, lambda n, lin: QuantizedLinear(lin, bits, fit_group_size(lin.in_features, group_size)))
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.Conv2d):
            set_module(model, name, QuantizedConv2d(mod, bits))
        elif isinstance(mod, nn.Embedding) and embedding_bits is not None:
            set_module(model, name, QuantizedEmbedding(mod, embedding_bits))
    return model


# ----------------------------------------------------------------------------- bytes
def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def int_values(mod: nn.Module) -> torch.Tensor:
    """The integer weights of a quantized module (``QuantizedLinear``, ``QuantizedConv2d``,
    ``QuantizedEmbedding``), unpacked to int8 ``(rows, cols)``."""
    q = mod.qweight
    return unpack_int4(q) if q.dtype == torch.uint8 else q


def _packed_bytes(values: torch.Tensor, bits: int) -> int:
    """Bytes of 1-D int8 ``values`` packed two per byte when ``bits <= 4``, else one per byte."""
    if bits > 4:
        return values.numel()
    flat = values.flatten()
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return pack_int4(flat).numel()


def int_weight_bytes(q: torch.Tensor, bits: int) -> int:
    """Bytes of integer weights ``q`` stored the smaller way: all of them packed, or the non-zero ones
    packed plus a bitmask of where they are (counted from :func:`pack_int4` and :func:`prune.pack_bits`)."""
    dense = _packed_bytes(q.flatten(), bits)
    nonzero = q != 0
    sparse = _packed_bytes(q[nonzero], bits) + P.pack_bits(nonzero).numel()
    return min(dense, sparse)


def float_weight_bytes(w: torch.Tensor) -> int:
    """Bytes of a float weight (any shape, seen as ``(rows, -1)``) stored the smaller way: dense, or
    non-zero values plus a bitmask (:func:`prune.storage_bytes`)."""
    sizes = P.storage_bytes(w.reshape(w.shape[0], -1))
    return min(sizes["dense"], sizes["bitmask"])


def stored_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes a file of ``model`` holds: ``weights`` (quantized integers or float weight matrices, each
    dense or as non-zeros + bitmask, whichever is smaller), ``scales`` (FP16 quantization scales) and
    ``other`` (biases, norms, FP32 embeddings, buffers), plus their ``total``."""
    out = {"weights": 0, "scales": 0, "other": 0}
    seen: set[int] = set()
    for mod in model.modules():
        if isinstance(mod, QUANTIZED):
            out["weights"] += int_weight_bytes(int_values(mod), mod.bits)
            out["scales"] += _nbytes(mod.scale)
            seen.update((id(mod.qweight), id(mod.scale)))
        elif isinstance(mod, (nn.Linear, nn.Conv2d)):
            out["weights"] += float_weight_bytes(mod.weight.detach())
            seen.add(id(mod.weight))
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            out["other"] += _nbytes(t)
    out["total"] = sum(out.values())
    return out


def bits_per_weight(sparsity: float, bits: int, group_size: int | None, scale_bits: int = 16,
                    in_features: int | None = None) -> float:
    """Average stored bits per weight of a matrix pruned to ``sparsity`` then quantized to ``bits``
    with one ``scale_bits`` scale per group: ``min((1 - s) bits + 1, bits) + scale_bits / g`` (non-zero
    values + a 1-bit mask, or all values when that is smaller, as :func:`int_weight_bytes` stores them).
    ``group_size=None`` means one scale per row of ``in_features`` weights (required then)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    g = group_size if group_size is not None else in_features
    if g is None or g <= 0 or bits <= 0:
        raise ValueError("give positive bits and a group size (or in_features for one scale per row)")
    return min((1 - sparsity) * bits + 1, bits) + scale_bits / g  # the smaller of the two formats


# ----------------------------------------------------------------------------- Pareto
def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool = False) -> list[int]:
    """Indices of the points ``(size, quality)`` that no other point beats: nothing at most as large
    and at least as good, better in one of the two. Sorted by size. ``quality`` is a loss (lower is
    better) unless ``higher_is_better``."""
    pts = [(float(s), float(q) if not higher_is_better else -float(q)) for s, q in points]
    if any(s != s or q != q for s, q in pts):
        raise ValueError("points must not contain NaN")
    order = sorted(range(len(pts)), key=lambda i: (pts[i][0], pts[i][1]))
    front, best = [], float("inf")
    for i in order:
        if pts[i][1] < best:
            front.append(i)
            best = pts[i][1]
    return front


# ----------------------------------------------------------------------------- pipelines
@dataclass
class Stage:
    """One step of a pipeline: its name, the quality and stored bytes after it, the seconds the step
    itself took (evaluation not included) and a copy of the model as it was then."""

    name: str
    quality: float
    bytes: int
    seconds: float
    model: nn.Module


class _Stages(list):
    """Stages of a pipeline; :meth:`add` closes the step that started at the previous call."""

    def __init__(self, evaluate: Callable[[nn.Module], float]):
        super().__init__()
        self.evaluate, self.t0 = evaluate, time.perf_counter()

    def add(self, name: str, model: nn.Module) -> None:
        seconds = time.perf_counter() - self.t0
        self.append(Stage(name, float(self.evaluate(model)), stored_bytes(model)["total"], seconds, copy.deepcopy(model)))
        self.t0 = time.perf_counter()


def prune_finetune_quantize_lm(
    model: nn.Module, corpus: CharCorpus, evaluate: Callable[[nn.Module], float], sparsity: float = 0.6,
    steps: int = 200, lr: float = 1e-3, bits: int = 4, group_size: int | None = 128, seed: int = 0,
    progress: bool = True,
) -> tuple[nn.Module, list[Stage]]:
    """Deep Compression's order on a language model: global magnitude pruning of every Linear, fine-tuning
    with the mask kept (``steps`` of ``train_lm``), then INT``bits`` weights (zeros stay zeros, stored
    as bitmask + values) and INT8 embeddings. Returns a compressed copy and its stages."""
    m = copy.deepcopy(model)
    stages = _Stages(evaluate)
    stages.add("FP32", m)
    P.prune_(m, sparsity, scope="global")
    stages.add(f"cắt tỉa {sparsity:.0%}", m)
    train_lm(m, corpus, steps=steps, batch_size=16, lr=lr, warmup=10, seed=seed, progress=progress)
    stages.add(f"tinh chỉnh {steps} bước", m)
    quantize_model_(m, bits, group_size)
    stages.add(f"INT{bits}", m)
    return m, stages


def lowrank_quantize_lm(
    model: nn.Module, evaluate: Callable[[nn.Module], float], run_calibration: Callable[[nn.Module], object],
    param_ratio: float = 0.75, method: str = "whiten", bits: int = 4, group_size: int | None = 128,
) -> tuple[nn.Module, list[Stage]]:
    """Low rank (``factorize_`` at ``param_ratio`` with ``method``), then INT``bits`` factors and INT8
    embeddings. ``run_calibration(m)`` runs calibration inputs through ``m``. Returns a copy and its stages."""
    m = copy.deepcopy(model)
    stages = _Stages(evaluate)
    stages.add("FP32", m)
    L.factorize_(m, param_ratio=param_ratio, method=method,
                 run_calibration=None if method == "plain" else (lambda: run_calibration(m)), progress=False)
    stages.add(f"hạng thấp {param_ratio:.0%}", m)
    quantize_model_(m, bits, group_size)
    stages.add(f"INT{bits} các thừa số", m)
    return m, stages


def channels_prune_quantize_cnn(
    model: nn.Module, data: DigitsSplits, evaluate: Callable[[nn.Module], float], keep: float = 0.5,
    sparsity: float = 0.6, epochs: int = 15, bits: int = 4, seed: int = 0, progress: bool = True,
) -> tuple[nn.Module, list[Stage]]:
    """Structured, then unstructured pruning, then quantization, on the digits CNN: keep ``keep`` of each
    conv's channels (L1) and fine-tune, remove ``sparsity`` of the remaining weights (global magnitude)
    and fine-tune with the masks kept, then INT``bits`` per channel. Returns the model and its stages."""
    stages = _Stages(evaluate)
    stages.add("FP32", model)
    m = P.prune_cnn_channels(model, keep)
    stages.add(f"giữ {keep:.0%} kênh", m)
    train_classifier(m, data.x_train, data.y_train, epochs=epochs, lr=1e-3, seed=seed, progress=progress)
    stages.add(f"tinh chỉnh {epochs} epoch", m)
    P.prune_(m, sparsity, scope="global")
    stages.add(f"cắt tỉa {sparsity:.0%} trọng số", m)
    train_classifier(m, data.x_train, data.y_train, epochs=epochs, lr=1e-3, seed=seed, progress=progress)
    stages.add(f"tinh chỉnh {epochs} epoch", m)
    quantize_model_(m, bits, None)
    stages.add(f"INT{bits}", m)
    return m, stages


def distill_quantize_cnn(
    teacher: nn.Module, data: DigitsSplits, evaluate: Callable[[nn.Module], float], hidden: int = 64,
    T: float = 2.0, alpha: float = 0.9, epochs: int = 100, bits: int = 4, seed: int = 0, progress: bool = True,
) -> tuple[nn.Module, list[Stage]]:
    """Distil the digits CNN into a ``DigitsMLP(hidden)`` on the whole training split, then INT``bits``
    per channel. Stages start with the teacher. Returns the student and its stages."""
    stages = _Stages(evaluate)
    stages.add("FP32 (thầy)", teacher)
    torch.manual_seed(seed)
    student = DigitsMLP(hidden)
    distill_classifier(student, teacher, data.x_train, data.y_train, epochs=epochs, T=T, alpha=alpha, seed=seed,
                       progress=progress)
    stages.add(f"chưng cất → MLP({hidden})", student)
    quantize_model_(student, bits, None)
    stages.add(f"INT{bits}", student)
    return student, stages
