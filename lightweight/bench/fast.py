"""Benchmark rows of the ``fast`` chapter: SmolLM2-135M decoding through each fast path.

    python -m lightweight.bench.fast        # writes book/bench/fast.json, fast.md, and its rows of results.json
    python -m lightweight.bench.fast --from-json   # rewrites the tables from fast.json, measuring nothing

For every path: perplexity on both held-out domains (``metric: ppl``, one row per domain and
batch size), ``speed_ratio`` = its tokens/s / PyTorch FP32 (eager) tokens/s at batch 1 and at batch 8
(greedy generation, medians of interleaved rounds, same run), ``size_ratio`` = bytes of the whole
stored model / FP32 bytes, and in ``setting`` the roofline bound at batch 1 (measured bandwidth /
bytes read per token). Our INT4 paths carry GPTQ integers (symmetric, groups of 32, calibrated block
by block as in chapter 6); ``int4-aten-rtn-g32`` is the same kernel with round-to-nearest integers
(quality only). Two rows run compiled by ``torch.compile`` (batch 1), with
``setting.same_runtime_speed_ratio`` against compiled FP32; llama.cpp rows (when llama-cpp-python is
installed) carry it against llama.cpp's own F32. torchao's tensors are subclasses whose bytes are not
those of their storage: their size is that of our path with the same layout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from ..console import safe_console
from ..libref import ao_linear_weight_bytes
from ..llm import fast, gguf_export
from ..llm import roofline as R
from ..llm.evaluation import Evaluator, calibration_windows
from ..llm.model import load_smollm2, stored_bytes, verify_gguf
from ..machine import describe
from .core import BenchContext, row, sync_results

NEW_TOKENS, BIG_BATCH, CAL_WINDOWS = 32, 8, 64
RESULT_PATH = Path(__file__).resolve().parents[2] / "book" / "bench" / "fast.json"
METHODS = {  # path -> (method, bits, group_size)
    "fp32": ("fp32-pytorch", 32, None), "bf16": ("bf16-pytorch", 16, None),
    "int8-ours": ("int8-aten-ours", 8, None), "int4-ours": ("int4-aten-ours-g32", 4, 32),
    "int4-ours-head": ("int4-aten-ours-g32-head", 4, 32), "int4-ours-head8": ("int4-aten-ours-g32-head8", 4, 32),
    "torchao-int8": ("int8-torchao-weight-only", 8, None),
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


def read_bytes(paths: dict) -> dict[str, int]:
    """Bytes read per decoded token by each built path, counted from the tensors it stores (torchao's
    subclasses: those of our path with the same layout). ``torch.ao-int8-dynamic`` converts every
    ``nn.Linear``, the output head included, so its head is read in INT8, as its stored size counts it."""
    read = {n: R.read_bytes_per_token(m) for n, m in paths.items() if n not in SAME_LAYOUT}
    return read | {n: read[same] for n, same in SAME_LAYOUT.items() if n in paths}


def fast_bench(ctx: BenchContext) -> list[dict]:
    """Chapter 7's rows for ``python -m lightweight.bench``; chapter 7's own files get them too."""
    rows = fast_rows(ctx)
    _write(rows, describe())
    return rows


def fast_rows(ctx: BenchContext) -> list[dict]:
    model, tokenizer = load_smollm2(verbose=False)
    machine = R.measure_machine(progress=False)
    rounds = max(3, min(ctx.repeats, 7))
    gptq = fast.gptq_int4(model, calibration_windows(tokenizer, CAL_WINDOWS), progress=False)
    paths = {n: fast.build_path(model, n, qtensors=gptq if n.startswith("int4-ours") else None) for n in METHODS}
    prompt = tokenizer("Once upon a time, in a small village by the sea,", return_tensors="pt").input_ids
    eos = tokenizer.eos_token_id
    rate1 = fast.interleaved_rates({n: fast.generator(m, prompt, NEW_TOKENS, eos) for n, m in paths.items()},
                                   NEW_TOKENS, rounds)
    batched = prompt.expand(BIG_BATCH, -1).contiguous()
    rate8 = fast.interleaved_rates({n: fast.generator(m, batched, NEW_TOKENS, eos) for n, m in paths.items()},
                                   NEW_TOKENS * BIG_BATCH, rounds)
    read = read_bytes(paths)
    sizes = _sizes(model, paths)
    evaluator = Evaluator(model, tokenizer, n_windows=8, kl_windows=2)  # 8 of chapter 6's 64 windows
    ref = evaluator.reference
    rows, scores = [], {}
    for name, (method, bits, group) in METHODS.items():
        score = scores[name] = ref if name == "fp32" else evaluator.score(paths[name], progress=False)
        bound = round(R.tokens_per_s_bound(read[name], machine.bandwidth), 1)
        for batch, rates in ((1, rate1), (BIG_BATCH, rate8)):
            for domain, s in score.items():
                rows.append(row("fast", method, "smollm2-135m", "ppl", ref[domain].ppl, s.ppl, sizes[name] / sizes["fp32"],
                                rates[name] / rates["fp32"], needs="calibration" if name.startswith("int4-ours") else "none", bits=bits, group_size=group, part="all",
                                batch=batch, domain=domain, runtime="pytorch", bound_tokens_per_s=bound))
    rtn = evaluator.score(fast.build_path(model, "int4-ours"), progress=False)
    for domain, s in rtn.items():
        rows.append(row("fast", "int4-aten-rtn-g32", "smollm2-135m", "ppl", ref[domain].ppl, s.ppl,
                        sizes["int4-ours"] / sizes["fp32"], None, needs="none", bits=4, group_size=32, part="all",
                        batch=1, domain=domain, runtime="pytorch"))
    rows += _compiled_rows(paths, prompt, rounds, scores.__getitem__, ref, sizes, read, machine)
    if fast.llama_cpp_available():
        rows += _llama_cpp_rows(model, evaluator, prompt, paths["fp32"], rounds, machine, sizes["fp32"], eos, gptq)
    return rows


def _compiled_rows(paths, prompt, rounds, score, ref, sizes, read, machine) -> list[dict]:
    compiled, failed = fast.compiled_generators({n: paths[n] for n in ("fp32", "int4-ours-head8")}, prompt, NEW_TOKENS,
                                                progress=False)
    if failed:  # both rows need both paths (same_runtime_speed_ratio)
        print(f"torch.compile failed here, no compiled rows: {failed}")
        return []
    runs = {"eager": fast.generator(paths["fp32"], prompt, NEW_TOKENS)} | compiled
    rates = fast.interleaved_rates(runs, NEW_TOKENS, rounds, progress=False)
    rows = []
    for name, method in (("fp32", "fp32-pytorch-compile"), ("int4-ours-head8", "int4-aten-ours-g32-head8-compile")):
        for domain, s in score(name).items():
            rows.append(row("fast", method, "smollm2-135m", "ppl", ref[domain].ppl, s.ppl, sizes[name] / sizes["fp32"],
                            rates[name] / rates["eager"], needs="calibration" if name != "fp32" else "none", bits=METHODS[name][1], group_size=METHODS[name][2],
                            part="all", batch=1, domain=domain, runtime="pytorch-compile",
                            same_runtime_speed_ratio=round(rates[name] / rates["fp32"], 3),
                            bound_tokens_per_s=round(R.tokens_per_s_bound(read[name], machine.bandwidth), 1)))
    return rows


def _llama_cpp_rows(model, evaluator, prompt, fp32, rounds, machine, fp32_bytes, eos, gptq) -> list[dict]:
    source = verify_gguf()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        files = {fmt: gguf_export.export_gguf(model, Path(d) / f"{fmt}.gguf", fmt, source=source,
                                              qtensors=gptq if fmt == "q4_0" else None)
                 for fmt in ("f32", "f16", "q8_0", "q4_0")}
        files["q4_1"] = source
        ids = prompt[0].tolist()
        runners = {fmt: fast.LlamaCpp(p) for fmt, p in files.items()}
        runs = {"pytorch": fast.generator(fp32, prompt, NEW_TOKENS, eos)}
        runs |= {fmt: cpp.generator(ids, NEW_TOKENS) for fmt, cpp in runners.items()}
        rates = fast.interleaved_rates(runs, NEW_TOKENS, rounds, progress=False)
        for cpp in runners.values():  # the files stay memory-mapped until closed (Windows cannot delete them)
            cpp.close()
        for fmt, path in files.items():
            bits = {"f32": 32, "f16": 16, "q8_0": 8, "q4_0": 4, "q4_1": 4}[fmt]
            family = {"f32": "fp32", "f16": "fp16", "q8_0": "int8", "q4_0": "int4", "q4_1": "int4"}[fmt]
            bound = round(machine.bandwidth * 1e9 / path.stat().st_size, 1)  # the whole file is read per token
            with fast.LlamaCpp(path, logits_all=True) as cpp:
                ppls = {domain: cpp.perplexity(windows) for domain, windows in evaluator.windows.items()}
            for domain, ppl in ppls.items():
                rows.append(row("fast", f"{family}-gguf-{fmt}-llama.cpp", "smollm2-135m", "ppl",
                                evaluator.reference[domain].ppl, ppl, path.stat().st_size / fp32_bytes,
                                rates[fmt] / rates["pytorch"], needs="calibration" if fmt == "q4_0" else "none", bits=bits,
                                group_size=None if bits >= 16 else 32, part="all", batch=1, domain=domain,
                                runtime="llama.cpp", bound_tokens_per_s=bound,
                                same_runtime_speed_ratio=round(rates[fmt] / rates["f32"], 3)))
    return rows


def fast_table(rows: list[dict], measured_on: str | None = None) -> str:
    """One Markdown line per path (and runtime), in Vietnamese: tokens/s ratios to PyTorch FP32 at
    batch 1 and 8, the same-runtime ratio, perplexity on both domains, size ratio and roofline bound."""
    num = lambda v, digits: "—" if v is None else f"{v:.{digits}f}".replace(".", ",")  # noqa: E731
    get = {(r["method"], r["setting"]["batch"], r["setting"]["domain"]): r for r in rows if r["chapter"] == "fast"}
    lines = [f"Đo trên máy: {measured_on or describe()}", "",
             "| đường chạy | runtime | × FP32 lô 1 | × FP32 lô 8 | × F32 cùng runtime | PPL Shakespeare | PPL diễn văn "
             "| tỉ lệ kích thước | trần token/s lô 1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in dict.fromkeys(k[0] for k in get):
        one, eight = get[(m, 1, "shakespeare")], get.get((m, BIG_BATCH, "shakespeare"))
        st = one["setting"]
        lines.append(f"| `{m}` | {st['runtime']} | {num(one['speed_ratio'], 2)} | {num(eight and eight['speed_ratio'], 2)} | "
                     f"{num(st.get('same_runtime_speed_ratio'), 2)} | {num(one['value'], 2)} | "
                     f"{num(get[(m, 1, 'sotu')]['value'], 2)} | {num(one['size_ratio'], 3)} | "
                     f"{num(st.get('bound_tokens_per_s'), 0)} |")
    return "\n".join(lines) + "\n"


def _write(rows: list[dict], measured_on: str, path: Path = RESULT_PATH) -> None:
    path.write_text(json.dumps({"machine": measured_on, "rows": rows}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(fast_table(rows, measured_on), encoding="utf-8")
    sync_results(rows, measured_on, chapter="fast")


def main(argv: list[str] | None = None) -> int:
    safe_console()
    parser = argparse.ArgumentParser(description="Benchmark of chapter 7 (SmolLM2-135M decoding, fast paths).")
    parser.add_argument("--repeats", type=int, default=7, help="timing rounds (3 to 7)")
    parser.add_argument("--from-json", action="store_true", help="rewrite the tables from book/bench/fast.json, measuring nothing")
    args = parser.parse_args(argv)
    if args.from_json:
        data = json.loads(RESULT_PATH.read_text(encoding="utf-8"))
        _write(data["rows"], data["machine"])
        return 0
    fast_bench(BenchContext(repeats=args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
