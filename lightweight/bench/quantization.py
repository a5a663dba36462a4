"""Benchmark rows of the ``quantization`` chapter: INT8, INT4 round-to-nearest and INT4 GPTQ
(weight-only: sizes of the saved integers + FP16 scales + biases against the FP32 Linear layers;
their speed ratio is the cost of dequantizing in forward), and our own INT8 weights run by
fbgemm's integer kernels (speed against FP32, same run)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .. import quantize as Q
from ..data import char_corpus
from ..measure import safetensors_bytes, speed_ratio
from ..minilm import calibration_lines, embed, fidelity, heldout_lines, load_minilm
from ..teachers import load_tinygpt
from ..train import evaluate_lm
from .core import BenchContext, row


def _size_ratio(fp32: nn.Module, quantized: nn.Module) -> float:
    dense = {f"{n}.{k}": v for n, m in fp32.named_modules() if isinstance(m, nn.Linear) for k, v in m.state_dict().items()}
    return safetensors_bytes(Q.quantized_state(quantized)) / safetensors_bytes(dense)


def quantization_rows(ctx: BenchContext) -> list[dict]:
    rows = []
    corpus, gpt = char_corpus(), load_tinygpt()
    base = evaluate_lm(gpt, corpus)
    gen = torch.Generator().manual_seed(3)
    cal_batches = [corpus.get_batch("train", 16, 128, gen)[0] for _ in range(8)]
    tokens = torch.randint(corpus.vocab_size, (1, gpt.cfg.block_size), generator=torch.Generator().manual_seed(0))
    minilm = load_minilm()
    held, cal = heldout_lines(), calibration_lines()
    e_ref = embed(minilm, held)
    variants = [("int8-rtn-channel", 8, None, False), ("int4-rtn-g32", 4, 32, False),
                ("int4-rtn-g128", 4, 128, False), ("int4-gptq-g128", 4, 128, True)]
    for method, bits, gs, gptq in variants:
        for name, model in (("tinygpt", gpt), ("minilm", minilm)):
            q = copy.deepcopy(model)
            if gptq:
                run = (lambda q=q: [q(x) for x in cal_batches]) if name == "tinygpt" else (lambda q=q: embed(q, cal))
                Q.gptq_(q, run, bits, gs, act_order=True)
            else:
                Q.quantize_(q, bits, gs)
            size = _size_ratio(model, q)
            setting = dict(needs="calibration" if gptq else "none", bits=bits, group_size=gs, part="linear")
            if name == "tinygpt":  # weight-only: dequantized in forward, so the speed ratio is the overhead
                speed = speed_ratio(lambda: gpt(tokens), lambda q=q: q(tokens), repeats=ctx.repeats)["ratio"]
                rows.append(row("quantization", method, "tinygpt", "val_loss", base, evaluate_lm(q, corpus), size, speed,
                                batch=1, **setting))
            else:
                fid = fidelity(e_ref, q, held)
                speed = speed_ratio(lambda: embed(minilm, held[:32]), lambda q=q: embed(q, held[:32]),
                                    repeats=ctx.repeats)["ratio"]
                rows.append(row("quantization", method, "minilm", "cosine", 1.0, fid.cosine, size, speed, batch=32, **setting))
                rows.append(row("quantization", method, "minilm", "top10", 1.0, fid.top10, size, speed, batch=32, **setting))
    fast = Q.fbgemm_int8_(copy.deepcopy(minilm))
    fid = fidelity(e_ref, fast, held)
    for b in (1, 32):
        batch = held[:b]
        ratio = speed_ratio(lambda: embed(minilm, batch), lambda: embed(fast, batch), repeats=ctx.repeats)["ratio"]
        rows.append(row("quantization", "int8-fbgemm-ours", "minilm", "cosine", 1.0, fid.cosine, None, ratio,
                        needs="none", bits=8, part="linear", batch=b))
    return rows
