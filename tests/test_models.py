import pytest
import torch

from lightweight.models import DigitsCNN, DigitsMLP, GPTConfig, TinyGPT


def test_digits_models_shapes():
    x = torch.rand(5, 1, 8, 8)
    assert DigitsCNN()(x).shape == (5, 10)
    assert DigitsMLP(hidden=16)(x).shape == (5, 10)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        DigitsCNN()(torch.rand(5, 64))
    with pytest.raises(ValueError, match="hidden"):
        DigitsMLP(hidden=0)


def small_gpt(**kw) -> TinyGPT:
    torch.manual_seed(0)
    return TinyGPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, **kw)).eval()


def test_gpt_forward_shape_and_causality():
    m = small_gpt()
    idx = torch.randint(11, (2, 10))
    logits = m(idx)
    assert logits.shape == (2, 10, 11)
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 11  # a future token must not change earlier outputs
    assert torch.allclose(m(changed)[:, :7], logits[:, :7], atol=1e-6)
    assert not torch.allclose(m(changed)[:, 7:], logits[:, 7:])


def test_gpt_generate_is_seeded():
    m = small_gpt()
    prompt = torch.zeros(1, 3, dtype=torch.long)
    a = m.generate(prompt, 20, top_k=5, generator=torch.Generator().manual_seed(1))
    b = m.generate(prompt, 20, top_k=5, generator=torch.Generator().manual_seed(1))
    assert a.shape == (1, 23) and torch.equal(a, b) and torch.equal(a[:, :3], prompt)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_embd=15), "divisible"), (dict(n_layer=0), "n_layer"), (dict(dropout=1.0), "dropout"),
])
def test_gpt_config_validation(kwargs, match):
    base = dict(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16)
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{**base, **kwargs})


def test_gpt_bad_inputs():
    m = small_gpt()
    with pytest.raises(TypeError, match="long"):
        m(torch.rand(1, 4))
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        m.generate(torch.zeros(1, 1, dtype=torch.long), 2, temperature=0)
    with pytest.raises(ValueError, match="top_k"):
        m.generate(torch.zeros(1, 1, dtype=torch.long), 2, top_k=12)
