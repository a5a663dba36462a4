"""Benchmark rows of the ``lowrank`` chapter: plain SVD and activation-aware SVD (ASVD's diagonal
scaling, SVD-LLM's whitening, and whitening with ranks chosen by a sensitivity scan) on TinyGPT and
MiniLM, and plain SVD of the digits CNN's convolutions and Linear layers with fine-tuning. Sizes are
the factorized layers' weights after / before; speed is the whole model against FP32, same run."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import lowrank as L
from ..data import char_corpus, load_digits
from ..measure import accuracy, speed_ratio
from ..minilm import calibration_lines, embed, fidelity, heldout_lines, load_minilm
from ..teachers import load_digits_cnn, load_tinygpt
from ..train import evaluate_lm, predict, train_classifier
from .core import BenchContext, row

MINILM_SKIP = ("0.model.pooler.dense",)  # does not feed the sentence embedding
NAMES = {"plain": "svd-plain", "asvd": "asvd-diagonal", "whiten": "asvd-whiten"}


def lowrank_rows(ctx: BenchContext) -> list[dict]:
    rows = []
    d = load_digits()
    cnn = load_digits_cnn()
    acc = lambda m: accuracy(predict(m, d.x_test), d.y_test)  # noqa: E731
    base_acc, x = acc(cnn), d.x_test[:256]
    types = (nn.Linear, nn.Conv2d)
    shapes = L.layer_shapes(cnn, types)
    for rho in (0.75, 0.5):
        m = copy.deepcopy(cnn)
        ranks = L.factorize_(m, param_ratio=rho, types=types)
        train_classifier(m, d.x_train, d.y_train, epochs=15, lr=1e-3, seed=0, progress=False)
        rows.append(row("lowrank", "svd-plain-finetuned", "digits-cnn", "accuracy", base_acc, acc(m),
                        L.factorized_ratio(ranks, shapes), speed_ratio(lambda: cnn(x), lambda m=m: m(x), repeats=ctx.repeats)["ratio"],
                        needs="training", param_ratio=rho, part="conv+linear", batch=256))

    corpus, gpt = char_corpus(), load_tinygpt()
    base_loss = evaluate_lm(gpt, corpus)
    gen = torch.Generator().manual_seed(3)
    gpt_cal = [corpus.get_batch("train", 16, 128, gen)[0] for _ in range(8)]
    tokens = torch.randint(corpus.vocab_size, (8, gpt.cfg.block_size), generator=torch.Generator().manual_seed(0))
    shapes = L.layer_shapes(gpt)
    for method in ("plain", "asvd", "whiten"):
        for rho in (0.75, 0.5):
            m = copy.deepcopy(gpt)
            ranks = L.factorize_(m, param_ratio=rho, method=method, run_calibration=lambda m=m: [m(t) for t in gpt_cal])
            speed = speed_ratio(lambda: gpt(tokens), lambda m=m: m(tokens), repeats=ctx.repeats)["ratio"]
            rows.append(row("lowrank", NAMES[method], "tinygpt", "val_loss", base_loss,
                            evaluate_lm(m, corpus), L.factorized_ratio(ranks, shapes), speed,
                            needs="none" if method == "plain" else "calibration", param_ratio=rho, part="linear",
                            batch=8))

    minilm = load_minilm()
    held, cal = heldout_lines(), calibration_lines()
    e_ref = embed(minilm, held)
    batch = held[:32]
    probe = cal[:32]
    e_probe = embed(minilm, probe)
    score = lambda model: F.cosine_similarity(embed(model, probe), e_probe).mean().item()  # noqa: E731
    shapes = L.layer_shapes(minilm, skip=MINILM_SKIP)
    variants = [("svd-plain", "plain", "uniform"), ("asvd-diagonal", "asvd", "uniform"),
                ("asvd-whiten", "whiten", "uniform"), ("asvd-whiten-sensitivity", "whiten", "sensitivity")]
    for name, method, allocation in variants:
        for rho in (0.75, 0.5):
            m = copy.deepcopy(minilm)
            ranks = L.factorize_(m, param_ratio=rho, method=method, allocation=allocation, skip=MINILM_SKIP,
                                 run_calibration=lambda m=m: embed(m, cal), score=score, progress=False)
            fid = fidelity(e_ref, m, held)
            speed = speed_ratio(lambda: embed(minilm, batch), lambda m=m: embed(m, batch), repeats=ctx.repeats)["ratio"]
            size = L.factorized_ratio(ranks, shapes)
            for metric, value in (("cosine", fid.cosine), ("top10", fid.top10)):
                rows.append(row("lowrank", name, "minilm", metric, 1.0, value, size, speed,
                                needs="none" if method == "plain" else "calibration", param_ratio=rho, part="linear",
                                batch=32))
    return rows
