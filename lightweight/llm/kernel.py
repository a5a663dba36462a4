"""Chapter 8's INT4 kernel: a matrix-vector product over 4-bit weights in groups of 32, written in
Python and compiled for this CPU by numba, in the steps that make it fast.

A weight matrix ``(out, in)`` is stored as integers ``q`` in ``[-8, 7]`` (two per byte) and one FP32
scale ``d`` per row and group of 32 inputs: ``w = q · d`` (symmetric, as llama.cpp's Q4_0 and our GPTQ
integers of chapter 7). The steps, each measured in chapter 8:

1. :func:`gemv_naive`: one loop over the inputs, bytes packed as in chapter 4 (neighbours ``2j`` and
   ``2j + 1`` in one byte, two's complement nibbles): a shift that depends on the parity of the index
   and a sign test on every element keep the compiler from vectorising it.
2. :func:`gemv_q4_0`: llama.cpp's Q4_0 layout (byte ``j`` of a block holds elements ``j`` and
   ``j + 16`` as ``q + 8``): the inner loop reads 16 contiguous bytes and two contiguous halves of
   ``x``, and ``fastmath`` lets the compiler reorder the sums, so it becomes SIMD code.
3. :func:`gemv_q4_0_lanes`: the same work, but each of the 32 positions of a block keeps its own running
   sum over all the blocks of a row (``acc[j] += q · x · d``), added up once at the end of the row,
   instead of one horizontal sum of 32 products per block: what llama.cpp's SIMD loops do (a vector
   accumulator, one ``fmadd`` per block, one horizontal sum per row).
4. :func:`gemv_q4_0_threads`: step 3 with the rows split across threads (``prange``).

:class:`Q4Linear` runs a layer with them (and :func:`int8_linear`'s kernel for an INT8 output head),
through a ``torch.library`` operator so that ``torch.compile`` can keep it in its graph.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
import torch
import torch.profiler
import torch.nn as nn
from numba import njit, prange

from ..quantize import QTensor

BLOCK = 32  # inputs per group (one scale each), as in Q4_0


# ----------------------------------------------------------------------------- layouts
def _check_int4(q: torch.Tensor) -> None:
    if q.dim() != 2 or q.shape[1] % BLOCK:
        raise ValueError(f"the kernel takes (out, in) integers with in a multiple of {BLOCK}, got {tuple(q.shape)}")
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ValueError("4-bit integers must lie in [-8, 7]")


def pack_neighbours(q: torch.Tensor) -> np.ndarray:
    """Chapter 4's layout: ``(out, in)`` integers -> ``uint8 (out, in / 2)``, byte ``j`` = ``q[2j]`` in the
    low nibble and ``q[2j + 1]`` in the high one, each as a two's complement nibble."""
    _check_int4(q)
    u = (q.to(torch.int16) & 0xF).to(torch.uint8)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).contiguous().numpy()


def pack_q4_0(q: torch.Tensor) -> np.ndarray:
    """llama.cpp's Q4_0 layout: ``(out, in)`` integers -> ``uint8 (out, in / 2)``; in each block of 32
    inputs, byte ``j`` holds ``q[j] + 8`` (low nibble) and ``q[j + 16] + 8`` (high nibble)."""
    _check_int4(q)
    u = (q.to(torch.int16) + 8).to(torch.uint8).reshape(q.shape[0], -1, 2, BLOCK // 2)
    return (u[:, :, 0] | (u[:, :, 1] << 4)).reshape(q.shape[0], -1).contiguous().numpy()


def block_scales(qt: QTensor) -> np.ndarray:
    """The FP32 scales ``(out, in / 32)`` of symmetric integers in groups of 32 (zero-points refused)."""
    if qt.bits != 4 or qt.group_size != BLOCK:
        raise ValueError(f"the kernel takes 4-bit integers in groups of {BLOCK}, got bits={qt.bits}, group={qt.group_size}")
    if bool((qt.zero != 0).any()):
        raise ValueError("the kernel takes symmetric integers (w = q · d): these have zero-points")
    return qt.scale.float().contiguous().numpy()


def dequantize(q: torch.Tensor, scales: np.ndarray) -> torch.Tensor:
    """The FP32 weight ``(out, in)`` the kernels compute with: ``q · d`` per group of 32."""
    return q.float() * torch.from_numpy(np.ascontiguousarray(scales)).repeat_interleave(BLOCK, dim=1)


def _check_call(x: np.ndarray, packed: np.ndarray, scales: np.ndarray) -> None:
    """A clear error instead of a crash or a silently wrong answer for what the kernels do not take."""
    if not (isinstance(x, np.ndarray) and isinstance(packed, np.ndarray) and isinstance(scales, np.ndarray)):
        raise TypeError("x, packed and scales must be numpy arrays (torch: tensor.numpy())")
    if x.dtype != np.float32 or packed.dtype != np.uint8 or scales.dtype != np.float32:
        raise TypeError(f"expected x float32, packed uint8, scales float32; got {x.dtype}, {packed.dtype}, {scales.dtype}")
    if x.ndim != 1 or packed.ndim != 2 or scales.ndim != 2:
        raise ValueError(f"expected x (in,), packed (out, in/2), scales (out, in/32); got {x.shape}, {packed.shape}, {scales.shape}")
    if x.shape[0] % BLOCK or packed.shape != (scales.shape[0], x.shape[0] // 2) or scales.shape[1] != x.shape[0] // BLOCK:
        raise ValueError(f"shapes do not fit: x {x.shape} (in must be a multiple of {BLOCK}), packed {packed.shape} "
                         f"(out, in/2), scales {scales.shape} (out, in/32)")
    if not (x.flags.c_contiguous and packed.flags.c_contiguous and scales.flags.c_contiguous):
        raise ValueError("x, packed and scales must be C-contiguous (np.ascontiguousarray)")


# ----------------------------------------------------------------------------- the steps
@njit(cache=True)
def _gemv_naive(x, packed, scales):
    out, n = packed.shape[0], x.shape[0]
    y = np.empty(out, dtype=np.float32)
    for r in range(out):
        acc = np.float32(0.0)
        for i in range(n):
            nib = (packed[r, i >> 1] >> ((i & 1) * 4)) & 15
            q = np.int32(nib) - 16 if nib > 7 else np.int32(nib)
            acc += q * scales[r, i // 32] * x[i]
        y[r] = acc
    return y


@njit(fastmath=True, cache=True)
def _gemv_q4_0(x, packed, scales):
    out, blocks = scales.shape
    y = np.empty(out, dtype=np.float32)
    for r in range(out):
        acc = np.float32(0.0)
        for b in range(blocks):
            s = np.float32(0.0)
            for j in range(16):
                byte = packed[r, b * 16 + j]
                s += np.float32(np.int32(byte & 15) - 8) * x[b * 32 + j] + np.float32(np.int32(byte >> 4) - 8) * x[b * 32 + 16 + j]
            acc += s * scales[r, b]
        y[r] = acc
    return y


@njit(fastmath=True, cache=True)
def _gemv_q4_0_lanes(x, packed, scales):
    out, blocks = scales.shape
    y = np.empty(out, dtype=np.float32)
    acc = np.empty(32, dtype=np.float32)
    for r in range(out):
        acc[:] = 0.0
        for b in range(blocks):
            d = scales[r, b]
            for j in range(16):
                byte = packed[r, b * 16 + j]
                acc[j] += np.float32(np.int32(byte & 15) - 8) * (x[b * 32 + j] * d)
                acc[16 + j] += np.float32(np.int32(byte >> 4) - 8) * (x[b * 32 + 16 + j] * d)
        y[r] = acc.sum()
    return y


@njit(fastmath=True, parallel=True, cache=True)
def _gemv_q4_0_threads(x, packed, scales):
    out, blocks = scales.shape
    y = np.empty(out, dtype=np.float32)
    for r in prange(out):
        acc = np.zeros(32, dtype=np.float32)
        for b in range(blocks):
            d = scales[r, b]
            for j in range(16):
                byte = packed[r, b * 16 + j]
                acc[j] += np.float32(np.int32(byte & 15) - 8) * (x[b * 32 + j] * d)
                acc[16 + j] += np.float32(np.int32(byte >> 4) - 8) * (x[b * 32 + 16 + j] * d)
        y[r] = acc.sum()
    return y


@njit(fastmath=True, parallel=True, cache=True)
def _matmul_q4_0(x, packed, scales):
    """``x`` ``(T, in)`` -> ``(T, out)``: each block of a row is decoded once and used for all ``T`` rows
    of ``x`` (the prompt's tokens)."""
    out, blocks = scales.shape
    t = x.shape[0]
    y = np.empty((t, out), dtype=np.float32)
    for r in prange(out):
        w = np.empty(32, dtype=np.float32)
        acc = np.zeros(t, dtype=np.float32)
        for b in range(blocks):
            d = scales[r, b]
            for j in range(16):
                byte = packed[r, b * 16 + j]
                w[j] = np.float32(np.int32(byte & 15) - 8) * d
                w[16 + j] = np.float32(np.int32(byte >> 4) - 8) * d
            for i in range(t):
                s = np.float32(0.0)
                for j in range(32):
                    s += w[j] * x[i, b * 32 + j]
                acc[i] += s
        for i in range(t):
            y[i, r] = acc[i]
    return y


@njit(fastmath=True, parallel=True, cache=True)
def _matmul_int8(x, weight, scale):
    """``x`` ``(T, in)`` -> ``(T, out)`` for INT8 weights ``(out, in)`` with one FP32 scale per row."""
    out, n = weight.shape
    t = x.shape[0]
    y = np.empty((t, out), dtype=np.float32)
    for r in prange(out):
        for i in range(t):
            s = np.float32(0.0)
            for j in range(n):
                s += np.float32(weight[r, j]) * x[i, j]
            y[i, r] = s * scale[r]
    return y


def gemv_naive(x: np.ndarray, packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Step 1: ``y = W x`` with ``packed`` in chapter 4's layout (:func:`pack_neighbours`). ``x`` ``(in,)``,
    ``packed`` ``uint8 (out, in/2)``, ``scales`` ``(out, in/32)`` -> ``y`` ``(out,)``, all FP32 but packed."""
    _check_call(x, packed, scales)
    return _gemv_naive(x, packed, scales)


def gemv_q4_0(x: np.ndarray, packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Step 2: the same product with ``packed`` in Q4_0's layout (:func:`pack_q4_0`), one thread."""
    _check_call(x, packed, scales)
    return _gemv_q4_0(x, packed, scales)


def gemv_q4_0_lanes(x: np.ndarray, packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Step 3: step 2 with 32 running sums per row (one per position of a block), added up once per row."""
    _check_call(x, packed, scales)
    return _gemv_q4_0_lanes(x, packed, scales)


def gemv_q4_0_threads(x: np.ndarray, packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Step 4: step 3 with the rows split over numba's threads (:func:`set_threads`)."""
    _check_call(x, packed, scales)
    return _gemv_q4_0_threads(x, packed, scales)


STEPS = {"naive": gemv_naive, "q4_0": gemv_q4_0, "lanes": gemv_q4_0_lanes, "threads": gemv_q4_0_threads}


def set_threads(n: int) -> int:
    """Use ``n`` of numba's threads (at most the ones it started with); returns the count in use."""
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n


def _q4_0_forward(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1]).float().contiguous().numpy()
    p, s = packed.numpy(), scales.numpy()
    set_threads(torch.get_num_threads())
    with torch.profiler.record_function("lightweight::q4_0_linear"):  # seen by a profiler as a kernel
        y = _gemv_q4_0_threads(flat[0], p, s)[None] if flat.shape[0] == 1 else _matmul_q4_0(flat, p, s)
    return torch.from_numpy(y).reshape(*x.shape[:-1], p.shape[0]).to(x.dtype)


def _int8_forward(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1]).float().contiguous().numpy()
    set_threads(torch.get_num_threads())
    with torch.profiler.record_function("lightweight::int8_linear"):
        y = _matmul_int8(flat, weight.numpy(), scale.numpy())
    return torch.from_numpy(y).reshape(*x.shape[:-1], weight.shape[0]).to(x.dtype)


# ----------------------------------------------------------------------------- how fast each step is
SHAPES = {"attn q/k/v": (960, 576), "attn o": (576, 576), "mlp gate/up": (3072, 576), "mlp down": (576, 1536),
          "large (11008, 4096)": (11008, 4096)}  # SmolLM2's fused layers (out, in), and a 7B model's MLP matrix


def step_speeds(steps: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] | None = None,
                shapes: dict[str, tuple[int, int]] | None = None, rounds: int = 7, min_seconds: float = 0.02,
                references: bool = True, seed: int = 0, progress: bool = True) -> dict[str, dict[str, float]]:
    """GB/s of each GEMV on each shape, at batch 1: bytes of the matrix as stored (packed INT4 + FP32
    scales for ours; aten's packed INT4 + its BF16 scale-and-zero table, the same 20 bytes per 32
    weights; 4 or 2 bytes per weight for ``F.linear`` in FP32 / BF16) over the median seconds of one call.

    ``steps``: name -> kernel ``(x, packed, scales) -> y`` (default :data:`STEPS`; a name containing
    "naive" gets chapter 4's layout, the others Q4_0's). ``references`` adds aten's int4 kernel (BF16
    activations) and ``F.linear`` FP32 and BF16. Calls are repeated to last ``min_seconds`` per timing;
    ``rounds`` timings per kernel, interleaved. Returns ``{shape: {kernel: GB/s}}``."""
    import statistics
    import time

    import torch.nn.functional as F

    from ..quantize import quantize_tensor
    from ..train import progress_bar
    from .lowbit import Int4WeightOnlyLinear

    steps = dict(STEPS if steps is None else steps)
    out: dict[str, dict[str, float]] = {}
    for label, (rows, cols) in progress_bar(list((shapes or SHAPES).items()), progress, desc="GEMV"):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(rows, cols, generator=g) / cols ** 0.5
        qt = quantize_tensor(w, bits=4, group_size=BLOCK)
        scales = block_scales(qt)
        x = torch.randn(cols, generator=g)
        xn = x.numpy()
        layouts = {"neighbours": pack_neighbours(qt.q), "q4_0": pack_q4_0(qt.q)}
        calls: dict[str, tuple[Callable[[], object], int]] = {}
        int4_bytes = packed_bytes(rows, cols)
        for name, fn in steps.items():
            packed = layouts["neighbours" if "naive" in name else "q4_0"]
            calls[name] = ((lambda f=fn, p=packed: f(xn, p, scales)), int4_bytes)
        if references:
            linear = torch.nn.Linear(cols, rows, bias=False)
            with torch.no_grad():
                linear.weight.copy_(w)
            aten = Int4WeightOnlyLinear(linear, qt)
            xb, wb = x[None].to(torch.bfloat16), w.to(torch.bfloat16)
            aten_bytes = aten.weight_int4pack.numel() + aten.scales_and_zeros.numel() * 2
            calls["aten int4"] = (lambda: aten(xb), aten_bytes)
            calls["F.linear fp32"] = (lambda: F.linear(x[None], w), rows * cols * 4)
            calls["F.linear bf16"] = (lambda: F.linear(xb, wb), rows * cols * 2)
        number = {}
        with torch.inference_mode():
            for name, (fn, _) in calls.items():  # warm-up (compiles), then calls per timing
                fn()
                start = time.perf_counter()
                fn()
                number[name] = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-7)))
            times: dict[str, list[float]] = {n: [] for n in calls}
            for _ in range(rounds):
                for name, (fn, _) in calls.items():
                    start = time.perf_counter()
                    for _ in range(number[name]):
                        fn()
                    times[name].append((time.perf_counter() - start) / number[name])
        out[label] = {n: calls[n][1] / statistics.median(t) / 1e9 for n, t in times.items()}
    return out


# ----------------------------------------------------------------------------- as PyTorch layers
@torch.library.custom_op("lightweight::q4_0_linear", mutates_args=())
def q4_0_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``(..., in) -> (..., out)`` FP32 through the numba kernels (one token: the GEMV of step 4;
    several: :func:`_matmul_q4_0`), on ``torch.get_num_threads()`` threads."""
    return _q4_0_forward(x, packed, scales)


@q4_0_linear.register_fake
def _(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], packed.shape[0])


@torch.library.custom_op("lightweight::int8_linear", mutates_args=())
def int8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``(..., in) -> (..., out)`` through an INT8 per-row-scale matrix ``(out, in)`` (numba, FP32)."""
    return _int8_forward(x, weight, scale)


@int8_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


class Q4Linear(nn.Module):
    """A linear layer ``(..., in) -> (..., out)`` over Q4_0-layout INT4 weights run by our numba kernel
    (FP32 activations, no bias): one token by the GEMV of step 4, a prompt by a block matmul."""

    def __init__(self, qtensor: QTensor):
        super().__init__()
        self.out_features, self.in_features = qtensor.q.shape
        self.register_buffer("packed", torch.from_numpy(pack_q4_0(qtensor.q)))
        self.register_buffer("scales", torch.from_numpy(block_scales(qtensor)))

    def dequantized_weight(self) -> torch.Tensor:
        """The FP32 weight ``(out, in)`` this layer computes with."""
        p = self.packed.to(torch.int16).reshape(self.out_features, -1, 16)
        q = torch.cat([(p & 15) - 8, (p >> 4) - 8], dim=-1).reshape(self.out_features, self.in_features)
        return dequantize(q, self.scales.numpy())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected inputs (..., {self.in_features}), got {tuple(x.shape)}")
        if torch.compiler.is_compiling():  # an operator the compiler keeps in its graph
            return q4_0_linear(x, self.packed, self.scales)
        return _q4_0_forward(x, self.packed, self.scales)  # eager: skip the operator's dispatch (tens of µs)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}"


class Int8Linear(nn.Module):
    """A linear layer ``(..., in) -> (..., out)`` over symmetric per-row INT8 weights, run by numba (FP32)."""

    def __init__(self, qtensor: QTensor):
        super().__init__()
        if qtensor.bits != 8 or qtensor.group_size != qtensor.q.shape[1] or bool((qtensor.zero != 0).any()):
            raise ValueError("Int8Linear takes symmetric per-row INT8 integers (bits=8, group_size=None)")
        self.out_features, self.in_features = qtensor.q.shape
        self.register_buffer("weight_int8", qtensor.q.to(torch.int8).contiguous())
        self.register_buffer("scale", qtensor.scale[:, 0].float().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected inputs (..., {self.in_features}), got {tuple(x.shape)}")
        if torch.compiler.is_compiling():
            return int8_linear(x, self.weight_int8, self.scale)
        return _int8_forward(x, self.weight_int8, self.scale)


def packed_bytes(out_features: int, in_features: int) -> int:
    """Bytes a Q4_0-layout matrix of :class:`Q4Linear` occupies: 16 bytes of nibbles and a 4-byte FP32
    scale per block of 32 (llama.cpp stores the scale in FP16: 18 bytes)."""
    if in_features % BLOCK:
        raise ValueError(f"in_features must be a multiple of {BLOCK}, got {in_features}")
    return out_features * in_features // BLOCK * (16 + 4)


__all__ = ["BLOCK", "pack_neighbours", "pack_q4_0", "block_scales", "dequantize", "gemv_naive", "gemv_q4_0",
           "gemv_q4_0_lanes", "gemv_q4_0_threads", "STEPS", "set_threads", "Q4Linear", "Int8Linear", "packed_bytes",
           "q4_0_linear", "int8_linear", "SHAPES", "step_speeds"]
