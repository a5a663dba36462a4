"""Checks of chapter 8 (write the decoder and the kernel yourself): each compares the student's
function with lightweight.llm.decoder and lightweight.llm.kernel on several shapes."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ...llm import decoder as D
from ...llm import kernel as K
from . import CheckFailed, as_tensor, call, exercise, expect, isolated_rng, recognise


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and \
        bool(torch.allclose(a.detach().float(), b.float(), rtol=tol, atol=tol))


# ----------------------------------------------------------------------------- RMSNorm
NORM_CASES = (((4, 576), 1e-5), ((2, 3, 64), 1e-6), ((1, 5, 48), 0.5))


@exercise("ch08.rms_norm", "RMSNorm")
def rms_norm(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> None:
    got, want, cases = [], [], []
    with isolated_rng():
        for i, (shape, eps) in enumerate(NORM_CASES):
            g = torch.Generator().manual_seed(10 + i)
            x = torch.randn(*shape, generator=g) * (0.05 if eps == 0.5 else 3.0)
            w = torch.rand(shape[-1], generator=g) + 0.5
            cases.append((x, w, eps))
            got.append(as_tensor(call(fn, x, w, eps, names=["x", "weight", "eps"]), f"rms_norm với x {tuple(shape)}",
                                 shape=shape))
            want.append(D.rms_norm(x, w, eps))
    recognise(got, {
        "đây là LayerNorm: RMSNorm không trừ trung bình, chỉ chia cho căn của trung bình bình phương.":
            [(x - x.mean(-1, keepdim=True)) * torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + e) * w for x, w, e in cases],
        "eps nằm ngoài căn: phải là 1/sqrt(mean(x²) + eps), không phải 1/(sqrt(mean(x²)) + eps).":
            [x / (x.pow(2).mean(-1, keepdim=True).sqrt() + e) * w for x, w, e in cases],
        "bạn lấy tổng bình phương thay vì trung bình: mean(x²) trên chiều cuối (chia cho số chiều).":
            [x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + e) * w for x, w, e in cases],
        "thiếu trọng số `weight` (gain): nhân kết quả chuẩn hóa với weight.":
            [x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + e) for x, w, e in cases],
        "trung bình phải lấy trên chiều cuối (các đặc trưng của một token), không phải trên cả tensor.":
            [x * torch.rsqrt(x.pow(2).mean() + e) * w for x, w, e in cases],
    }, _close, want)
    for (x, w, e), a, b in zip(cases, got, want):
        expect(_close(a, b), f"với x {tuple(x.shape)}, eps={e}: sai lệch lớn nhất {float((a.float() - b).abs().max()):.3g}. "
                             "Công thức: x / sqrt(mean(x², chiều cuối) + eps) · weight.")
    xb, wb = cases[0][0].to(torch.bfloat16), cases[0][1].to(torch.bfloat16)  # as in a BF16 model
    out = call(fn, xb, wb, cases[0][2], names=["x", "weight", "eps"])
    expect(isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16,
           f"với x ở BF16, kết quả cần ở dtype của x (BF16), nhận {getattr(out, 'dtype', type(out).__name__)}: tính "
           "trong FP32 (x.float()) rồi đổi về x.dtype (.to(x.dtype)) trước khi nhân weight.")
    expect(_close(out.float(), D.rms_norm(xb, wb, cases[0][2]).float(), 2e-2),
           "với x ở BF16, kết quả lệch quá xa: tính trong FP32 (x.float()) rồi đổi về dtype của x.")


# ----------------------------------------------------------------------------- RoPE
ROPE_CASES = ((1, 2, 5, 8, 10000.0), (2, 9, 3, 64, 100000.0), (1, 3, 7, 16, 500.0))


def _rope_inputs(b: int, h: int, t: int, d: int, theta: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, h, t, d, generator=g)
    cos, sin = D.rope_tables(d, t + 4, theta)
    pos = torch.arange(4, 4 + t)  # positions 4 .. 4 + t - 1: not 0, so that a missing rotation shows
    return x, cos[pos], sin[pos]


def _rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)


@exercise("ch08.apply_rope", "Vị trí xoay (RoPE)")
def apply_rope(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    cases = [_rope_inputs(*c, seed=20 + i) for i, c in enumerate(ROPE_CASES)]
    got = [as_tensor(call(fn, x, c, s, names=["x", "cos", "sin"]), f"apply_rope với x {tuple(x.shape)}", shape=x.shape)
           for x, c, s in cases]
    want = [D.apply_rope(x, c, s) for x, c, s in cases]
    recognise(got, {
        "bạn ghép cặp hai chiều kề nhau (2i, 2i+1) như bản Llama gốc; quy ước của transformers (và trọng số ta nạp) "
        "ghép chiều i với chiều i + D/2 (hai nửa của đầu). Đó chính là lý do permute_qk của chương 7 tồn tại.":
            [_rope_interleaved(x, c, s) for x, c, s in cases],
        "chiều xoay bị ngược (góc −θ): nửa đầu là x1·cos − x2·sin, nửa sau là x2·cos + x1·sin.":
            [D.apply_rope(x, c, -s) for x, c, s in cases],
        "cos và sin bị đổi chỗ.": [D.apply_rope(x, s, c) for x, c, s in cases],
        "bạn chỉ xoay nửa đầu; nửa sau cũng đổi: x2·cos + x1·sin.":
            [torch.cat([x[..., : x.shape[-1] // 2] * c - x[..., x.shape[-1] // 2:] * s, x[..., x.shape[-1] // 2:]], -1)
             for x, c, s in cases],
    }, _close, want)
    for (x, _, _), a, b in zip(cases, got, want):
        expect(_close(a, b), f"với x {tuple(x.shape)}: sai lệch lớn nhất {float((a.float() - b).abs().max()):.3g}. "
                             "Tách x thành hai nửa x1, x2 (D/2 chiều mỗi nửa), trả về cat(x1·cos − x2·sin, x2·cos + x1·sin).")


# ----------------------------------------------------------------------------- one attention step
ATTN_CASES = ((1, 9, 3, 1, 16, 12, (7,)), (2, 4, 2, 1, 8, 6, (3,)), (1, 6, 3, 4, 8, 10, (2, 3, 4, 5)), (1, 4, 4, 2, 8, 5, (0, 1)))


def _attn_inputs(b: int, h: int, kv: int, t: int, d: int, slots: int, pos: tuple[int, ...], seed: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g)
    k = torch.randn(b, kv, slots, d, generator=g)
    v = torch.randn(b, kv, slots, d, generator=g)
    return q, k, v, torch.tensor(pos)


def _attn(q, k, v, pos, rep="interleave", scale=True, mask="le", axis=-1):
    h, kv = q.shape[1], k.shape[1]
    if rep == "interleave":
        k, v = k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1)
    else:
        k, v = k.repeat(1, h // kv, 1, 1), v.repeat(1, h // kv, 1, 1)
    s = q @ k.transpose(-1, -2) / (math.sqrt(q.shape[-1]) if scale else 1.0)
    slots = torch.arange(k.shape[2])[None, :]
    if mask == "le":
        s = s.masked_fill(~(slots <= pos[:, None]), float("-inf"))
    elif mask == "lt":
        s = s.masked_fill(~(slots < pos[:, None]), float("-inf"))
    return torch.nan_to_num(torch.softmax(s, dim=axis)) @ v


@exercise("ch08.attend", "Một bước chú ý với bộ đệm KV và nhóm đầu")
def attend(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    cases = [_attn_inputs(*c, seed=30 + i) for i, c in enumerate(ATTN_CASES)]
    got = [as_tensor(call(fn, q, k, v, p, names=["q", "k_cache", "v_cache", "pos"]),
                     f"attend với q {tuple(q.shape)}, cache {tuple(k.shape)}", shape=q.shape) for q, k, v, p in cases]
    want = [D.attend(q, k, v, p) for q, k, v, p in cases]
    recognise(got, {
        "bạn chưa che (mask) các ô phía sau vị trí hiện tại: bộ đệm KV cấp phát sẵn còn ô trống hay ô cũ, "
        "truy vấn ở vị trí p chỉ được thấy các ô s ≤ p.": [_attn(q, k, v, p, mask="none") for q, k, v, p in cases],
        "lệch một ô: truy vấn ở vị trí p phải thấy cả chính nó (s ≤ p, không phải s < p), vì khóa của nó vừa được ghi.":
            [_attn(q, k, v, p, mask="lt") for q, k, v, p in cases],
        "đầu truy vấn h dùng đầu khóa–giá trị h // (H/KV) (repeat_interleave), không phải h % KV (repeat).":
            [_attn(q, k, v, p, rep="tile") for q, k, v, p in cases],
        "thiếu hệ số 1/sqrt(D) trước softmax.": [_attn(q, k, v, p, scale=False) for q, k, v, p in cases],
        "softmax phải lấy theo chiều các ô của bộ đệm KV (chiều cuối của điểm số), không phải theo các truy vấn.":
            [_attn(q, k, v, p, axis=-2) for q, k, v, p in cases],
    }, lambda a, b: _close(a, b, 1e-4), want)
    for (q, k, _, p), a, b in zip(cases, got, want):
        expect(_close(a, b, 1e-4), f"với q {tuple(q.shape)}, cache {tuple(k.shape)}, pos {p.tolist()}: sai lệch lớn nhất "
                                   f"{float((a.float() - b).abs().max()):.3g}.")


# ----------------------------------------------------------------------------- the INT4 GEMV
GEMV_SHAPES = ((8, 64), (3, 96), (16, 576), (5, 1536))


def _gemv_inputs(out: int, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-8, 8, (out, n), generator=g, dtype=torch.int8)
    scales = (torch.rand(out, n // 32, generator=g) * 0.1 + 0.01).numpy()
    x = torch.randn(n, generator=g).numpy()
    return q, scales, x


def _run_kernel(fn, x: np.ndarray, packed: np.ndarray, scales: np.ndarray, what: str) -> np.ndarray:
    got = call(fn, x, packed, scales, names=["x", "packed", "scales"])
    if isinstance(got, torch.Tensor):
        raise CheckFailed(f"{what}: hàm cần trả về một mảng numpy (np.ndarray), nhận một tensor; numba làm việc trên numpy.")
    if not isinstance(got, np.ndarray):
        raise CheckFailed(f"{what}: hàm cần trả về một mảng numpy (np.ndarray), nhận {type(got).__name__}.")
    if got.shape != (packed.shape[0],):
        raise CheckFailed(f"{what}: cần hình dạng ({packed.shape[0]},) — một số cho mỗi hàng của W — nhận {got.shape}.")
    return got.astype(np.float64)


def _reference(q: torch.Tensor, scales: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (K.dequantize(q, scales).double() @ torch.from_numpy(x).double()).numpy()


def _near(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-4, atol=1e-4 * (1 + np.abs(b).max())))


def _is_compiled(fn: object) -> bool:
    return hasattr(fn, "py_func") and hasattr(fn, "signatures")


def _gemv_check(fn, pack: Callable[[torch.Tensor], np.ndarray], mistakes: Callable[[torch.Tensor, np.ndarray, np.ndarray], dict],
                layout: str) -> None:
    if not _is_compiled(fn):
        raise CheckFailed("hàm chưa được numba biên dịch: thêm @njit (hay @njit(fastmath=True)) lên trên def. Python "
                          "thuần chạy vòng lặp này chậm hơn hàng trăm lần (ô đo tốc độ sau đó sẽ mất nhiều phút), và "
                          "phép trừ trên số uint8 của numpy tràn số (200 − 16 vẫn là uint8) chứ không thành số âm.")
    got, want, all_mistakes = [], [], {}
    for i, (out, n) in enumerate(GEMV_SHAPES):
        q, scales, x = _gemv_inputs(out, n, 40 + i)
        got.append(_run_kernel(fn, x, pack(q), scales, f"W ({out}, {n})"))
        want.append(_reference(q, scales, x))
        for message, value in mistakes(q, scales, x).items():
            all_mistakes.setdefault(message, []).append(value)
    recognise(got, all_mistakes, _near, want)
    for (out, n), a, b in zip(GEMV_SHAPES, got, want):
        expect(_near(a, b), f"W ({out}, {n}) ở bố cục {layout}: sai lệch lớn nhất {float(np.abs(a - b).max()):.3g} "
                            f"(giá trị cỡ {float(np.abs(b).max()):.3g}).")


def _mistakes_naive(q: torch.Tensor, scales: np.ndarray, x: np.ndarray) -> dict:
    nibbles = (q.to(torch.int16) & 0xF)
    u = nibbles.to(torch.int8)
    pairs = q.reshape(q.shape[0], -1, 2)
    swapped = pairs.flip(-1).reshape(q.shape)
    by_byte = torch.from_numpy(scales).repeat_interleave(64, dim=1)[:, : q.shape[1]]  # group of the byte index: i // 2 // 32
    return {
        "chưa mở rộng dấu: nửa byte (nibble) 8..15 là số âm −8..−1 theo bù hai (lấy nib − 16 khi nib > 7).":
            _reference(u, scales, x),
        "hai nửa byte bị đảo: phần tử chẵn 2j ở 4 bit thấp (byte & 15), phần tử lẻ 2j+1 ở 4 bit cao (byte >> 4).":
            _reference(swapped, scales, x),
        "nhóm tính theo chỉ số phần tử, không theo chỉ số byte: scale của phần tử i là scales[r, i // 32] "
        "(một nhóm 32 phần tử chiếm 16 byte).":
            (q.double() * by_byte.double() @ torch.from_numpy(x).double()).numpy(),
        "thiếu scale: mỗi trọng số là q · d của nhóm nó.": (q.double() @ torch.from_numpy(x).double()).numpy(),
    }


def _mistakes_q4_0(q: torch.Tensor, scales: np.ndarray, x: np.ndarray) -> dict:
    out, n = q.shape
    u = (q.to(torch.int16) + 8).reshape(out, -1, 2, 16)  # what the Q4_0 bytes hold: u[j] low, u[j+16] high
    neighbours = torch.stack([u[:, :, 0], u[:, :, 1]], dim=-1).reshape(out, n) - 8  # read as (2j, 2j+1) pairs
    halves = torch.cat([u[:, :, 1], u[:, :, 0]], dim=-1).reshape(out, n) - 8
    pairs = neighbours + 8
    naive = torch.where(pairs > 7, pairs - 16, pairs)  # the loop of exercise 1 run on Q4_0 bytes
    return {
        "đây là vòng lặp của bài tập 4 (gemv_naive) chạy trên byte Q4_0: bố cục đã đổi. Byte j của một khối chứa u[j] = q[j] + 8 "
        "(4 bit thấp) và u[j + 16] (4 bit cao): q = nib − 8, không còn bù hai, và hai phần tử của byte cách nhau 16.":
            _reference(naive.to(torch.int8), scales, x),
        "bạn đọc byte j như bố cục của chương 4 (hai phần tử kề nhau 2j, 2j+1); trong Q4_0, byte j của một khối chứa "
        "phần tử j (4 bit thấp) và phần tử j + 16 (4 bit cao).": _reference(neighbours.to(torch.int8), scales, x),
        "Q4_0 lưu u = q + 8 (0..15): trừ 8 sau khi tách nửa byte.": _reference((q.to(torch.int16) + 8).to(torch.int8), scales, x),
        "hai nửa bị đảo: 4 bit thấp của byte j là phần tử j, 4 bit cao là phần tử j + 16.": _reference(halves.to(torch.int8), scales, x),
    }


@exercise("ch08.gemv_naive", "Nhân ma trận–vector INT4, vòng lặp đơn giản")
def gemv_naive(fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> None:
    _gemv_check(fn, K.pack_neighbours, _mistakes_naive, "của chương 4")


@exercise("ch08.gemv_q4_0", "Nhân ma trận–vector INT4 trên bố cục Q4_0")
def gemv_q4_0(fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> None:
    _gemv_check(fn, K.pack_q4_0, _mistakes_q4_0, "Q4_0")
