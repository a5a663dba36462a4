import copy

import pytest
import torch
import torch.nn as nn

from lightweight import lowrank as L
from lightweight.models import DigitsCNN, GPTConfig, TinyGPT


def randn(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_counting_and_break_even():
    assert L.lowrank_params(384, 1536, 100) == 100 * (384 + 1536)
    assert L.break_even_rank(2048, 2048) == 1024
    assert L.lowrank_params(2048, 2048, 1024) == 2048 * 2048
    assert L.rank_for_ratio(384, 384, 0.75) == 144
    assert L.lowrank_params(384, 384, 144) <= 0.75 * 384 * 384 < L.lowrank_params(384, 384, 145)
    with pytest.raises(ValueError, match="positive"):
        L.break_even_rank(0, 3)
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ValueError, match="param_ratio"):
            L.rank_for_ratio(10, 10, bad)


def test_truncated_svd_is_the_best_rank_r_approximation():
    W = randn(0, 30, 20)
    s = torch.linalg.svdvals(W)
    for r in (1, 5, 20):
        A, B = L.truncated_svd(W, r)
        assert A.shape == (30, r) and B.shape == (r, 20)
        err = torch.linalg.matrix_norm(W - A @ B)
        assert torch.isclose(err, s[r:].pow(2).sum().sqrt(), atol=1e-4)  # Eckart–Young
        for seed in range(5):  # no other rank-r matrix does better
            other = (A + 0.05 * randn(seed, 30, r)) @ (B + 0.05 * randn(seed + 9, r, 20))  # also rank r
            assert torch.linalg.matrix_norm(W - other) >= err - 1e-5
    for bad in (0, -1, 21, 2.5, True):
        with pytest.raises(ValueError, match="rank"):
            L.truncated_svd(W, bad)


def test_rank_for_energy():
    s = torch.tensor([3.0, 2.0, 1.0, 1.0])  # energies 9, 4, 1, 1 of 15
    assert L.rank_for_energy(s, 0.6) == 1
    assert L.rank_for_energy(s, 0.61) == 2
    assert L.rank_for_energy(s, 13 / 15) == 2
    assert L.rank_for_energy(s, 1.0) == 4
    assert torch.allclose(L.energy_curve(s), torch.tensor([9, 13, 14, 15]) / 15)
    for bad in (0.0, -0.1, 1.01):
        with pytest.raises(ValueError, match="energy"):
            L.rank_for_energy(s, bad)


def test_lowrank_linear_matches_its_factors():
    lin = nn.Linear(24, 16)
    layer = L.LowRankLinear.from_linear(lin, 6)
    A, B = L.truncated_svd(lin.weight, 6)
    x = randn(1, 3, 5, 24)
    assert torch.allclose(layer(x), x @ (A @ B).T + lin.bias, atol=1e-5)
    assert layer.down.bias is None and layer.up.weight.shape == (16, 6)
    full = L.LowRankLinear.from_linear(lin, 16)  # full rank reproduces the layer
    assert torch.allclose(full(x), lin(x), atol=1e-5)
    with pytest.raises(ValueError, match="rank"):
        L.LowRankLinear(24, 16, 17)


def test_whitening_minimises_the_output_error():
    W = randn(2, 16, 12)
    X = randn(3, 500, 12) * torch.tensor([8.0, 4.0, 2.0] + [0.3] * 9)
    H = X.T.double() @ X.double()
    S = L.whitening(H, damp=0.0)
    assert torch.allclose(S @ S.T, H)
    U, s, back = L.scaled_svd(W, S)
    r = 4
    Wr_white = ((U[:, :r] * s[:r]) @ back[:r]).float()
    A, B = L.truncated_svd(W, r)
    out = lambda Wr: torch.linalg.matrix_norm(X @ (W - Wr).T)  # noqa: E731
    assert torch.isclose(out(Wr_white), s[r:].pow(2).sum().sqrt().float(), rtol=1e-4)
    assert out(Wr_white) < 0.8 * out(A @ B)
    assert torch.allclose(((U * s) @ back).float(), W, atol=1e-4)  # nothing truncated: W back
    with pytest.raises(ValueError, match="square"):
        L.whitening(torch.zeros(3, 4))


def _lm():
    torch.manual_seed(0)
    return TinyGPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()


def test_factorize_ratios_and_methods():
    x = torch.randint(20, (4, 16), generator=torch.Generator().manual_seed(0))
    base = _lm()
    shapes = L.layer_shapes(base)
    ref = base(x)
    errors = {}
    for method in L.METHODS:
        m = copy.deepcopy(base)
        ranks = L.factorize_(m, param_ratio=0.5, method=method, run_calibration=lambda m=m: m(x))
        assert all(isinstance(mod, L.LowRankLinear) for n, mod in m.named_modules() if n in ranks and ranks[n])
        assert L.factorized_ratio(ranks, shapes) <= 0.5
        errors[method] = (m(x) - ref).pow(2).mean().item()
    assert errors["whiten"] < errors["plain"]
    m = copy.deepcopy(base)
    ranks = L.factorize_(m, rank=4)
    assert set(ranks.values()) == {4}
    m = copy.deepcopy(base)
    ranks = L.factorize_(m, energy=1.0)  # full energy never saves: every layer stays dense
    assert all(r is None for r in ranks.values()) and not any(isinstance(mod, L.LowRankLinear) for mod in m.modules())


def test_global_and_sensitivity_allocation_meet_the_budget():
    x = torch.randint(20, (4, 16), generator=torch.Generator().manual_seed(0))
    base = _lm()
    shapes = L.layer_shapes(base)
    ref = base(x)
    score = lambda mod: -(mod(x) - ref).pow(2).mean().item()  # noqa: E731
    for alloc in ("global", "sensitivity"):
        m = copy.deepcopy(base)
        ranks = L.factorize_(m, param_ratio=0.6, method="whiten", allocation=alloc, run_calibration=lambda m=m: m(x),
                             score=score, progress=False)
        assert L.factorized_ratio(ranks, shapes) <= 0.6
        assert len(set(ranks.values())) > 1  # ranks differ between layers


def test_allocate_by_sensitivity_takes_the_cheapest_savings():
    shapes = {"a": (10, 10), "b": (10, 10)}
    scores = {"a": {0.25: 0.99, 0.5: 0.995}, "b": {0.25: 0.5, 0.5: 0.9}}
    ranks = L.allocate_by_sensitivity(scores, shapes, 0.6, base=1.0)
    assert ranks == {"a": L.rank_for_ratio(10, 10, 0.25), "b": None}
    with pytest.raises(ValueError, match="cannot be met"):
        L.allocate_by_sensitivity(scores, shapes, 0.1, base=1.0)


def test_conv_factorization():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    x = randn(0, 2, 8, 6, 6)
    full = L.factorize_conv(conv, 16)  # full rank of a (16, 72) matrix: exact
    assert torch.allclose(full(x), conv(x), atol=1e-4)
    small = L.factorize_conv(conv, 4)
    assert small(x).shape == conv(x).shape
    assert sum(p.numel() for p in small.parameters() if p.dim() > 1) == 4 * (72 + 16)
    cnn = DigitsCNN()
    ranks = L.factorize_(cnn, param_ratio=0.5, types=(nn.Linear, nn.Conv2d))
    assert cnn(torch.zeros(2, 1, 8, 8)).shape == (2, 10) and len(ranks) == 5
    with pytest.raises(TypeError, match="groups"):
        L.factorize_conv(nn.Conv2d(8, 8, 3, groups=2), 2)


def test_bad_input_is_refused_clearly():
    m = _lm()
    with pytest.raises(ValueError, match="exactly one"):
        L.factorize_(m)
    with pytest.raises(ValueError, match="exactly one"):
        L.factorize_(m, rank=2, energy=0.9)
    with pytest.raises(ValueError, match="rank must be"):
        L.factorize_(m, rank=0)
    with pytest.raises(ValueError, match="rank must be"):
        L.factorize_(m, rank=33)  # above min(m, n) = 32
    with pytest.raises(ValueError, match="energy"):
        L.factorize_(m, energy=1.5)
    with pytest.raises(ValueError, match="param_ratio"):
        L.factorize_(m, param_ratio=0.0)
    with pytest.raises(ValueError, match="cannot be met"):
        L.factorize_(m, param_ratio=0.01, allocation="global")
    with pytest.raises(ValueError, match="calibration"):
        L.factorize_(m, param_ratio=0.5, method="whiten")
    with pytest.raises(ValueError, match="method"):
        L.factorize_(m, param_ratio=0.5, method="qr")
    with pytest.raises(ValueError, match="score"):
        L.factorize_(m, param_ratio=0.5, allocation="sensitivity")
    with pytest.raises(ValueError, match="skip"):
        L.factorize_(m, param_ratio=0.5, skip=["no.such.layer"])
    with pytest.raises(TypeError, match="supports"):
        L.factorize_(m, param_ratio=0.5, types=(nn.Embedding,))
    with pytest.raises(TypeError, match="Linear layers only"):
        L.factorize_(DigitsCNN(), param_ratio=0.5, types=(nn.Linear, nn.Conv2d), method="whiten", run_calibration=lambda: None)
    with pytest.raises(ValueError, match="no layer"):
        L.factorize_(nn.Sequential(nn.ReLU()), param_ratio=0.5)
