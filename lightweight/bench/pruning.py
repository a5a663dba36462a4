"""Benchmark rows of the ``pruning`` chapter: unstructured (dense and CSR execution), structured,
and the one-shot methods on MiniLM. Sizes count the pruned weights stored as bitmask (or CSR for the
CSR-executed row); speed is not measured for MiniLM, whose pruned weights still run dense."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .. import prune as P
from ..data import char_corpus, load_digits
from ..measure import accuracy, count_parameters, speed_ratio
from ..minilm import calibration_lines, embed, fidelity, heldout_lines, load_minilm
from ..teachers import load_digits_cnn, load_tinygpt
from ..train import evaluate_lm, predict, train_classifier, train_lm
from .core import BenchContext, row


def _storage_ratio(model: nn.Module, types: tuple[type, ...], fmt: str = "bitmask") -> float:
    """Bytes of the pruned weights stored as ``fmt`` (``"bitmask"`` or ``"csr"``) / as dense FP32,
    over the layers of ``types``."""
    weights = [m.weight.detach().flatten(1) for m in P.prunable_layers(model, types).values()]
    sizes = [P.storage_bytes(w) for w in weights]
    return sum(s[fmt] for s in sizes) / sum(s["dense"] for s in sizes)


def pruning_rows(ctx: BenchContext) -> list[dict]:
    d = load_digits()
    cnn = load_digits_cnn()
    acc = lambda m: accuracy(predict(m, d.x_test), d.y_test)  # noqa: E731
    base_acc = acc(cnn)
    rows = []
    x = d.x_test[:256]
    for s in (0.8, 0.9):
        m = copy.deepcopy(cnn)
        P.prune_(m, s, scope="global")
        train_classifier(m, d.x_train, d.y_train, epochs=15, lr=1e-3, seed=0, progress=False)
        dense_speed = speed_ratio(lambda: cnn(x), lambda: m(x), repeats=ctx.repeats)["ratio"]  # zeros, dense kernels
        rows.append(row("pruning", "magnitude-global-finetuned", "digits-cnn", "accuracy", base_acc, acc(m),
                        _storage_ratio(m, P.PRUNABLE), dense_speed, needs="training", sparsity=s, part="conv+linear"))
    small = P.prune_cnn_channels(cnn, 0.5)
    train_classifier(small, d.x_train, d.y_train, epochs=15, lr=1e-3, seed=0, progress=False)
    rows.append(row("pruning", "structured-l1-channels", "digits-cnn", "accuracy", base_acc, acc(small),
                    count_parameters(small) / count_parameters(cnn),
                    speed_ratio(lambda: cnn(x), lambda: small(x), repeats=ctx.repeats)["ratio"],
                    needs="training", sparsity=0.5, part="all"))

    corpus = char_corpus()
    gpt = load_tinygpt()
    base_loss = evaluate_lm(gpt, corpus)
    tokens = torch.randint(corpus.vocab_size, (1, gpt.cfg.block_size), generator=torch.Generator().manual_seed(0))
    sparse = copy.deepcopy(gpt)
    P.prune_(sparse, 0.9, scope="global")
    train_lm(sparse, corpus, steps=25, batch_size=16, lr=5e-4, warmup=5, seed=0, progress=False)
    loss = evaluate_lm(sparse, corpus)
    csr_ratio = _storage_ratio(sparse, (nn.Linear,), "csr")
    P.to_sparse_execution_(sparse)
    rows.append(row("pruning", "magnitude-global-csr", "tinygpt", "val_loss", base_loss, loss, csr_ratio,
                    speed_ratio(lambda: gpt(tokens), lambda: sparse(tokens), repeats=ctx.repeats)["ratio"],
                    needs="training", sparsity=0.9, part="linear"))
    gen = torch.Generator().manual_seed(1)
    importance = P.gpt_importance(gpt, [corpus.get_batch("train", 16, 128, gen) for _ in range(8)])
    small_gpt = P.prune_gpt_(copy.deepcopy(gpt), importance, head_ratio=0.25, neuron_ratio=0.5)
    train_lm(small_gpt, corpus, steps=40, batch_size=16, lr=5e-4, warmup=5, seed=0, progress=False)
    rows.append(row("pruning", "structured-heads-neurons", "tinygpt", "val_loss", base_loss,
                    evaluate_lm(small_gpt, corpus), count_parameters(small_gpt) / count_parameters(gpt),
                    speed_ratio(lambda: gpt(tokens), lambda: small_gpt(tokens), repeats=ctx.repeats)["ratio"],
                    needs="training", part="all"))

    minilm = load_minilm()
    held, cal = heldout_lines(), calibration_lines()
    e_ref = embed(minilm, held)
    for method in ("magnitude", "wanda", "sparsegpt"):
        m = copy.deepcopy(minilm)
        P.prune_oneshot_(m, 0.5, method, lambda: embed(m, cal))
        fid, size = fidelity(e_ref, m, held), _storage_ratio(m, (nn.Linear,))
        for metric, value in (("cosine", fid.cosine), ("top10", fid.top10)):
            rows.append(row("pruning", f"{method}-oneshot", "minilm", metric, 1.0, value, size, None,
                            needs="none" if method == "magnitude" else "calibration", sparsity=0.5, part="linear"))
    return rows
