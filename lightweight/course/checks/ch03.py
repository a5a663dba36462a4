"""Checks of chapter 3 (low-rank factorization): each compares the student's code with lightweight.lowrank."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ... import lowrank as L
from . import (CheckFailed, as_float, as_int, as_tensor, call, close, exercise, expect, isolated_rng, recognise,
               recognise_one, same_tensor)


def _randn(seed: int, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _decaying(seed: int, m: int, n: int) -> torch.Tensor:
    """A matrix with singular values 3, 2.4, 1.92, ... (3·0.8^i) like a trained weight."""
    U, _ = torch.linalg.qr(_randn(seed, m, m))
    V, _ = torch.linalg.qr(_randn(seed + 1, n, n))
    k = min(m, n)
    return (U[:, :k] * 3 * 0.8 ** torch.arange(k, dtype=torch.float32)) @ V[:, :k].T


def _near(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float32 rounding, relative to the larger entry of ``b``."""
    return same_tensor(a, b, atol=1e-4 * max(1.0, float(b.abs().max())))


# ----------------------------------------------------------------------------- truncated SVD
SVD_CASES = [((12, 8), 3), ((12, 8), 1), ((8, 12), 2), ((7, 5), 5), ((12, 8), 5)]


@exercise("ch03.truncated_svd", "SVD rút gọn: xấp xỉ hạng r tốt nhất")
def truncated_svd(fn: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]) -> None:
    for i, ((m, n), r) in enumerate(SVD_CASES):
        W = _decaying(10 * i, m, n)
        what = f"truncated_svd(W{(m, n)}, {r})"
        got = call(fn, W, r, names=("W", "r"))
        expect(isinstance(got, tuple) and len(got) == 2, f"{what}: hàm cần trả về cặp (A, B) với A @ B ≈ W.")
        A, B = as_tensor(got[0], f"{what}: A"), as_tensor(got[1], f"{what}: B")
        if A.shape == (r, n) and B.shape == (m, r) and (m, r) != (r, n):
            raise CheckFailed(f"{what}: A và B bị đổi chỗ; trả về (A, B) với A (m, r) = ({m}, {r}) và B (r, n) = ({r}, {n}).")
        if A.dim() == 2 and B.dim() == 2 and A.shape[0] == m and B.shape[1] == n and A.shape[1] == B.shape[0] != r:
            raise CheckFailed(f"{what}: bạn giữ {A.shape[1]} thành phần; cần đúng r = {r}: U[:, :r], S[:r], Vh[:r].")
        expect(A.shape == (m, r) and B.shape == (r, n),
               f"{what}: A cần hình dạng ({m}, {r}), B cần ({r}, {n}); nhận {tuple(A.shape)} và {tuple(B.shape)}.")
        expect(A.dtype == W.dtype and B.dtype == W.dtype, f"{what}: A và B cần cùng dtype với W ({W.dtype}), nhận {A.dtype} và {B.dtype}.")
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        want = (U[:, :r] * S[:r]) @ Vh[:r]
        AB = A @ B
        mistakes = {
            "bạn quên các giá trị kỳ dị: A @ B phải là U_r · diag(S_r) · V_rᵀ, không chỉ U_r · V_rᵀ.": U[:, :r] @ Vh[:r],
            "bạn giữ r thành phần có σ *nhỏ nhất*; torch.linalg.svd xếp σ giảm dần: lấy r thành phần *đầu*.":
                (U[:, -r:] * S[-r:]) @ Vh[-r:],
        }
        if U.shape[1] == n:
            mistakes["B phải là r *hàng* đầu của Vᵀ (Vh[:r] của torch.linalg.svd); bạn lấy r cột (hoặc dùng V của "
                     "torch.svd như thể nó là Vᵀ)."] = (U[:, :r] * S[:r]) @ Vh[:, :r].T
        recognise_one(AB, want, mistakes, _near)
        if not same_tensor(AB, want, atol=1e-4):
            err = torch.linalg.matrix_norm(W - AB).item()
            best = S[r:].pow(2).sum().sqrt().item()
            raise CheckFailed(f"{what}: ‖W − AB‖_F = {err:.4g}, nhưng xấp xỉ hạng r tốt nhất có sai số {best:.4g} (Eckart–Young: "
                              "√(Σ_{i>r} σ_i²)). Giữ r thành phần có σ lớn nhất: U[:, :r], S[:r], Vh[:r].")
        expect(abs(A.norm().item() - B.norm().item()) <= 1e-3 * B.norm().item(),
               "A @ B đã đúng, nhưng hãy chia đều các giá trị kỳ dị cho hai thừa số: A = U_r·√S_r, B = √S_r·V_rᵀ "
               "(hai thừa số cùng cỡ, có lợi khi lượng tử hóa chúng sau này).")


# ----------------------------------------------------------------------------- counting
PARAM_CASES = [(384, 1536, 100), (128, 128, 64), (10, 256, 3), (7, 5, 2)]
BREAK_EVEN_CASES = [(2048, 2048), (384, 1536), (10, 256), (7, 5), (3, 3)]


@exercise("ch03.counting", "Số tham số và hạng hòa vốn")
def counting(params_fn: Callable[[int, int, int], int], break_even_fn: Callable[[int, int], float]) -> None:
    got = [as_int(params_fn(m, n, r), f"lowrank_params({m}, {n}, {r})") for m, n, r in PARAM_CASES]
    want = [L.lowrank_params(m, n, r) for m, n, r in PARAM_CASES]
    recognise(got, {
        "lowrank_params: hai thừa số (m × r) và (r × n) có m·r + r·n phần tử, không phải m·r·n.": [m * r * n for m, n, r in PARAM_CASES],
        "lowrank_params: các giá trị kỳ dị không lưu riêng — chúng đã được nhân vào A và B: r(m + n), không cộng thêm r.":
            [r * (m + n) + r for m, n, r in PARAM_CASES],
        "lowrank_params: đây là số tham số *tiết kiệm được*; đề bài hỏi số trọng số của hai thừa số, r(m + n).":
            [m * n - r * (m + n) for m, n, r in PARAM_CASES],
    }, lambda a, b: a == b, want)
    for (m, n, r), g, w in zip(PARAM_CASES, got, want):
        if g != w:
            raise CheckFailed(f"lowrank_params({m}, {n}, {r}): mong đợi {w}, nhận {g}. Gợi ý: m·r + r·n = r(m + n).")
    got = [as_float(break_even_fn(m, n), f"break_even_rank({m}, {n})") for m, n in BREAK_EVEN_CASES]
    want = [L.break_even_rank(m, n) for m, n in BREAK_EVEN_CASES]
    recognise(got, {
        "break_even_rank: min(m, n)/2 chỉ đúng với ma trận vuông; giải r(m + n) = m·n.": [min(m, n) / 2 for m, n in BREAK_EVEN_CASES],
        "break_even_rank: đề bài cần số thực, không làm tròn (m·n // (m + n) là phép chia nguyên): dùng m * n / (m + n).":
            [m * n // (m + n) for m, n in BREAK_EVEN_CASES],
        "break_even_rank: đề bài cần số thực, không làm tròn: bỏ round(...).": [round(m * n / (m + n)) for m, n in BREAK_EVEN_CASES],
        "break_even_rank: phân số bị lộn ngược: r = m·n / (m + n).": [(m + n) / (m * n) for m, n in BREAK_EVEN_CASES],
    }, lambda a, b: close(a, b), want)
    for (m, n), g, w in zip(BREAK_EVEN_CASES, got, want):
        if not close(g, w):
            raise CheckFailed(f"break_even_rank({m}, {n}): mong đợi {w:.6g}, nhận {g:.6g}. "
                              "Gợi ý: hòa vốn khi r(m + n) = m·n, tức r = m·n / (m + n).")


# ----------------------------------------------------------------------------- LowRankLinear
LOWRANK_CASES = [((24, 16), 6, (5, 7, 24)), ((10, 30), 1, (4, 10)), ((9, 9), 3, (9,))]


@exercise("ch03.lowrank_linear", "Lượt tính xuôi của LowRankLinear")
def lowrank_linear(cls: Callable[[nn.Linear, int], nn.Module]) -> None:
    torch.manual_seed(0)  # the first case draws from the global RNG as this check always has; the others leave it alone
    _lowrank_case(cls, 0)
    for i in range(1, len(LOWRANK_CASES)):
        with isolated_rng():
            torch.manual_seed(i)
            _lowrank_case(cls, i)


def _lowrank_case(cls: Callable[[nn.Linear, int], nn.Module], i: int) -> None:
    (n_in, n_out), r, x_shape = LOWRANK_CASES[i]
    lin = nn.Linear(n_in, n_out)
    before = {k: v.clone() for k, v in lin.state_dict().items()}
    what = f"LowRankLinear(nn.Linear({n_in}, {n_out}), {r})"
    layer = cls(lin, r)
    expect(isinstance(layer, nn.Module), f"{what} phải tạo ra một nn.Module.")
    expect(all(torch.equal(v, before[k]) for k, v in lin.state_dict().items()),
           f"{what} đã sửa trọng số của lớp gốc `linear`: chỉ đọc nó (copy_ vào các lớp mới), đừng ghi vào nó.")
    down, up = getattr(layer, "down", None), getattr(layer, "up", None)
    expect(isinstance(down, nn.Linear) and isinstance(up, nn.Linear),
           f"{what}: cần hai lớp con nn.Linear tên `down` (nn.Linear({n_in}, {r}, bias=False)) và `up` (nn.Linear({r}, {n_out})).")
    expect(down.weight.shape == (r, n_in) and up.weight.shape == (n_out, r),
           f"{what}: down.weight cần hình dạng ({r}, {n_in}) và up.weight ({n_out}, {r}); nhận {tuple(down.weight.shape)} "
           f"và {tuple(up.weight.shape)}.")
    expect(down.bias is None, f"{what}: lớp thứ nhất (down) không có bias: nn.Linear(n, r, bias=False).")
    expect(up.bias is not None, f"{what}: lớp thứ hai (up) phải mang bias gốc của linear.")
    n_params = sum(p.numel() for p in layer.parameters())
    small = r * (n_in + n_out) + n_out
    if n_params == small + n_in * n_out + n_out:
        raise CheckFailed(f"{what}: lớp của bạn còn giữ cả lớp gốc (m·n trọng số) làm lớp con; chỉ giữ down và up.")
    expect(n_params == small, f"{what}: cần {r}·({n_in} + {n_out}) + {n_out} = {small} tham số (kể cả bias), nhận {n_params}.")
    A, B = L.truncated_svd(lin.weight.detach(), r)
    expect(same_tensor((up.weight @ down.weight).detach(), A @ B, atol=1e-4),
           f"{what}: up.weight @ down.weight phải bằng A @ B từ truncated_svd(linear.weight, rank): copy_ B vào down.weight, "
           "A vào up.weight (trong torch.no_grad()).")
    expect(same_tensor(up.bias.detach(), lin.bias.detach(), atol=0.0), f"{what}: up.bias phải là bias gốc: up.bias.copy_(linear.bias).")
    x = _randn(100 + i, *x_shape)
    got = as_tensor(call(layer, x, names=("x",)), f"{what}: y", (*x_shape[:-1], n_out))
    want = (x @ (A @ B).T + lin.bias).detach()
    if torch.allclose(got.detach(), want + lin.bias.detach(), atol=1e-4):
        raise CheckFailed(f"{what}: bias bị cộng hai lần; self.up đã cộng bias rồi, forward chỉ cần up(down(x)).")
    expect(torch.allclose(got.detach(), want, atol=1e-4),
           f"{what}: y chưa đúng (sai lệch lớn nhất {(got.detach() - want).abs().max().item():.3g}): y = up(down(x)).")


# ----------------------------------------------------------------------------- rank for a kept energy
ENERGY_CASES = [
    (torch.tensor([4.0, 3.0, 2.0, 1.0, 0.5, 0.25]), e) for e in (0.5, 0.9, 0.99, 1.0)
] + [(0.8 ** torch.arange(10, dtype=torch.float64), 0.7), (0.8 ** torch.arange(10, dtype=torch.float64), 0.95),
     (torch.tensor([2.0]), 0.3)]


@exercise("ch03.rank_for_energy", "Chọn hạng theo năng lượng giữ lại")
def rank_for_energy(fn: Callable[[torch.Tensor, float], int]) -> None:
    got = [as_int(call(fn, s, e, names=("s", "energy")), f"rank_for_energy(s[{len(s)}], {e})") for s, e in ENERGY_CASES]
    want = [L.rank_for_energy(s, e) for s, e in ENERGY_CASES]
    by_sigma = [min(int((torch.cumsum(s.double(), 0) / s.double().sum() < e - 1e-12).sum()) + 1, len(s)) for s, e in ENERGY_CASES]
    recognise(got, {
        "năng lượng là tổng các σ_i², không phải tổng σ_i.": by_sigma,
        "hạng r phải đạt *ít nhất* energy; bạn lấy thiếu một thành phần (số thành phần *chưa* đạt, chứ chưa cộng 1).":
            [w - 1 for w in want],
        "bạn lấy thừa một thành phần: r là số thành phần đầu tiên đạt energy, đếm từ 1.": [w + 1 for w in want],
    }, lambda a, b: a == b, want)
    for (s, e), g, w in zip(ENERGY_CASES, got, want):
        if g == len(s) + 1 and e == 1.0:
            raise CheckFailed(f"với energy = 1, hạng không thể vượt số giá trị kỳ dị ({len(s)}): do làm tròn, tổng tích lũy có thể "
                              "hơi nhỏ hơn 1. Tính bằng .double() với một dung sai nhỏ, hoặc giới hạn bằng min(r, len(s)).")
        if g != w:
            raise CheckFailed(f"rank_for_energy(s = {[round(v, 4) for v in s.tolist()]}, {e}): mong đợi {w}, nhận {g}. "
                              "Gợi ý: r nhỏ nhất sao cho Σ_{i≤r} σ_i² / Σ σ_i² ≥ energy.")


# ----------------------------------------------------------------------------- data-aware (whitened) SVD
def _whitened_cases() -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    W1 = _randn(200, 16, 12)
    X1 = _randn(201, 200, 12) * torch.tensor([8.0, 4.0, 2.0] + [0.3] * 9)
    W2 = _randn(202, 6, 10)
    X2 = _randn(203, 50, 10) * torch.logspace(-0.5, 0.7, 10)
    W3 = _randn(204, 5, 8, dtype=torch.float64)
    X3 = _randn(205, 30, 8, dtype=torch.float64) * torch.linspace(0.2, 3.0, 8, dtype=torch.float64)
    return [(W1, X1, 4), (W2, X2, 2), (W3, X3, 3)]


@exercise("ch03.whitened_truncation", "SVD có làm trắng theo dữ liệu")
def whitened_truncation(fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]) -> None:
    for W, X, r in _whitened_cases():
        what = f"whitened_truncation(W{tuple(W.shape)}, X{tuple(X.shape)}, {r})"
        got = as_tensor(call(fn, W, X, r, names=("W", "X", "r")), f"{what}: W_r", W.shape)
        expect(got.dtype == W.dtype, f"{what}: W_r cần cùng dtype với W ({W.dtype}), nhận {got.dtype}: thêm .to(W.dtype) ở cuối.")
        sv_got = torch.linalg.svdvals(got.double())
        expect(bool(sv_got[r] <= 1e-4 * sv_got[0]), f"{what}: W_r phải có hạng ≤ {r} (giá trị kỳ dị thứ {r + 1} của nó là "
               f"{sv_got[r].item():.3g}): giữ đúng r thành phần của SVD.")
        Wd, Xd = W.double(), X.double()
        H = Xd.T @ Xd
        S = torch.linalg.cholesky(H)
        U, sv, Vh = torch.linalg.svd(Wd @ S, full_matrices=False)
        core = (U[:, :r] * sv[:r]) @ Vh[:r]
        want = torch.linalg.solve_triangular(S, core, upper=False, left=False)
        out_err = lambda Wr: torch.linalg.matrix_norm(Xd @ (Wd - Wr.double()).T).item()  # noqa: E731
        if abs(out_err(got) - out_err(want)) <= 2e-3 * out_err(want) + 1e-9:
            continue
        Su = torch.linalg.cholesky(H, upper=True)  # Sᵀ S = H: the other triangle
        Uu, svu, Vhu = torch.linalg.svd(Wd @ Su, full_matrices=False)
        upper = torch.linalg.solve_triangular(Su, (Uu[:, :r] * svu[:r]) @ Vhu[:r], upper=True, left=False)
        A, B = L.truncated_svd(Wd, r)
        recognise_one(got.double(), want, {
            "đây là SVD thường của W: nó tối ưu sai số trọng số, không phải sai số đầu ra X Wᵀ. Hãy SVD ma trận W·S với S Sᵀ = XᵀX.": A @ B,
            "bạn quên nhân lại với S⁻¹: W_r = U_r Σ_r V_rᵀ S⁻¹ (torch.linalg.solve_triangular(S, M, upper=False, left=False)).": core,
            "bạn nhân lại với S thay vì S⁻¹: W_r = U_r Σ_r V_rᵀ S⁻¹.": core @ S,
            "S phải là nhân tử Cholesky *dưới* (S Sᵀ = XᵀX, mặc định của torch.linalg.cholesky); với nhân tử trên U (Uᵀ U = XᵀX), "
            "W U không cho đúng sai số đầu ra.": upper,
        }, _near)
        best = sv[r:].pow(2).sum().sqrt().item()
        raise CheckFailed(f"{what}: sai số đầu ra ‖X (W − W_r)ᵀ‖_F = {out_err(got):.4g}, nhỏ nhất có thể là {best:.4g}. "
                          "Gợi ý: S = cholesky(XᵀX); SVD của W S; giữ r thành phần; W_r = U_r Σ_r V_rᵀ S⁻¹.")
