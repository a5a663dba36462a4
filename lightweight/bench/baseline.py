"""Benchmark rows of the ``baseline`` chapter: the FP32 models, and torch.ao's dynamic INT8 on MiniLM
(the library reference that later chapters' own INT8 code is compared with)."""

from __future__ import annotations

from ..data import char_corpus, load_digits
from ..libref import ao_dynamic_int8, ao_linear_weight_bytes
from ..measure import accuracy, speed_ratio
from ..minilm import embed, fidelity, heldout_lines, load_minilm
from ..teachers import load_digits_cnn, load_tinygpt
from ..train import evaluate_lm, predict
from .core import BenchContext, row


def baseline_rows(ctx: BenchContext) -> list[dict]:
    d = load_digits()
    cnn = load_digits_cnn()
    acc = accuracy(predict(cnn, d.x_test), d.y_test)
    rows = [row("baseline", "fp32", "digits-cnn", "accuracy", acc, acc, 1.0, 1.0, needs="none", part="all")]

    gpt = load_tinygpt()
    loss = evaluate_lm(gpt, char_corpus())
    rows.append(row("baseline", "fp32", "tinygpt", "val_loss", loss, loss, 1.0, 1.0, needs="none", part="all"))

    minilm = load_minilm()
    rows.append(row("baseline", "fp32", "minilm", "cosine", 1.0, 1.0, 1.0, 1.0, needs="none", part="all"))
    q = ao_dynamic_int8(minilm)
    fid = fidelity(minilm, q)
    fp32_bytes, int8_bytes = ao_linear_weight_bytes(minilm)
    lines = heldout_lines()
    speeds = {b: speed_ratio(lambda: embed(minilm, lines[:b]), lambda: embed(q, lines[:b]), repeats=ctx.repeats)["ratio"]
              for b in (1, 32)}
    for metric, value in (("cosine", fid.cosine), ("top10", fid.top10)):
        for b, s in speeds.items():
            rows.append(row("baseline", "int8-ao-dynamic", "minilm", metric, 1.0, value,
                            int8_bytes / fp32_bytes, s, needs="none", bits=8, part="linear", batch=b))
    return rows
