"""Checks of chapter 2 (pruning): each compares the student's function with lightweight.prune."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import prune as P
from . import CheckFailed, exercise, expect, expect_close


def _weights(seed: int, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in shapes]


def _bool_mask(got: object, like: torch.Tensor, what: str) -> torch.Tensor:
    expect(isinstance(got, torch.Tensor), f"{what} phải trả về một tensor, nhận {type(got).__name__}.")
    expect(got.shape == like.shape, f"{what}: mặt nạ có hình dạng (shape) {tuple(got.shape)}, cần {tuple(like.shape)} như trọng số.")
    expect(got.dtype == torch.bool, f"{what}: mặt nạ cần dtype torch.bool (True = giữ), nhận {got.dtype}. "
           "Tạo nó với dtype=torch.bool, hoặc đổi bằng .bool().")
    return got


@exercise("ch02.magnitude_mask", "Mặt nạ theo độ lớn cho một lớp")
def magnitude_mask(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    for w, s in zip(_weights(0, (16, 32), (8, 3, 3, 3), (10, 7)), (0.5, 0.8, 0.3)):
        want = P.magnitude_mask(w, s)
        got = _bool_mask(fn(w.clone(), s), w, f"magnitude_mask(w{tuple(w.shape)}, {s})")
        kept, cut = w.abs()[got], w.abs()[~got]
        if kept.numel() and cut.numel() and kept.mean() < cut.mean():
            raise CheckFailed("bạn giữ các trọng số *nhỏ nhất*; cắt tỉa theo độ lớn giữ các |w| lớn nhất.")
        pruned = int((~got).sum())
        expect(pruned == round(s * w.numel()),
               f"với sparsity={s} trên {w.numel()} trọng số phải cắt đúng {round(s * w.numel())}, bạn cắt {pruned}. "
               "Nhớ: sparsity là tỉ lệ bị *cắt*; số cần cắt là round(sparsity · numel).")
        expect(torch.equal(got, want), "số lượng cắt đúng nhưng chọn sai phần tử: hãy so |w| (trị tuyệt đối), không phải w.")


@exercise("ch02.global_masks", "Một ngưỡng chung cho mọi lớp")
def global_masks(fn: Callable[[dict[str, torch.Tensor], float], dict[str, torch.Tensor]]) -> None:
    a, b = _weights(1, (32, 16), (8, 32))
    weights = {"a": a * 0.1, "b": b}
    got = fn({k: v.clone() for k, v in weights.items()}, 0.6)
    expect(isinstance(got, dict) and set(got) == set(weights), "hàm phải trả về dict cùng khóa với đầu vào.")
    want = P.global_magnitude_masks(weights, 0.6)
    per_layer = {k: P.magnitude_mask(v, 0.6) for k, v in weights.items()}
    for k in weights:
        _bool_mask(got[k], weights[k], f"mặt nạ của {k!r}")
    if all(torch.equal(got[k], per_layer[k]) for k in weights):
        raise CheckFailed("bạn cắt 60% *trong từng lớp*; bài này cần một ngưỡng chung cho |w| của mọi lớp gộp lại.")
    for k in weights:
        expect(torch.equal(got[k], want[k]),
               f"mặt nạ của {k!r} chưa đúng: gộp mọi |w| lại, tìm ngưỡng cắt round(0.6 · tổng) giá trị nhỏ nhất.")


@exercise("ch02.cubic_sparsity", "Lịch cắt tỉa dần (bậc ba)")
def cubic_sparsity(fn: Callable[[int, int, float], float]) -> None:
    for step, total, final in [(0, 100, 0.9), (50, 100, 0.9), (25, 100, 0.8), (100, 100, 0.9), (150, 100, 0.9)]:
        want = P.cubic_sparsity(step, total, final)
        got = fn(step, total, final)
        if isinstance(got, float) and step not in (0, total) and step <= total and math.isclose(got, final * step / total):
            raise CheckFailed("đây là lịch tuyến tính; lịch của Zhu & Gupta là s_f·(1 − (1 − t/n)³).")
        expect_close(got, want, f"cubic_sparsity({step}, {total}, {final})", abs_=1e-9,
                     hint="sau bước cuối (step > total) độ thưa giữ nguyên ở final." if step > total else "")


@exercise("ch02.bitmask_bytes", "Số byte của định dạng bitmask")
def bitmask_bytes(fn: Callable[[torch.Tensor], int]) -> None:
    for w, s in zip(_weights(2, (64, 64), (13, 7)), (0.9, 0.5)):
        w = w * P.magnitude_mask(w, s)
        nnz, numel = int((w != 0).sum()), w.numel()
        got = fn(w.clone())
        if isinstance(got, (int, float)):
            if got == nnz * 4 + numel:
                raise CheckFailed("mặt nạ chỉ cần 1 *bit* mỗi trọng số, tức numel/8 byte, không phải 1 byte.")
            if got == nnz * 4 + numel // 8 and numel % 8:
                raise CheckFailed(f"{numel} bit không chia hết cho 8: cần làm tròn lên, ceil({numel}/8) = {math.ceil(numel / 8)} byte.")
        expect_close(got, nnz * 4 + math.ceil(numel / 8), f"bitmask_bytes của ma trận {tuple(w.shape)} (thưa {s})",
                     hint="4 byte FP32 cho mỗi giá trị khác 0, cộng ceil(numel/8) byte mặt nạ.")


@exercise("ch02.nm_mask", "Mặt nạ bán cấu trúc 2:4")
def nm_mask(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    (w,) = _weights(3, (8, 16))
    got = _bool_mask(fn(w.clone()), w, "nm_mask")
    if torch.equal(got, P.nm_mask(w.T.contiguous()).T):
        raise CheckFailed("bạn chia nhóm theo cột; 2:4 chia mỗi *hàng* (chiều đầu vào) thành các nhóm 4 phần tử liên tiếp.")
    groups = got.reshape(-1, 4).sum(dim=1)
    expect(bool((groups == 2).all()), "mỗi nhóm 4 trọng số liên tiếp trong một hàng phải giữ đúng 2.")
    expect(torch.equal(got, P.nm_mask(w)), "mỗi nhóm giữ đúng 2, nhưng chưa phải 2 phần tử có |w| lớn nhất của nhóm.")


@exercise("ch02.keep_channels", "Chọn kênh giữ lại theo chuẩn L1")
def keep_channels(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    (w,) = _weights(4, (16, 8, 3, 3))
    w[3] *= 5.0  # one strong channel, one with a large single weight but a small L1 norm
    w[7] = 0.01
    w[7, 0, 0, 0] = 6.0
    got = fn(w.clone(), 6)
    expect(isinstance(got, torch.Tensor) and got.dim() == 1, "hàm cần trả về tensor 1 chiều các chỉ số kênh.")
    want = P.l1_keep_channels(w, 6)
    if set(got.tolist()) == set(want.tolist()) and not torch.equal(got, want):
        raise CheckFailed("đúng các kênh nhưng chưa sắp xếp tăng dần; hãy dùng .sort() để thứ tự kênh không đổi.")
    l2 = w.flatten(1).norm(dim=1).topk(6).indices.sort().values
    if torch.equal(got, l2) and not torch.equal(l2, want):
        raise CheckFailed("bạn dùng chuẩn L2; bài này xếp hạng theo chuẩn L1: tổng |w| của cả bộ lọc.")
    expect(torch.equal(got, want), f"các kênh cần giữ là {want.tolist()}, bạn trả về {got.tolist()}. "
           "Chuẩn L1 của kênh c là w[c].abs().sum(); giữ `keep` kênh lớn nhất.")


@exercise("ch02.wanda_mask", "Mặt nạ Wanda")
def wanda_mask(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> None:
    w, x = _weights(5, (12, 20), (20,))
    norms = x.abs() * torch.logspace(-1, 1, 20)
    got = _bool_mask(fn(w.clone(), norms.clone(), 0.5), w, "wanda_mask")
    want = P.wanda_mask(w, norms, 0.5)
    if torch.equal(got, P.row_mask(w.abs(), 0.5)):
        raise CheckFailed("bạn chỉ dùng |W| (cắt tỉa theo độ lớn); điểm của Wanda là |W_ij| · ‖X_j‖.")
    if torch.equal(got, P.magnitude_mask(w.abs() * norms, 0.5)):
        raise CheckFailed("điểm đúng, nhưng bạn so sánh trên cả ma trận; Wanda so sánh *trong từng hàng* đầu ra.")
    expect(bool((~got).sum(1).eq(10).all()), "mỗi hàng phải cắt đúng round(0.5 · 20) = 10 trọng số.")
    expect(torch.equal(got, want), "mỗi hàng cắt đúng số lượng nhưng chọn sai: nhân |W| với norms[None, :] (theo cột).")
