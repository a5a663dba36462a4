"""Low-rank factorization: a weight ``W (m, n)`` replaced by two thin factors ``A (m, r) @ B (r, n)``.

A factorized layer stores ``r (m + n)`` numbers instead of ``m n``; it saves only below the
break-even rank ``m n / (m + n)``. Plain truncated SVD gives the best rank-``r`` approximation of
the *weights* (Eckart–Young); activation-aware SVD truncates ``W S`` instead, where ``S`` comes from
calibration inputs ``X``, so that the truncation minimises the error of the layer's *output*
``X W^T``: ``"asvd"`` scales the input columns by their mean magnitude (``S`` diagonal, as ASVD does),
``"whiten"`` uses the Cholesky factor of ``X^T X`` (as SVD-LLM does), for which the discarded
squared singular values are exactly the output error.

    factorize_(model, param_ratio=0.75)                                  # plain SVD, one ratio per layer
    factorize_(model, param_ratio=0.75, method="whiten", run_calibration=run, allocation="global")
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from .calibration import set_module
from .prune import collect_input_stats
from .train import progress_bar

METHODS = ("plain", "asvd", "whiten")
ALLOCATIONS = ("uniform", "global", "sensitivity")
SCAN_RATIOS = (0.25, 0.5, 0.75)


# ----------------------------------------------------------------------------- counting
def lowrank_params(m: int, n: int, rank: int) -> int:
    """Weights of two factors ``(m, r)`` and ``(r, n)``: ``r (m + n)`` (biases not counted)."""
    return rank * (m + n)


def break_even_rank(m: int, n: int) -> float:
    """The rank at which the two factors hold as many numbers as ``W``: ``m n / (m + n)``."""
    if m <= 0 or n <= 0:
        raise ValueError(f"matrix dimensions must be positive, got {m}x{n}")
    return m * n / (m + n)


def rank_for_ratio(m: int, n: int, param_ratio: float) -> int:
    """Largest rank whose factors hold at most ``param_ratio`` of ``m n`` weights (at least 1)."""
    if not 0 < param_ratio <= 1:
        raise ValueError(f"param_ratio must be in (0, 1], got {param_ratio}")
    return max(1, math.floor(param_ratio * m * n / (m + n)))


def _check_rank(rank: int, m: int, n: int) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(m, n):
        raise ValueError(f"rank must be an integer in [1, min(m, n)] = [1, {min(m, n)}] for a {m}x{n} weight, got {rank!r}")


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest ``r`` whose top singular values keep ``energy`` of ``sum s_i^2`` (``s`` sorted, descending)."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    s2 = singular_values.double() ** 2
    kept = torch.cumsum(s2, 0) / s2.sum()
    return min(int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype) - 1e-12)) + 1, len(s2))


def energy_curve(singular_values: torch.Tensor) -> torch.Tensor:
    """Fraction of ``sum s_i^2`` kept by ranks ``1..k`` ``(k,)``."""
    s2 = singular_values.double() ** 2
    return (torch.cumsum(s2, 0) / s2.sum()).float()


# ----------------------------------------------------------------------------- factors
def truncated_svd(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``r`` factors of ``weight (m, n)``: ``A (m, r)``, ``B (r, n)`` with ``A @ B ≈ W``.

    The singular values are split evenly (``A = U_r sqrt(S_r)``, ``B = sqrt(S_r) V_r^T``)."""
    m, n = weight.shape
    _check_rank(rank, m, n)
    U, S, Vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = S[:rank].sqrt()
    return (U[:, :rank] * root).to(weight.dtype), (root[:, None] * Vh[:rank]).to(weight.dtype)


def whitening(H: torch.Tensor, damp: float = 1e-3) -> torch.Tensor:
    """Lower Cholesky factor ``S (n, n)`` with ``S S^T = H + damp·mean(diag H)·I`` for ``H = X^T X (n, n)``."""
    if H.dim() != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"H must be a square (n, n) matrix, got {tuple(H.shape)}")
    H = H.double()
    eye = torch.eye(len(H), dtype=H.dtype)
    return torch.linalg.cholesky(H + damp * H.diagonal().mean().clamp_min(1e-12) * eye)


def asvd_scale(H: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """ASVD's diagonal ``S (n, n)``: the mean absolute input of each column ``^ alpha``, estimated as
    the RMS ``sqrt(H_jj / N)`` up to a constant that cancels."""
    return torch.diag(H.diagonal().double().clamp_min(1e-12).sqrt() ** alpha)


def scaled_svd(weight: torch.Tensor, S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of ``W S``: ``U (m, k)``, singular values ``(k,)`` and ``Vh S^{-1} (k, n)``, so that
    ``U diag(s) Vh S^{-1}`` is ``W`` and truncating it minimises ``||(W - W_r) S||_F``."""
    U, s, Vh = torch.linalg.svd(weight.detach().double() @ S, full_matrices=False)
    if bool(torch.all(S == torch.diag(S.diagonal()))):
        back = Vh / S.diagonal()[None, :]
    else:
        back = torch.linalg.solve_triangular(S, Vh, upper=False, left=False)
    return U, s, back


# ----------------------------------------------------------------------------- layers
class LowRankLinear(nn.Module):
    """``nn.Linear(n, m)`` as two thin layers: ``x (..., n) -> down (..., r) -> up (..., m)``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        _check_rank(rank, out_features, in_features)
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)  # B (r, n)
        self.up = nn.Linear(rank, out_features, bias=bias)  # A (m, r)

    @classmethod
    def from_factors(cls, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None) -> "LowRankLinear":
        layer = cls(B.shape[1], A.shape[0], A.shape[1], bias is not None)
        with torch.no_grad():
            layer.up.weight.copy_(A)
            layer.down.weight.copy_(B)
            if bias is not None:
                layer.up.bias.copy_(bias)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> "LowRankLinear":
        """Plain truncated SVD of ``linear.weight``."""
        A, B = truncated_svd(linear.weight, rank)
        return cls.from_factors(A, B, None if linear.bias is None else linear.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def factorize_conv(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """A ``Conv2d(c_in, c_out, k)`` as ``Conv2d(c_in, r, k)`` (same stride/padding) then ``Conv2d(r, c_out, 1)``,
    from the truncated SVD of its weight reshaped to ``(c_out, c_in k k)``."""
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise TypeError("factorize_conv takes an nn.Conv2d with groups=1")
    return _conv_from_factors(conv, *truncated_svd(conv.weight.detach().flatten(1), rank))


def _conv_from_factors(conv: nn.Conv2d, A: torch.Tensor, B: torch.Tensor) -> nn.Sequential:
    """The pair of convolutions of :func:`factorize_conv` from factors ``A (c_out, r)``, ``B (r, c_in k k)``."""
    w, rank = conv.weight.detach(), A.shape[1]
    first = nn.Conv2d(conv.in_channels, rank, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=False)
    second = nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None)
    with torch.no_grad():
        first.weight.copy_(B.reshape(rank, *w.shape[1:]))
        second.weight.copy_(A[:, :, None, None])
        if conv.bias is not None:
            second.bias.copy_(conv.bias.detach())
    return nn.Sequential(first, second)


# ----------------------------------------------------------------------------- whole models
def _matrix(layer: nn.Module) -> torch.Tensor:
    return layer.weight.detach().flatten(1)


def allocate_ranks(spectra: dict[str, torch.Tensor], shapes: dict[str, tuple[int, int]], param_ratio: float) -> dict[str, int | None]:
    """Ranks under one global budget: ``param_ratio`` of all the layers' weights.

    Greedily keeps the singular component with the largest share of its layer's energy
    (``s_i^2 / sum s^2``) per weight it costs (``m + n``) until the budget is spent. A layer whose rank
    reaches its break-even stays dense (``None``): it costs ``m n`` and loses nothing."""
    if not 0 < param_ratio <= 1:
        raise ValueError(f"param_ratio must be in (0, 1], got {param_ratio}")
    total = sum(m * n for m, n in shapes.values())
    budget = param_ratio * total
    floor = sum(m + n for m, n in shapes.values())
    if budget < floor:
        raise ValueError(f"a budget of {param_ratio:.3g} of {total:,} weights ({budget:,.0f}) cannot be met: "
                         f"rank 1 everywhere already needs {floor:,} ({floor / total:.3g})")
    share = {k: (s.double() ** 2) / (s.double() ** 2).sum() for k, s in spectra.items()}
    ranks = {k: 1 for k in shapes}
    spent = floor
    heap = [(-float(share[k][1]) / sum(shapes[k]), k) for k in shapes if len(share[k]) > 1]
    heapq.heapify(heap)
    dense: set[str] = set()
    while heap:
        _, k = heapq.heappop(heap)
        m, n = shapes[k]
        r = ranks[k] + 1
        cost = m * n - ranks[k] * (m + n) if lowrank_params(m, n, r) >= m * n else m + n
        if spent + cost > budget:
            continue
        spent += cost
        if lowrank_params(m, n, r) >= m * n:
            dense.add(k)
            continue
        ranks[k] = r
        if r < len(share[k]):
            heapq.heappush(heap, (-float(share[k][r]) / (m + n), k))
    return {k: (None if k in dense else r) for k, r in ranks.items()}


def allocate_by_sensitivity(
    scores: dict[str, dict[float, float]], shapes: dict[str, tuple[int, int]], param_ratio: float, base: float,
) -> dict[str, int | None]:
    """Ranks from a sensitivity scan: ``scores[name][ratio]`` is the model's quality (higher is better,
    ``base`` unmodified) with only that layer factorized at that parameter ratio.

    Starting from all layers dense, repeatedly take the cheapest saving — the move of one layer to a
    smaller ratio that loses the least quality per weight saved (losses assumed to add up) — until the
    factorized layers fit in ``param_ratio`` of their weights."""
    if not 0 < param_ratio <= 1:
        raise ValueError(f"param_ratio must be in (0, 1], got {param_ratio}")
    options = {}  # name -> [(weights, loss, rank)], dense first, then smaller and smaller
    for k, (m, n) in shapes.items():
        opts = {rank_for_ratio(m, n, rho): base - v for rho, v in scores[k].items()}
        options[k] = [(m * n, 0.0, None)] + sorted(((lowrank_params(m, n, r), loss, r) for r, loss in opts.items()), reverse=True)
    total = sum(m * n for m, n in shapes.values())
    smallest = sum(opts[-1][0] for opts in options.values())
    if smallest > param_ratio * total:
        raise ValueError(f"a budget of {param_ratio:.3g} of the weights cannot be met with the scanned ratios: "
                         f"the smallest of each layer still hold {smallest / total:.3g}")
    at = {k: 0 for k in shapes}
    size = total
    while size > param_ratio * total:
        best = None
        for k, opts in options.items():
            w0, l0, _ = opts[at[k]]
            for j in range(at[k] + 1, len(opts)):
                w, loss, _ = opts[j]
                if w < w0:
                    cost = (loss - l0) / (w0 - w)
                    if best is None or cost < best[0]:
                        best = (cost, k, j)
        _, k, j = best
        size -= options[k][at[k]][0] - options[k][j][0]
        at[k] = j
    return {k: options[k][at[k]][2] for k in shapes}


def _targets(model: nn.Module, types: tuple[type, ...], skip: Iterable[str]) -> dict[str, nn.Module]:
    for t in types:
        if t not in (nn.Linear, nn.Conv2d):
            raise TypeError(f"low-rank factorization supports nn.Linear and nn.Conv2d, not {t.__name__}")
    skip = set(skip)
    unknown = skip - {n for n, _ in model.named_modules()}
    if unknown:
        raise ValueError(f"skip names no module of the model: {sorted(unknown)}")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, types) and n not in skip}
    for n, m in layers.items():
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            raise TypeError(f"{n}: grouped convolutions are not supported")
    if not layers:
        raise ValueError(f"the model has no layer of types {[t.__name__ for t in types]} to factorize")
    return layers


@torch.no_grad()
def factorize_(
    model: nn.Module, rank: int | None = None, energy: float | None = None, param_ratio: float | None = None,
    method: str = "plain", run_calibration: Callable[[], object] | None = None, allocation: str = "uniform",
    types: tuple[type, ...] = (nn.Linear,), skip: Iterable[str] = (), damp: float = 1e-3, alpha: float = 0.5,
    score: Callable[[nn.Module], float] | None = None, scan_ratios: Iterable[float] = SCAN_RATIOS, progress: bool = True,
) -> dict[str, int | None]:
    """Replace the layers of ``types`` by low-rank factors, in place. Give exactly one of:

    - ``rank``: the same rank everywhere (``<= min(m, n)`` of every layer);
    - ``energy``: per layer, the smallest rank keeping that share of ``sum s_i^2``;
    - ``param_ratio``: factors holding at most that share of each layer's weights
      (``allocation="uniform"``) or of all of them together: ``allocation="global"`` ranks singular
      components by their share of their layer's energy, ``allocation="sensitivity"`` scans each layer
      alone at ``scan_ratios`` with ``score(model)`` (higher is better) and takes the cheapest
      savings first (see :func:`allocate_by_sensitivity`).

    ``method``: ``"plain"`` SVD of ``W``; ``"asvd"`` or ``"whiten"`` SVD of ``W S`` (Linear layers only),
    with ``S`` from the inputs seen while ``run_calibration()`` runs the unmodified model. Layers whose
    rank would not save anything (``r >= m n / (m + n)``) stay dense. Returns ``{name: rank or None}``.
    """
    if sum(v is not None for v in (rank, energy, param_ratio)) != 1:
        raise ValueError("give exactly one of rank, energy or param_ratio")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    if allocation != "uniform" and param_ratio is None:
        raise ValueError(f"allocation={allocation!r} shares a parameter budget: give param_ratio")
    if allocation == "sensitivity" and score is None:
        raise ValueError("allocation='sensitivity' needs score(model) -> float (higher is better)")
    layers = _targets(model, types, skip)
    if method != "plain":
        if any(not isinstance(m, nn.Linear) for m in layers.values()):
            raise TypeError(f"method {method!r} factorizes nn.Linear layers only; use types=(nn.Linear,)")
        if run_calibration is None:
            raise ValueError(f"method {method!r} needs calibration data: pass run_calibration")
    shapes = {k: tuple(_matrix(m).shape) for k, m in layers.items()}
    if rank is not None:
        for k, (m, n) in shapes.items():
            try:
                _check_rank(rank, m, n)
            except ValueError as e:
                raise ValueError(f"{k}: {e}") from None
    if param_ratio is not None and not 0 < param_ratio <= 1:
        raise ValueError(f"param_ratio must be in (0, 1], got {param_ratio}")
    if energy is not None and not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")

    grams = {}
    if method != "plain":
        grams = collect_input_stats(model, run_calibration, layers)
    decomps = {}
    for k, layer in layers.items():
        if method == "plain":
            U, s, Vh = torch.linalg.svd(_matrix(layer).double(), full_matrices=False)
        else:
            S = whitening(grams[k].H, damp) if method == "whiten" else asvd_scale(grams[k].H, alpha)
            U, s, Vh = scaled_svd(layer.weight, S)
        decomps[k] = (U, s, Vh)

    if allocation == "global":
        ranks = allocate_ranks({k: d[1] for k, d in decomps.items()}, shapes, param_ratio)
    elif allocation == "sensitivity":
        scan = _scan(model, layers, decomps, score, scan_ratios, progress)
        ranks = allocate_by_sensitivity(scan, shapes, param_ratio, float(score(model)))
    else:
        ranks = {}
        for k, (m, n) in shapes.items():
            r = rank if rank is not None else (rank_for_energy(decomps[k][1], energy) if energy is not None
                                               else rank_for_ratio(m, n, param_ratio))
            ranks[k] = None if lowrank_params(m, n, r) >= m * n else r

    for k, layer in layers.items():
        if ranks[k] is not None:
            set_module(model, k, _build(layer, decomps[k], ranks[k]))
    return ranks


def _build(layer: nn.Module, decomp: tuple[torch.Tensor, torch.Tensor, torch.Tensor], r: int) -> nn.Module:
    """The rank-``r`` replacement of ``layer`` from its (scaled) SVD ``U, s, Vh``."""
    U, s, Vh = decomp
    root = s[:r].sqrt()
    A, B = (U[:, :r] * root).float(), (root[:, None] * Vh[:r]).float()
    if isinstance(layer, nn.Conv2d):
        return _conv_from_factors(layer, A, B)
    return LowRankLinear.from_factors(A, B, None if layer.bias is None else layer.bias.detach())


def _scan(model: nn.Module, layers: dict[str, nn.Module], decomps: dict, score: Callable[[nn.Module], float],
          ratios: Iterable[float], progress: bool) -> dict[str, dict[float, float]]:
    """``{name: {ratio: score(model)}}`` with only that layer factorized (restored afterwards)."""
    ratios = sorted(set(ratios))
    if not ratios or not all(0 < r < 1 for r in ratios):
        raise ValueError(f"scan_ratios must be values in (0, 1), got {ratios}")
    out: dict[str, dict[float, float]] = {k: {} for k in layers}
    jobs = [(k, rho) for k in layers for rho in ratios]
    for k, rho in progress_bar(jobs, progress, desc="sensitivity scan"):
        m, n = _matrix(layers[k]).shape
        set_module(model, k, _build(layers[k], decomps[k], rank_for_ratio(m, n, rho)))
        try:
            out[k][rho] = float(score(model))
        finally:
            set_module(model, k, layers[k])
    return out


def factorized_ratio(ranks: dict[str, int | None], shapes: dict[str, tuple[int, int]]) -> float:
    """Weights of the factorized layers after / before (dense layers count ``m n``)."""
    before = sum(m * n for m, n in shapes.values())
    after = sum(m * n if ranks[k] is None else lowrank_params(m, n, ranks[k]) for k, (m, n) in shapes.items())
    return after / before


def layer_shapes(model: nn.Module, types: tuple[type, ...] = (nn.Linear,), skip: Iterable[str] = ()) -> dict[str, tuple[int, int]]:
    """``{name: (m, n)}`` of the weight matrices ``factorize_`` would see."""
    return {k: tuple(_matrix(m).shape) for k, m in _targets(model, types, skip).items()}
