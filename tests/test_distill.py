import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lightweight import distill as D
from lightweight.data import char_corpus
from lightweight.models import DigitsMLP, GPTConfig, TinyGPT


def randn(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_softmax_with_temperature_softens():
    z = torch.tensor([[4.0, 1.0, 0.0]])
    p1, p4 = D.softmax_t(z, 1.0), D.softmax_t(z, 4.0)
    assert torch.allclose(p1, F.softmax(z, -1)) and torch.allclose(p4.sum(), torch.tensor(1.0))
    assert p4.max() < p1.max() and p4.min() > p1.min()  # flatter at higher T
    with pytest.raises(ValueError, match="T must be > 0"):
        D.softmax_t(z, 0.0)


def test_kd_loss_matches_pytorch_pieces():
    s, t = randn(0, 8, 10), randn(1, 8, 10)
    y = torch.randint(10, (8,), generator=torch.Generator().manual_seed(2))
    T, alpha = 4.0, 0.3
    kl = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean")
    manual = (F.softmax(t / T, -1) * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1))).sum(-1).mean()
    assert torch.isclose(kl, manual, atol=1e-6)
    want = alpha * F.cross_entropy(s, y) + (1 - alpha) * T * T * kl
    assert torch.isclose(D.kd_loss(s, t, y, T, alpha), want, atol=1e-6)
    assert torch.isclose(D.kd_loss(t, t, None, T, 0.0), torch.tensor(0.0), atol=1e-6)  # same logits: no loss
    assert torch.isclose(D.kd_loss(s, t, y, T, 1.0), F.cross_entropy(s, y))


def test_t_squared_keeps_gradients_comparable():
    s, t = randn(3, 64, 10).requires_grad_(), randn(4, 64, 10) * 3
    norms = []
    for T in (2.0, 8.0):
        s.grad = None
        D.kd_loss(s, t, None, T, 0.0).backward()
        norms.append(s.grad.norm().item())  # with T², about (z_s - z_t) / K for large T: no 1/T² fade
    assert 0.3 < norms[0] / norms[1] < 3
    assert norms[0] / 2.0**2 > 5 * norms[1] / 8.0**2  # without T², the T = 8 gradient would be far smaller


def test_reverse_kl_is_the_other_direction():
    s, t = randn(5, 6, 7), randn(6, 6, 7)
    ps, pt = F.softmax(s, -1), F.softmax(t, -1)
    want = (ps * (ps.log() - pt.log())).sum(-1).mean()
    assert torch.isclose(D.reverse_kl(s, t), want, atol=1e-5)
    assert not torch.isclose(D.reverse_kl(s, t), D.kd_loss(s, t, None, 1.0, 0.0))


def test_bad_input_is_refused_clearly():
    s, t, y = randn(0, 4, 10), randn(1, 4, 10), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="T must be > 0"):
        D.kd_loss(s, t, y, T=0.0)
    with pytest.raises(ValueError, match="T must be > 0"):
        D.kd_loss(s, t, y, T=-1.0)
    for a in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            D.kd_loss(s, t, y, alpha=a)
    with pytest.raises(ValueError, match="differ in shape"):
        D.kd_loss(s, randn(1, 4, 12), y)  # different output sizes
    with pytest.raises(ValueError, match="differ in shape"):
        D.kd_loss(s, randn(1, 5, 10), y)  # different batch
    with pytest.raises(ValueError, match="labels"):
        D.kd_loss(s, t, torch.zeros(3, dtype=torch.long), alpha=0.5)
    with pytest.raises(ValueError, match="flatten"):
        D.kd_loss(randn(0, 2, 3, 10), randn(1, 2, 3, 10), None, alpha=0.0)
    corpus = char_corpus()
    small = TinyGPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8))
    big = TinyGPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match="vocabularies differ"):
        D.distill_lm(small, big, corpus, steps=1)
    with pytest.raises(ValueError, match="T must be > 0"):
        D.kd_loss(s, t, y, T=float("nan"))


def test_distilled_classifier_learns_from_soft_labels():
    torch.manual_seed(0)
    x = torch.rand(200, 1, 8, 8)
    teacher = DigitsMLP(64)
    y = teacher(x).argmax(-1)
    student = DigitsMLP(16)
    before = D.kd_loss(student(x), teacher(x), y, 4.0, 0.5).item()
    D.distill_classifier(student, teacher, x, y, epochs=30, T=4.0, alpha=0.5, progress=False, lr=1e-2)
    after = D.kd_loss(student(x), teacher(x), y, 4.0, 0.5).item()
    assert after < 0.5 * before
    with pytest.raises(ValueError, match="alpha"):
        D.distill_classifier(student, teacher, x, y, epochs=1, alpha=2.0)


def test_token_level_and_sequence_level_distillation_run():
    corpus = char_corpus()
    cfg = GPTConfig(vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    torch.manual_seed(0)
    teacher, student = TinyGPT(cfg).eval(), TinyGPT(cfg)
    hist = D.distill_lm(student, teacher, corpus, steps=20, batch_size=8, lr=1e-2, warmup=2, progress=False)
    assert hist[-1][1] < hist[0][1]
    written = D.teacher_corpus(teacher, corpus, n_chars=300, prompt_len=4, batch=4, progress=False)
    assert len(written.split("train")) == 300 and torch.equal(written.split("val"), corpus.split("val"))
    again = D.teacher_corpus(teacher, corpus, n_chars=300, prompt_len=4, batch=4, progress=False)
    assert torch.equal(written.split("train"), again.split("train"))  # seeded
    with pytest.raises(ValueError, match="prompt_len"):
        D.teacher_corpus(teacher, corpus, n_chars=10, prompt_len=16, progress=False)


def test_minilm_student_layers(minilm):
    student = D.minilm_student(minilm, (0, 2, 4))
    assert len(student[0].model.encoder.layer) == 3 and len(minilm[0].model.encoder.layer) == 6
    assert student[0].model.encoder.layer[1].attention.self.query.weight.data_ptr() != \
        minilm[0].model.encoder.layer[2].attention.self.query.weight.data_ptr()  # a copy, not shared
    for bad in ((), (0, 0), (6,), (-1,)):
        with pytest.raises(ValueError, match="layers"):
            D.minilm_student(minilm, bad)
    with pytest.raises(ValueError, match="layer_map"):
        D.distill_minilm(student, minilm, ["a line"], steps=1, layer_map=[1, 3])


def test_shipped_minilm_student_is_the_one_described(minilm):
    from lightweight.minilm import fidelity
    from lightweight.teachers import load_minilm_student, student_metadata

    meta = student_metadata()
    student = load_minilm_student(minilm)
    fid = fidelity(minilm, student)
    # The metadata was measured on the shipped INT8 weights, on the machine that made them: another CPU
    # rounds the float forward passes differently (about 1e-4), but not by a thousandth.
    assert abs(fid.cosine - float(meta["cosine"])) < 2e-3
    assert fid.cosine > fidelity(minilm, D.minilm_student(minilm)).cosine + 0.3
    assert int(meta["steps"]) > 0 and len(student[0].model.encoder.layer) == len(json.loads(meta["layers"]))
