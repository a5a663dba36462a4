"""Checks of chapter 4 (quantization): each compares the student's function with lightweight.quantize."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ... import quantize as Q
from . import (CheckFailed, as_float, as_int, as_tensor, call, close, exercise, expect, isolated_rng, recognise,
               recognise_one, same_tensor)


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _exact(a: torch.Tensor, b: torch.Tensor) -> bool:
    return same_tensor(a.double(), b.double())


def _near(a: torch.Tensor, b: torch.Tensor) -> bool:
    return same_tensor(a, b, atol=1e-5 * max(1.0, float(b.abs().max())))


def _qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


# ----------------------------------------------------------------------------- symmetric, per tensor
def _symmetric_cases() -> list[tuple[torch.Tensor, int]]:
    x4 = _randn(3, 20) * 2
    x4[3] = -9.0  # max|x| comes from a negative value
    return [(_randn(0, 50) * 3, 8), (_randn(1, 7, 13), 4), (_randn(2, 3, 4, 5) * 0.1, 3), (x4, 8)]


@exercise("ch04.quantize_symmetric", "Lượng tử hóa đối xứng một tensor")
def quantize_symmetric(fn: Callable[[torch.Tensor, int], tuple[torch.Tensor, float]]) -> None:
    for x, bits in _symmetric_cases():
        what = f"quantize_symmetric(x{tuple(x.shape)}, {bits})"
        got = call(fn, x, bits, names=("x", "bits"))
        expect(isinstance(got, tuple) and len(got) == 2, f"{what}: hàm cần trả về cặp (q, scale).")
        q = as_tensor(got[0], f"{what}: q", x.shape)
        scale = as_float(got[1], f"{what}: scale")
        qmax = _qmax(bits)
        want_s = float(x.abs().max()) / qmax
        recognise_one(scale, want_s, {
            f"với {bits} bit, qmax = 2^(b−1) − 1 = {qmax}, không phải 2^(b−1) = {qmax + 1}.": float(x.abs().max()) / (qmax + 1),
            "thang đo dùng max|x| (trị tuyệt đối), không phải max x: giá trị âm lớn nhất cũng phải biểu diễn được.":
                float(x.max()) / qmax,
            "đây là thang đo bất đối xứng (max − min)/(2^b − 1); lượng tử hóa đối xứng dùng scale = max|x| / qmax.":
                float(x.max() - x.min()) / (2 ** bits - 1),
        }, lambda a, b: close(a, b, rel=1e-5))
        if not close(scale, want_s, rel=1e-5):
            raise CheckFailed(f"{what}: scale mong đợi {want_s:.6g}, nhận {scale:.6g}. Gợi ý: scale = max|x| / qmax.")
        want_q = torch.clamp(torch.round(x / want_s), -qmax, qmax)
        recognise_one(q, want_q, {
            "bạn cắt phần thập phân (trunc/int); cần làm tròn về số gần nhất: torch.round.": torch.trunc(x / want_s),
            "torch.floor làm tròn xuống; cần làm tròn về số gần nhất: torch.round.": torch.floor(x / want_s),
            "torch.ceil làm tròn lên; cần làm tròn về số gần nhất: torch.round.": torch.ceil(x / want_s),
            "q là các số nguyên (mức lượng tử), chưa nhân lại với scale: x̂ = scale · q chỉ dùng khi giải lượng tử.": want_q * want_s,
        }, _exact)
        expect(_exact(q, want_q), f"{what}: q chưa đúng ({int((q.double() != want_q.double()).sum())} phần tử khác): "
               "q = clamp(round(x / scale), −qmax, qmax).")


# ----------------------------------------------------------------------------- affine parameters
AFFINE_CASES = [(-0.5, 1.5, 8), (0.0, 6.0, 8), (-3.0, 1.0, 4), (-1.3, 0.2, 3), (-2.0, 5.0, 6)]


def _affine(lo: float, hi: float, bits: int, qmin: int | None = None, levels: int | None = None,
            z: Callable[[float, int, float], int] | None = None) -> tuple[float, int]:
    qmin = -(2 ** (bits - 1)) if qmin is None else qmin
    scale = (hi - lo) / (levels or 2 ** bits - 1)
    return scale, (z or (lambda lo, qmin, s: qmin - round(lo / s)))(lo, qmin, scale)


@exercise("ch04.affine_params", "Thang đo và điểm không của lượng tử hóa bất đối xứng")
def affine_params(fn: Callable[[float, float, int], tuple[float, int]]) -> None:
    got = []
    for lo, hi, bits in AFFINE_CASES:
        what = f"affine_params({lo}, {hi}, {bits})"
        pair = fn(lo, hi, bits)
        expect(isinstance(pair, tuple) and len(pair) == 2, f"{what}: hàm cần trả về cặp (scale, zero_point).")
        got.append((as_float(pair[0], f"{what}: scale"), as_int(pair[1], f"{what}: zero_point")))
    want = [_affine(lo, hi, b) for lo, hi, b in AFFINE_CASES]
    recognise(got, {
        "dấu của zero_point bị ngược: z = qmin − round(min / scale), để min ↦ qmin.":
            [_affine(lo, hi, b, z=lambda lo, qmin, s: round(lo / s) - qmin) for lo, hi, b in AFFINE_CASES],
        "z = −round(min / scale) là công thức cho khoảng không dấu [0, 2^b − 1]; ở đây q_min = −2^(b−1): "
        "z = q_min − round(min / scale).": [_affine(lo, hi, b, qmin=0) for lo, hi, b in AFFINE_CASES],
        "bạn cắt phần thập phân (int) của min / scale; cần làm tròn về số gần nhất: round(min / scale).":
            [_affine(lo, hi, b, z=lambda lo, qmin, s: qmin - int(lo / s)) for lo, hi, b in AFFINE_CASES],
        "có 2^b mức nhưng chỉ 2^b − 1 khoảng giữa chúng: scale = (max − min) / (qmax − qmin) = (max − min) / (2^b − 1).":
            [_affine(lo, hi, b, levels=2 ** b) for lo, hi, b in AFFINE_CASES],
    }, lambda a, b: close(a[0], b[0]) and a[1] == b[1], want)
    for (lo, hi, bits), (scale, zero), (want_s, want_z) in zip(AFFINE_CASES, got, want):
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if not close(scale, want_s):
            raise CheckFailed(f"scale với min={lo}, max={hi}, {bits} bit: mong đợi {want_s:.6g}, nhận {scale:.6g}. "
                              f"Gợi ý: scale = (max − min) / (qmax − qmin) = (max − min) / {qmax - qmin}.")
        if zero != want_z:
            raise CheckFailed(f"zero_point với min={lo}, max={hi}, {bits} bit: mong đợi {want_z}, nhận {zero}. "
                              "Gợi ý: z = qmin − round(min / scale).")


# ----------------------------------------------------------------------------- group scales
GROUP_CASES = [((8, 64), 16, 4), ((5, 96), 32, 8), ((3, 12), 4, 3), ((4, 10), 5, 4)]


@exercise("ch04.group_scales", "Thang đo theo nhóm")
def group_scales(fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> None:
    for i, ((out, cols), g, bits) in enumerate(GROUP_CASES):
        w = _randn(10 + i, out, cols)
        what = f"group_scales(w{(out, cols)}, group_size={g}, bits={bits})"
        got = as_tensor(call(fn, w, g, bits, names=("w", "group_size", "bits")), f"{what}: scales")
        if tuple(got.shape) in ((out, 1), (out,)):
            raise CheckFailed(f"{what}: bạn tính một thang đo cho cả hàng (per-channel); cần một thang đo cho mỗi nhóm {g} cột.")
        expect(tuple(got.shape) == (out, cols // g),
               f"{what}: scales cần hình dạng (out, in // group_size) = {(out, cols // g)}, nhận {tuple(got.shape)}.")
        expect(got.dtype == w.dtype, f"{what}: scales cần cùng dtype với w ({w.dtype}), nhận {got.dtype}.")
        qmax = _qmax(bits)
        groups = w.view(out, cols // g, g)
        want = groups.abs().amax(dim=-1) / qmax
        mistakes = {
            "nhóm phải là các cột *liên tiếp* của một hàng: w.reshape(out, in // g, g), rồi lấy max theo chiều cuối.":
                w.view(out, g, cols // g).abs().amax(dim=1) / qmax,
            f"với {bits} bit, qmax = 2^(b−1) − 1 = {qmax}, không phải {qmax + 1}.": groups.abs().amax(dim=-1) / (qmax + 1),
            "bạn quên trị tuyệt đối: scale = max|w| / qmax của mỗi nhóm.": groups.amax(dim=-1) / qmax,
            "đây là thang đo bất đối xứng (max − min)/(2^b − 1); ở đây cần thang đo đối xứng max|w| / qmax.":
                (groups.amax(dim=-1) - groups.amin(dim=-1)) / (2 ** bits - 1),
        }
        if bits != 4:
            mistakes[f"qmax phụ thuộc bits: 2^(b−1) − 1 = {qmax} ở {bits} bit; bạn luôn dùng 7 (4 bit)."] = groups.abs().amax(dim=-1) / 7
        recognise_one(got, want, mistakes, _near)
        expect(_near(got, want), f"{what}: thang đo chưa đúng (sai lệch lớn nhất {(got - want).abs().max().item():.3g}): "
               f"với mỗi nhóm, scale = max|w| / qmax (qmax = {qmax} ở {bits} bit).")


# ----------------------------------------------------------------------------- INT4 packing
def _pack_cases() -> list[torch.Tensor]:
    values = torch.arange(-8, 8, dtype=torch.int8)
    g = torch.Generator().manual_seed(20)
    rand = lambda *s: torch.randint(-8, 8, s, generator=g, dtype=torch.int8)  # noqa: E731
    return [torch.cartesian_prod(values, values), rand(3, 8), rand(2, 3, 6), rand(1, 10)]


def _pack_with(u: torch.Tensor) -> torch.Tensor:
    """Even entries in the low nibble, odd ones in the high nibble, of already-encoded uint8 ``u``."""
    return u[..., 0::2] | (u[..., 1::2] << 4)


@exercise("ch04.pack_int4", "Đóng gói hai giá trị INT4 vào một byte")
def pack_int4(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    for q in _pack_cases():
        what = f"pack_int4(q{tuple(q.shape)})"
        got = as_tensor(call(fn, q, names=("q",)), f"{what}: kết quả")
        want = Q.pack_int4(q)
        n = q.shape[-1]
        if q.dim() >= 2 and q.shape[0] % 2 == 0 and tuple(got.shape) == (q.shape[0] // 2, *q.shape[1:]):
            raise CheckFailed(f"{what}: bạn ghép theo chiều đầu; hai giá trị chung một byte là hai phần tử kề nhau ở *chiều cuối*: "
                              "q[..., 0::2] và q[..., 1::2].")
        expect(got.shape == want.shape, f"{what}: cần hình dạng (..., n/2) = {tuple(want.shape)}, nhận {tuple(got.shape)}.")
        expect(got.dtype == torch.uint8, f"{what}: kết quả cần dtype torch.uint8, nhận {got.dtype}.")
        u = (q.to(torch.int16) & 0xF).to(torch.uint8)
        recognise_one(got, want, {
            "thứ tự nửa byte bị đảo: phần tử chẵn (index 0, 2, …) nằm ở 4 bit thấp.": (want >> 4) | ((want & 0xF) << 4),
            "bạn ghép nửa đầu với nửa sau của hàng; hai giá trị chung một byte là hai phần tử kề nhau: q[..., 0::2] (4 bit thấp) "
            "và q[..., 1::2] (4 bit cao).": u[..., : n // 2] | (u[..., n // 2:] << 4),
            "số âm cần mã bù hai 4 bit, tức (q & 0xF) trước khi ghép: đổi thẳng sang uint8 giữ cả 4 bit cao của số âm.":
                _pack_with(q.to(torch.uint8)),
            "đề bài dùng mã bù hai (q & 0xF), không phải dịch q + 8 về [0, 15].": _pack_with((q.to(torch.int16) + 8).to(torch.uint8)),
        }, _exact)
        expect(torch.equal(got, want), f"{what}: {int((got != want).sum())} byte sai: số âm cần mã bù hai 4 bit, tức (q & 0xF); "
               "rồi lo | (hi << 4).")


# ----------------------------------------------------------------------------- QuantizedLinear forward
QLINEAR_CASES = [((64, 16), 16, 4, (5, 3, 64)), ((96, 10), 32, 8, (4, 96)), ((12, 5), 4, 3, (7, 12))]


@exercise("ch04.qlinear_forward", "Lượt tính xuôi của QuantizedLinear")
def qlinear_forward(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]) -> None:
    _qlinear_case(fn, 0)  # draws its layer from the global RNG as this check always has; the others leave it alone
    for i in range(1, len(QLINEAR_CASES)):
        with isolated_rng():
            torch.manual_seed(30 + i)
            _qlinear_case(fn, i)


def _qlinear_case(fn: Callable[..., torch.Tensor], i: int) -> None:
    (n_in, n_out), g, bits, x_shape = QLINEAR_CASES[i]
    lin = torch.nn.Linear(n_in, n_out)
    qt = Q.quantize_tensor(lin.weight, bits, g)
    bias = lin.bias.detach()
    x = _randn(40 + i, *x_shape)
    what = f"qlinear_forward(x{x_shape}, q{tuple(qt.q.shape)}, scale{tuple(qt.scale.shape)}, bias, {g})"
    got = as_tensor(call(fn, x, qt.q, qt.scale, bias, g, names=("x", "q", "scale", "bias", "group_size")), f"{what}: y",
                    (*x_shape[:-1], n_out))
    expect(got.dtype == x.dtype, f"{what}: y cần cùng dtype với x ({x.dtype}), nhận {got.dtype}.")
    want = F.linear(x, qt.dequantize(), bias)
    got = got.detach()
    recognise_one(got, want, {
        f"bạn dùng một thang đo cho cả hàng; mỗi nhóm {g} cột có thang đo riêng: scale[..., None] sau khi view (out, in/g, g).":
            F.linear(x, qt.q.float() * qt.scale[:, :1], bias),
        "bạn quên cộng bias.": F.linear(x, qt.dequantize()),
        "thang đo bị lặp theo kiểu xen kẽ (như scale.repeat(1, g)): cột j thuộc nhóm j // g, nên mỗi thang đo phải lặp g lần "
        "liền nhau (scale.repeat_interleave(g, dim=1), hoặc view (out, in/g, g) rồi nhân scale[..., None]).":
            F.linear(x, qt.q.float() * qt.scale.repeat(1, g), bias),
    }, _near)
    expect(_near(got, want), f"{what}: y chưa đúng (sai lệch lớn nhất {(got - want).abs().max().item():.3g}): "
           "giải lượng tử W ≈ q · scale (theo nhóm) rồi y = x Wᵀ + b.")


# ----------------------------------------------------------------------------- percentile clipping
def _percentile_cases() -> list[tuple[torch.Tensor, float]]:
    x1 = torch.cat([_randn(50, 20000), torch.tensor([-80.0, 50.0])])
    x2 = _randn(51, 1234) * 0.5
    x3 = _randn(52, 3, 401)
    x4 = torch.tensor([0.3, -2.0, 1.1, -0.7, 0.05, 4.0, -3.5, 0.9, 2.2])
    return [(x1, 99.9), (x2, 95.0), (x1, 99.99), (x3, 99.5), (x4, 60.0), (x1, 100.0)]


@exercise("ch04.percentile_clip", "Ngưỡng kẹp theo phân vị cho hiệu chỉnh")
def percentile_clip(fn: Callable[[torch.Tensor, float], float]) -> None:
    cases = _percentile_cases()
    got = [as_float(call(fn, x, p, names=("x", "percentile")), f"percentile_clip(x{tuple(x.shape)}, {p})") for x, p in cases]
    want = [Q.percentile_clip(x, p) for x, p in cases]

    def kth(x: torch.Tensor, k: int, signed: bool = False) -> float:
        a = (x if signed else x.abs()).flatten().sort().values
        return float(a[min(max(k, 1), a.numel()) - 1])

    ks = [(x, p / 100 * x.numel()) for x, p in cases]
    recognise(got, {
        "bạn làm tròn p/100 · N về số gần nhất; đề bài lấy phần tử thứ ⌈p/100 · N⌉ (làm tròn *lên*, math.ceil).":
            [kth(x, round(k)) for x, k in ks],
        "bạn làm tròn p/100 · N xuống (int/floor); đề bài lấy phần tử thứ ⌈p/100 · N⌉ (làm tròn *lên*, math.ceil).":
            [kth(x, math.floor(k)) for x, k in ks],
        "torch.quantile nội suy giữa hai phần tử; đề bài lấy đúng phần tử thứ ⌈p/100 · N⌉ của |x| đã sắp xếp (torch.kthvalue).":
            [float(torch.quantile(x.abs().flatten(), p / 100)) for x, p in cases],
        "hãy lấy phân vị của |x| (trị tuyệt đối): các giá trị âm lớn như −80 cũng là ngoại lai.":
            [kth(x, math.ceil(k), signed=True) for x, k in ks],
        "phần tử thứ k (đếm từ 1) của dãy đã sắp xếp là sorted[k − 1]; bạn lấy sorted[k].": [kth(x, math.ceil(k) + 1) for x, k in ks],
        "bạn trả về max|x|; phân vị bỏ qua các giá trị cực hiếm như −80 và 50.": [float(x.abs().max()) for x, _ in cases],
    }, lambda a, b: close(a, b, rel=1e-6), want)
    for (x, p), g, w in zip(cases, got, want):
        if not close(g, w, rel=1e-6):
            raise CheckFailed(f"percentile_clip(x{tuple(x.shape)}, {p}): mong đợi {w:.6g}, nhận {g:.6g}. Gợi ý: lấy giá trị thứ "
                              "ceil(p/100 · N) của |x| đã sắp xếp tăng dần (torch.kthvalue).")


# ----------------------------------------------------------------------------- one GPTQ column step
def _gptq_cases() -> list[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, int]]:
    cases = []
    for i, ((out, cols), j, bits) in enumerate([((6, 8), 2, 4), ((5, 11), 0, 3), ((4, 7), 6, 8), ((6, 8), 5, 4)]):
        W = _randn(60 + i, out, cols)
        A = _randn(70 + i, cols, cols)
        Hinv = torch.linalg.cholesky(torch.linalg.inv(A @ A.T + cols * torch.eye(cols)), upper=True)
        scale = W.abs().amax(dim=1) / _qmax(bits) * 0.5  # coarse enough that some entries of column j need the clamp
        cases.append((W, Hinv, j, scale, bits))
    return cases


def _gptq(W: torch.Tensor, Hinv: torch.Tensor, j: int, scale: torch.Tensor, bits: int, qmax: int | None = None,
          clamp: bool = True, divide: bool = True, row: bool = True, start: int | None = None, on_grid: bool = True,
          sign: float = 1.0) -> torch.Tensor:
    """The step, or one of its typical mistakes."""
    qmax = _qmax(bits) if qmax is None else qmax
    W = W.clone()
    w = W[:, j].clone()
    r = torch.round(w / scale)
    q = (torch.clamp(r, -qmax, qmax) if clamp else r) * (scale if on_grid else 1.0)
    err = (w - q) / (Hinv[j, j] if divide else 1.0)
    first = j if start is None else start
    h = Hinv[j, first:] if row else Hinv[first:, j]
    W[:, first:] -= sign * err[:, None] * h[None, :]
    return W


@exercise("ch04.gptq_step", "Một bước cột của GPTQ")
def gptq_step(fn: Callable[[torch.Tensor, torch.Tensor, int, torch.Tensor, int], torch.Tensor]) -> None:
    for W, Hinv, j, scale, bits in _gptq_cases():
        what = f"gptq_step(W{tuple(W.shape)}, Hinv, j={j}, scale, bits={bits})"
        got = as_tensor(call(fn, W, Hinv, j, scale, bits, names=("W", "Hinv", "j", "scale", "bits")), f"{what}: W mới", W.shape)
        expect(got.dtype == W.dtype, f"{what}: W mới cần cùng dtype với W ({W.dtype}), nhận {got.dtype}.")
        want = _gptq(W, Hinv, j, scale, bits)
        got = got.detach()
        if _near(got, want):
            continue
        mistakes = {
            "sai số phải chia cho Hinv[j, j] trước khi lan sang các cột sau.": _gptq(W, Hinv, j, scale, bits, divide=False),
            "thiếu bước kẹp: q = clamp(round(w / scale), −qmax, qmax), nếu không giá trị vượt khỏi lưới số nguyên của b bit.":
                _gptq(W, Hinv, j, scale, bits, clamp=False),
            "bạn dùng cột j của Hinv (Hinv[j:, j]); bước GPTQ dùng *hàng* j của nhân tử Cholesky trên: Hinv[j, j:].":
                _gptq(W, Hinv, j, scale, bits, row=False),
            "q phải nằm trên lưới: q = scale · clamp(round(w / scale), −qmax, qmax) (nhân lại với scale) trước khi tính sai số.":
                _gptq(W, Hinv, j, scale, bits, on_grid=False),
            "dấu của bước cập nhật bị ngược: W[:, j:] −= e ⊗ Hinv[j, j:].": _gptq(W, Hinv, j, scale, bits, sign=-1.0),
        }
        if j + 1 < W.shape[1]:
            mistakes["bạn chỉ cập nhật W[:, j+1:]; cột j cũng phải trở thành giá trị đã lượng tử hóa (cập nhật W[:, j:], hoặc "
                     "gán W[:, j] = q)."] = _gptq(W, Hinv, j, scale, bits, start=j + 1)
        if bits != 4:
            mistakes[f"qmax phụ thuộc bits: 2^(b−1) − 1 = {_qmax(bits)} ở {bits} bit; bạn luôn dùng 7."] = _gptq(W, Hinv, j, scale, bits, qmax=7)
        recognise_one(got, want, mistakes, _near)
        if not _near(got[:, :j], W[:, :j]):
            raise CheckFailed(f"{what}: các cột trước j đã được lượng tử hóa, không được thay đổi: chỉ cập nhật W[:, j:].")
        q = torch.clamp(torch.round(W[:, j] / scale), -_qmax(bits), _qmax(bits)) * scale
        expect(_near(got[:, j], q), f"{what}: sau bước này, cột j phải bằng giá trị đã lượng tử hóa scale · clamp(round(w / scale), ±qmax).")
        raise CheckFailed(f"{what}: các cột sau j chưa đúng (sai lệch lớn nhất {(got - want).abs().max().item():.3g}): "
                          "W[:, j:] −= e ⊗ Hinv[j, j:] với e = (w − q) / Hinv[j, j].")
