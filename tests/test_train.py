import pytest
import torch

from lightweight.data import char_corpus
from lightweight.models import DigitsMLP, GPTConfig, TinyGPT
from lightweight.train import evaluate_lm, lr_schedule, predict, set_seed, train_classifier, train_lm


def test_set_seed_repeats_random_draws():
    set_seed(5)
    a = torch.rand(3)
    g = set_seed(5)
    assert torch.equal(a, torch.rand(3))
    assert torch.equal(torch.rand(2, generator=g), torch.rand(2, generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="seed"):
        set_seed(-1)


def test_train_classifier_learns_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 1, 8, 8, generator=g)
    y = (x.flatten(1).mean(1) > x.flatten(1).mean()).long()  # a learnable rule
    runs = []
    for _ in range(2):
        set_seed(0)
        model = DigitsMLP(hidden=16)
        runs.append(train_classifier(model, x, y, epochs=40, lr=1e-2, progress=False))
    assert runs[0] == runs[1]
    assert runs[0][-1] < 0.5 * runs[0][0]
    assert predict(model, x).shape == (256, 10)


def test_train_classifier_bad_input():
    with pytest.raises(ValueError, match="same length"):
        train_classifier(DigitsMLP(), torch.rand(4, 64), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="int64"):
        train_classifier(DigitsMLP(), torch.rand(4, 64), torch.zeros(4))


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_schedule(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_train_lm_reduces_loss_deterministically():
    corpus = char_corpus()
    losses = []
    for _ in range(2):
        set_seed(0)
        m = TinyGPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32))
        before = evaluate_lm(m, corpus, n_batches=2)
        train_lm(m, corpus, steps=30, batch_size=8, lr=3e-3, warmup=5, progress=False)
        losses.append(evaluate_lm(m, corpus, n_batches=2))
    assert losses[0] == losses[1]
    assert losses[0] < before - 0.5


def test_progress_bar_obeys_tqdm_disable(monkeypatch):
    from lightweight.train import progress_bar

    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_bar(range(3)).disable
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert not progress_bar(range(3)).disable
    assert progress_bar(range(3), progress=False).disable
