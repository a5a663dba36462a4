"""Quantization, from scratch: integer grids, affine and symmetric quantization, per-tensor /
per-channel / per-group scales, 4-bit packing, a weight-only ``QuantizedLinear``, activation
calibration, LLM.int8()-style decomposition, SmoothQuant, GPTQ, FP8, and a bridge that runs our
own INT8 weights with fbgemm's kernels.

Weights are ``(out, in)`` like ``nn.Linear.weight``; a group is ``group_size`` consecutive inputs
of one output row. Scales of a quantized weight have shape ``(out, in // group_size)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .calibration import observe_linear_inputs, replace_linears
from .prune import collect_input_stats, prunable_layers


# ----------------------------------------------------------------------------- input checks
def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in [2, 8], got {bits!r}")


def _check_float(x: torch.Tensor, what: str = "tensor") -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")


def qrange(bits: int, symmetric: bool = True) -> tuple[int, int]:
    """Integer range: symmetric ``[-(2^(b-1) - 1), 2^(b-1) - 1]``, affine ``[-2^(b-1), 2^(b-1) - 1]``."""
    _check_bits(bits)
    qmax = 2 ** (bits - 1) - 1
    return (-qmax if symmetric else -qmax - 1), qmax


# ----------------------------------------------------------------------------- quantize / dequantize
@dataclass
class QTensor:
    """A quantized 2-D weight: ``q`` ``(out, in)`` int8, ``scale`` and ``zero`` ``(out, n_groups)``."""

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int

    def dequantize(self) -> torch.Tensor:
        out, cols = self.q.shape
        q = self.q.float().view(out, cols // self.group_size, self.group_size)
        return ((q - self.zero[..., None]) * self.scale[..., None]).view(out, cols)


def _groups(w: torch.Tensor, group_size: int | None, per_tensor: bool) -> tuple[torch.Tensor, int]:
    """``w`` ``(out, in)`` viewed as ``(rows, n_groups, g)`` with the group size used."""
    if w.dim() != 2:
        raise ValueError(f"expected a 2-D weight (out, in), got shape {tuple(w.shape)}")
    out, cols = w.shape
    if per_tensor:
        return w.reshape(1, 1, -1), cols
    g = cols if group_size is None else group_size
    if not isinstance(g, int) or g <= 0 or cols % g:
        raise ValueError(f"group_size {group_size} must be a positive divisor of the input dimension {cols}")
    return w.reshape(out, cols // g, g), g


def quantize_tensor(
    w: torch.Tensor, bits: int = 8, group_size: int | None = None, symmetric: bool = True, per_tensor: bool = False,
) -> QTensor:
    """Round-to-nearest quantization of a weight ``(out, in)``.

    ``per_tensor=True``: one scale; else one scale per output row (``group_size=None``, per-channel)
    or per group of ``group_size`` inputs. Symmetric: ``s = max|w| / qmax``, ``z = 0``; affine:
    ``s = (max - min) / (qmax - qmin)``, ``z = qmin - round(min / s)``, with the range widened to
    contain 0 so that 0 stays exact.
    """
    _check_float(w, "w")
    qmin, qmax = qrange(bits, symmetric)
    wg, g = _groups(w.detach().float(), group_size, per_tensor)
    if symmetric:
        scale = wg.abs().amax(dim=-1) / qmax
        zero = torch.zeros_like(scale)
    else:
        lo, hi = wg.amin(dim=-1).clamp(max=0), wg.amax(dim=-1).clamp(min=0)
        scale = (hi - lo) / (qmax - qmin)
        zero = qmin - torch.round(lo / scale.clamp_min(1e-12))
    scale = scale.clamp_min(1e-12)
    q = torch.clamp(torch.round(wg / scale[..., None]) + zero[..., None], qmin, qmax)
    out, cols = w.shape
    if per_tensor:  # store as one group per row with the same scale, so dequantize() is uniform
        scale, zero, g = scale.expand(out, 1).clone(), zero.expand(out, 1).clone(), cols
    return QTensor(q.view(out, cols).to(torch.int8), scale, zero, bits, g)


def fake_quantize(w: torch.Tensor, bits: int = 8, group_size: int | None = None, symmetric: bool = True,
                  per_tensor: bool = False) -> torch.Tensor:
    """Quantize then dequantize: the float weight a quantized model effectively uses."""
    return quantize_tensor(w, bits, group_size, symmetric, per_tensor).dequantize().to(w.dtype)


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean squared error."""
    return float(((x.float() - x_hat.float()) ** 2).mean())


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum x^2 / sum (x - x_hat)^2)`` in dB."""
    noise = float(((x.float() - x_hat.float()) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((x.float() ** 2).sum()) / noise)


# ----------------------------------------------------------------------------- 4-bit packing
def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack int8 values in ``[-8, 7]`` two per byte (even index in the low nibble). Last dim must be even."""
    if q.dtype != torch.int8:
        raise TypeError(f"expected int8 values, got {q.dtype}")
    if q.shape[-1] % 2:
        raise ValueError(f"the last dimension must be even, got {q.shape[-1]}")
    if q.numel() and (q.min() < -8 or q.max() > 7):
        raise ValueError("values must lie in [-8, 7] to fit in 4 bits")
    u = (q.to(torch.int16) & 0xF).to(torch.uint8)  # two's complement nibble
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 ``(..., n)`` -> int8 ``(..., 2n)``."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"expected uint8 bytes, got {packed.dtype}")
    lo, hi = (packed & 0xF).to(torch.int16), (packed >> 4).to(torch.int16)
    lo, hi = torch.where(lo > 7, lo - 16, lo), torch.where(hi > 7, hi - 16, hi)
    return torch.stack([lo, hi], dim=-1).flatten(-2).to(torch.int8)


# ----------------------------------------------------------------------------- weight-only module
class QuantizedLinear(nn.Module):
    """Weight-only quantized ``nn.Linear``: integers (packed two per byte at 4 bits or fewer when
    ``in_features`` is even), FP16 scales and, only when some group has one, INT8 zero-points
    ``(out, n_groups)`` as buffers; ``forward`` dequantizes ``(q − z)·s`` and runs a float linear.
    ``(..., in) -> (..., out)``.
    """

    def __init__(self, linear: nn.Linear, bits: int = 8, group_size: int | None = None,
                 weight: torch.Tensor | None = None, qtensor: QTensor | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        qt = qtensor or quantize_tensor(linear.weight if weight is None else weight, bits, group_size)
        if not bool((qt.zero == qt.zero.round()).all()):
            raise ValueError("zero-points must be integers")
        self.bits, self.group_size = qt.bits, qt.group_size
        self.register_buffer("qweight", pack_int4(qt.q) if qt.bits <= 4 and self.in_features % 2 == 0 else qt.q)
        self.register_buffer("scale", qt.scale.to(torch.float16))
        self.register_buffer("zero", qt.zero.to(torch.int8) if bool((qt.zero != 0).any()) else None)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def weight(self) -> torch.Tensor:
        q = unpack_int4(self.qweight) if self.qweight.dtype == torch.uint8 else self.qweight
        out = self.out_features
        g = self.group_size
        q = q.float().view(out, -1, g)
        if self.zero is not None:
            q = q - self.zero.float()[..., None]
        return (q * self.scale.float()[..., None]).view(out, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bits={self.bits}, group_size={self.group_size}"


def quantize_(model: nn.Module, bits: int = 8, group_size: int | None = None, skip: Iterable[str] = ()) -> nn.Module:
    """Replace every ``nn.Linear`` (except names in ``skip``) by a weight-only :class:`QuantizedLinear`, in place."""
    _check_bits(bits)
    return replace_linears(model, lambda n, lin: QuantizedLinear(lin, bits, group_size), skip)


def quantized_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The buffers of every QuantizedLinear (integers, scales, biases): what goes into a safetensors file."""
    state = {f"{n}.{k}": v for n, m in model.named_modules() if isinstance(m, QuantizedLinear)
             for k, v in m.state_dict().items()}
    if not state:
        raise ValueError("the model has no QuantizedLinear")
    return state


# ----------------------------------------------------------------------------- activations
def percentile_clip(x: torch.Tensor, percentile: float = 99.99) -> float:
    """The ``percentile`` of ``|x|``: a clipping range that ignores the rarest extreme values."""
    _check_float(x, "x")
    if x.numel() == 0:
        raise ValueError("calibration data is empty")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    a = x.detach().abs().flatten().float()
    k = max(1, min(a.numel(), math.ceil(percentile / 100 * a.numel())))
    return float(a.kthvalue(k).values)


class ActivationRange:
    """Per-input-channel max |x| and a sample of |x| values of one layer's inputs, gathered by hooks."""

    def __init__(self, sample_per_call: int = 4096, seed: int = 0):
        self.channel_max: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []
        self.sample_per_call = sample_per_call
        self.generator = torch.Generator().manual_seed(seed)

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        m = x.abs().amax(dim=0)
        self.channel_max = m if self.channel_max is None else torch.maximum(self.channel_max, m)
        flat = x.flatten()  # a seeded random sample: a fixed stride could skip whole channels
        n = min(flat.numel(), self.sample_per_call)
        self.samples.append(flat[torch.randint(flat.numel(), (n,), generator=self.generator)])

    def clip(self, method: str = "minmax", percentile: float = 99.99) -> float:
        if self.channel_max is None:
            raise ValueError("calibration data is empty: run the model on calibration data first")
        if method == "minmax":
            return float(self.channel_max.max())
        if method == "percentile":
            return percentile_clip(torch.cat(self.samples), percentile)
        raise ValueError(f"method must be 'minmax' or 'percentile', got {method!r}")


def calibrate_activations(model: nn.Module, run: Callable[[], object]) -> dict[str, ActivationRange]:
    """Run ``run()`` once and record the input range of every ``nn.Linear``."""
    ranges = observe_linear_inputs(model, run, lambda lin: ActivationRange())
    if any(r.channel_max is None for r in ranges.values()):
        raise ValueError("calibration data is empty: run() did not call every Linear")
    return ranges


def quantize_activation(x: torch.Tensor, clip: float, bits: int = 8) -> torch.Tensor:
    """Fake-quantize activations symmetrically with a fixed (static) range ``[-clip, clip]``."""
    qmin, qmax = qrange(bits)
    s = max(clip, 1e-12) / qmax
    return torch.clamp(torch.round(x / s), qmin, qmax) * s


class W8A8Linear(nn.Module):
    """Static W8A8 simulation: INT8 per-channel weights and INT8 per-tensor activations with a
    calibrated clip; optional outlier input channels kept in floating point (LLM.int8() style)
    and optional SmoothQuant factors ``s`` (input divided by ``s``, weight columns multiplied by ``s``)."""

    def __init__(self, linear: nn.Linear, clip: float, outliers: torch.Tensor | None = None,
                 smooth: torch.Tensor | None = None):
        super().__init__()
        w = linear.weight.detach().float()
        self.smooth = smooth
        if smooth is not None:
            w = w * smooth[None, :]
        self.outliers = torch.zeros(w.shape[1], dtype=torch.bool) if outliers is None else outliers
        self.w_fp = w[:, self.outliers].clone()  # outlier columns stay in float
        self.w_q = fake_quantize(w[:, ~self.outliers], 8) if (~self.outliers).any() else w[:, ~self.outliers]
        self.clip, self.bias = clip, None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:
            x = x / self.smooth
        y = F.linear(quantize_activation(x[..., ~self.outliers], self.clip), self.w_q)
        if self.outliers.any():
            y = y + F.linear(x[..., self.outliers], self.w_fp)
        return y if self.bias is None else y + self.bias


def smoothquant_scales(act_max: torch.Tensor, weight: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """SmoothQuant: ``s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)`` per input channel ``(in,)``."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    w_max = weight.detach().abs().amax(dim=0).clamp_min(1e-5)
    return (act_max.clamp_min(1e-5) ** alpha / w_max ** (1 - alpha)).clamp_min(1e-5)


def w8a8_(model: nn.Module, ranges: dict[str, ActivationRange], method: str = "minmax", percentile: float = 99.99,
          outlier_threshold: float | None = None, smooth_alpha: float | None = None) -> nn.Module:
    """Replace every calibrated ``nn.Linear`` with a :class:`W8A8Linear`, in place.

    ``outlier_threshold``: input channels whose calibrated max |x| exceeds it stay in float.
    ``smooth_alpha``: apply SmoothQuant with this alpha first; the clip is then the min-max of the
    smoothed inputs (``method`` is not used). The two options are alternatives, not combined.
    """
    if outlier_threshold is not None and smooth_alpha is not None:
        raise ValueError("choose outlier_threshold (LLM.int8() style) or smooth_alpha (SmoothQuant), not both")
    def make(name: str, lin: nn.Linear) -> nn.Module:
        r = ranges[name]
        smooth = outliers = None
        clip = r.clip(method, percentile)
        if smooth_alpha is not None:
            smooth = smoothquant_scales(r.channel_max, lin.weight, smooth_alpha)
            clip = float((r.channel_max / smooth).max())
        if outlier_threshold is not None:
            outliers = r.channel_max > outlier_threshold
            rest = r.channel_max[~outliers]
            clip = min(clip, float(rest.max())) if rest.numel() else clip
        return W8A8Linear(lin, clip, outliers, smooth)

    missing = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in ranges]
    return replace_linears(model, make, skip=missing)


# ----------------------------------------------------------------------------- GPTQ
def group_grid(w: torch.Tensor, bits: int, symmetric: bool = True, shrink: int = 0,
               full_range: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero-point ``(...,)`` of each group ``w`` ``(..., g)`` for ``w ≈ (q − z)·s``.

    Without ``shrink``, the round-to-nearest grid of :func:`quantize_tensor` (the group's max, or its
    min and max, map to the ends of the integer range). With ``shrink = n > 0``, the range is also
    shrunk by factors ``1 − i/100`` for ``i < n`` (clipping the largest weights) and each group keeps
    the factor with the smallest ``Σ |w − ŵ|^2.4`` (the grid search of the GPTQ reference code).
    ``full_range`` (symmetric only): ggml's Q4_0 grid, all ``2^b`` integers ``[−2^(b−1), 2^(b−1) − 1]``
    and ``s = m / −2^(b−1)`` with ``m`` the group's value of largest ``|w|``, sign kept (so ``s`` can be
    negative and ``m`` lands exactly on ``−2^(b−1)``).
    """
    if full_range and not symmetric:
        raise ValueError("full_range is a symmetric grid: use symmetric=True")
    qmin, qmax = qrange(bits, symmetric and not full_range)
    if full_range:
        top = w.gather(-1, w.abs().argmax(dim=-1, keepdim=True)).squeeze(-1)
        best = None
        for i in range(max(shrink, 1)):
            scale = (1 - i / 100) * top / qmin
            scale = torch.where(scale.abs() < 1e-12, torch.full_like(scale, 1e-12), scale)
            if shrink <= 1:
                return scale, torch.zeros_like(scale)
            q = torch.clamp(torch.round(w / scale[..., None]), qmin, qmax)
            err = (q * scale[..., None] - w).abs().pow(2.4).sum(dim=-1)
            if best is not None:
                keep = best[1] <= err
                scale, err = torch.where(keep, best[0], scale), torch.where(keep, best[1], err)
            best = scale, err
        return best[0], torch.zeros_like(best[0])
    if symmetric:
        hi = w.abs().amax(dim=-1)
        lo = -hi
    else:
        lo, hi = w.amin(dim=-1).clamp(max=0), w.amax(dim=-1).clamp(min=0)
    best = None
    for i in range(max(shrink, 1)):
        f = 1 - i / 100
        scale = ((f * hi / qmax) if symmetric else (f * (hi - lo) / (qmax - qmin))).clamp_min(1e-12)
        zero = torch.zeros_like(scale) if symmetric else qmin - torch.round(f * lo / scale)
        if shrink <= 1:
            return scale, zero
        q = torch.clamp(torch.round(w / scale[..., None]) + zero[..., None], qmin, qmax)
        err = ((q - zero[..., None]) * scale[..., None] - w).abs().pow(2.4).sum(dim=-1)
        if best is not None:
            keep = best[2] <= err
            scale, zero, err = (torch.where(keep, b, new) for b, new in zip(best, (scale, zero, err)))
        best = scale, zero, err
    return best[0], best[1]


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, H: torch.Tensor, bits: int = 4, group_size: int | None = 128,
                  damp: float = 0.01, block_size: int = 128, act_order: bool = False, symmetric: bool = True,
                  shrink: int = 0, full_range: bool = False) -> QTensor:
    """GPTQ (Frantar et al. 2022) on one weight ``(out, in)`` with ``H = X X^T`` ``(in, in)``.

    Columns are quantized one at a time (symmetric round-to-nearest), and each column's rounding
    error is spread over the not-yet-quantized columns with the upper Cholesky factor of ``H^-1``,
    in blocks of ``block_size`` columns. Without ``act_order`` a group's scales are computed from the
    already-updated weights when the group starts; with ``act_order`` columns go by decreasing
    ``H_jj`` and the group scales are computed up front from the original weights ("static groups").
    ``symmetric=False`` gives each group a zero-point (all ``2^b`` levels); ``shrink`` searches a
    clipping factor per group (:func:`group_grid`); ``full_range`` puts the integers on ggml's Q4_0 grid
    (exportable to Q4_0 at 4 bits and groups of 32).
    """
    _check_float(weight, "weight")
    _check_bits(bits)
    rows, cols = weight.shape
    if H.shape != (cols, cols):
        raise ValueError(f"H must be ({cols}, {cols}), got {tuple(H.shape)}")
    g = cols if group_size is None else group_size
    if g <= 0 or cols % g:
        raise ValueError(f"group_size {group_size} must be a positive divisor of the input dimension {cols}")
    if not act_order and block_size % g and g % block_size:
        raise ValueError(f"group_size {g} and block_size {block_size} must divide one another")
    qmin, qmax = qrange(bits, symmetric and not full_range)
    W = weight.detach().float().clone()
    H = H.double().clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    scale, zero = torch.zeros(rows, cols // g), torch.zeros(rows, cols // g)
    if act_order:
        scale, zero = group_grid(W.view(rows, -1, g), bits, symmetric, shrink, full_range)
        perm = torch.argsort(H.diagonal(), descending=True)
    else:
        perm = torch.arange(cols)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * H.diagonal().mean() * torch.eye(cols, dtype=torch.float64)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()
    group_of = perm // g
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for j in range(i2 - i1):
            col = i1 + j
            if not act_order and col % g == 0:  # a new group: scales from the current weights
                span = W1[:, j:j + g] if g <= i2 - col else torch.cat([W1[:, j:], W[:, i2:col + g]], dim=1)
                scale[:, col // g], zero[:, col // g] = group_grid(span, bits, symmetric, shrink, full_range)
            s, z = scale[:, group_of[col]], zero[:, group_of[col]]
            w = W1[:, j]
            q = torch.clamp(torch.round(w / s) + z, qmin, qmax)
            err = (w - (q - z) * s) / Hinv1[j, j]
            W1[:, j:] -= err[:, None] * Hinv1[j, j:][None, :]
            Q[:, col] = q
            Err1[:, j] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    q_int = Q[:, torch.argsort(perm)].to(torch.int8)
    return QTensor(q_int, scale, zero, bits, g)


@torch.no_grad()
def gptq_(model: nn.Module, run_calibration: Callable[[], object], bits: int = 4, group_size: int | None = 128,
          act_order: bool = False, skip: Iterable[str] = (), symmetric: bool = True, shrink: int = 0,
          full_range: bool = False) -> nn.Module:
    """Quantize every ``nn.Linear`` of ``model`` with GPTQ (statistics from the FP32 model, one shot)
    and replace it by a :class:`QuantizedLinear`, in place."""
    names = [n for n in prunable_layers(model, (nn.Linear,)) if n not in set(skip)]
    stats = collect_input_stats(model, run_calibration, names)
    if any(s.n == 0 for s in stats.values()):
        raise ValueError("calibration data is empty: run_calibration() did not call every Linear")
    layers = prunable_layers(model, (nn.Linear,))
    qts = {n: gptq_quantize(layers[n].weight, stats[n].H, bits, group_size, act_order=act_order, symmetric=symmetric,
                            shrink=shrink, full_range=full_range) for n in names}
    return replace_linears(model, lambda n, lin: QuantizedLinear(lin, qtensor=qts[n]), skip)


# ----------------------------------------------------------------------------- AWQ
def minmax_fake_quantize(w: torch.Tensor, bits: int = 4, group_size: int = 32) -> torch.Tensor:
    """GGUF-style asymmetric quantization: per group ``w ≈ d·q + m`` with ``q`` in ``[0, 2^b − 1]``,
    ``d = (max − min) / (2^b − 1)`` and a float offset ``m = min`` (Q4_1 at 4 bits, groups of 32).
    Unlike :func:`quantize_tensor` (integer zero-point, range widened to contain 0), values already
    on such a grid come back exactly. Returns the dequantized ``(out, in)`` weight."""
    _check_float(w, "w")
    _check_bits(bits)
    wg, _ = _groups(w.detach().float(), group_size, False)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    d = ((hi - lo) / (2**bits - 1)).clamp_min(1e-12)
    q = torch.round((wg - lo) / d).clamp(0, 2**bits - 1)
    return (q * d + lo).view_as(w).to(w.dtype)


def output_error(weight: torch.Tensor, approx: torch.Tensor, H: torch.Tensor) -> float:
    """``sum_rows ||(W − Ŵ) x||² = tr(E H Eᵀ)`` over the calibration inputs, with ``H = X Xᵀ`` ``(in, in)``."""
    E = (weight.detach().double() - approx.detach().double())
    return float(((E @ H.double()) * E).sum())


@torch.no_grad()
def awq_quantize(weight: torch.Tensor, H: torch.Tensor, bits: int = 4, group_size: int | None = 64,
                 n_grid: int = 20) -> tuple[QTensor, torch.Tensor]:
    """AWQ (Lin et al. 2023, arXiv 2306.00978) on one weight ``(out, in)``: scale input channel ``j`` by
    ``s_j = a_j^alpha`` (``a_j`` the RMS of input ``j``, from ``H``), quantize ``W diag(s)`` round-to-nearest
    (symmetric), and keep the ``alpha`` in ``{0, 1/n_grid, ..., 1}`` whose ``Q(W diag(s)) diag(s)^-1`` has the
    smallest output error on the calibration inputs. Salient channels (large activations) get finer steps.
    Returns the quantized ``W diag(s)`` and ``s`` ``(in,)``; the layer computes ``Q(W s) (x / s)``."""
    _check_float(weight, "weight")
    cols = weight.shape[1]
    if H.shape != (cols, cols):
        raise ValueError(f"H must be ({cols}, {cols}), got {tuple(H.shape)}")
    if n_grid < 1:
        raise ValueError(f"n_grid must be >= 1, got {n_grid}")
    a = H.diagonal().double().clamp_min(1e-12).sqrt()
    w = weight.detach().double()
    best = None
    for i in range(n_grid + 1):
        alpha = i / n_grid
        s = a**alpha
        s = s / (s.max() * s.min()).sqrt()  # centre the scales around 1, as the paper's code does
        qt = quantize_tensor((w * s).float(), bits, group_size)
        err = output_error(weight, qt.dequantize().double() / s, H)
        if best is None or err < best[0]:
            best = (err, qt, s.float())
    return best[1], best[2]


class AWQLinear(QuantizedLinear):
    """A :class:`QuantizedLinear` holding ``Q(W diag(s))`` and the input scales ``s`` (FP16, ``(in,)``):
    ``y = Q(W s) (x / s)``. (AWQ folds ``1/s`` into the previous layer when it can; a vector is kept here.)"""

    def __init__(self, linear: nn.Linear, qtensor: QTensor, input_scale: torch.Tensor):
        super().__init__(linear, qtensor=qtensor)
        if input_scale.shape != (linear.in_features,):
            raise ValueError(f"input_scale must be ({linear.in_features},), got {tuple(input_scale.shape)}")
        self.register_buffer("input_scale", input_scale.to(torch.float16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x / self.input_scale.to(x.dtype), self.weight().to(x.dtype), self.bias)


@torch.no_grad()
def awq_(model: nn.Module, run_calibration: Callable[[], object], bits: int = 4, group_size: int | None = 64,
         n_grid: int = 20, skip: Iterable[str] = ()) -> nn.Module:
    """Quantize every ``nn.Linear`` (except ``skip``) with :func:`awq_quantize`, statistics from one run of
    the FP32 model, and replace it by an :class:`AWQLinear`, in place."""
    names = [n for n in prunable_layers(model, (nn.Linear,)) if n not in set(skip)]
    stats = collect_input_stats(model, run_calibration, names)
    if any(s.n == 0 for s in stats.values()):
        raise ValueError("calibration data is empty: run_calibration() did not call every Linear")
    layers = prunable_layers(model, (nn.Linear,))
    done = {n: awq_quantize(layers[n].weight, stats[n].H, bits, group_size, n_grid) for n in names}
    return replace_linears(model, lambda n, lin: AWQLinear(lin, *done[n]), skip)


# ----------------------------------------------------------------------------- FP8
FP8_MAX = {"e4m3": 448.0, "e5m2": 57344.0}
_FP8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def fp8_fake_quantize(x: torch.Tensor, fmt: str = "e4m3", block: tuple[int, int] | None = None) -> torch.Tensor:
    """Scale so that the largest |x| (per tensor, or per ``block`` tile) maps to the format's max,
    cast to FP8 and back. ``block=(128, 128)`` is DeepSeek-V3's weight scaling, ``(1, 128)`` its activations'."""
    _check_float(x, "x")
    if fmt not in _FP8:
        raise ValueError(f"fmt must be 'e4m3' or 'e5m2', got {fmt!r}")
    if block is None:
        s = (x.abs().max() / FP8_MAX[fmt]).clamp_min(1e-12)
        return (x / s).to(_FP8[fmt]).to(x.dtype) * s
    if x.dim() != 2 or x.shape[0] % block[0] or x.shape[1] % block[1]:
        raise ValueError(f"a 2-D tensor divisible into {block} tiles is needed, got {tuple(x.shape)}")
    r, c = x.shape
    t = x.reshape(r // block[0], block[0], c // block[1], block[1])
    s = (t.abs().amax(dim=(1, 3), keepdim=True) / FP8_MAX[fmt]).clamp_min(1e-12)
    return ((t / s).to(_FP8[fmt]).to(x.dtype) * s).reshape(r, c)


def fp8_values(fmt: str = "e4m3") -> torch.Tensor:
    """Every finite value of an FP8 format, sorted (from the 256 bit patterns)."""
    if fmt not in _FP8:
        raise ValueError(f"fmt must be 'e4m3' or 'e5m2', got {fmt!r}")
    v = torch.arange(256, dtype=torch.int16).to(torch.uint8).view(_FP8[fmt]).float()
    return v[torch.isfinite(v)].unique()


# ----------------------------------------------------------------------------- fbgemm bridge
def reduce_range() -> bool:
    """Whether PyTorch's quantized engine needs 7-bit activations: fbgemm / x86 do (without VNNI,
    AVX2's pair of instructions can overflow a 16-bit intermediate with 8 bits); qnnpack, the ARM
    engine, ignores the option and uses 8 bits."""
    return torch.backends.quantized.engine in ("fbgemm", "x86")


class FbgemmInt8Linear(nn.Module):
    """Our own per-channel symmetric INT8 weights run by the quantized engine's dynamic kernel
    (``torch.ops.quantized.linear_dynamic``: fbgemm on x86, qnnpack on ARM; activations are quantized
    on the fly, with :func:`reduce_range` set for the engine unless ``seven_bit`` says otherwise).
    ``(..., in) -> (..., out)``."""

    def __init__(self, linear: nn.Linear, qtensor: QTensor | None = None, seven_bit: bool | None = None):
        super().__init__()
        self.seven_bit = reduce_range() if seven_bit is None else seven_bit
        qt = qtensor or quantize_tensor(linear.weight, bits=8)
        if qt.bits != 8 or qt.group_size != linear.in_features or not bool((qt.zero == 0).all()):
            raise ValueError("fbgemm needs symmetric per-channel INT8 weights (no groups)")
        with warnings.catch_warnings():  # quantized tensors are deprecated but still run here
            warnings.simplefilter("ignore")
            qw = torch._make_per_channel_quantized_tensor(
                qt.q, qt.scale[:, 0].double(), torch.zeros(qt.q.shape[0], dtype=torch.long), 0)
            self.packed = torch.ops.quantized.linear_prepack(
                qw, None if linear.bias is None else linear.bias.detach().float())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float().contiguous()
        y = torch.ops.quantized.linear_dynamic(flat, self.packed, self.seven_bit)
        return y.reshape(*x.shape[:-1], self.out_features)


def fbgemm_int8_(model: nn.Module, skip: Iterable[str] = (), seven_bit: bool | None = None) -> nn.Module:
    """Replace every ``nn.Linear`` with a :class:`FbgemmInt8Linear` built from our own quantization, in place."""
    return replace_linears(model, lambda n, lin: FbgemmInt8Linear(lin, seven_bit=seven_bit), skip)


def fake_quantize_activations(x: torch.Tensor, per_token: bool) -> torch.Tensor:
    """Dynamic asymmetric 8-bit quantization of activations ``(..., in)`` and back, as the dynamic
    kernels do: the range ``[min(x, 0), max(x, 0)]`` of the whole tensor (``per_token=False``) or of
    each token's row (``per_token=True``) mapped to the 256 levels of ``uint8`` with a zero-point."""
    _check_float(x, "x")
    dims = (-1,) if per_token else tuple(range(x.dim()))
    lo, hi = x.amin(dim=dims, keepdim=True).clamp_max(0), x.amax(dim=dims, keepdim=True).clamp_min(0)
    scale = ((hi - lo) / 255).clamp_min(1e-12)
    zero = torch.round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


class DynamicInt8Linear(nn.Module):
    """Per-channel symmetric INT8 weights with dynamically quantized 8-bit activations, simulated in
    floating point (:func:`fake_quantize_activations`): the per-tensor scale of torch.ao's dynamic
    kernel without its 7-bit range, or one scale per token. ``(..., in) -> (..., out)``."""

    def __init__(self, linear: nn.Linear, per_token: bool):
        super().__init__()
        self.weight = nn.Parameter(quantize_tensor(linear.weight.detach(), bits=8).dequantize(), requires_grad=False)
        self.bias = linear.bias
        self.per_token = per_token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(fake_quantize_activations(x, self.per_token), self.weight, self.bias)


def dynamic_int8_(model: nn.Module, per_token: bool, skip: Iterable[str] = ()) -> nn.Module:
    """Replace every ``nn.Linear`` with a :class:`DynamicInt8Linear`, in place."""
    return replace_linears(model, lambda n, lin: DynamicInt8Linear(lin, per_token), skip)
