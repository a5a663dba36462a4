"""Benchmark rows of the ``combine`` chapter: each technique at its usual operating point and the
combined pipelines, on the digits CNN and TinyGPT, all measured the same way.

``size_ratio`` = :func:`combine.stored_bytes` of the compressed model / of the FP32 model (the whole
model: ``part="all"``); ``speed_ratio`` = FP32 time / compressed time, medians in the same run;
``minutes`` = the compression's own compute (training, calibration, factorization), evaluation excluded.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.nn as nn

from .. import combine as C
from .. import lowrank as L
from .. import prune as P
from .. import quantize as Q
from ..data import char_corpus, load_digits
from ..distill import distill_lm
from ..measure import accuracy, speed_ratio
from ..models import GPTConfig, TinyGPT
from ..teachers import load_digits_cnn, load_tinygpt
from ..train import evaluate_lm, predict, set_seed, train_classifier
from .core import BenchContext, row
from .distillation import GPT_STEPS


CNN_SPARSITY = 0.7


def minutes_to(stages: list[C.Stage], i: int) -> float:
    """Minutes of compute of a pipeline's steps 1..i (step 0 is the starting model)."""
    return sum(s.seconds for s in stages[1:i + 1]) / 60


def _timed(fn: Callable[[], object]) -> float:
    """Minutes ``fn()`` takes."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) / 60


class _Rows(list):
    """Rows of one model, each measured the same way against its FP32 ``reference``: quality by
    ``evaluate``, whole-model stored bytes, and the speed ratio on ``inputs``."""

    def __init__(self, ctx: BenchContext, model: str, metric: str, reference: nn.Module,
                 evaluate: Callable[[nn.Module], float], inputs: torch.Tensor):
        super().__init__()
        self.ctx, self.model, self.metric, self.reference, self.evaluate, self.inputs = (
            ctx, model, metric, reference, evaluate, inputs)
        self.base, self.base_bytes = evaluate(reference), C.stored_bytes(reference)["total"]

    def add(self, method: str, m: nn.Module, minutes: float, needs: str, value: float | None = None,
            **setting: object) -> None:
        with torch.no_grad():
            speed = speed_ratio(lambda: self.reference(self.inputs), lambda: m(self.inputs),
                                repeats=self.ctx.repeats)["ratio"]
        self.append(row("combine", method, self.model, self.metric, self.base,
                        self.evaluate(m) if value is None else value, C.stored_bytes(m)["total"] / self.base_bytes,
                        speed, needs=needs, minutes=round(minutes, 3), part="all", batch=len(self.inputs), **setting))


def combine_rows(ctx: BenchContext) -> list[dict]:
    return _digits_rows(ctx) + _tinygpt_rows(ctx)


def _digits_rows(ctx: BenchContext) -> list[dict]:
    d, cnn = load_digits(), load_digits_cnn()
    acc = lambda m: accuracy(predict(m, d.x_test), d.y_test)  # noqa: E731
    rows = _Rows(ctx, "digits-cnn", "accuracy", cnn, acc, d.x_test[:256])
    add = rows.add

    for bits in (8, 4):
        m = copy.deepcopy(cnn)
        add(f"int{bits}-rtn-channel", m, _timed(lambda m=m: C.quantize_model_(m, bits, None)), "none", bits=bits)
    m = copy.deepcopy(cnn)
    minutes = _timed(lambda: (P.prune_(m, 0.8, scope="global"),
                              train_classifier(m, d.x_train, d.y_train, epochs=15, lr=1e-3, seed=0, progress=False)))
    add("magnitude-global-finetuned", m, minutes, "training", sparsity=0.8)
    m = copy.deepcopy(cnn)
    minutes = _timed(lambda: (L.factorize_(m, param_ratio=0.5, types=(nn.Linear, nn.Conv2d), progress=False),
                              train_classifier(m, d.x_train, d.y_train, epochs=15, lr=1e-3, seed=0, progress=False)))
    add("svd-plain-finetuned", m, minutes, "training", param_ratio=0.5)

    # the sparsity the chapter's notebook picks on the validation split among 0.5, 0.6, 0.7
    m, stages = C.channels_prune_quantize_cnn(cnn, d, acc, keep=0.5, sparsity=CNN_SPARSITY, epochs=15, bits=4,
                                              progress=False)
    add("structured-l1-channels", stages[2].model, minutes_to(stages, 2), "training", sparsity=0.5)
    add("combo-channels-prune-int4", m, minutes_to(stages, len(stages) - 1), "training", sparsity=CNN_SPARSITY, bits=4)

    student, stages = C.distill_quantize_cnn(cnn, d, acc, hidden=64, T=2.0, alpha=0.9, epochs=100, progress=False)
    add("kd-soft-labels", stages[1].model, minutes_to(stages, 1), "training", temperature=2.0, alpha=0.9)
    add("combo-kd-int4", student, minutes_to(stages, 2), "training", bits=4, temperature=2.0, alpha=0.9)
    return rows


def _tinygpt_rows(ctx: BenchContext) -> list[dict]:
    corpus, gpt = char_corpus(), load_tinygpt()
    ev = lambda m: evaluate_lm(m, corpus)  # noqa: E731
    tokens = torch.randint(corpus.vocab_size, (8, gpt.cfg.block_size), generator=torch.Generator().manual_seed(0))
    rows = _Rows(ctx, "tinygpt", "val_loss", gpt, ev, tokens)
    add = rows.add
    gen = torch.Generator().manual_seed(0)
    cal = [corpus.get_batch("train", 16, 128, gen)[0] for _ in range(8)]
    run_cal = lambda m: [m(t) for t in cal]  # noqa: E731

    for bits, gs in ((8, None), (4, 128)):
        m = copy.deepcopy(gpt)
        add(f"int{bits}-rtn-{'channel' if gs is None else f'g{gs}'}", m,
            _timed(lambda m=m: C.quantize_model_(m, bits, gs)), "none", bits=bits, group_size=gs)
    m = copy.deepcopy(gpt)
    add("int4-gptq-g128", m, _timed(lambda: (Q.gptq_(m, lambda: run_cal(m), 4, 128, act_order=True),
                                             C.quantize_model_(m, 4, 128))), "calibration", bits=4, group_size=128)
    m = copy.deepcopy(gpt)
    add("sparsegpt-oneshot", m, _timed(lambda: P.prune_oneshot_(m, 0.5, "sparsegpt", lambda: run_cal(m))),
        "calibration", sparsity=0.5)

    m, stages = C.prune_finetune_quantize_lm(gpt, corpus, ev, sparsity=0.6, steps=200, lr=1e-3, progress=False)
    add("magnitude-global-finetuned", stages[2].model, minutes_to(stages, 2), "training", value=stages[2].quality,
        sparsity=0.6)
    add("combo-prune-ft-int4", m, minutes_to(stages, 3), "training", value=stages[3].quality,
        sparsity=0.6, bits=4, group_size=128)

    for method, name in (("plain", "svd-plain"), ("whiten", "asvd-whiten")):
        m, stages = C.lowrank_quantize_lm(gpt, ev, run_cal, param_ratio=0.75, method=method)
        needs = "none" if method == "plain" else "calibration"
        add(name, stages[1].model, minutes_to(stages, 1), needs, value=stages[1].quality, param_ratio=0.75)
        add(f"combo-{name}-int4", m, minutes_to(stages, 2), needs, value=stages[2].quality,
            param_ratio=0.75, bits=4, group_size=128)

    set_seed(0)
    student = TinyGPT(GPTConfig(vocab_size=corpus.vocab_size, block_size=128, n_layer=2, n_head=2, n_embd=64))
    minutes = _timed(lambda: distill_lm(student, gpt, corpus, steps=GPT_STEPS, batch_size=32, lr=3e-3, warmup=30,
                                        seed=0, progress=False))
    add("kd-token", student, minutes, "training", temperature=1.0, alpha=0.0)
    q = copy.deepcopy(student)
    add("combo-kd-int4", q, minutes + _timed(lambda: C.quantize_model_(q, 4, 128)), "training", bits=4, group_size=128)
    return rows
