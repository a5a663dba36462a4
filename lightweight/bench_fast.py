"""Benchmark rows of the ``fast`` chapter: SmolLM2-135M decoding through each fast path.

For every path: perplexity on both held-out domains (``metric: ppl``, one row per domain and
batch size), ``speed_ratio`` = its tokens/s / FP32 tokens/s at batch 1 and at batch 8 (greedy
generation, medians of interleaved rounds, same run), ``size_ratio`` = bytes of the whole stored
model / FP32 bytes, and in ``setting`` the roofline bound at batch 1 (measured bandwidth / bytes
read per token). torchao's tensors are subclasses whose bytes are not those of their storage: their
size is that of our path with the same layout. llama.cpp rows exist when llama-cpp-python is installed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from . import fast, gguf_export
from . import roofline as R
from .bench import BenchContext, register, row
from .llm import load_smollm2, stored_bytes, verify_gguf
from .llm_eval import Evaluator
from .reference import ao_linear_weight_bytes

NEW_TOKENS, BIG_BATCH = 32, 8
METHODS = {  # path -> (method, bits, group_size)
    "fp32": ("fp32-pytorch", 32, None), "bf16": ("bf16-pytorch", 16, None),
    "int8-ours": ("int8-aten-ours", 8, None), "int4-ours": ("int4-aten-ours-g32", 4, 32),
    "int4-ours-head": ("int4-aten-ours-g32-head", 4, 32), "torchao-int8": ("int8-torchao-weight-only", 8, None),
    "torchao-int4": ("int4-torchao-g32", 4, 32), "torchao-int8-dynamic": ("int8-torchao-dynamic", 8, None),
    "torch.ao-int8-dynamic": ("int8-torch.ao-dynamic", 8, None),
}
SAME_LAYOUT = {"torchao-int8": "int8-ours", "torchao-int8-dynamic": "int8-ours", "torchao-int4": "int4-ours"}


def _sizes(model, paths: dict) -> dict[str, int]:
    sizes = {n: stored_bytes(m) for n, m in paths.items() if n not in SAME_LAYOUT and n != "torch.ao-int8-dynamic"}
    sizes |= {n: sizes[same] for n, same in SAME_LAYOUT.items()}
    fp32_linear, int8_linear = ao_linear_weight_bytes(model)
    head = model.lm_head.weight.numel() * 4  # the tied head is the embedding, which stays stored
    sizes["torch.ao-int8-dynamic"] = sizes["fp32"] - (fp32_linear - head) + int8_linear
    return sizes


@register("fast")
def fast_rows(ctx: BenchContext) -> list[dict]:
    model, tokenizer = load_smollm2(verbose=False)
    machine = R.measure_machine(progress=False)
    rounds = max(3, min(ctx.repeats, 7))
    paths = {n: fast.build_path(model, n) for n in METHODS}
    prompt = tokenizer("Once upon a time, in a small village by the sea,", return_tensors="pt").input_ids
    eos = tokenizer.eos_token_id
    rate1 = fast.interleaved_rates({n: fast.generator(m, prompt, NEW_TOKENS, eos) for n, m in paths.items()},
                                   NEW_TOKENS, rounds)
    batched = prompt.expand(BIG_BATCH, -1).contiguous()
    rate8 = fast.interleaved_rates({n: fast.generator(m, batched, NEW_TOKENS, eos) for n, m in paths.items()},
                                   NEW_TOKENS * BIG_BATCH, rounds)
    shapes = R.linear_shapes(model)
    head = {"lm_head": R.FORMATS["bf16"]}
    read = {n: R.read_bytes_per_token(m) for n, m in paths.items() if n not in SAME_LAYOUT and n != "torch.ao-int8-dynamic"}
    read |= {n: read[same] for n, same in SAME_LAYOUT.items()}
    read["torch.ao-int8-dynamic"] = R.bytes_per_token(shapes, "int8", keep_float={"lm_head": R.FORMATS["fp32"]})
    sizes = _sizes(model, paths)
    evaluator = Evaluator(model, tokenizer)
    ref = evaluator.reference
    rows = []
    for name, (method, bits, group) in METHODS.items():
        score = ref if name == "fp32" else evaluator.score(paths[name], progress=False)
        bound = round(R.tokens_per_s_bound(read[name], machine.bandwidth), 1)
        for batch, rates in ((1, rate1), (BIG_BATCH, rate8)):
            for domain, s in score.items():
                rows.append(row("fast", method, "smollm2-135m", "ppl", ref[domain].ppl, s.ppl, sizes[name] / sizes["fp32"],
                                rates[name] / rates["fp32"], needs="none", bits=bits, group_size=group, part="all",
                                batch=batch, domain=domain, runtime="pytorch", bound_tokens_per_s=bound))
    if fast.llama_cpp_available():
        rows += _llama_cpp_rows(model, evaluator, prompt, paths["fp32"], rounds, machine, sizes["fp32"], eos)
    return rows


def _llama_cpp_rows(model, evaluator, prompt, fp32, rounds, machine, fp32_bytes, eos) -> list[dict]:
    source = verify_gguf()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        files = {fmt: gguf_export.export_gguf(model, Path(d) / f"{fmt}.gguf", fmt, source=source)
                 for fmt in ("f32", "f16", "q8_0", "q4_0")}
        files["q4_1"] = source
        ids = prompt[0].tolist()
        runs = {"pytorch": fast.generator(fp32, prompt, NEW_TOKENS, eos)}
        runs |= {fmt: fast.LlamaCpp(p).generator(ids, NEW_TOKENS) for fmt, p in files.items()}
        rates = fast.interleaved_rates(runs, NEW_TOKENS, rounds, progress=False)
        for fmt, path in files.items():
            cpp = fast.LlamaCpp(path, logits_all=True)
            bits = {"f32": 32, "f16": 16, "q8_0": 8, "q4_0": 4, "q4_1": 4}[fmt]
            family = {"f32": "fp32", "f16": "fp16", "q8_0": "int8", "q4_0": "int4", "q4_1": "int4"}[fmt]
            bound = round(machine.bandwidth * 1e9 / path.stat().st_size, 1)  # the whole file is read per token
            for domain, windows in evaluator.windows.items():
                ppl = cpp.perplexity(windows)
                rows.append(row("fast", f"{family}-gguf-{fmt}-llama.cpp", "smollm2-135m", "ppl",
                                evaluator.reference[domain].ppl, ppl, path.stat().st_size / fp32_bytes,
                                rates[fmt] / rates["pytorch"], needs="none", bits=bits,
                                group_size=None if bits >= 16 else 32, part="all", batch=1, domain=domain,
                                runtime="llama.cpp", bound_tokens_per_s=bound))
    return rows
