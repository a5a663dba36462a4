"""Checks of chapter 5 (choosing and combining): each compares the student's code with lightweight.combine."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import combine as C
from .. import prune as P
from .. import quantize as Q
from . import CheckFailed, exercise, expect, expect_close

BITS_CASES = [(0.0, 4, 128), (0.6, 4, 128), (0.2, 4, 128), (0.9, 8, 64), (0.5, 8, 32), (0.75, 4, 32)]


@exercise("ch05.bits_per_weight", "Số bit trung bình của một trọng số sau khi cắt tỉa rồi lượng tử hóa")
def bits_per_weight(fn: Callable[[float, int, int], float]) -> None:
    for s, b, g in BITS_CASES:
        want = C.bits_per_weight(s, b, g)
        got = fn(s, b, g)
        expect(isinstance(got, (int, float)) and not isinstance(got, bool),
               f"hàm cần trả về một con số, nhận {type(got).__name__}.")
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        kept = (1 - s) * b
        if s > 0 and math.isclose(got, kept + 16 / g, rel_tol=1e-6):
            raise CheckFailed(f"với s = {s}, b = {b}, g = {g}: bạn quên bitmask — bộ giải nén cần biết trọng số "
                              "nào khác 0, tốn 1 bit cho mỗi vị trí.")
        if math.isclose(got, want - 16 / g, rel_tol=1e-6):
            raise CheckFailed(f"với g = {g}: bạn quên các hệ số tỉ lệ — mỗi nhóm g trọng số có một scale FP16 "
                              f"(16 bit), tức 16/g bit cho mỗi trọng số.")
        if math.isclose(got, want + 16 / g, rel_tol=1e-6):
            raise CheckFailed("scale lưu ở FP16 (16 bit), không phải FP32: 16/g bit mỗi trọng số.")
        if s > 0 and math.isclose(got, s * b + 1 + 16 / g, rel_tol=1e-6):
            raise CheckFailed(f"s = {s} là phần bị cắt bỏ: chỉ (1 − s) trọng số còn lại cần lưu giá trị.")
        if s > 0 and math.isclose(got, kept + 1 + 16 / g, rel_tol=1e-6):
            raise CheckFailed(f"với s = {s}, b = {b}: (1 − s)·b + 1 = {kept + 1:g} bit còn lớn hơn lưu dày đặc "
                              f"({b} bit) — khi đó hãy lưu dày đặc: lấy min((1 − s)·b + 1, b).")
        expect_close(got, want, f"số bit/trọng số với s = {s}, b = {b}, g = {g}", rel=1e-6,
                     hint="min((1 − s)·b + 1, b) + 16/g khi s > 0; b + 16/g khi s = 0.")


def _reference_ptq(w: torch.Tensor, sparsity: float, bits: int, group_size: int) -> torch.Tensor:
    return Q.fake_quantize(w * P.magnitude_mask(w, sparsity), bits, group_size)


@exercise("ch05.prune_then_quantize", "Cắt tỉa rồi lượng tử hóa một ma trận")
def prune_then_quantize(fn: Callable[[torch.Tensor, float, int, int], torch.Tensor]) -> None:
    gen = torch.Generator().manual_seed(5)
    for shape, s, b, g in [((16, 64), 0.6, 4, 32), ((8, 128), 0.5, 8, 128), ((32, 32), 0.9, 4, 16)]:
        w = torch.randn(*shape, generator=gen)
        got = fn(w.clone(), s, b, g)
        expect(isinstance(got, torch.Tensor) and got.shape == w.shape,
               f"hàm cần trả về một tensor cùng hình dạng {tuple(w.shape)} (ma trận đã giải lượng tử).")
        want = _reference_ptq(w, s, b, g)
        n_cut = int((~P.magnitude_mask(w, s)).sum())
        zeros = int((got == 0).sum())
        if zeros < n_cut:
            if int((got.abs() < 1e-3 * w.abs().max()).sum()) >= n_cut:
                raise CheckFailed("các trọng số bị cắt gần 0 nhưng không đúng bằng 0: hãy dùng lượng tử hóa đối xứng "
                                  "(zero-point = 0), để 0 vẫn là 0 và bitmask còn dùng được.")
            raise CheckFailed(f"chỉ {zeros / w.numel():.0%} phần tử bằng 0, cần ít nhất {n_cut / w.numel():.0%}: "
                              "hãy cắt tỉa theo độ lớn trước.")
        mask = P.magnitude_mask(w, s)
        if not bool((got[~mask] == 0).all()):
            raise CheckFailed("những trọng số bị đặt về 0 không phải những trọng số nhỏ nhất theo |w| của cả ma trận.")
        if torch.allclose(got, Q.fake_quantize(w * mask, b, g, symmetric=False), atol=1e-6) and not torch.allclose(got, want, atol=1e-6):
            raise CheckFailed("bạn dùng lượng tử hóa bất đối xứng (affine). Ở đây dùng đối xứng, như QuantizedLinear: "
                              "scale = max|w| / qmax, không cần lưu zero-point.")
        if torch.allclose(got, Q.fake_quantize(w * mask, b, None), atol=1e-6) and not torch.allclose(got, want, atol=1e-6):
            raise CheckFailed(f"bạn dùng một scale cho cả hàng; đề bài dùng nhóm g = {g} đầu vào mỗi scale.")
        expect(torch.allclose(got, want, atol=1e-5),
               f"với s = {s}, b = {b}, g = {g}: giá trị khác lời giải tham chiếu (sai số lớn nhất "
               f"{(got - want).abs().max().item():.3g}). Gợi ý: mask = magnitude_mask(w, s), rồi "
               f"fake_quantize(w * mask, b, g) — đối xứng, theo nhóm.")


@exercise("ch05.pareto_front", "Biên Pareto: những cấu hình không bị cấu hình nào khác vượt mặt")
def pareto_front(fn: Callable[[list[tuple[float, float]]], list[int]]) -> None:
    cases = [
        [(1.0, 1.50), (0.26, 1.50), (0.14, 1.53), (0.10, 1.54), (0.75, 1.58), (0.10, 1.69), (0.02, 2.41)],
        [(0.5, 3.0), (0.4, 2.0), (0.3, 2.5), (0.2, 1.9), (0.9, 1.0)],
        [(0.3, 1.0)],
    ]
    for pts in cases:
        got = fn(list(pts))
        want = C.pareto_front(pts)
        expect(isinstance(got, (list, tuple)), f"hàm cần trả về một danh sách chỉ số, nhận {type(got).__name__}.")
        got = list(got)
        if sorted(got) == list(range(len(pts))) and len(pts) > 1:
            raise CheckFailed("bạn trả về mọi điểm: cần bỏ những điểm bị một điểm khác vừa nhỏ hơn (hoặc bằng) "
                              "vừa tốt hơn (hoặc bằng) vượt mặt.")
        if sorted(got) == sorted(C.pareto_front(pts, higher_is_better=True)) and sorted(got) != sorted(want):
            raise CheckFailed("ở đây chất lượng là loss: càng thấp càng tốt. Bạn đang coi loss cao là tốt.")
        if sorted(got) == sorted(want) and got != want:
            raise CheckFailed("đúng các điểm rồi, nhưng hãy sắp xếp chúng theo kích thước tăng dần.")
        extra = sorted(set(got) - set(want))
        if extra:
            i = extra[0]
            beat = next(j for j in range(len(pts)) if j != i and pts[j][0] <= pts[i][0] and pts[j][1] <= pts[i][1]
                        and pts[j] != pts[i] or (j < i and pts[j] == pts[i]))
            raise CheckFailed(f"điểm {i} {pts[i]} bị điểm {beat} {pts[beat]} vượt mặt (không lớn hơn, không tệ hơn), "
                              "nên không thuộc biên.")
        expect(got == want, f"với {pts}: mong đợi {want}, nhận {got}. Thiếu điểm {sorted(set(want) - set(got))}.")
