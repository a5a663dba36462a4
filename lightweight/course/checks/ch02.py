"""Checks of chapter 2 (pruning): each compares the student's function with lightweight.prune."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ... import prune as P
from . import (CheckFailed, as_float, as_int, as_tensor, call, close, exercise, expect, recognise, recognise_one,
               same_tensor)


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _bool_mask(got: object, like: torch.Tensor, what: str) -> torch.Tensor:
    expect(isinstance(got, torch.Tensor), f"{what} phải trả về một tensor, nhận {type(got).__name__}.")
    expect(got.shape == like.shape, f"{what}: mặt nạ có hình dạng (shape) {tuple(got.shape)}, cần {tuple(like.shape)} như trọng số.")
    expect(got.dtype == torch.bool, f"{what}: mặt nạ cần dtype torch.bool (True = giữ), nhận {got.dtype}. "
           "Tạo nó với dtype=torch.bool, hoặc đổi bằng .bool().")
    return got


def _cut(scores: torch.Tensor, k: int, largest: bool = False) -> torch.Tensor:
    """Mask of ``scores``' shape with the ``k`` smallest (``largest``: biggest) entries cut."""
    mask = torch.ones(scores.numel(), dtype=torch.bool)
    if k:
        mask[scores.flatten().topk(k, largest=largest).indices] = False
    return mask.view_as(scores)


def _cut_rows(scores: torch.Tensor, k: int, largest: bool = False) -> torch.Tensor:
    """Per row of ``scores (out, in)``, the ``k`` smallest (``largest``: biggest) cut."""
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k:
        mask.scatter_(1, scores.topk(k, dim=1, largest=largest).indices, False)
    return mask


_exact = same_tensor


# ----------------------------------------------------------------------------- magnitude masks
MAGNITUDE_CASES = [((8, 3, 3, 3), 0.8), ((7, 9), 0.3), ((16, 32), 0.5), ((1, 13), 0.6), ((3, 21), 0.32), ((5, 5), 0.0)]


@exercise("ch02.magnitude_mask", "Mặt nạ theo độ lớn cho một lớp")
def magnitude_mask(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    for i, (shape, s) in enumerate(MAGNITUDE_CASES):
        w = _randn(i, *shape)
        what = f"magnitude_mask(w{shape}, {s})"
        got = _bool_mask(call(fn, w, s, names=("weight", "sparsity")), w, what)
        want = P.magnitude_mask(w, s)
        if torch.equal(got, want):
            continue
        k, n = round(s * w.numel()), w.numel()
        a = w.abs()
        mistakes = {
            "mặt nạ bị đảo: True nghĩa là *giữ*, False là cắt.": ~want,
            "bạn giữ các trọng số *nhỏ nhất*; cắt tỉa theo độ lớn cắt các |w| nhỏ nhất và giữ các |w| lớn nhất.": _cut(a, k, largest=True),
            f"bạn cắt floor(sparsity · numel) = {math.floor(s * n)} trọng số; số cần cắt là round(sparsity · numel) = {k}.": _cut(a, math.floor(s * n)),
            f"bạn cắt ceil(sparsity · numel) = {math.ceil(s * n)} trọng số; số cần cắt là round(sparsity · numel) = {k}.": _cut(a, math.ceil(s * n)),
            "bạn so w có dấu, nên các trọng số âm lớn bị cắt: hãy so |w| (trị tuyệt đối).": _cut(w, k),
        }
        if w.dim() >= 2:
            mistakes["bạn cắt trong từng hàng; bài này dùng một ngưỡng cho cả tensor (làm phẳng bằng .flatten())."] = \
                _cut_rows(a.flatten(1), round(s * a[0].numel())).view_as(w)
        recognise_one(got, want, mistakes, _exact)
        pruned = int((~got).sum())
        expect(pruned == k, f"{what}: phải cắt đúng round({s} · {n}) = {k} trọng số, bạn cắt {pruned}. "
               "Nhớ: sparsity là tỉ lệ bị *cắt*.")
        raise CheckFailed(f"{what}: số lượng cắt đúng ({k}) nhưng chọn sai phần tử: phải cắt {k} trọng số có |w| nhỏ nhất "
                          f"({int((got != want).sum())} vị trí khác lời giải).")


# ----------------------------------------------------------------------------- one global threshold
def _global_cases() -> list[tuple[dict[str, torch.Tensor], float]]:
    a, b = _randn(100, 32, 16), _randn(101, 8, 32)
    conv, fc, head = _randn(102, 6, 3, 3, 3), _randn(103, 10, 7), _randn(104, 3, 10)
    return [({"a": a * 0.1, "b": b}, 0.6), ({"conv": conv * 0.5, "fc": fc, "head": head * 2.0}, 0.35)]


@exercise("ch02.global_masks", "Một ngưỡng chung cho mọi lớp")
def global_masks(fn: Callable[[dict[str, torch.Tensor], float], dict[str, torch.Tensor]]) -> None:
    for weights, s in _global_cases():
        got = call(fn, weights, s, names=("weights", "sparsity"))
        expect(isinstance(got, dict) and set(got) == set(weights),
               f"hàm phải trả về dict cùng khóa với đầu vào {sorted(weights)}, nhận "
               f"{sorted(got) if isinstance(got, dict) else type(got).__name__}.")
        for k in weights:
            _bool_mask(got[k], weights[k], f"mặt nạ của {k!r}")
        want = P.global_magnitude_masks(weights, s)
        if all(torch.equal(got[k], want[k]) for k in weights):
            continue
        names = list(weights)
        flat = torch.cat([weights[k].flatten() for k in names])
        total = flat.numel()

        def split(mask: torch.Tensor) -> dict[str, torch.Tensor]:
            parts = mask.split([weights[k].numel() for k in names])
            return {k: p.view_as(weights[k]) for k, p in zip(names, parts)}

        mistakes = {
            f"bạn cắt {s:.0%} *trong từng lớp*; bài này cần một ngưỡng chung cho |w| của mọi lớp gộp lại.":
                {k: P.magnitude_mask(v, s) for k, v in weights.items()},
            "mặt nạ bị đảo: True nghĩa là *giữ*.": {k: ~m for k, m in want.items()},
            "bạn so w có dấu; hãy gộp các |w| (trị tuyệt đối) rồi tìm ngưỡng.": split(_cut(flat, round(s * total))),
            f"số cần cắt là round(sparsity · tổng) = {round(s * total)}, không phải floor = {math.floor(s * total)}.":
                split(_cut(flat.abs(), math.floor(s * total))),
        }
        recognise_one(got, want, mistakes, lambda x, y: all(torch.equal(x[k], y[k]) for k in names))
        bad = next(k for k in names if not torch.equal(got[k], want[k]))
        cut = sum(int((~got[k]).sum()) for k in names)
        raise CheckFailed(f"mặt nạ của {bad!r} chưa đúng (tổng cộng bạn cắt {cut}, cần {round(s * total)}): gộp mọi |w| lại, "
                          f"cắt round({s} · {total}) giá trị nhỏ nhất.")


# ----------------------------------------------------------------------------- cubic schedule
CUBIC_CASES = [(0, 100, 0.9), (50, 100, 0.9), (25, 100, 0.8), (100, 100, 0.9), (150, 100, 0.9), (7, 12, 0.97),
               (3, 10, 0.5), (1, 3, 0.6)]


@exercise("ch02.cubic_sparsity", "Lịch cắt tỉa dần (bậc ba)")
def cubic_sparsity(fn: Callable[[int, int, float], float]) -> None:
    got = [as_float(fn(step, total, final), f"cubic_sparsity({step}, {total}, {final})") for step, total, final in CUBIC_CASES]
    want = [P.cubic_sparsity(step, total, final) for step, total, final in CUBIC_CASES]
    clamp = [min(st, n) / n for st, n, _ in CUBIC_CASES]
    finals = [f for *_, f in CUBIC_CASES]
    recognise(got, {
        "đây là lịch tuyến tính; lịch của Zhu & Gupta là s_f·(1 − (1 − t/n)³).": [f * t for f, t in zip(finals, clamp)],
        "sau bước cuối (step > total_steps) độ thưa phải giữ nguyên ở final_sparsity: dùng min(step, total_steps).":
            [f * (1 - (1 - st / n) ** 3) for st, n, f in CUBIC_CASES],
        "số mũ là 3 (lịch bậc ba), không phải 2.": [f * (1 - (1 - t) ** 2) for f, t in zip(finals, clamp)],
        "bạn dùng s_f·(t/n)³: lịch này tăng chậm lúc đầu; lịch đúng là s_f·(1 − (1 − t/n)³), tăng nhanh lúc đầu.":
            [f * t ** 3 for f, t in zip(finals, clamp)],
        "step // total_steps là phép chia nguyên (luôn 0 trước bước cuối): dùng phép chia thường step / total_steps.":
            [f * (1 - (1 - min(st, n) // n) ** 3) for st, n, f in CUBIC_CASES],
        "bạn quên nhân với final_sparsity.": [1 - (1 - t) ** 3 for t in clamp],
    }, lambda a, b: close(a, b, abs_=1e-9), want)
    for (step, total, final), g, w in zip(CUBIC_CASES, got, want):
        if not close(g, w, abs_=1e-9):
            raise CheckFailed(f"cubic_sparsity({step}, {total}, {final}): mong đợi {w:.6g}, nhận {g:.6g}. "
                              "Gợi ý: s_f·(1 − (1 − t/n)³) với t = min(step, total_steps).")


# ----------------------------------------------------------------------------- bitmask storage
BITMASK_CASES = [((13, 7), 0.5), ((64, 64), 0.9), ((1, 9), 0.0), ((10, 12), 0.3)]


@exercise("ch02.bitmask_bytes", "Số byte của định dạng bitmask")
def bitmask_bytes(fn: Callable[[torch.Tensor], int]) -> None:
    got, want, cases = [], [], []
    for i, (shape, s) in enumerate(BITMASK_CASES):
        w = _randn(200 + i, *shape)
        w = w * P.magnitude_mask(w, s)
        nnz, numel = int((w != 0).sum()), w.numel()
        g = call(fn, w, names=("weight",))
        if isinstance(g, float) and close(g, nnz * 4 + numel / 8):
            raise CheckFailed(f"numel / 8 là phép chia thực (ở đây {numel} / 8 = {numel / 8:g}): số byte phải là số nguyên, "
                              f"làm tròn lên bằng math.ceil(numel / 8) và trả về int.")
        got.append(as_int(g, f"bitmask_bytes của ma trận {shape}"))
        want.append(nnz * 4 + math.ceil(numel / 8))
        cases.append((nnz, numel))
    recognise(got, {
        "mặt nạ chỉ cần 1 *bit* mỗi trọng số, tức numel/8 byte, không phải 1 byte.": [z * 4 + n for z, n in cases],
        "numel // 8 làm tròn xuống: cần làm tròn lên, math.ceil(numel / 8), để đủ chỗ cho mọi bit.": [z * 4 + n // 8 for z, n in cases],
        "chỉ các giá trị *khác 0* được lưu (4 byte mỗi giá trị), không phải cả numel giá trị.": [n * 4 + math.ceil(n / 8) for z, n in cases],
        "bạn quên phần mặt nạ: cộng ceil(numel / 8) byte.": [z * 4 for z, n in cases],
    }, lambda a, b: a == b, want)
    for (shape, s), g, w in zip(BITMASK_CASES, got, want):
        if g != w:
            raise CheckFailed(f"bitmask_bytes của ma trận {shape} (thưa {s}): mong đợi {w}, nhận {g}. "
                              "Gợi ý: 4 byte FP32 cho mỗi giá trị khác 0, cộng ceil(numel/8) byte mặt nạ.")


# ----------------------------------------------------------------------------- N:M masks
NM_CASES = [((8, 16), None), ((3, 12), (1, 4)), ((5, 8), (2, 8)), ((4, 24), (3, 6)), ((8, 8), (2, 4))]


def _nm(scores: torch.Tensor, n: int, m: int, largest: bool = True) -> torch.Tensor:
    """Keep the n largest (``largest=False``: smallest) ``scores`` of every m consecutive entries of each row."""
    groups = scores.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.topk(n, dim=1, largest=largest).indices, True)
    return keep.view_as(scores)


def _strided(a: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Groups of m inputs spaced in/m apart (a wrong reshape)."""
    out, cols = a.shape
    g = a.reshape(out, m, cols // m)
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(1, g.topk(n, dim=1).indices, True)
    return keep.reshape(out, cols)


@exercise("ch02.nm_mask", "Mặt nạ bán cấu trúc 2:4")
def nm_mask(fn: Callable[..., torch.Tensor]) -> None:
    for i, (shape, nm) in enumerate(NM_CASES):
        w = _randn(300 + i, *shape)
        n, m = nm or (2, 4)
        what = f"nm_mask(w{shape}" + (f", n={n}, m={m})" if nm else ")")
        got = _bool_mask(call(fn, w, *(nm or ()), names=("weight", "n", "m")), w, what)
        want = P.nm_mask(w, n, m)
        if torch.equal(got, want):
            continue
        a = w.abs()
        mistakes = {}
        if nm and (n, m) != (2, 4) and shape[1] % 4 == 0:
            mistakes[f"bạn bỏ qua tham số n, m và luôn dùng 2:4; ở đây n={n}, m={m}."] = P.nm_mask(w, 2, 4)
        if 2 * n != m:
            mistakes["mặt nạ bị đảo: True nghĩa là *giữ*."] = ~want
        mistakes["bạn giữ các |w| *nhỏ nhất* của mỗi nhóm; cần giữ n phần tử lớn nhất (True = giữ)."] = _nm(a, n, m, largest=False)
        mistakes["bạn so w có dấu: hãy so |w| (trị tuyệt đối) trong mỗi nhóm."] = _nm(w, n, m)
        if shape[0] % m == 0:
            mistakes["bạn chia nhóm theo cột; mỗi *hàng* (chiều đầu vào) chia thành các nhóm m phần tử liên tiếp."] = \
                P.nm_mask(w.T.contiguous(), n, m).T
        mistakes["nhóm phải là m cột *liên tiếp* (reshape(-1, m)); bạn gom các cột cách nhau in/m."] = _strided(a, n, m)
        recognise_one(got, want, mistakes, _exact)
        groups = got.reshape(-1, m).sum(dim=1)
        expect(bool((groups == n).all()), f"{what}: mỗi nhóm {m} trọng số liên tiếp trong một hàng phải giữ đúng {n}.")
        raise CheckFailed(f"{what}: mỗi nhóm giữ đúng {n}, nhưng chưa phải {n} phần tử có |w| lớn nhất của nhóm.")


# ----------------------------------------------------------------------------- structured: channels
def _channel_cases() -> list[tuple[torch.Tensor, int]]:
    w1 = _randn(400, 16, 8, 3, 3)
    w1[3] *= 5.0  # one strong channel, one with a large single weight but a small L1 norm
    w1[7] = 0.01
    w1[7, 0, 0, 0] = 6.0
    w2 = _randn(401, 9, 5, 3, 1)
    w2[2] = -w2[2].abs() * 2  # large but all negative: a signed sum ranks it last
    w3 = _randn(402, 5, 12, 2, 2)
    w4 = _randn(403, 7, 4, 1, 1)
    return [(w1, 6), (w2, 4), (w3, 1), (w4, 7)]


@exercise("ch02.keep_channels", "Chọn kênh giữ lại theo chuẩn L1")
def keep_channels(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    for w, keep in _channel_cases():
        what = f"keep_channels(w{tuple(w.shape)}, {keep})"
        got = call(fn, w, keep, names=("weight", "keep"))
        if isinstance(got, torch.Tensor) and got.dtype == torch.bool:
            raise CheckFailed(f"{what}: cần tensor các *chỉ số* kênh (int64), không phải mặt nạ bool; dùng .topk(keep).indices.")
        got = as_tensor(got, what)
        expect(got.dim() == 1 and got.dtype == torch.int64,
               f"{what}: cần tensor 1 chiều các chỉ số kênh, dtype torch.int64 (như .topk().indices); "
               f"nhận hình dạng {tuple(got.shape)}, dtype {got.dtype}.")
        want = P.l1_keep_channels(w, keep)
        if torch.equal(got, want):
            continue
        if sorted(got.tolist()) == want.tolist():
            raise CheckFailed("đúng các kênh nhưng chưa sắp xếp tăng dần; hãy dùng .sort() để thứ tự kênh không đổi.")
        flat = w.flatten(1)
        mistakes = {
            "bạn dùng chuẩn L2; bài này xếp hạng theo chuẩn L1: tổng |w| của cả bộ lọc.": flat.norm(dim=1),
            "bạn xếp hạng theo |w| lớn nhất của kênh; chuẩn L1 là *tổng* |w| của cả bộ lọc.": flat.abs().amax(dim=1),
            "bạn cộng w có dấu; chuẩn L1 cộng các |w| (trị tuyệt đối).": flat.sum(dim=1),
            "bạn giữ các kênh có chuẩn L1 *nhỏ nhất*; cần giữ `keep` kênh lớn nhất.": -flat.abs().sum(dim=1),
        }
        if keep <= w.shape[1]:
            mistakes["kênh đầu ra là chiều 0 của trọng số (out, in, kh, kw); bạn xếp hạng theo chiều 1 (kênh đầu vào)."] = \
                w.abs().sum(dim=(0, 2, 3))
        recognise_one(got, want, {msg: score.topk(keep).indices.sort().values for msg, score in mistakes.items()},
                      lambda x, y: same_tensor(x, y))
        raise CheckFailed(f"{what}: các kênh cần giữ là {want.tolist()}, bạn trả về {got.tolist()}. "
                          "Chuẩn L1 của kênh c là w[c].abs().sum(); giữ `keep` kênh lớn nhất, chỉ số tăng dần.")


# ----------------------------------------------------------------------------- Wanda
def _wanda_cases() -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    w1, x1 = _randn(500, 12, 20), _randn(501, 20)
    w2, x2 = _randn(502, 16, 16), _randn(503, 16)
    w3, x3 = _randn(504, 5, 9), _randn(505, 9)
    return [(w2, x2.abs() * torch.logspace(-1, 1, 16), 0.25), (w1, x1.abs() * torch.logspace(-1, 1, 20), 0.5),
            (w3, x3.abs() + 0.1, 0.3)]


@exercise("ch02.wanda_mask", "Mặt nạ Wanda")
def wanda_mask(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> None:
    for w, norms, s in _wanda_cases():
        what = f"wanda_mask(w{tuple(w.shape)}, col_norms, {s})"
        got = _bool_mask(call(fn, w, norms, s, names=("weight", "col_norms", "sparsity")), w, what)
        want = P.wanda_mask(w, norms, s)
        if torch.equal(got, want):
            continue
        k = round(s * w.shape[1])
        score = w.abs() * norms[None, :]
        mistakes = {
            "mặt nạ bị đảo: True nghĩa là *giữ*.": ~want,
            "bạn chỉ dùng |W| (cắt tỉa theo độ lớn); điểm của Wanda là |W_ij| · ‖X_j‖.": _cut_rows(w.abs(), k),
            "điểm đúng, nhưng bạn so sánh trên cả ma trận; Wanda so sánh *trong từng hàng* đầu ra.": P.magnitude_mask(score, s),
            "bạn giữ các điểm *thấp nhất*; Wanda cắt các điểm thấp nhất trong mỗi hàng.": _cut_rows(score, k, largest=True),
            "bạn quên trị tuyệt đối: điểm là |W_ij| · ‖X_j‖.": _cut_rows(w * norms[None, :], k),
            f"mỗi hàng cần cắt round({s} · {w.shape[1]}) = {k}, không phải floor = {math.floor(s * w.shape[1])}.":
                _cut_rows(score, math.floor(s * w.shape[1])),
        }
        if w.shape[0] == w.shape[1]:
            mistakes["col_norms ứng với các *cột* (đầu vào j): nhân |W| với col_norms[None, :], không phải col_norms[:, None]."] = \
                _cut_rows(w.abs() * norms[:, None], k)
        recognise_one(got, want, mistakes, _exact)
        per_row = (~got).sum(1)
        expect(bool(per_row.eq(k).all()), f"{what}: mỗi hàng phải cắt đúng round({s} · {w.shape[1]}) = {k} trọng số; "
               f"bạn cắt {sorted(set(per_row.tolist()))}.")
        raise CheckFailed(f"{what}: mỗi hàng cắt đúng {k} trọng số nhưng chưa phải {k} điểm |W_ij| · ‖X_j‖ thấp nhất của hàng "
                          f"({int((got != want).sum())} vị trí khác lời giải).")
