"""Pruning, from scratch: magnitude masks, schedules, sparse storage, 2:4 masks, structured
pruning of channels, heads and neurons, and the one-shot LLM methods Wanda and SparseGPT.

Masks are boolean tensors shaped like the weight: ``True`` keeps a weight, ``False`` prunes it.
In-place model transforms end with ``_``, like ``torch.nn.utils.prune``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .calibration import observe_linear_inputs, replace_linears
from .models import DigitsCNN, TinyGPT

PRUNABLE = (nn.Linear, nn.Conv2d)


# ----------------------------------------------------------------------------- checks of input
def _check_sparsity(sparsity: float) -> None:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")


def _check_mask(weight: torch.Tensor, mask: torch.Tensor) -> None:
    if mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(weight.shape)}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")


def _n_pruned(numel: int, sparsity: float) -> int:
    return int(round(sparsity * numel))


# ----------------------------------------------------------------------------- magnitude masks
def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the ``1 - sparsity`` largest ``|w|`` of one tensor; prune ``round(sparsity * numel)`` weights."""
    _check_sparsity(sparsity)
    k = _n_pruned(weight.numel(), sparsity)
    mask = torch.ones(weight.numel(), dtype=torch.bool)
    if k:
        mask[torch.topk(weight.detach().abs().flatten(), k, largest=False).indices] = False
    return mask.view_as(weight)


def prunable_layers(model: nn.Module, types: tuple[type, ...] = PRUNABLE) -> dict[str, nn.Module]:
    """Name -> module of every Linear/Conv2d (the layers whose ``weight`` pruning acts on)."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, types)}
    if not layers:
        raise ValueError(f"the model has no layer of a supported type {[t.__name__ for t in types]}")
    return layers


def global_magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One threshold for all tensors: prune the ``round(sparsity * total)`` smallest ``|w|`` overall."""
    _check_sparsity(sparsity)
    if not weights:
        raise ValueError("weights must be a non-empty dict of name -> tensor")
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    k = _n_pruned(flat.numel(), sparsity)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if k:
        keep[torch.topk(flat, k, largest=False).indices] = False
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = keep[start : start + w.numel()].view_as(w)
        start += w.numel()
    return masks


def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "layer") -> dict[str, torch.Tensor]:
    """Masks for every prunable layer: ``scope="layer"`` (same sparsity each) or ``"global"`` (one threshold)."""
    layers = prunable_layers(model)
    if scope == "layer":
        return {n: magnitude_mask(m.weight, sparsity) for n, m in layers.items()}
    if scope == "global":
        return global_magnitude_masks({n: m.weight for n, m in layers.items()}, sparsity)
    raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")


def apply_masks_(model: nn.Module, masks: dict[str, torch.Tensor], keep_during_training: bool = True) -> list:
    """Zero the pruned weights in place; with ``keep_during_training`` also zero their gradients
    (a hook on each weight), so that fine-tuning with Adam (no weight decay) keeps them at zero.

    Returns the hook handles (call ``.remove()`` on each to stop masking gradients).
    """
    modules = dict(model.named_modules())
    handles = []
    for name, mask in masks.items():
        if name not in modules or not isinstance(modules[name], PRUNABLE):
            raise ValueError(f"{name!r} is not a prunable layer of the model")
        w = modules[name].weight
        _check_mask(w, mask)
        with torch.no_grad():
            w.mul_(mask)
        if keep_during_training:
            handles.append(w.register_hook(lambda g, m=mask: g * m))
    return handles


def prune_(model: nn.Module, sparsity: float, scope: str = "layer") -> dict[str, torch.Tensor]:
    """Magnitude-prune every Linear/Conv2d of ``model`` in place; return the masks (gradients stay masked)."""
    masks = magnitude_masks(model, sparsity, scope)
    apply_masks_(model, masks)
    return masks


def layer_sparsities(model: nn.Module) -> dict[str, float]:
    """Fraction of zero weights in each prunable layer."""
    return {n: float((m.weight == 0).float().mean()) for n, m in prunable_layers(model).items()}


# ----------------------------------------------------------------------------- scans and schedules
@torch.no_grad()
def sensitivity_scan(
    model: nn.Module, sparsities: Iterable[float], evaluate: Callable[[nn.Module], float],
    layers: Iterable[str] | None = None,
) -> dict[str, list[float]]:
    """Prune one layer at a time (magnitude) at each sparsity and evaluate; weights are restored after each.

    Returns ``{layer: [evaluate(model) at each sparsity]}``.
    """
    sparsities = list(sparsities)
    for s in sparsities:
        _check_sparsity(s)
    all_layers = prunable_layers(model)
    names = list(all_layers) if layers is None else list(layers)
    result = {}
    for name in names:
        if name not in all_layers:
            raise ValueError(f"{name!r} is not a prunable layer of the model")
        w = all_layers[name].weight
        original = w.detach().clone()
        scores = []
        for s in sparsities:
            w.mul_(magnitude_mask(original, s))
            scores.append(evaluate(model))
            w.copy_(original)
        result[name] = scores
    return result


def cubic_sparsity(step: int, total_steps: int, final_sparsity: float, initial_sparsity: float = 0.0) -> float:
    """Zhu & Gupta's gradual schedule: ``s_f + (s_i - s_f) * (1 - step / total_steps) ** 3``."""
    _check_sparsity(final_sparsity)
    _check_sparsity(initial_sparsity)
    if total_steps <= 0 or not 0 <= step:
        raise ValueError(f"need total_steps > 0 and step >= 0, got {step}, {total_steps}")
    t = min(step, total_steps) / total_steps
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - t) ** 3


# ----------------------------------------------------------------------------- storage
def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool mask into ``ceil(numel / 8)`` bytes (uint8, first element in the lowest bit)."""
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    flat = mask.flatten()
    pad = (-flat.numel()) % 8
    bits = torch.cat([flat, flat.new_zeros(pad)]).view(-1, 8).to(torch.uint8)
    return (bits << torch.arange(8, dtype=torch.uint8)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`."""
    numel = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.numel() != math.ceil(numel / 8):
        raise ValueError(f"expected {math.ceil(numel / 8)} uint8 bytes for shape {shape}")
    bits = (packed[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.flatten()[:numel].bool().view(shape)


def to_csr(weight: torch.Tensor) -> torch.Tensor:
    """``weight.to_sparse_csr()`` without PyTorch's "CSR support is in beta" warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return weight.to_sparse_csr()


def storage_bytes(weight: torch.Tensor) -> dict[str, int]:
    """Bytes of one FP32 matrix stored ``dense``, as PyTorch ``csr`` (values + int64 indices + row
    pointers) and as a ``bitmask`` (non-zero values + 1 bit per weight), counted from real tensors."""
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    w = weight.detach().float()
    csr = to_csr(w)
    nbytes = lambda t: t.numel() * t.element_size()  # noqa: E731
    return {
        "dense": nbytes(w),
        "csr": nbytes(csr.values()) + nbytes(csr.col_indices()) + nbytes(csr.crow_indices()),
        "bitmask": nbytes(w[w != 0]) + nbytes(pack_bits(w != 0)),
    }


# ----------------------------------------------------------------------------- N:M masks
def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """N:M semi-structured mask: in every group of ``m`` consecutive inputs of a row, keep the ``n`` largest |w|."""
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight (out, in), got shape {tuple(weight.shape)}")
    if not 0 < n < m:
        raise ValueError(f"need 0 < n < m, got n={n}, m={m}")
    if weight.shape[1] % m:
        raise ValueError(f"the input dimension {weight.shape[1]} is not divisible by m={m}")
    groups = weight.detach().abs().reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(n, dim=1).indices, True)
    return keep.view_as(weight)


# ----------------------------------------------------------------------------- structured: CNN channels
def l1_keep_channels(weight: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (sorted) of the ``keep`` output channels with the largest L1 norm. ``weight`` is ``(out, ...)``."""
    if not 1 <= keep <= weight.shape[0]:
        raise ValueError(f"keep must be in [1, {weight.shape[0]}], got {keep}")
    norms = weight.detach().abs().flatten(1).sum(dim=1)
    return norms.topk(keep).indices.sort().values


def _conv_subset(conv: nn.Conv2d, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Conv2d:
    w = conv.weight.detach()
    w = w if out_idx is None else w[out_idx]
    w = w if in_idx is None else w[:, in_idx]
    new = nn.Conv2d(w.shape[1], w.shape[0], conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    new.weight.data.copy_(w)
    if conv.bias is not None:
        new.bias.data.copy_(conv.bias.detach() if out_idx is None else conv.bias.detach()[out_idx])
    return new


def prune_cnn_channels(model: DigitsCNN, keep_ratio: float) -> DigitsCNN:
    """A new, smaller DigitsCNN keeping ``keep_ratio`` of each conv's output channels (largest L1 norm).

    The next conv loses the matching input channels; the classifier's first Linear loses the
    matching input features (each channel feeds the 2x2 = 4 flattened positions).
    """
    if not isinstance(model, DigitsCNN):
        raise TypeError(f"prune_cnn_channels supports DigitsCNN, got {type(model).__name__}")
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    keeps = [l1_keep_channels(c.weight, max(1, round(keep_ratio * c.out_channels))) for c in convs]
    new_convs = [_conv_subset(c, k, None if i == 0 else keeps[i - 1]) for i, (c, k) in enumerate(zip(convs, keeps))]
    fc1, fc2 = model.classifier[1], model.classifier[3]
    cols = (keeps[-1][:, None] * 4 + torch.arange(4)).flatten()  # channel c -> features 4c..4c+3
    small = DigitsCNN(channels=tuple(c.out_channels for c in new_convs), hidden=fc1.out_features)
    for dst, src in zip([m for m in small.features if isinstance(m, nn.Conv2d)], new_convs):
        dst.load_state_dict(src.state_dict())
    small.classifier[1].weight.data.copy_(fc1.weight.detach()[:, cols])
    small.classifier[1].bias.data.copy_(fc1.bias.detach())
    small.classifier[3].load_state_dict(fc2.state_dict())
    return small.eval()


def prune_resnet_blocks_(model: nn.Module, keep_ratio: float) -> nn.Module:
    """Keep ``keep_ratio`` of the inner channels of every torchvision BasicBlock (conv1's outputs by
    L1 norm, with bn1 and conv2's inputs); the residual path keeps its shape. In place; returns model."""
    from torchvision.models.resnet import BasicBlock

    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    if not blocks:
        raise TypeError("the model has no torchvision BasicBlock (expected a ResNet-18/34)")
    for b in blocks:
        idx = l1_keep_channels(b.conv1.weight, max(1, round(keep_ratio * b.conv1.out_channels)))
        b.conv1 = _conv_subset(b.conv1, idx, None)
        bn = nn.BatchNorm2d(len(idx))
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).data.copy_(getattr(b.bn1, name).detach()[idx])
        b.bn1 = bn
        b.conv2 = _conv_subset(b.conv2, None, idx)
    return model


# ----------------------------------------------------------------------------- structured: heads and neurons
def _gated_inputs(model: TinyGPT) -> dict[str, tuple[nn.Linear, int]]:
    """Layers whose *input* groups are pruned: attn.proj (groups = heads) and mlp.proj (groups = neurons)."""
    out = {}
    for i, b in enumerate(model.blocks):
        out[f"heads.{i}"] = (b.attn.proj, b.attn.head_dim)
        out[f"neurons.{i}"] = (b.mlp.proj, 1)
    return out


def gpt_importance(model: TinyGPT, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Importance of each head and MLP neuron, as in Michel et al. 2019: the mean over sequences of
    ``|dL(x)/d gate|``, where a gate of 1 multiplies the head's (or neuron's) output. Each sequence
    of each ``(B, T)`` batch gets its own backward pass, so that gradients of opposite sign do not cancel.

    Returns ``{"heads.i": (n_head,), "neurons.i": (4C,)}`` for each block ``i``.
    """
    import torch.nn.functional as F

    targets = _gated_inputs(model)
    gates = {k: torch.ones(lin.in_features // g, requires_grad=True) for k, (lin, g) in targets.items()}
    hooks = [lin.register_forward_pre_hook(
        lambda mod, args, gate=gates[k], g=g: (args[0] * gate.repeat_interleave(g),))
        for k, (lin, g) in targets.items()]
    scores = {k: torch.zeros_like(v) for k, v in gates.items()}
    n = 0
    was_training = model.training
    model.eval()
    try:
        for xb, yb in batches:
            for x, y in zip(xb, yb):
                for gt in gates.values():
                    gt.grad = None
                F.cross_entropy(model(x[None]).flatten(0, 1), y).backward()
                for k, gt in gates.items():
                    scores[k] += gt.grad.abs()
                n += 1
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if n == 0:
        raise ValueError("batches is empty")
    return {k: v / n for k, v in scores.items()}


def prune_gpt_(model: TinyGPT, importance: dict[str, torch.Tensor], head_ratio: float, neuron_ratio: float) -> TinyGPT:
    """Remove the least important fraction of attention heads (``head_ratio``) and MLP neurons
    (``neuron_ratio``), ranked globally across blocks by raw importance (Michel et al. divide each
    layer's scores by their L2 norm first; on TinyGPT that removed more of the useful heads);
    at least one head and one neuron stay per block.
    Rebuilds smaller dense ``qkv``/``attn.proj`` and ``fc``/``mlp.proj`` layers in place."""
    for r in (head_ratio, neuron_ratio):
        _check_sparsity(r)

    def keep_sets(kind: str, ratio: float) -> dict[int, torch.Tensor]:
        keys = sorted((k for k in importance if k.startswith(kind)), key=lambda k: int(k.split(".")[1]))
        flat = torch.cat([importance[k] for k in keys])
        drop = set(flat.argsort()[: _n_pruned(flat.numel(), ratio)].tolist())
        result, start = {}, 0
        for k in keys:
            n = importance[k].numel()
            idx = [j for j in range(n) if start + j not in drop] or [int(importance[k].argmax())]
            result[int(k.split(".")[1])] = torch.tensor(idx)
            start += n
        return result

    heads, neurons = keep_sets("heads", head_ratio), keep_sets("neurons", neuron_ratio)
    for i, b in enumerate(model.blocks):
        a, hd = b.attn, b.attn.head_dim
        if importance[f"heads.{i}"].numel() != a.n_head:
            raise ValueError(f"importance of block {i} has {importance[f'heads.{i}'].numel()} heads, the model {a.n_head}")
        cols = (heads[i][:, None] * hd + torch.arange(hd)).flatten()  # features of the kept heads
        inner = a.n_head * hd
        rows = torch.cat([cols, inner + cols, 2 * inner + cols])  # their q, k and v rows
        a.qkv = _linear_subset(a.qkv, rows, None)
        a.proj = _linear_subset(a.proj, None, cols)
        a.n_head = len(heads[i])
        b.mlp.fc = _linear_subset(b.mlp.fc, neurons[i], None)
        b.mlp.proj = _linear_subset(b.mlp.proj, None, neurons[i])
    return model


def _linear_subset(lin: nn.Linear, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Linear:
    w = lin.weight.detach()
    w = w if out_idx is None else w[out_idx]
    w = w if in_idx is None else w[:, in_idx]
    new = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None)
    new.weight.data.copy_(w)
    if lin.bias is not None:
        new.bias.data.copy_(lin.bias.detach() if out_idx is None else lin.bias.detach()[out_idx])
    return new


# ----------------------------------------------------------------------------- one-shot LLM pruning
class InputStats:
    """Running statistics of a Linear's inputs: ``H = sum x x^T`` ``(in, in)`` and the count of rows."""

    def __init__(self, in_features: int):
        self.H = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        self.H += x.T @ x
        self.n += x.shape[0]

    @property
    def col_norms(self) -> torch.Tensor:
        """``||X_j||_2`` of each input feature over all rows seen ``(in,)``."""
        return self.H.diagonal().sqrt().float()


def collect_input_stats(model: nn.Module, run: Callable[[], object], layers: Iterable[str] | None = None) -> dict[str, InputStats]:
    """Run ``run()`` once with hooks that accumulate :class:`InputStats` for each Linear (or those named)."""
    return observe_linear_inputs(model, run, lambda lin: InputStats(lin.in_features), layers)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per output row, prune the ``round(sparsity * in)`` lowest scores. ``scores`` is ``(out, in)``."""
    _check_sparsity(sparsity)
    k = _n_pruned(scores.shape[1], sparsity)
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k:
        mask.scatter_(1, scores.topk(k, dim=1, largest=False).indices, False)
    return mask


def wanda_mask(weight: torch.Tensor, col_norms: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Wanda: score ``|W_ij| * ||X_j||``, pruned per output row. ``weight`` ``(out, in)``, ``col_norms`` ``(in,)``."""
    if col_norms.shape != (weight.shape[1],):
        raise ValueError(f"col_norms must have shape ({weight.shape[1]},), got {tuple(col_norms.shape)}")
    return row_mask(weight.detach().abs() * col_norms[None, :], sparsity)


@torch.no_grad()
def sparsegpt_(weight: torch.Tensor, H: torch.Tensor, sparsity: float, block_size: int = 128, damp: float = 0.01,
               nm: tuple[int, int] | None = None) -> torch.Tensor:
    """SparseGPT (Frantar & Alistarh 2023) on one weight ``(out, in)``, in place, with ``H = X X^T`` ``(in, in)``.

    Columns are processed in blocks; inside a block, each row prunes its weights with the smallest
    ``w^2 / U_jj^2``, where ``U`` is the upper Cholesky factor of ``H^-1`` (``U_jj^2`` is the OBS
    ``[H^-1]_jj`` of column ``j`` once the earlier columns are fixed), and every pruned weight's error
    is spread over the row's later columns by the OBS update. With ``nm = (n, m)`` the mask is N:M
    instead (``sparsity`` is then ignored): every ``m`` consecutive columns of a row keep the ``n`` with the
    largest ``w^2 / U_jj^2``, chosen when the group is reached. Returns the mask.
    """
    _check_sparsity(sparsity)
    rows, cols = weight.shape
    if nm is not None and (block_size % nm[1] or cols % nm[1]):
        raise ValueError(f"m={nm[1]} must divide the block size {block_size} and the input dimension {cols}")
    if H.shape != (cols, cols):
        raise ValueError(f"H must be ({cols}, {cols}), got {tuple(H.shape)}")
    W = weight.detach().double().clone()
    H = H.double().clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * H.diagonal().mean() * torch.eye(cols, dtype=torch.float64)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    mask = torch.ones_like(W, dtype=torch.bool)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        d = Hinv1.diagonal()
        m1 = row_mask(W1**2 / d[None, :] ** 2, sparsity) if nm is None else torch.ones_like(W1, dtype=torch.bool)
        Err1 = torch.zeros_like(W1)
        for j in range(i2 - i1):
            if nm is not None and j % nm[1] == 0:
                span = slice(j, j + nm[1])
                m1[:, span] = nm_mask(W1[:, span] ** 2 / d[None, span] ** 2, *nm)
            w = W1[:, j]
            q = torch.where(m1[:, j], w, torch.zeros_like(w))
            err = (w - q) / d[j]
            W1[:, j:] -= err[:, None] * Hinv1[j, j:][None, :]
            W1[:, j] = q
            Err1[:, j] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
        mask[:, i1:i2] = m1
    weight.copy_(W.to(weight.dtype) * mask)
    return mask


@torch.no_grad()
def prune_oneshot_(
    model: nn.Module, sparsity: float, method: str, run_calibration: Callable[[], object] | None = None,
    nm: tuple[int, int] | None = None, skip: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """Prune every Linear of ``model`` (except the names in ``skip``) in place, without retraining.

    ``method``: ``"magnitude"`` (|W|), ``"wanda"`` (|W|·||X||) or ``"sparsegpt"`` (OBS reconstruction);
    the last two need ``run_calibration()``, which runs the model on calibration data. Statistics are
    taken once from the unpruned model (one-shot, not sequential). ``nm=None``: ``sparsity`` of each
    output row; ``nm=(n, m)``: an N:M pattern (``n`` of every ``m`` consecutive inputs kept; ``sparsity``
    must then be ``1 - n/m``). Returns the masks.
    """
    _check_sparsity(sparsity)
    if method not in ("magnitude", "wanda", "sparsegpt"):
        raise ValueError(f"method must be 'magnitude', 'wanda' or 'sparsegpt', got {method!r}")
    if nm is not None and abs(sparsity - (1 - nm[0] / nm[1])) > 1e-9:
        raise ValueError(f"an {nm[0]}:{nm[1]} pattern removes {1 - nm[0] / nm[1]:g} of the weights, not {sparsity:g}")
    skip = set(skip)
    layers = {n: m for n, m in prunable_layers(model, (nn.Linear,)).items() if n not in skip}
    if method != "magnitude" and run_calibration is None:
        raise ValueError(f"{method} needs calibration data: pass run_calibration")
    stats = collect_input_stats(model, run_calibration, list(layers)) if method != "magnitude" else {}
    masks = {}
    for name, lin in layers.items():
        if method == "sparsegpt":
            masks[name] = sparsegpt_(lin.weight, stats[name].H, sparsity, nm=nm)
        else:
            score = lin.weight.abs() if method == "magnitude" else lin.weight.abs() * stats[name].col_norms[None, :]
            masks[name] = row_mask(score, sparsity) if nm is None else nm_mask(score, *nm)
        lin.weight.mul_(masks[name])
    return masks


# ----------------------------------------------------------------------------- structured: whole blocks
@torch.no_grad()
def block_influence(blocks: nn.ModuleList, run: Callable[[], object]) -> torch.Tensor:
    """ShortGPT's block influence (Men et al. 2024, arXiv 2403.03853) of each block ``(n_blocks,)``:
    ``1 − cos(x_in, x_out)`` of the hidden state entering and leaving the block, averaged over every
    token that ``run()`` pushes through the model. A block that barely turns its input scores near 0."""
    if len(blocks) == 0:
        raise ValueError("no blocks to score")
    sums = torch.zeros(len(blocks), dtype=torch.float64)
    counts = torch.zeros(len(blocks), dtype=torch.float64)

    def hook(i):
        def fn(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            cos = F.cosine_similarity(x.reshape(-1, x.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double(), dim=-1)
            sums[i] += float((1 - cos).sum())
            counts[i] += cos.numel()
        return fn

    handles = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    if bool((counts == 0).any()):
        raise ValueError("run() did not call every block")
    return (sums / counts).float()


def drop_blocks_(model: nn.Module, drop: Iterable[int]) -> nn.Module:
    """Remove the blocks ``model.model.layers[i]`` for ``i`` in ``drop`` from a Llama-style causal LM, in
    place, keeping the configuration and each attention's cache index consistent."""
    blocks = model.model.layers
    drop = sorted(set(int(i) for i in drop))
    if any(not 0 <= i < len(blocks) for i in drop) or len(drop) >= len(blocks):
        raise ValueError(f"drop must name some but not all of the {len(blocks)} blocks, got {drop}")
    kept = [b for i, b in enumerate(blocks) if i not in drop]
    for new_idx, b in enumerate(kept):
        if hasattr(b, "self_attn") and hasattr(b.self_attn, "layer_idx"):
            b.self_attn.layer_idx = new_idx
    model.model.layers = nn.ModuleList(kept)
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [t for i, t in enumerate(model.config.layer_types) if i not in drop]
    return model


# ----------------------------------------------------------------------------- sparse execution
class SparseLinear(nn.Module):
    """A Linear whose weight is stored and multiplied as CSR. ``(..., in) -> (..., out)``."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = to_csr(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = (self.weight @ flat.T).T
        y = y if self.bias is None else y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def to_sparse_execution_(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` with a :class:`SparseLinear` (CSR), in place."""
    return replace_linears(model, lambda name, lin: SparseLinear(lin))
