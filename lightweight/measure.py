"""Measuring what a compression bought: parameters, bytes, sparsity, latency, quality.

Timing rules of the course: a latency is the *median* of several repeats, and a speed ratio
compares two callables measured in the *same run*, interleaved, so that a busy machine slows
both alike.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

# Bits per stored value of each format the course uses ("int4" is two values per byte).
BITS = {
    "fp32": 32, "float32": 32, "fp16": 16, "float16": 16, "bf16": 16, "bfloat16": 16,
    "fp8": 8, "int8": 8, "int4": 4,
}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def bytes_for(numel: int, dtype: str) -> int:
    """Bytes needed to store ``numel`` values in ``dtype`` (``"fp32"``, ``"fp16"``, ``"int8"``, ``"int4"`` ...).

    Packed 4-bit values take ``ceil(numel / 2)`` bytes. Scales and zero-points are not included.
    """
    if not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel must be a non-negative int, got {numel!r}")
    key = str(dtype).lower().removeprefix("torch.")
    if key not in BITS:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(BITS)}")
    return math.ceil(numel * BITS[key] / 8)


def model_bytes(model: nn.Module, dtype: str = "fp32") -> int:
    """Bytes of all parameters of ``model`` if each were stored in ``dtype``."""
    return bytes_for(count_parameters(model), dtype)


def file_bytes(path: str | os.PathLike) -> int:
    """Size of a file on disk, in bytes."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    return p.stat().st_size


def safetensors_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes on disk of ``tensors`` saved as one safetensors file (header included)."""
    from safetensors.torch import save_file

    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise TypeError("expected a non-empty dict of name -> tensor")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "weights.safetensors"
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path))
        return file_bytes(path)


def sparsity(x: torch.Tensor | nn.Module) -> float:
    """Fraction of exact zeros in a tensor, or over all weight matrices (dim >= 2) of a module."""
    if isinstance(x, nn.Module):
        weights = [p for p in x.parameters() if p.dim() >= 2]
        if not weights:
            raise ValueError("the module has no weight matrices")
        zeros = sum(int((w == 0).sum()) for w in weights)
        return zeros / sum(w.numel() for w in weights)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a tensor or an nn.Module, got {type(x).__name__}")
    if x.numel() == 0:
        raise ValueError("sparsity of an empty tensor is undefined")
    return float((x == 0).sum()) / x.numel()


def _check_timing_args(repeats: int, warmup: int) -> None:
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")


def _time_once(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


@torch.no_grad()
def latency(fn: Callable[[], object], repeats: int = 15, warmup: int = 3, number: int = 1) -> float:
    """Median seconds per call of ``fn()`` over ``repeats`` timings of ``number`` calls each."""
    if not callable(fn):
        raise TypeError("fn must be callable with no arguments")
    _check_timing_args(repeats, warmup)
    for _ in range(warmup):
        fn()
    return statistics.median(_time_once(fn, number) for _ in range(repeats))


@torch.no_grad()
def speed_ratio(
    baseline: Callable[[], object], candidate: Callable[[], object], repeats: int = 15, warmup: int = 3, number: int = 1
) -> dict[str, float]:
    """Time two callables in the same run, interleaved; ``ratio`` = median(baseline) / median(candidate).

    A ratio above 1 means the candidate is faster. Returns ``{"baseline_s", "candidate_s", "ratio"}``.
    """
    if not (callable(baseline) and callable(candidate)):
        raise TypeError("baseline and candidate must be callables with no arguments")
    _check_timing_args(repeats, warmup)
    for _ in range(warmup):
        baseline()
        candidate()
    tb, tc = [], []
    for _ in range(repeats):
        tb.append(_time_once(baseline, number))
        tc.append(_time_once(candidate, number))
    b, c = statistics.median(tb), statistics.median(tc)
    return {"baseline_s": b, "candidate_s": c, "ratio": b / c}


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent. ``logits`` ``(N, K)``, ``labels`` ``(N,)`` int64."""
    if logits.dim() != 2 or labels.dim() != 1 or len(logits) != len(labels):
        raise ValueError(f"expected logits (N, K) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if labels.dtype != torch.long:
        raise TypeError(f"labels must be int64, got {labels.dtype}")
    return 100.0 * float((logits.argmax(dim=1) == labels).float().mean())


def perplexity(loss_nats: float) -> float:
    """Perplexity ``exp(loss)`` of a mean cross-entropy in nats per token."""
    if not math.isfinite(loss_nats) or loss_nats < 0:
        raise ValueError(f"loss must be a finite non-negative number of nats, got {loss_nats}")
    return math.exp(loss_nats)


def bits_per_char(loss_nats: float) -> float:
    """Convert a loss in nats per character to bits per character (divide by ln 2)."""
    if not math.isfinite(loss_nats) or loss_nats < 0:
        raise ValueError(f"loss must be a finite non-negative number of nats, got {loss_nats}")
    return loss_nats / math.log(2)
