"""Benchmark rows of the ``distillation`` chapter: each student against its teacher (``baseline`` is
the teacher's quality, ``size_ratio`` the student's parameters / the teacher's, ``speed_ratio`` the
teacher's time / the student's) — trained with distillation (``kd-…``) and the same student trained
without it (``scratch-…``): digits MLP from the CNN with 100 and with all 1,078 labelled images (T and α chosen
on validation), a 2-layer TinyGPT from the 6-layer one (token-level, and sequence-level on the shipped
teacher-written text), and the shipped 3-layer MiniLM (``scratch-…`` is the same student before
distillation: teacher layers 0, 2, 4 and nothing else)."""

from __future__ import annotations

import statistics

import torch

from .. import distill as D
from ..data import char_corpus, load_digits
from ..measure import accuracy, count_parameters, speed_ratio
from ..minilm import embed, fidelity, heldout_lines, load_minilm
from ..models import DigitsMLP, GPTConfig, TinyGPT
from ..teachers import load_digits_cnn, load_minilm_student, load_teacher_text, load_tinygpt
from ..train import evaluate_lm, predict, set_seed, train_classifier, train_lm
from .core import BenchContext, row

DIGITS_EPOCHS = {100: 200, 1078: 40}  # about the same number of steps for both sizes
GRID = [(T, a) for T in (1.0, 2.0, 4.0, 8.0, 16.0) for a in (0.1, 0.5, 0.9)]
GPT_STEPS = 300


def _digits_student(d, cnn, seed: int, n: int, T: float | None, alpha: float, split: str) -> tuple[float, DigitsMLP]:
    """Accuracy (%) on ``split`` of a DigitsMLP(32) trained on ``n`` training images (as in the notebook)."""
    idx = torch.randperm(len(d.x_train), generator=torch.Generator().manual_seed(100 + seed))[:n]
    set_seed(seed)
    s = DigitsMLP(32)
    if T is None:
        train_classifier(s, d.x_train[idx], d.y_train[idx], epochs=DIGITS_EPOCHS[n], lr=3e-3, seed=seed, progress=False)
    else:
        D.distill_classifier(s, cnn, d.x_train[idx], d.y_train[idx], epochs=DIGITS_EPOCHS[n], T=T, alpha=alpha, lr=3e-3,
                             seed=seed, progress=False)
    x, y = d.split(split)
    return accuracy(predict(s, x), y), s


def distillation_rows(ctx: BenchContext) -> list[dict]:
    rows = []
    d = load_digits()
    cnn = load_digits_cnn()
    base_acc = accuracy(predict(cnn, d.x_test), d.y_test)
    x = d.x_test[:256]
    val = {k: statistics.mean(_digits_student(d, cnn, s, 100, *k, "val")[0] for s in range(3)) for k in GRID}
    T, alpha = max(val, key=val.get)  # chosen on validation, as in the notebook
    for n in (100, 1078):
        for kd in (False, True):
            runs = [_digits_student(d, cnn, s, n, T if kd else None, alpha, "test") for s in (10, 11, 12, 13, 14)]
            s = runs[-1][1]
            with torch.no_grad():
                speed = speed_ratio(lambda: cnn(x), lambda s=s: s(x), repeats=ctx.repeats)["ratio"]
            setting = dict(temperature=T, alpha=alpha) if kd else {}
            rows.append(row("distillation", "kd-soft-labels" if kd else "scratch-labels", "digits-cnn", "accuracy", base_acc,
                            statistics.mean(r[0] for r in runs), count_parameters(s) / count_parameters(cnn), speed,
                            needs="training", batch=256, train_size=n, **setting))

    corpus, gpt = char_corpus(), load_tinygpt()
    base = evaluate_lm(gpt, corpus)
    cfg = GPTConfig(vocab_size=corpus.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=64)
    tokens = torch.randint(corpus.vocab_size, (8, 128), generator=torch.Generator().manual_seed(0))
    kw = dict(steps=GPT_STEPS, batch_size=32, lr=3e-3, warmup=30, seed=0, progress=False)
    for method in ("scratch-text", "kd-token", "kd-sequence"):
        set_seed(0)
        s = TinyGPT(cfg)
        if method == "scratch-text":
            train_lm(s, corpus, **kw)
        elif method == "kd-token":
            D.distill_lm(s, gpt, corpus, T=1.0, alpha=0.0, **kw)
        else:
            train_lm(s, corpus.with_train_data(torch.tensor(corpus.encode(load_teacher_text()))), **kw)
        with torch.no_grad():
            speed = speed_ratio(lambda: gpt(tokens), lambda s=s: s(tokens), repeats=ctx.repeats)["ratio"]
        rows.append(row("distillation", method, "tinygpt", "val_loss", base, evaluate_lm(s, corpus),
                        count_parameters(s) / count_parameters(gpt), speed, needs="training", batch=8,
                        **({"temperature": 1.0, "alpha": 0.0} if method == "kd-token" else {})))

    minilm = load_minilm()
    held = heldout_lines()
    e_ref = embed(minilm, held)
    batch = held[:32]
    for method, student in (("scratch-layer-subset", D.minilm_student(minilm)), ("kd-hidden-states", load_minilm_student(minilm))):
        fid = fidelity(e_ref, student, held)
        speed = speed_ratio(lambda: embed(minilm, batch), lambda s=student: embed(s, batch), repeats=ctx.repeats)["ratio"]
        size = count_parameters(student) / count_parameters(minilm)
        for metric, value in (("cosine", fid.cosine), ("top10", fid.top10)):
            rows.append(row("distillation", method, "minilm", metric, 1.0, value, size, speed, needs="training", batch=32, part="all"))
    return rows
