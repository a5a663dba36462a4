"""Checks of chapter 5 (choosing and combining): each compares the student's code with lightweight.combine."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ... import combine as C
from ... import prune as P
from ... import quantize as Q
from ...advise import quality_drop as _quality_drop
from . import CheckFailed, as_float, call, exercise, expect, expect_close

BITS_CASES = [(0.0, 4, 128), (0.6, 4, 128), (0.2, 4, 128), (0.9, 8, 64), (0.5, 8, 32), (0.75, 4, 32), (0.3, 3, 48)]


@exercise("ch05.bits_per_weight", "Số bit trung bình của một trọng số sau khi cắt tỉa rồi lượng tử hóa")
def bits_per_weight(fn: Callable[[float, int, int], float]) -> None:
    for s, b, g in BITS_CASES:
        want = C.bits_per_weight(s, b, g)
        got = as_float(fn(s, b, g), f"bits_per_weight({s}, {b}, {g})")
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        kept = (1 - s) * b
        if s > 0 and math.isclose(got, kept + 16 / g, rel_tol=1e-6):
            raise CheckFailed(f"với s = {s}, b = {b}, g = {g}: bạn quên bitmask — bộ giải nén cần biết trọng số "
                              "nào khác 0, tốn 1 bit cho mỗi vị trí.")
        if math.isclose(got, want - 16 / g, rel_tol=1e-6):
            raise CheckFailed(f"với g = {g}: bạn quên các thang đo (scale) — mỗi nhóm g trọng số có một thang đo FP16 "
                              f"(16 bit), tức 16/g bit cho mỗi trọng số.")
        if math.isclose(got, want + 16 / g, rel_tol=1e-6):
            raise CheckFailed("thang đo lưu ở FP16 (16 bit), không phải FP32: 16/g bit mỗi trọng số.")
        if s > 0 and math.isclose(got, s * b + 1 + 16 / g, rel_tol=1e-6):
            raise CheckFailed(f"s = {s} là phần bị cắt bỏ: chỉ (1 − s) trọng số còn lại cần lưu giá trị.")
        if s > 0 and math.isclose(got, kept + 1 + 16 / g, rel_tol=1e-6):
            raise CheckFailed(f"với s = {s}, b = {b}: (1 − s)·b + 1 = {kept + 1:g} bit còn lớn hơn lưu dày đặc "
                              f"({b} bit) — khi đó hãy lưu dày đặc: lấy min((1 − s)·b + 1, b).")
        expect_close(got, want, f"số bit/trọng số với s = {s}, b = {b}, g = {g}", rel=1e-6,
                     hint="min((1 − s)·b + 1, b) + 16/g.")


def _reference_ptq(w: torch.Tensor, sparsity: float, bits: int, group_size: int) -> torch.Tensor:
    return Q.fake_quantize(w * P.magnitude_mask(w, sparsity), bits, group_size)


@exercise("ch05.prune_then_quantize", "Cắt tỉa rồi lượng tử hóa một ma trận")
def prune_then_quantize(fn: Callable[[torch.Tensor, float, int, int], torch.Tensor]) -> None:
    gen = torch.Generator().manual_seed(5)
    for shape, s, b, g in [((16, 64), 0.6, 4, 32), ((8, 128), 0.5, 8, 128), ((32, 32), 0.9, 4, 16), ((5, 48), 0.3, 3, 16)]:
        w = torch.randn(*shape, generator=gen)
        got = call(fn, w, s, b, g, names=("w", "sparsity", "bits", "group_size"))
        expect(isinstance(got, torch.Tensor) and got.shape == w.shape,
               f"hàm cần trả về một tensor cùng hình dạng {tuple(w.shape)} (ma trận đã giải lượng tử).")
        expect(got.dtype == w.dtype, f"ma trận trả về cần cùng dtype với w ({w.dtype}), nhận {got.dtype}.")
        want = _reference_ptq(w, s, b, g)
        mask = P.magnitude_mask(w, s)
        n_cut = int((~P.magnitude_mask(w, s)).sum())
        zeros = int((got == 0).sum())
        if zeros < n_cut:
            if int((got.abs() < 1e-3 * w.abs().max()).sum()) >= n_cut:
                raise CheckFailed("các trọng số bị cắt gần 0 nhưng không đúng bằng 0: hãy dùng lượng tử hóa đối xứng "
                                  "(zero-point = 0), để 0 vẫn là 0 và bitmask còn dùng được.")
            raise CheckFailed(f"chỉ {zeros / w.numel():.0%} phần tử bằng 0, cần ít nhất {n_cut / w.numel():.0%}: "
                              "hãy cắt tỉa theo độ lớn trước.")
        if not bool((got[~mask] == 0).all()):
            raise CheckFailed("những trọng số bị đặt về 0 không phải những trọng số nhỏ nhất theo |w| của cả ma trận.")
        if torch.allclose(got, Q.fake_quantize(w * mask, b, g, symmetric=False), atol=1e-6) and not torch.allclose(got, want, atol=1e-6):
            raise CheckFailed("bạn dùng lượng tử hóa bất đối xứng (affine). Ở đây dùng đối xứng, như QuantizedLinear: "
                              "thang đo = max|w| / qmax, không cần lưu zero-point.")
        if torch.allclose(got, Q.fake_quantize(w * mask, b, None), atol=1e-6) and not torch.allclose(got, want, atol=1e-6):
            raise CheckFailed(f"bạn dùng một thang đo cho cả hàng; ở đây mỗi thang đo dùng cho một nhóm g = {g} đầu vào.")
        expect(torch.allclose(got, want, atol=1e-5),
               f"với s = {s}, b = {b}, g = {g}: giá trị khác lời giải tham chiếu (sai số lớn nhất "
               f"{(got - want).abs().max().item():.3g}). Gợi ý: mask = magnitude_mask(w, s), rồi "
               f"fake_quantize(w * mask, b, g) — đối xứng, theo nhóm.")


@exercise("ch05.pareto_front", "Biên Pareto: những cấu hình không bị cấu hình nào khác trội hơn")
def pareto_front(fn: Callable[[list[tuple[float, float]]], list[int]]) -> None:
    cases = [
        [(1.0, 1.50), (0.26, 1.50), (0.14, 1.53), (0.10, 1.54), (0.75, 1.58), (0.10, 1.69), (0.02, 2.41)],
        [(0.5, 3.0), (0.4, 2.0), (0.3, 2.5), (0.2, 1.9), (0.9, 1.0)],
        [(0.3, 1.0)],
    ]
    for pts in cases:
        got = call(fn, list(pts), names=("points",))
        want = C.pareto_front(pts)
        expect(isinstance(got, (list, tuple)), f"hàm cần trả về một danh sách chỉ số, nhận {type(got).__name__}.")
        got = list(got)
        expect(all(isinstance(i, int) and not isinstance(i, bool) for i in got),
               f"các chỉ số cần là số nguyên Python (int), nhận {got!r}.")
        if sorted(got) == list(range(len(pts))) and len(pts) > 1:
            raise CheckFailed("bạn trả về mọi điểm: cần bỏ những điểm mà một điểm khác trội hơn (vừa không lớn hơn, "
                              "vừa không tệ hơn, và khác nó).")
        if sorted(got) == sorted(C.pareto_front(pts, higher_is_better=True)) and sorted(got) != sorted(want):
            raise CheckFailed("ở đây chất lượng là loss: càng thấp càng tốt. Bạn đang coi loss cao là tốt.")
        if sorted(got) == sorted(want) and got != want:
            raise CheckFailed("đúng các điểm rồi, nhưng hãy sắp xếp chúng theo kích thước tăng dần.")
        extra = sorted(set(got) - set(want))
        if extra:
            i = extra[0]
            beat = next(j for j in range(len(pts)) if j != i and pts[j][0] <= pts[i][0] and pts[j][1] <= pts[i][1]
                        and pts[j] != pts[i] or (j < i and pts[j] == pts[i]))
            raise CheckFailed(f"điểm {i} {pts[i]} bị điểm {beat} {pts[beat]} trội hơn (không lớn hơn, không tệ hơn), "
                              "nên không thuộc biên.")
        expect(got == want, f"với {pts}: mong đợi {want}, nhận {got}. Thiếu điểm {sorted(set(want) - set(got))}.")


@exercise("ch05.whole_model_ratio", "Tỉ lệ nén của cả mô hình")
def whole_model_ratio(fn: Callable[[int, int, int, float], float]) -> None:
    for fp32, fixed, n, b in [(4_911_104, 68_520, 1_190_400, 2.725), (161_576, 2_000, 40_000, 4.5), (1_000, 0, 250, 8.0)]:
        want = fp32 / (fixed + n * b / 8)
        got = as_float(fn(fp32, fixed, n, b), f"whole_model_ratio({fp32}, {fixed}, {n}, {b})")
        close = lambda x: math.isclose(got, x, rel_tol=1e-6)  # noqa: E731
        if fixed and close(fp32 / (n * b / 8)):
            raise CheckFailed("bạn quên phần cố định (bảng nhúng, LayerNorm, bias): nó vẫn nằm trong tệp, và không nhỏ đi khi "
                              "bạn cắt hay lượng tử hóa các ma trận.")
        if close(fp32 / (fixed + n * b)):
            raise CheckFailed("n trọng số × b bit là số bit, không phải số byte: chia cho 8.")
        if close(1 / want):
            raise CheckFailed("tỉ lệ bị ngược: lấy byte FP32 chia cho byte của bản nén (lớn hơn 1 nghĩa là nhỏ hơn).")
        expect_close(got, want, f"tỉ lệ với FP32 = {fp32:,} byte, cố định = {fixed:,} byte, {n:,} trọng số × {b} bit",
                     rel=1e-6, hint="FP32 / (cố định + n·b/8).")


@exercise("ch05.quality_drop", "Đọc một hàng benchmark: chất lượng giảm bao nhiêu")
def quality_drop(fn: Callable[[dict], float]) -> None:
    from ...bench.core import row

    cases = [
        (row("combine", "combo-x", "digits-cnn", "accuracy", 98.33, 97.78, 0.03, None, needs="training"), "accuracy"),
        (row("combine", "int4-x", "tinygpt", "val_loss", 1.5, 1.575, 0.14, None, needs="none"), "val_loss"),
        (row("quantization", "int4-x", "minilm", "cosine", 1.0, 0.97, 0.14, None, needs="none"), "cosine"),
        (row("quantization", "int4-x", "minilm", "top10", 1.0, 0.85, 0.14, None, needs="none"), "top10"),
        (row("combine", "kd-x", "tinygpt", "val_loss", 1.5, 1.44, 0.1, None, needs="training"), "val_loss"),
        (row("combine", "kd-x", "digits-cnn", "accuracy", 97.0, 97.5, 0.1, None, needs="training"), "accuracy"),
    ]
    for r, metric in cases:
        want = _quality_drop(r)
        got = as_float(call(fn, dict(r), names=("row",)), f"quality_drop của hàng {metric}")
        if math.isclose(got, -want, rel_tol=1e-6) and want != 0:
            raise CheckFailed(f"dấu bị ngược ở hàng {metric}: số dương phải nghĩa là *tệ đi* so với baseline.")
        if metric == "accuracy" and math.isclose(got, want / r["baseline"], rel_tol=1e-6):
            raise CheckFailed("độ chính xác tính bằng điểm phần trăm: lấy baseline − value, không chia cho baseline.")
        if metric == "val_loss" and math.isclose(got, r["value"] - r["baseline"], rel_tol=1e-6):
            raise CheckFailed("với loss, đề bài dùng mức tăng tương đối: value / baseline − 1 (0,05 nghĩa là tăng 5%).")
        expect_close(got, want, f"mức giảm chất lượng của hàng {metric} (baseline {r['baseline']}, value {r['value']})",
                     rel=1e-6, abs_=1e-9, hint="accuracy, cosine, top10: baseline − value; val_loss: value / baseline − 1.")
