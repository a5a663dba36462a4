"""AWQ as the paper does it (Lin et al. 2023, arXiv 2306.00978), on the blocks of a Llama model.

Chapter 6 first teaches a per-layer search (:func:`lightweight.quantize.awq_quantize`: one exponent per
layer, a scale vector kept beside each layer). The paper goes further, and this module follows it:

1. **Scale groups.** Layers that read the same input share one scale vector ``s``: q/k/v after the
   input RMSNorm, gate/up after the post-attention RMSNorm, down_proj after up_proj, o_proj after
   v_proj (only when v_proj's outputs are o_proj's inputs one to one; with grouped-query attention
   they are not, and, as the reference code does, that pair is left unscaled).
2. **Search.** For ``alpha`` in ``{0, 1/20, ..., 1}``, ``s = m^alpha`` (``m``: mean ``|x|`` of each input
   channel), the group's weights ``W diag(s)`` are quantized, and the ``alpha`` with the smallest error
   wins. Two errors are offered (``loss``): ``"layers"``, the error of the group's own outputs
   ``Σ ||(W − Q(W diag(s)) diag(s)^-1) X||²``, exact and cheap from ``H = X Xᵀ``; and ``"module"``, as the
   reference code: the error of the output of the module the group feeds (the whole attention for
   q/k/v, the whole MLP for gate/up; the other layers of that module unquantized), measured by running
   the module on the first :data:`MODULE_BATCHES` calibration batches. The second sees what the first
   cannot: an error in q or k passes through the softmax, one in gate or up through the SiLU gate and
   down_proj. o_proj and down_proj have no larger module: their error is the layer's own.
3. **Folding.** ``1/s`` goes into the previous operation (the RMSNorm's gain, or the rows of the
   previous Linear), ``s`` into the group's columns: the FP32 model computes the same function, keeps
   its shape, and stores no extra vector.
4. **Clipping.** Per output row and group of ``group_size`` inputs, the range is shrunk by
   ``1, 0.95, ..., 0.55`` and the factor with the smallest output error ``e_gᵀ H_gg e_g`` is kept
   (not for q_proj and k_proj, whose error passes through the ``q·k`` product; the reference code
   skips them too).

Integers are asymmetric (a zero-point per group, all ``2^b`` levels, as the paper) or symmetric.
:func:`salient_keep_` and :func:`salient_scale_` are the ablations of MIT 6.5940's AWQ lab.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..calibration import observe_linear_inputs, replace_linears
from ..quantize import QTensor, QuantizedLinear, _check_bits, output_error, qrange, quantize_tensor

ALPHA_GRID = 20  # alphas 0, 0.05, ..., 1
CLIP_GRID = 20  # clipping factors 1 - i / 20
MAX_SHRINK = 0.5  # ... down to 0.55
NO_CLIP = ("q_proj", "k_proj")
LOSSES = ("layers", "module")
MODULE_OF = {"input_layernorm": "self_attn", "post_attention_layernorm": "mlp"}  # group (by prev) -> module it feeds
MODULE_BATCHES = 2  # calibration batches kept for the "module" loss (2 x 4 windows of 512 tokens in the bench)


class ActStats:
    """Statistics of a Linear's inputs ``x`` ``(..., in)``: ``H = Σ x xᵀ`` ``(in, in)``, ``Σ |x|`` ``(in,)``
    and the number of rows."""

    def __init__(self, in_features: int):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.abs_sum = torch.zeros(in_features, dtype=torch.float64)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        self.H += x.T @ x
        self.abs_sum += x.abs().sum(0)
        self.n += x.shape[0]

    @property
    def mean_abs(self) -> torch.Tensor:
        """Mean ``|x_j|`` of each input channel ``(in,)`` (AWQ's activation magnitude)."""
        if self.n == 0:
            raise ValueError("no inputs observed: the calibration run did not reach this layer")
        return (self.abs_sum / self.n).float()

    def rescale_(self, s: torch.Tensor) -> None:
        """The statistics of ``x / s`` (after a scale vector ``s`` ``(in,)`` was folded)."""
        s = s.double()
        self.H /= s[:, None] * s[None, :]
        self.abs_sum /= s


def collect_act_stats(model: nn.Module, run: Callable[[], object], layers: Sequence[str] | None = None) -> dict[str, ActStats]:
    """Call ``run()`` once and return :class:`ActStats` of every Linear's inputs (or of those named)."""
    return observe_linear_inputs(model, run, lambda lin: ActStats(lin.in_features), layers)


# ----------------------------------------------------------------------------- scale groups and folding
@dataclass(frozen=True)
class ScaleGroup:
    """Layers (names inside a block) that read the output of ``prev`` (an RMSNorm or a Linear)."""

    prev: str
    layers: tuple[str, ...]


def scale_groups(block: nn.Module) -> list[ScaleGroup]:
    """The scale groups of one Llama decoder block (see the module docstring)."""
    attn = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    groups = [ScaleGroup("input_layernorm", attn)]
    v, o = block.get_submodule("self_attn.v_proj"), block.get_submodule("self_attn.o_proj")
    if v.out_features == o.in_features:
        groups.append(ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",)))
    groups += [ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
               ScaleGroup("mlp.up_proj", ("mlp.down_proj",))]
    return groups


@torch.no_grad()
def fold_scales_(prev: nn.Module, layers: Sequence[nn.Linear], s: torch.Tensor) -> None:
    """Divide output channel ``j`` of ``prev`` by ``s_j`` and multiply input column ``j`` of every layer by
    ``s_j``, in place: ``W diag(s) · (x / s) = W x``, so the composed function is unchanged.

    ``prev``: an RMSNorm (its gain ``(C,)`` is divided) or an ``nn.Linear`` (its rows, and bias, are
    divided). ``s`` ``(C,)``, positive; ``C`` must be every layer's ``in_features``."""
    s = s.detach().float()
    if s.dim() != 1 or not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
        raise ValueError("s must be a 1-D tensor of positive finite scales")
    for lin in layers:
        if lin.in_features != s.numel():
            raise ValueError(f"a layer reads {lin.in_features} inputs, s has {s.numel()} scales")
    if isinstance(prev, nn.Linear):
        if prev.out_features != s.numel():
            raise ValueError(f"the previous Linear has {prev.out_features} outputs, s has {s.numel()} scales")
        prev.weight.div_(s[:, None])
        if prev.bias is not None:
            prev.bias.div_(s)
    else:
        gain = getattr(prev, "weight", None)
        if not isinstance(gain, torch.Tensor) or gain.shape != s.shape:
            raise ValueError(f"cannot fold into {type(prev).__name__}: it needs a gain vector of shape {tuple(s.shape)}")
        gain.div_(s)
    for lin in layers:
        lin.weight.mul_(s[None, :])


# ----------------------------------------------------------------------------- search
def _scales(m: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = m^alpha`` ``(in,)``, centred around 1 as the reference code (float64)."""
    s = m**alpha
    return s / (s.max() * s.min()).sqrt()


def _scaled_rtn(w: torch.Tensor, s: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> torch.Tensor:
    """``Q(W diag(s)) diag(s)^-1`` ``(out, in)`` in float64: what the layer computes once ``s`` is folded."""
    return quantize_tensor((w.double() * s).float(), bits, group_size, symmetric).dequantize().double() / s


def search_scale(weights: Sequence[torch.Tensor], stats: ActStats, bits: int, group_size: int,
                 symmetric: bool = False, n_grid: int = ALPHA_GRID) -> tuple[torch.Tensor, float, list[float]]:
    """The AWQ scale of a group of weights ``(out_i, in)`` that read the same inputs, by the error of the
    group's own outputs (``loss="layers"``).

    Returns ``s`` ``(in,)``, the chosen ``alpha`` and the group's output error for every alpha of the grid
    (``alpha = 0`` is plain round-to-nearest)."""
    if n_grid < 1:
        raise ValueError(f"n_grid must be >= 1, got {n_grid}")
    m = stats.mean_abs.double().clamp_min(1e-8)
    errors, best = [], None
    for i in range(n_grid + 1):
        alpha = i / n_grid
        s = _scales(m, alpha)
        err = sum(output_error(w, _scaled_rtn(w, s, bits, group_size, symmetric), stats.H) for w in weights)
        errors.append(err)
        if best is None or err < best[0]:
            best = (err, s.float(), alpha)
    return best[1], best[2], errors


def _first(y: object) -> torch.Tensor:
    return y[0] if isinstance(y, tuple) else y


@torch.no_grad()
def search_scale_on_module(module: nn.Module, calls: Sequence[tuple[tuple, dict]], layers: Sequence[nn.Linear],
                           stats: ActStats, bits: int, group_size: int, symmetric: bool = False,
                           n_grid: int = ALPHA_GRID) -> tuple[torch.Tensor, float, list[float]]:
    """The AWQ scale of ``layers`` (inside ``module``, reading the same inputs) by the error of ``module``'s
    output (``loss="module"``): ``Σ ||module(x) − module_s(x)||²`` over the recorded ``calls`` (positional and
    keyword arguments of ``module``), where ``module_s`` has each layer's weight replaced by
    ``Q(W diag(s)) diag(s)^-1`` and every other layer as it is. The weights are restored afterwards.
    Returns like :func:`search_scale`."""
    if n_grid < 1:
        raise ValueError(f"n_grid must be >= 1, got {n_grid}")
    if not calls:
        raise ValueError("no recorded inputs of the module: the calibration run did not reach it")

    def outputs() -> list[torch.Tensor]:
        return [_first(module(*args, **kwargs)) for args, kwargs in calls]

    ref = outputs()
    original = [lin.weight.detach().clone() for lin in layers]
    m = stats.mean_abs.double().clamp_min(1e-8)
    errors, best = [], None
    try:
        for i in range(n_grid + 1):
            alpha = i / n_grid
            s = _scales(m, alpha)
            for lin, w in zip(layers, original):
                lin.weight.copy_(_scaled_rtn(w, s, bits, group_size, symmetric).float())
            err = sum(float((y - r).double().pow(2).sum()) for y, r in zip(outputs(), ref))
            errors.append(err)
            if best is None or err < best[0]:
                best = (err, s.float(), alpha)
    finally:
        for lin, w in zip(layers, original):
            lin.weight.copy_(w)
    return best[1], best[2], errors


def record_calls(modules: dict[str, nn.Module], max_calls: int) -> tuple[dict[str, list[tuple[tuple, dict]]], Callable[[], None]]:
    """Hooks that keep the arguments of the first ``max_calls`` calls of each module: ``(calls, remove)``."""
    calls: dict[str, list[tuple[tuple, dict]]] = {n: [] for n in modules}

    def keeper(name: str):
        def hook(module, args, kwargs):
            if len(calls[name]) < max_calls:
                calls[name].append((tuple(a.detach().clone() if torch.is_tensor(a) else a for a in args), dict(kwargs)))
        return hook

    handles = [m.register_forward_pre_hook(keeper(n), with_kwargs=True) for n, m in modules.items()]

    def remove() -> None:
        for h in handles:
            h.remove()

    return calls, remove


@torch.no_grad()
def clip_quantize(w: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, symmetric: bool = False,
                  n_grid: int = CLIP_GRID, max_shrink: float = MAX_SHRINK) -> QTensor:
    """Round-to-nearest ``w`` ``(out, in)`` on a grid whose range is shrunk per (row, group) by the factor in
    ``1, 1 − 1/n_grid, ...`` (above ``1 − max_shrink``) with the smallest output error ``e_gᵀ H_gg e_g``,
    ``H`` ``(in, in)`` the layer's ``Σ x xᵀ``."""
    _check_bits(bits)
    rows, cols = w.shape
    if H.shape != (cols, cols):
        raise ValueError(f"H must be ({cols}, {cols}), got {tuple(H.shape)}")
    if group_size <= 0 or cols % group_size:
        raise ValueError(f"group_size {group_size} must be a positive divisor of the input dimension {cols}")
    qmin, qmax = qrange(bits, symmetric)
    ng = cols // group_size
    wg = w.detach().float().view(rows, ng, group_size)
    idx = torch.arange(cols).view(ng, group_size)
    Hg = H.float()[idx[:, :, None], idx[:, None, :]]  # (ng, g, g): the diagonal blocks
    if symmetric:
        hi = wg.abs().amax(-1)
        lo = -hi
    else:
        lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
    best = None
    for i in range(max(1, int(max_shrink * n_grid))):
        f = 1 - i / n_grid
        scale = (f * (hi - lo) / (qmax - qmin)).clamp_min(1e-12)
        zero = torch.zeros_like(scale) if symmetric else qmin - torch.round(f * lo / scale)
        q = torch.clamp(torch.round(wg / scale[..., None]) + zero[..., None], qmin, qmax)
        e = (q - zero[..., None]) * scale[..., None] - wg
        err = torch.einsum("rgi,gij,rgj->rg", e, Hg, e)
        if best is not None:
            keep = best[3] <= err
            q, scale, zero, err = (torch.where(keep[..., None] if b.dim() == 3 else keep, b, n)
                                   for b, n in zip(best, (q, scale, zero, err)))
        best = q, scale, zero, err
    q, scale, zero, _ = best
    return QTensor(q.reshape(rows, cols).to(torch.int8), scale, zero, bits, group_size)


@torch.no_grad()
def awq_block_(block: nn.Module, run: Callable[[], object], bits: int = 4, group_size: int = 64,
               symmetric: bool = False, clip: bool = True, n_grid: int = ALPHA_GRID, loss: str = "layers",
               quantize: Callable[[str, nn.Linear, ActStats], QTensor] | None = None) -> dict[str, float]:
    """AWQ on one Llama decoder ``block``, in place: scales searched per group (by ``loss``, see the module
    docstring), folded, then every Linear quantized (clipping search when ``clip``) and replaced by a
    :class:`QuantizedLinear`.

    ``run()`` pushes the calibration inputs through the block (see
    :func:`lightweight.llm.model.compress_blockwise_`). ``quantize(name, linear, stats)``, when given,
    replaces the last step (e.g. GPTQ on the scaled weights with the scaled statistics). Returns the
    chosen ``alpha`` of each group, keyed by its previous operation."""
    _check_bits(bits)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    modules = {n: block.get_submodule(n) for n in MODULE_OF.values()} if loss == "module" else {}
    calls, remove = record_calls(modules, MODULE_BATCHES)
    try:
        stats = collect_act_stats(block, run, [n for n, m in block.named_modules() if isinstance(m, nn.Linear)])
    finally:
        remove()
    alphas = {}
    for g in scale_groups(block):
        layers = [block.get_submodule(n) for n in g.layers]
        inspect = MODULE_OF.get(g.prev) if loss == "module" else None
        if inspect:
            s, alphas[g.prev], _ = search_scale_on_module(modules[inspect], calls[inspect], layers, stats[g.layers[0]],
                                                          bits, group_size, symmetric, n_grid)
        else:
            s, alphas[g.prev], _ = search_scale([lin.weight for lin in layers], stats[g.layers[0]], bits, group_size,
                                                symmetric, n_grid)
        fold_scales_(block.get_submodule(g.prev), layers, s)
        for n in g.layers:
            stats[n].rescale_(s)

    def quantized(name: str, lin: nn.Linear) -> QTensor:
        if quantize is not None:
            return quantize(name, lin, stats[name])
        if clip and not name.endswith(NO_CLIP):
            return clip_quantize(lin.weight, stats[name].H, bits, group_size, symmetric)
        return quantize_tensor(lin.weight, bits, group_size, symmetric)

    qts = {n: quantized(n, lin) for n, lin in block.named_modules() if isinstance(lin, nn.Linear)}
    replace_linears(block, lambda n, lin: QuantizedLinear(lin, qtensor=qts[n]))
    return alphas


# ----------------------------------------------------------------------------- MIT lab's ablations
def salient_channels(stats: ActStats, weight: torch.Tensor, fraction: float, by: str,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of the ``round(fraction · in)`` input channels (at least one) a layer ``weight`` ``(out, in)``
    protects: ``by="activation"`` (largest mean ``|x|``), ``"weight"`` (largest mean ``|W_:j|``) or
    ``"random"``."""
    cols = weight.shape[1]
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    k = max(1, round(fraction * cols))
    if by == "activation":
        return stats.mean_abs.topk(k).indices
    if by == "weight":
        return weight.detach().abs().mean(0).topk(k).indices
    if by == "random":
        return torch.randperm(cols, generator=generator)[:k]
    raise ValueError(f"by must be 'activation', 'weight' or 'random', got {by!r}")


@torch.no_grad()
def salient_keep_(model: nn.Module, stats: dict[str, ActStats], bits: int, group_size: int, fraction: float = 0.01,
                  by: str = "activation", seed: int = 0, symmetric: bool = False) -> nn.Module:
    """Round-to-nearest every Linear named in ``stats`` (groups of ``group_size``; a zero-point per group
    unless ``symmetric``, as the lab), except its
    salient input columns (:func:`salient_channels`), which keep their FP16 values: the mixed-precision
    ablation of the lab. Weights are written back as floats (a simulation, not a storage format)."""
    gen = torch.Generator().manual_seed(seed)
    for name, st in stats.items():
        lin = model.get_submodule(name)
        keep = salient_channels(st, lin.weight, fraction, by, gen)
        w = quantize_tensor(lin.weight, bits, group_size, symmetric).dequantize()
        w[:, keep] = lin.weight[:, keep].half().float()
        lin.weight.copy_(w)
    return model


@torch.no_grad()
def salient_scale_(model: nn.Module, stats: dict[str, ActStats], bits: int, group_size: int, fraction: float = 0.01,
                   factor: float = 2.0, symmetric: bool = False) -> nn.Module:
    """Multiply the salient input columns (by activation) of every Linear named in ``stats`` by ``factor``,
    round-to-nearest, divide them back: ``Q(W diag(s)) diag(s)^-1`` with ``s_j = factor`` on the
    salient channels and 1 elsewhere (grid as in :func:`salient_keep_`). No weight stays in FP16."""
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    for name, st in stats.items():
        lin = model.get_submodule(name)
        s = torch.ones(lin.in_features)
        s[salient_channels(st, lin.weight, fraction, "activation")] = factor
        lin.weight.copy_(quantize_tensor(lin.weight * s, bits, group_size, symmetric).dequantize() / s)
    return model

