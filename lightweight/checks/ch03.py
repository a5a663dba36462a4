"""Checks of chapter 3 (low-rank factorization): each compares the student's code with lightweight.lowrank."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from .. import lowrank as L
from . import CheckFailed, exercise, expect, expect_close


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _tensor(got: object, what: str) -> torch.Tensor:
    expect(isinstance(got, torch.Tensor), f"{what} phải là một tensor, nhận {type(got).__name__}.")
    return got


def _decaying(seed: int, m: int, n: int) -> torch.Tensor:
    """A matrix with singular values 3, 2.4, 1.92, ... (3·0.8^i) like a trained weight."""
    U, _ = torch.linalg.qr(_randn(seed, m, m))
    V, _ = torch.linalg.qr(_randn(seed + 1, n, n))
    k = min(m, n)
    return (U[:, :k] * 3 * 0.8 ** torch.arange(k, dtype=torch.float32)) @ V[:, :k].T


@exercise("ch03.truncated_svd", "SVD rút gọn: xấp xỉ hạng r tốt nhất")
def truncated_svd(fn: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]) -> None:
    W = _decaying(0, 12, 8)
    s = torch.linalg.svdvals(W)
    for r in (1, 3, 5):
        got = fn(W.clone(), r)
        expect(isinstance(got, tuple) and len(got) == 2, "hàm cần trả về cặp (A, B) với A @ B ≈ W.")
        A, B = _tensor(got[0], "A"), _tensor(got[1], "B")
        expect(A.shape == (12, r) and B.shape == (r, 8),
               f"với W (12, 8) và r = {r}: A cần hình dạng (12, {r}), B cần ({r}, 8); nhận {tuple(A.shape)} và {tuple(B.shape)}.")
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        if torch.allclose(A @ B, U[:, :r] @ Vh[:r], atol=1e-4):
            raise CheckFailed("bạn quên các giá trị kỳ dị: A @ B phải là U_r · diag(S_r) · V_rᵀ, không chỉ U_r · V_rᵀ.")
        err = torch.linalg.matrix_norm(W - A @ B).item()
        best = s[r:].pow(2).sum().sqrt().item()
        for off in (r - 1, r + 1):
            if 0 < off <= 8 and abs(err - s[off:].pow(2).sum().sqrt().item()) < 1e-4:
                raise CheckFailed(f"sai số ứng với hạng {off}, không phải {r}: giữ đúng r cột đầu của U, r giá trị S, r hàng đầu của Vᵀ.")
        expect_close(err, best, f"‖W − AB‖_F với r = {r}", rel=1e-3,
                     hint="theo Eckart–Young, sai số nhỏ nhất là √(Σ_{i>r} σ_i²): giữ r thành phần có σ lớn nhất.")
        expect(abs(A.norm().item() - B.norm().item()) <= 1e-3 * B.norm().item(),
               "A @ B đã đúng, nhưng hãy chia đều các giá trị kỳ dị cho hai thừa số: A = U_r·√S_r, B = √S_r·V_rᵀ "
               "(hai thừa số cùng cỡ, có lợi khi lượng tử hóa chúng sau này).")


@exercise("ch03.counting", "Số tham số và hạng hòa vốn")
def counting(params_fn: Callable[[int, int, int], int], break_even_fn: Callable[[int, int], float]) -> None:
    for m, n, r in [(384, 1536, 100), (128, 128, 64), (10, 256, 3)]:
        got = params_fn(m, n, r)
        if got == m * r * n:
            raise CheckFailed("hai thừa số (m × r) và (r × n) có m·r + r·n phần tử, không phải m·r·n.")
        expect_close(got, L.lowrank_params(m, n, r), f"lowrank_params({m}, {n}, {r})", hint="m·r + r·n = r(m + n).")
    for m, n in [(2048, 2048), (384, 1536), (10, 256)]:
        got = break_even_fn(m, n)
        if isinstance(got, (int, float)) and abs(got - min(m, n) / 2) < 1e-9 and m != n:
            raise CheckFailed("min(m, n)/2 chỉ đúng với ma trận vuông; giải r(m + n) = m·n.")
        expect_close(got, L.break_even_rank(m, n), f"break_even_rank({m}, {n})", rel=1e-6,
                     hint="hòa vốn khi r(m + n) = m·n, tức r = m·n / (m + n).")


@exercise("ch03.lowrank_linear", "Lượt tính xuôi của LowRankLinear")
def lowrank_linear(cls: Callable[[nn.Linear, int], nn.Module]) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(24, 16)
    x = _randn(1, 5, 7, 24)
    layer = cls(lin, 6)
    expect(isinstance(layer, nn.Module), "LowRankLinear(linear, rank) phải tạo ra một nn.Module.")
    n_weights = sum(p.numel() for name, p in layer.named_parameters() if "bias" not in name)
    expect(n_weights == 6 * (24 + 16),
           f"hai lớp mỏng cần 6·(24 + 16) = {6 * 40} trọng số (không kể bias), nhận {n_weights}.")
    got = _tensor(layer(x.clone()), "y")
    expect(got.shape == (5, 7, 16), f"y cần hình dạng (5, 7, 16) cho x (5, 7, 24), nhận {tuple(got.shape)}.")
    A, B = L.truncated_svd(lin.weight, 6)
    want = (x @ (A @ B).T + lin.bias).detach()
    no_bias = (x @ (A @ B).T).detach()
    if torch.allclose(got, no_bias, atol=1e-4):
        raise CheckFailed("bạn quên bias của lớp gốc: đặt nó ở lớp thứ hai (up).")
    if torch.allclose(got, want + lin.bias.detach(), atol=1e-4):
        raise CheckFailed("bias bị cộng hai lần; lớp thứ nhất (down) không có bias.")
    expect(torch.allclose(got.detach(), want, atol=1e-4),
           "y chưa đúng: y = up(down(x)) với down.weight = B (r, n), up.weight = A (m, r) từ SVD rút gọn của W, up.bias = b.")


@exercise("ch03.rank_for_energy", "Chọn hạng theo năng lượng giữ lại")
def rank_for_energy(fn: Callable[[torch.Tensor, float], int]) -> None:
    s = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.5, 0.25])
    for e in (0.5, 0.9, 0.99, 1.0):
        got = fn(s.clone(), e)
        want = L.rank_for_energy(s, e)
        by_sigma = int((torch.cumsum(s, 0) / s.sum() < e).sum()) + 1
        if got == by_sigma and by_sigma != want:
            raise CheckFailed("năng lượng là tổng các σ_i², không phải tổng σ_i.")
        if got == want - 1:
            raise CheckFailed(f"với energy = {e}: hạng r phải đạt *ít nhất* {e:.0%} năng lượng; bạn lấy thiếu một thành phần.")
        expect_close(got, want, f"rank_for_energy(s, {e})", hint="r nhỏ nhất sao cho Σ_{i≤r} σ_i² / Σ σ_i² ≥ energy.")


@exercise("ch03.whitened_truncation", "SVD có làm trắng theo dữ liệu")
def whitened_truncation(fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]) -> None:
    W = _randn(2, 16, 12)
    scales = torch.tensor([8.0, 4.0, 2.0] + [0.3] * 9)
    X = _randn(3, 200, 12) * scales
    r = 4
    got = _tensor(fn(W.clone(), X.clone(), r), "W_r")
    expect(got.shape == W.shape, f"W_r cần cùng hình dạng với W {tuple(W.shape)}, nhận {tuple(got.shape)}.")
    sv_got = torch.linalg.svdvals(got.double())
    expect(bool(sv_got[r] <= 1e-4 * sv_got[0]), f"W_r phải có hạng ≤ {r}: giữ đúng r thành phần của SVD.")
    out_err = lambda Wr: torch.linalg.matrix_norm(X @ (W - Wr).T).item()  # noqa: E731
    A, B = L.truncated_svd(W, r)
    if abs(out_err(got) - out_err(A @ B)) < 1e-3 * out_err(A @ B):
        raise CheckFailed("đây là SVD thường của W: nó tối ưu sai số trọng số, không phải sai số đầu ra X Wᵀ. Hãy SVD ma trận W·S với S Sᵀ = XᵀX.")
    S = torch.linalg.cholesky(X.T @ X)
    U, sv, Vh = torch.linalg.svd(W @ S, full_matrices=False)
    without_inverse = (U[:, :r] * sv[:r]) @ Vh[:r]
    if torch.allclose(got, without_inverse, atol=1e-3):
        raise CheckFailed("bạn quên nhân lại với S⁻¹: W_r = U_r Σ_r V_rᵀ S⁻¹ (torch.linalg.solve_triangular hoặc torch.linalg.inv).")
    best = sv[r:].pow(2).sum().sqrt().item()
    expect_close(out_err(got), best, f"‖X (W − W_r)ᵀ‖_F", rel=2e-3,
                 hint="S = cholesky(XᵀX); SVD của W S; giữ r thành phần; W_r = U_r Σ_r V_rᵀ S⁻¹.")
