"""Checks of chapter 4 (quantization): each compares the student's function with lightweight.quantize."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import quantize as Q
from . import CheckFailed, exercise, expect, expect_close


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _tensor(got: object, what: str) -> torch.Tensor:
    expect(isinstance(got, torch.Tensor), f"{what} phải là một tensor, nhận {type(got).__name__}.")
    return got


@exercise("ch04.quantize_symmetric", "Lượng tử hóa đối xứng một tensor")
def quantize_symmetric(fn: Callable[[torch.Tensor, int], tuple[torch.Tensor, float]]) -> None:
    for bits in (8, 4):
        x = _randn(bits, 50) * 3
        got = fn(x.clone(), bits)
        expect(isinstance(got, tuple) and len(got) == 2, "hàm cần trả về cặp (q, scale).")
        q, scale = _tensor(got[0], "q"), got[1]
        qmax = 2 ** (bits - 1) - 1
        want_s = float(x.abs().max()) / qmax
        if isinstance(scale, (int, float, torch.Tensor)) and math.isclose(float(scale), float(x.abs().max()) / 2 ** (bits - 1), rel_tol=1e-5):
            raise CheckFailed(f"với {bits} bit, qmax = 2^(b−1) − 1 = {qmax}, không phải 2^(b−1).")
        expect_close(float(scale), want_s, f"scale ({bits} bit)", rel=1e-5, hint="scale = max|x| / qmax.")
        want_q = torch.clamp(torch.round(x / want_s), -qmax, qmax)
        if torch.equal(q.float(), torch.trunc(x / want_s)) and not torch.equal(want_q, torch.trunc(x / want_s)):
            raise CheckFailed("bạn cắt phần thập phân (trunc/int); cần làm tròn về số gần nhất: torch.round.")
        expect(q.shape == x.shape and torch.equal(q.float(), want_q),
               f"q ({bits} bit) chưa đúng: q = clamp(round(x / scale), −qmax, qmax).")


@exercise("ch04.affine_params", "Thang đo và điểm không của lượng tử hóa bất đối xứng")
def affine_params(fn: Callable[[float, float, int], tuple[float, int]]) -> None:
    for lo, hi, bits in [(-0.5, 1.5, 8), (0.0, 6.0, 8), (-3.0, 1.0, 4)]:
        got = fn(lo, hi, bits)
        expect(isinstance(got, tuple) and len(got) == 2, "hàm cần trả về cặp (scale, zero_point).")
        scale, zero = got
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        want_s = (hi - lo) / (qmax - qmin)
        expect_close(scale, want_s, f"scale với min={lo}, max={hi}, {bits} bit", rel=1e-6,
                     hint=f"scale = (max − min) / (qmax − qmin) = (max − min) / {qmax - qmin}.")
        want_z = qmin - round(lo / want_s)
        expect(float(zero) == float(round(float(zero))), f"zero_point phải là số nguyên (làm tròn), nhận {zero!r}.")
        if int(round(float(zero))) != want_z and int(round(float(zero))) in (-want_z, round(lo / want_s)):
            raise CheckFailed("dấu của zero_point bị ngược: z = qmin − round(min / scale), để min ↦ qmin.")
        expect(int(round(float(zero))) == want_z, f"zero_point với min={lo}, max={hi}: mong đợi {want_z}, nhận {zero}.")


@exercise("ch04.group_scales", "Thang đo theo nhóm")
def group_scales(fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> None:
    w = _randn(3, 8, 64)
    got = _tensor(fn(w.clone(), 16, 4), "scales")
    want = Q.quantize_tensor(w, 4, 16).scale
    if got.shape == (8, 1) or got.shape == (8,):
        raise CheckFailed("bạn tính một thang đo cho cả hàng (per-channel); cần một thang đo cho mỗi nhóm 16 cột.")
    expect(got.shape == want.shape, f"scales cần hình dạng (out, in / group_size) = {tuple(want.shape)}, nhận {tuple(got.shape)}.")
    by_cols = w.view(8, 16, 4).abs().amax(dim=1) / 7
    if torch.allclose(got, by_cols):
        raise CheckFailed("nhóm phải là các cột *liên tiếp* của một hàng: w.view(out, in // g, g), rồi lấy max theo chiều cuối.")
    expect(torch.allclose(got, want, rtol=1e-5), "thang đo chưa đúng: với mỗi nhóm, scale = max|w| / qmax (qmax = 7 ở 4 bit).")


@exercise("ch04.pack_int4", "Đóng gói hai giá trị INT4 vào một byte")
def pack_int4(fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    values = torch.arange(-8, 8, dtype=torch.int8)
    pairs = torch.cartesian_prod(values, values)
    got = _tensor(fn(pairs.clone()), "kết quả")
    expect(got.dtype == torch.uint8, f"kết quả cần dtype torch.uint8, nhận {got.dtype}.")
    want = Q.pack_int4(pairs)
    expect(got.shape == want.shape, f"256 cặp giá trị phải thành {tuple(want.shape)} byte, nhận {tuple(got.shape)}.")
    swapped = (want >> 4) | ((want & 0xF) << 4)
    if torch.equal(got, swapped):
        raise CheckFailed("thứ tự nửa byte bị đảo: phần tử chẵn (index 0, 2, …) nằm ở 4 bit thấp.")
    expect(torch.equal(got, want), "một số cặp sai: số âm cần mã bù hai 4 bit, tức (q & 0xF); rồi lo | (hi << 4).")


@exercise("ch04.qlinear_forward", "Lượt tính xuôi của QuantizedLinear")
def qlinear_forward(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]) -> None:
    lin = torch.nn.Linear(64, 16)
    qt = Q.quantize_tensor(lin.weight, 4, 16)
    x = _randn(5, 3, 64)
    got = _tensor(fn(x.clone(), qt.q.clone(), qt.scale.clone(), lin.bias.detach().clone(), 16), "y")
    want = torch.nn.functional.linear(x, qt.dequantize(), lin.bias).detach()
    expect(got.shape == want.shape, f"y cần hình dạng {tuple(want.shape)}, nhận {tuple(got.shape)}.")
    per_row = torch.nn.functional.linear(x, qt.q.float() * qt.scale[:, :1], lin.bias).detach()
    if torch.allclose(got, per_row, atol=1e-4):
        raise CheckFailed("bạn dùng một thang đo cho cả hàng; mỗi nhóm 16 cột có thang đo riêng: scale[..., None] sau khi view (out, in/g, g).")
    no_bias = torch.nn.functional.linear(x, qt.dequantize()).detach()
    if torch.allclose(got, no_bias, atol=1e-4):
        raise CheckFailed("bạn quên cộng bias.")
    expect(torch.allclose(got, want, atol=1e-4), "y chưa đúng: giải lượng tử W ≈ q · scale (theo nhóm) rồi y = x Wᵀ + b.")


@exercise("ch04.percentile_clip", "Ngưỡng kẹp theo phân vị cho hiệu chỉnh")
def percentile_clip(fn: Callable[[torch.Tensor, float], float]) -> None:
    x = torch.cat([_randn(6, 20000), torch.tensor([-80.0, 50.0])])
    for p in (99.9, 99.99, 100.0):
        got = fn(x.clone(), p)
        want = Q.percentile_clip(x, p)
        if p < 100 and isinstance(got, (int, float, torch.Tensor)) and math.isclose(float(got), 80.0):
            raise CheckFailed("bạn trả về max|x|; phân vị bỏ qua các giá trị cực hiếm như −80 và 50.")
        if isinstance(got, (int, float, torch.Tensor)) and p == 100.0 and math.isclose(float(got), 50.0):
            raise CheckFailed("hãy lấy phân vị của |x| (trị tuyệt đối): giá trị −80 cũng là ngoại lai.")
        expect_close(float(got) if isinstance(got, torch.Tensor) else got, want, f"percentile_clip(x, {p})", rel=1e-4,
                     hint="lấy giá trị thứ ceil(p/100 · N) của |x| đã sắp xếp (torch.kthvalue).")


@exercise("ch04.gptq_step", "Một bước cột của GPTQ")
def gptq_step(fn: Callable[[torch.Tensor, torch.Tensor, int, torch.Tensor, int], torch.Tensor]) -> None:
    W = _randn(7, 6, 8)
    A = _randn(8, 8, 8)
    Hinv = torch.linalg.cholesky(torch.linalg.inv(A @ A.T + 8 * torch.eye(8)), upper=True)
    scale = W.abs().amax(dim=1) / 7
    j = 2
    got = _tensor(fn(W.clone(), Hinv.clone(), j, scale.clone(), 4), "W mới")
    q = torch.clamp(torch.round(W[:, j] / scale), -7, 7) * scale
    err = (W[:, j] - q) / Hinv[j, j]
    want = W.clone()
    want[:, j:] -= err[:, None] * Hinv[j, j:][None, :]
    expect(got.shape == W.shape, f"W mới cần hình dạng {tuple(W.shape)}.")
    no_div = W.clone()
    no_div[:, j:] -= (W[:, j] - q)[:, None] * Hinv[j, j:][None, :]
    if torch.allclose(got, no_div, atol=1e-5):
        raise CheckFailed("sai số phải chia cho Hinv[j, j] trước khi lan sang các cột sau.")
    if not torch.allclose(got[:, :j], W[:, :j]):
        raise CheckFailed("các cột trước j đã được lượng tử hóa, không được thay đổi: chỉ cập nhật W[:, j:].")
    expect(torch.allclose(got[:, j], q, atol=1e-5), "sau bước này, cột j phải bằng giá trị đã lượng tử hóa q · scale.")
    expect(torch.allclose(got, want, atol=1e-5), "các cột sau j chưa đúng: W[:, j:] −= err ⊗ Hinv[j, j:] với err = (w − q) / Hinv[j, j].")
