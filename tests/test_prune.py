import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

from lightweight import prune as P
from lightweight.models import DigitsCNN, GPTConfig, TinyGPT


def test_magnitude_mask_matches_torch_l1_unstructured():
    g = torch.Generator().manual_seed(0)
    for shape, s in [((16, 32), 0.5), ((8, 3, 3, 3), 0.8), ((10, 7), 0.33)]:
        lin = nn.Linear(1, 1)
        lin.weight = nn.Parameter(torch.randn(shape, generator=g))
        ours = P.magnitude_mask(lin.weight, s)
        tprune.l1_unstructured(lin, "weight", amount=s)
        assert torch.equal(ours, lin.weight_mask.bool())
        assert (~ours).sum() == round(s * ours.numel())


def test_global_masks_use_one_threshold():
    a, b = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[10.0, 20.0], [30.0, 40.0]])
    m = P.global_magnitude_masks({"a": a, "b": b}, 0.5)
    assert not m["a"].any() and m["b"].all()  # the small layer is emptied, the large one untouched


def test_prune_keeps_masks_during_finetuning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    masks = P.prune_(model, 0.75, scope="global")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        loss = model(torch.randn(32, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, m in masks.items():
        w = dict(model.named_modules())[name].weight
        assert torch.all(w[~m] == 0)
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.75 * total)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "0.5", True])
def test_bad_sparsity(bad):
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        P.magnitude_mask(torch.ones(4), bad)


def test_bad_masks_and_layers():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="does not match"):
        P.apply_masks_(model, {"0": torch.ones(3, 4, dtype=torch.bool)})
    with pytest.raises(TypeError, match="bool"):
        P.apply_masks_(model, {"0": torch.ones(4, 4)})
    with pytest.raises(ValueError, match="not a prunable layer"):
        P.apply_masks_(model, {"1": torch.ones(4, 4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="no layer of a supported type"):
        P.prune_(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(ValueError, match="scope"):
        P.prune_(model, 0.5, scope="row")


def test_sensitivity_scan_restores_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    before = [p.clone() for p in model.parameters()]
    scan = P.sensitivity_scan(model, [0.0, 0.5], lambda m: float(m[0].weight.eq(0).float().mean()))
    assert scan == {"0": [0.0, 0.5], "1": [0.0, 0.0]}
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_cubic_schedule():
    assert P.cubic_sparsity(0, 10, 0.9) == 0.0
    assert P.cubic_sparsity(10, 10, 0.9) == pytest.approx(0.9)
    assert P.cubic_sparsity(5, 10, 0.8) == pytest.approx(0.8 * (1 - 0.5**3))
    with pytest.raises(ValueError):
        P.cubic_sparsity(1, 0, 0.5)


def test_bits_roundtrip_and_storage_bytes():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(13, 7, generator=g) > 0.5
    packed = P.pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == 12
    assert torch.equal(P.unpack_bits(packed, (13, 7)), mask)
    w = torch.randn(64, 64, generator=g) * (torch.rand(64, 64, generator=g) > 0.9)
    nnz = int((w != 0).sum())
    b = P.storage_bytes(w)
    assert b["dense"] == 64 * 64 * 4
    assert b["csr"] == nnz * (4 + 8) + 65 * 8
    assert b["bitmask"] == nnz * 4 + 64 * 64 // 8


def test_nm_mask():
    w = torch.tensor([[1.0, -5.0, 3.0, 0.5, 2.0, 2.5, -0.1, 9.0]])
    assert P.nm_mask(w).tolist() == [[False, True, True, False, False, True, False, True]]
    with pytest.raises(ValueError, match="divisible"):
        P.nm_mask(torch.ones(2, 6))


def test_cnn_channel_pruning_gives_a_smaller_working_model():
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    with torch.no_grad():  # make 8 channels of the last conv useless: they must be the ones removed
        model.features[5].weight[::8] *= 1e-6
    small = P.prune_cnn_channels(model, 0.875)
    assert [m.out_channels for m in small.features if isinstance(m, nn.Conv2d)] == [14, 28, 56]
    x = torch.rand(3, 1, 8, 8)
    assert small(x).shape == (3, 10)
    full = P.prune_cnn_channels(model, 1.0)
    assert torch.allclose(full(x), model(x), atol=1e-6)
    with pytest.raises(TypeError):
        P.prune_cnn_channels(nn.Linear(2, 2), 0.5)


def test_resnet_inner_channel_pruning_keeps_shapes():
    from torchvision.models import resnet18

    model = resnet18(num_classes=10).eval()
    P.prune_resnet_blocks_(model, 0.5)
    assert model.layer1[0].conv1.out_channels == 32 and model.layer1[0].conv2.in_channels == 32
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 10)


def test_gpt_head_and_neuron_pruning():
    torch.manual_seed(0)
    gpt = TinyGPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=4, n_embd=16)).eval()
    batches = [(torch.randint(11, (4, 16)), torch.randint(11, (4, 16))) for _ in range(2)]
    imp = P.gpt_importance(gpt, batches)
    assert imp["heads.0"].shape == (4,) and imp["neurons.1"].shape == (64,)
    assert all(p.grad is None for p in gpt.parameters())
    x = batches[0][0]
    ref = gpt(x)
    unchanged = P.prune_gpt_(gpt, imp, 0.0, 0.0)
    assert torch.allclose(unchanged(x), ref, atol=1e-6)
    P.prune_gpt_(gpt, imp, 0.5, 0.5)
    assert sum(b.attn.n_head for b in gpt.blocks) == 4
    assert sum(b.mlp.fc.out_features for b in gpt.blocks) == 64
    assert gpt(x).shape == (4, 16, 11)


def test_head_pruning_matches_zeroing_the_head():
    torch.manual_seed(1)
    gpt = TinyGPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=4, n_embd=16)).eval()
    x = torch.randint(11, (2, 16))
    imp = {"heads.0": torch.tensor([1.0, 0.0, 1.0, 1.0]), "neurons.0": torch.ones(64)}
    zeroed = TinyGPT(gpt.cfg).eval()
    zeroed.load_state_dict(gpt.state_dict())
    with torch.no_grad():
        zeroed.blocks[0].attn.proj.weight[:, 4:8] = 0  # head 1's columns of the output projection
    P.prune_gpt_(gpt, imp, 0.25, 0.0)
    assert gpt.blocks[0].attn.n_head == 3
    assert torch.allclose(gpt(x), zeroed(x), atol=1e-5)


def test_wanda_beats_magnitude_and_sparsegpt_reconstructs_its_mask():
    g = torch.Generator().manual_seed(0)
    scales = torch.logspace(-1, 1, 64)[torch.randperm(64, generator=g)]  # features of very different scale
    X = torch.randn(2048, 64, generator=g) * scales
    X[:, 1::2] += 0.9 * X[:, ::2]  # and correlated, which only the Hessian sees
    W = torch.randn(32, 64, generator=g)
    stats = P.InputStats(64)
    stats.add(X)
    assert torch.allclose(stats.col_norms, X.norm(dim=0), rtol=1e-4)
    err = lambda Wp: float(((X @ W.T - X @ Wp.T) ** 2).mean())  # noqa: E731
    assert err(W * P.wanda_mask(W, stats.col_norms, 0.5)) < 0.2 * err(W * P.row_mask(W.abs(), 0.5))

    sgpt = W.clone()
    mask = P.sparsegpt_(sgpt, stats.H, 0.5, block_size=16)
    assert (~mask).sum(1).eq(32).all() and torch.all(sgpt[~mask] == 0)
    best = torch.zeros_like(W)  # least squares refit of the kept weights, row by row: the optimum for this mask
    for r in range(32):
        idx = mask[r].nonzero().flatten()
        best[r, idx] = torch.linalg.lstsq(X[:, idx], (X @ W[r])[:, None]).solution.flatten()
    assert err(sgpt) < 1.1 * err(best) and err(sgpt) < 0.5 * err(W * mask)


def test_oneshot_needs_calibration_and_known_method():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="calibration"):
        P.prune_oneshot_(model, 0.5, "wanda")
    with pytest.raises(ValueError, match="method"):
        P.prune_oneshot_(model, 0.5, "random")
    with pytest.raises(ValueError, match="must be"):
        P.sparsegpt_(torch.ones(2, 4), torch.eye(3), 0.5)
    masks = P.prune_oneshot_(model, 0.5, "sparsegpt", lambda: model(torch.randn(16, 4)))
    assert masks["0"].sum(1).eq(2).all()


def test_sparse_execution_gives_the_same_outputs():
    torch.manual_seed(0)
    gpt = TinyGPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    P.prune_(gpt, 0.9)
    x = torch.randint(11, (3, 16))
    ref = gpt(x)
    with torch.no_grad():
        out = P.to_sparse_execution_(gpt)(x)
    assert isinstance(gpt.blocks[0].mlp.fc, P.SparseLinear)
    assert torch.allclose(out, ref, atol=1e-5)
    with pytest.raises(ValueError):
        P.to_sparse_execution_(nn.Sequential(nn.ReLU()))
