"""Benchmark rows of the ``fast`` chapter: SmolLM2-135M decoding through each fast path, timed the
way llama.cpp's ``llama-bench`` reports: prompt processing (pp) and text generation (tg) apart.

    python -m lightweight.bench.fast        # writes book/bench/fast.json, fast.md, and its rows of results.json
    python -m lightweight.bench.fast --from-json   # rewrites the tables from fast.json, measuring nothing

Timing (:func:`lightweight.llm.fast.time_pp_tg`): every PyTorch path, eager or compiled, runs the same
greedy loop over a static KV cache; ``fp32-pytorch-generate`` is transformers' ``generate`` (what
users run), timed from inside by a streamer; llama.cpp rows (when llama-cpp-python is installed) time
its ``eval`` calls the same way. tg = ``new tokens / seconds`` after a context whose prefill is not
timed; pp = ``prompt tokens / seconds`` of one forward over the context. Medians, with min and max, of
rounds that visit every path in turn. Groups, each interleaved on its own:

- main: every path, context 64, batch 1, all threads (the compiled rows need that thread count);
- batch 8: four paths, context 64;
- context sweep: a few paths at contexts 64, 512, 2048 on 1 thread and 512, 2048 on all threads
  (the context: the first tokens of the held-out Shakespeare text).

Rows: ``metric: tg`` / ``pp`` (value = median tokens/s, baseline = PyTorch FP32 eager of the same
group, ``speed_ratio`` = their ratio), and ``metric: ppl`` per path and domain (chapter 6's evaluator,
16 windows of 512 tokens per domain; ``ratio_low`` / ``ratio_high``: the paired-bootstrap 95% interval
of its perplexity over FP32's; ``speed_ratio``: the main group's tg ratio). Every row's ``setting``
holds the measured bandwidth (``bandwidth_gbs``, at its thread count), the bytes read per step
(``weight_bytes``, ``kv_bytes_per_token``), so that ``bound_tokens_per_s`` = bandwidth / (weight bytes
+ context · KV bytes per token) and every "% of the bound" can be recomputed from the JSON. Our INT4
paths carry GPTQ integers (symmetric, groups of 32, calibrated block by block as in chapter 6);
``int4-aten-rtn-g32`` is the same kernel with round-to-nearest integers (quality only). torchao's
tensors are subclasses whose bytes are not those of their storage: their size is that of our path
with the same layout. llama.cpp reads its whole file per token (the tied table is also the head).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..console import safe_console
from ..libref import ao_linear_weight_bytes
from ..llm import fast, gguf_export
from ..llm import roofline as R
from ..llm.evaluation import Evaluator, calibration_windows, paired_ratio, score_ratio
from ..llm.model import load_smollm2, stored_bytes, verify_gguf
from ..machine import describe
from .core import BenchContext, row, sync_results

NEW_TOKENS, BIG_BATCH, CAL_WINDOWS, EVAL_WINDOWS = 32, 8, 64, 16
SHORT = 64  # context of the main group and of batch 8, tokens
CONTEXTS = fast.CONTEXTS  # the sweep's contexts (SmolLM2's max_position_embeddings is 8,192)
SWEEP_ROUNDS = 3
SWEEP = ("fp32", "bf16", "int8-ours", "int4-ours-head8")  # eager paths of the context sweep
BATCHED = ("fp32", "bf16", "int8-ours", "int4-ours")
COMPILED = ("fp32", "int4-ours-head8")
GGUF_SWEEP = ("f32", "q4_0")
RESULT_PATH = Path(__file__).resolve().parents[2] / "book" / "bench" / "fast.json"
METHODS = {  # path -> (method, bits, group_size)
    "fp32": ("fp32-pytorch", 32, None), "bf16": ("bf16-pytorch", 16, None),
    "int8-ours": ("int8-aten-ours", 8, None), "int4-ours": ("int4-aten-ours-g32", 4, 32),
    "int4-ours-head": ("int4-aten-ours-g32-head", 4, 32), "int4-ours-head8": ("int4-aten-ours-g32-head8", 4, 32),
    "torchao-int8": ("int8-torchao-weight-only", 8, None),
    "torchao-int4": ("int4-torchao-g32", 4, 32), "torchao-int8-dynamic": ("int8-torchao-dynamic", 8, None),
    "torch.ao-int8-dynamic": ("int8-torch.ao-dynamic", 8, None),
}
GGUF = {  # llama.cpp format -> (method, bits, group_size); q4_1 is the source file
    "f32": ("fp32-gguf-f32-llama.cpp", 32, None), "f16": ("fp16-gguf-f16-llama.cpp", 16, None),
    "q8_0": ("int8-gguf-q8_0-llama.cpp", 8, 32), "q4_0": ("int4-gguf-q4_0-llama.cpp", 4, 32),
    "q4_1": ("int4-gguf-q4_1-llama.cpp", 4, 32),
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


@dataclass(frozen=True)
class _Path:
    """What a timed path's rows say about it besides its measurements."""

    method: str
    bits: int
    group_size: int | None
    runtime: str
    needs: str
    size_ratio: float
    weight_bytes: int
    kv_bytes_per_token: int
    same_runtime: str | None = None  # the key of the FP32 path of the same runtime, if not PyTorch eager


def fast_bench(ctx: BenchContext) -> list[dict]:
    """Chapter 7's rows for ``python -m lightweight.bench``; chapter 7's own files get them too."""
    rows = fast_rows(ctx)
    _write(rows, describe())
    return rows


def fast_rows(ctx: BenchContext) -> list[dict]:
    """Every row (see the module's docstring): bandwidth on 1 and all threads, GPTQ, the paths, the
    timing groups (main, batch 8, context sweep), then perplexity. ``ctx.repeats`` rounds (3 to 7) for
    the main and batch-8 groups, :data:`SWEEP_ROUNDS` for the sweep."""
    model, tokenizer = load_smollm2(verbose=False)
    rounds = max(3, min(ctx.repeats, 7))
    every = torch.get_num_threads()
    bandwidth = {}
    for n in dict.fromkeys((1, every)):
        with fast.threads(n):
            bandwidth[n] = max(R.memory_bandwidth().values())
    gptq = fast.gptq_int4(model, calibration_windows(tokenizer, CAL_WINDOWS), progress=False)
    paths = {n: fast.build_path(model, n, qtensors=gptq if n.startswith("int4-ours") else None) for n in METHODS}
    sizes, weights = _sizes(model, paths), read_bytes(paths)
    tokens = fast.context_tokens(tokenizer, max(CONTEXTS))
    short = tokens[:, :SHORT]
    eager = {n: fast.LoopTimer(m) for n, m in paths.items()}
    generate = fast.GenerateTimer(paths["fp32"], tokenizer.eos_token_id)
    compiled = _compiled(paths, short)
    with tempfile.TemporaryDirectory() as folder:
        files = _gguf_files(model, gptq, Path(folder)) if fast.llama_cpp_available() else {}
        cpp = {f"gguf-{fmt}": fast.LlamaCpp(p, n_ctx=max(CONTEXTS) + NEW_TOKENS) for fmt, p in files.items()}
        timers = eager | {"fp32+generate": generate} | compiled | cpp
        main = fast.time_pp_tg(timers, short, NEW_TOKENS, rounds)
        info = _describe_paths(model, sizes, weights, eager, compiled, files)
        for timer in timers.values():
            timer.release()
        batch = fast.time_pp_tg({n: fast.LoopTimer(paths[n]) for n in BATCHED},
                                short.expand(BIG_BATCH, -1).contiguous(), NEW_TOKENS, rounds)
        sweep_timers = {n: eager[n] for n in SWEEP} | {"fp32+generate": generate}
        sweep_timers |= {f"gguf-{fmt}": cpp[f"gguf-{fmt}"] for fmt in GGUF_SWEEP if f"gguf-{fmt}" in cpp}
        sweep = []
        for n in dict.fromkeys((1, every)):  # on all threads, context 64 is the main group's
            contexts = tuple(c for c in CONTEXTS if not (n == every and c == SHORT))
            with fast.threads(n):
                sweep += fast.context_sweep(sweep_timers, tokens, contexts, NEW_TOKENS, SWEEP_ROUNDS).values()
        for c in cpp.values():  # the files stay memory-mapped until closed (Windows cannot delete them)
            c.close()
        quality = _quality(model, tokenizer, paths, files)
    rows = _quality_rows(quality, info, main, bandwidth[every])
    for group in (main, batch, *sweep):
        rows += _timing_rows(group, info, bandwidth)
    return rows


def _compiled(paths: dict, context: torch.Tensor) -> dict[str, fast.LoopTimer]:
    """Timers of :data:`COMPILED` through the compiled loop, compiled now at this context's cache
    length; none if any fails (their rows compare with each other)."""
    timers, failed = fast.compiled_timers({n: paths[n] for n in COMPILED}, context, NEW_TOKENS, progress=False)
    if failed:
        print(f"torch.compile failed here, no compiled rows: {failed}")
        return {}
    return {f"{n}+compile": t for n, t in timers.items()}


def _gguf_files(model, gptq: dict, folder: Path) -> dict[str, Path]:
    source = verify_gguf()
    files = {fmt: gguf_export.export_gguf(model, folder / f"{fmt}.gguf", fmt, source=source,
                                          qtensors=gptq if fmt == "q4_0" else None)
             for fmt in ("f32", "f16", "q8_0", "q4_0")}
    return files | {"q4_1": source}


def _describe_paths(model, sizes: dict, weights: dict, eager: dict, compiled: dict, files: dict) -> dict[str, _Path]:
    """Every timer's :class:`_Path`; the PyTorch caches' bytes are counted from the prepared caches."""
    kv = {n: t.cache_bytes_per_token() for n, t in eager.items()}
    info = {}
    for n, (method, bits, group) in METHODS.items():
        needs = "calibration" if n.startswith("int4-ours") else "none"
        info[n] = _Path(method, bits, group, "pytorch", needs, sizes[n] / sizes["fp32"], weights[n], kv[n])
        if f"{n}+compile" in compiled:
            info[f"{n}+compile"] = _Path(f"{method}-compile", bits, group, "pytorch-compile", needs,
                                         sizes[n] / sizes["fp32"], weights[n], kv[n], same_runtime="fp32+compile")
    info["fp32+generate"] = _Path("fp32-pytorch-generate", 32, None, "pytorch-generate", "none", 1.0,
                                  weights["fp32"], kv["fp32"])
    f16_cache = R.kv_bytes_per_token(model, torch.float16)  # llama.cpp's default cache type
    for fmt, path in files.items():
        method, bits, group = GGUF[fmt]
        size = path.stat().st_size
        info[f"gguf-{fmt}"] = _Path(method, bits, group, "llama.cpp", "calibration" if fmt == "q4_0" else "none",
                                    size / sizes["fp32"], size, f16_cache, same_runtime="gguf-f32")
    return info


def _quality(model, tokenizer, paths: dict, files: dict) -> dict[str, dict[str, tuple[float, object]]]:
    """``{key: {domain: (ppl, Interval of ppl / FP32 ppl)}}`` on chapter 6's held-out windows."""
    evaluator = Evaluator(model, tokenizer, n_windows=EVAL_WINDOWS, kl_windows=0)
    ref = evaluator.reference
    scored = {n: m for n, m in paths.items() if n != "fp32"} | {"int4-rtn": fast.build_path(model, "int4-ours")}
    out = {"fp32": {d: (s.ppl, score_ratio(s, s)) for d, s in ref.items()}}
    for n, m in scored.items():
        out[n] = {d: (s.ppl, score_ratio(s, ref[d])) for d, s in evaluator.score(m, progress=False).items()}
    for fmt, path in files.items():
        with fast.LlamaCpp(path, n_ctx=evaluator.windows[next(iter(ref))].shape[1], logits_all=True) as cpp:
            out[f"gguf-{fmt}"] = {}
            for d, windows in evaluator.windows.items():
                nll, per = cpp.window_nll(windows), windows.shape[1] - 1
                ppl = math.exp(sum(nll) / (per * len(nll)))
                out[f"gguf-{fmt}"][d] = (ppl, paired_ratio(nll, ref[d].window_nll, per))
    return out


def _quality_rows(quality: dict, info: dict[str, _Path], main: dict[str, fast.PpTg], bandwidth: float) -> list[dict]:
    """``metric: ppl`` rows, one per path and domain; ``speed_ratio``: the main group's tg ratio to FP32."""
    rows = []
    rtn = _Path("int4-aten-rtn-g32", 4, 32, "pytorch", "none", info["int4-ours"].size_ratio,
                info["int4-ours"].weight_bytes, info["int4-ours"].kv_bytes_per_token)
    keys = [k for k in info if k in quality or k.endswith("+compile")] + ["int4-rtn"]
    for key in keys:
        p = rtn if key == "int4-rtn" else info[key]
        timed = main.get(key)
        speed = timed.tg.median / main["fp32"].tg.median if timed else None
        extra = {}
        if timed:
            extra = {"batch": 1, "threads": timed.threads, "context": timed.context,
                     "bound_tokens_per_s": round(R.context_bound(p.weight_bytes, p.kv_bytes_per_token, timed.context,
                                                                 bandwidth), 1)}
            if p.same_runtime in main:
                extra["same_runtime_speed_ratio"] = round(timed.tg.median / main[p.same_runtime].tg.median, 3)
        for domain, (ppl, ratio) in quality[key.removesuffix("+compile")].items():
            rows.append(row("fast", p.method, "smollm2-135m", "ppl", quality["fp32"][domain][0], ppl, p.size_ratio, speed,
                            needs=p.needs, bits=p.bits, group_size=p.group_size, part="all", domain=domain,
                            runtime=p.runtime, ratio_low=round(ratio.low, 4), ratio_high=round(ratio.high, 4),
                            bandwidth_gbs=round(bandwidth, 2), weight_bytes=p.weight_bytes,
                            kv_bytes_per_token=p.kv_bytes_per_token, **extra))
    return rows


def _timing_rows(group: dict[str, fast.PpTg], info: dict[str, _Path], bandwidth: dict[int, float]) -> list[dict]:
    """``metric: tg`` and ``pp`` rows of one interleaved group; baseline: its PyTorch FP32 eager path."""
    rows = []
    base = group["fp32"]
    for key, r in group.items():
        p, bw = info[key], bandwidth[r.threads]
        for metric in ("tg", "pp"):
            s, b = getattr(r, metric), getattr(base, metric)
            if s is None:
                continue
            setting = {"bits": p.bits, "group_size": p.group_size, "part": "all", "runtime": p.runtime,
                       "batch": r.batch, "threads": r.threads, "context": r.context if metric == "tg" else 0,
                       "tokens": r.new_tokens if metric == "tg" else r.prompt_tokens, "rounds": s.n,
                       "tokens_per_s_low": round(s.low, 2), "tokens_per_s_high": round(s.high, 2),
                       "bandwidth_gbs": round(bw, 2), "weight_bytes": p.weight_bytes,
                       "kv_bytes_per_token": p.kv_bytes_per_token}
            if metric == "tg":
                setting["bound_tokens_per_s"] = round(R.context_bound(p.weight_bytes, p.kv_bytes_per_token, r.context,
                                                                      bw, batch=r.batch), 1)
                if p.same_runtime in group:
                    setting["same_runtime_speed_ratio"] = round(s.median / group[p.same_runtime].tg.median, 3)
            rows.append(row("fast", p.method, "smollm2-135m", metric, b.median, s.median, p.size_ratio,
                            s.median / b.median, needs=p.needs, **setting))
    return rows


# ----------------------------------------------------------------------------- the book's tables
def _num(v: float | None, digits: int) -> str:
    """Vietnamese number style, as in the book's prose: 1.234,5."""
    return "—" if v is None else f"{v:,.{digits}f}".replace(",", "_").replace(".", ",").replace("_", ".")


def _ratio(r: dict) -> str:
    """A ``metric: ppl`` row's perplexity ratio to FP32 with its 95% interval, e.g. ``1,17 [1,15–1,19]``."""
    st = r["setting"]
    return f"{_num(r['value'] / r['baseline'], 2)} [{_num(st['ratio_low'], 2)}–{_num(st['ratio_high'], 2)}]"


def _pct(r: dict) -> str:
    """A tg row's share of its bound (recomputable from the row: bandwidth, weight and KV bytes)."""
    return f"{r['value'] / r['setting']['bound_tokens_per_s']:.0%}"


def _spread(r: dict) -> str:
    s = r["setting"]
    return f"{_num(r['value'], 1)} ({_num(s['tokens_per_s_low'], 1)}–{_num(s['tokens_per_s_high'], 1)})"


def fast_table(rows: list[dict], measured_on: str | None = None) -> str:
    """The book's tables, in Vietnamese, few columns each (they must read on a phone): the main group
    (every path, context 64, batch 1, all threads), tg and pp over the context sweep, and batch 8."""
    ours = [r for r in rows if r["chapter"] == "fast"]
    key = lambda r, k: (r["method"], r["setting"]["batch"], r["setting"]["threads"], r["setting"][k])  # noqa: E731
    tg = {key(r, "context"): r for r in ours if r["metric"] == "tg"}
    pp = {key(r, "tokens"): r for r in ours if r["metric"] == "pp"}  # pp over C tokens: keyed like tg at context C
    ppl = {(r["method"], r["setting"]["domain"]): r for r in ours if r["metric"] == "ppl"}
    if not tg:
        raise ValueError("no tg rows: these rows predate the pp/tg benchmark; run python -m lightweight.bench.fast")
    bandwidth = {r["setting"]["threads"]: r["setting"]["bandwidth_gbs"] for r in tg.values()}
    new_tokens = next(iter(tg.values()))["setting"]["tokens"]
    lines = [f"Đo trên máy: {measured_on or describe()}", "",
             "Băng thông bộ nhớ đo được: " + ", ".join(f"{_num(bw, 1)} GB/s ({t} luồng)" for t, bw in sorted(bandwidth.items()))
             + f". **tg**: token/s khi sinh {new_tokens} token sau C token ngữ cảnh (không tính lúc nạp ngữ cảnh); "
             "**pp**: token/s của một lượt forward qua lời nhắc. Trung vị của các vòng xen kẽ, (min–max); "
             "% trần = tg / (băng thông / byte đọc mỗi bước, gồm trọng số và bộ đệm KV)."]
    return "\n".join(lines + _main_table(tg, pp, ppl) + _sweep_tables(tg, pp) + _batch_table(tg)) + "\n"


def _main_table(tg: dict, pp: dict, ppl: dict) -> list[str]:
    every = max(k[2] for k in tg)
    short = min(k[3] for k in tg if k[1] == 1)
    lines = ["", f"**Bảng 1.** Mọi đường chạy: ngữ cảnh {short} token, lô 1, {every} luồng.", "",
             "| cấu hình | tg (token/s) | × FP32 | % trần | pp (token/s) | PPL × FP32 [KTC 95%] (Shakespeare / diễn văn) |",
             "|---|---|---|---|---|---|"]
    ratios = lambda method: [ppl.get((method, d)) for d in ("shakespeare", "sotu")]  # noqa: E731
    for method, *_ in [k for k in tg if k[1:] == (1, every, short)]:
        r, p, q = tg[(method, 1, every, short)], pp.get((method, 1, every, short)), ratios(method)
        quality = " / ".join(_ratio(x) for x in q) if all(q) else "—"
        lines.append(f"| `{method}` | {_spread(r)} | {_num(r['speed_ratio'], 2)} | {_pct(r)} | "
                     f"{_num(p and p['value'], 0)} | {quality} |")
    if all(rtn := ratios("int4-aten-rtn-g32")):
        lines.append("| `int4-aten-rtn-g32` (chỉ chất lượng) | — | — | — | — | "
                     f"{' / '.join(_ratio(x) for x in rtn)} |")
    return lines


def _sweep_tables(tg: dict, pp: dict) -> list[str]:
    contexts = sorted({k[3] for k in tg if k[1] == 1})
    swept = list(dict.fromkeys(k[0] for k in tg if k[1] == 1 and k[3] != contexts[0]))
    if not swept:
        return []
    lines = []
    head = "| cấu hình | luồng | " + " | ".join(f"C = {c}" for c in contexts) + " |"
    rule = "|---|---|" + "---|" * len(contexts)
    for title, table, cell in (
            ("**Bảng 2.** tg (token/s, và % trần) theo độ dài ngữ cảnh C; cột cuối: C từ đó bộ đệm KV lớn hơn "
             "trọng số.", tg, lambda r: f"{_num(r['value'], 1)} ({_pct(r)})"),
            ("**Bảng 3.** pp (token/s) khi lời nhắc dài C token.", pp, lambda r: _num(r["value"], 0))):
        last = table is tg  # the column where the cache overtakes the weights
        lines += ["", title, "", head + (" KV > trọng số từ C = |" if last else ""), rule + ("---|" if last else "")]
        for method in swept:
            for t in sorted({k[2] for k in tg}):
                cells = [table.get((method, 1, t, c)) for c in contexts]
                if not any(cells):
                    continue
                line = f"| `{method}` | {t} | " + " | ".join("—" if c is None else cell(c) for c in cells) + " |"
                if last:
                    s = next(c for c in cells if c)["setting"]
                    line += f" {_num(R.cache_overtakes_weights(s['weight_bytes'], s['kv_bytes_per_token']), 0)} |"
                lines.append(line)
    return lines


def _batch_table(tg: dict) -> list[str]:
    batched = [k for k in tg if k[1] > 1]
    if not batched:
        return []
    b, t, c = batched[0][1:]
    lines = ["", f"**Bảng 4.** Lô {b} (ngữ cảnh {c} token, {t} luồng): tg tính mọi chuỗi cộng lại.", "",
             f"| cấu hình | tg lô {b} (token/s) | × FP32 lô {b} | × FP32 lô 1 |", "|---|---|---|---|"]
    for method, *_ in batched:
        r, one = tg[(method, b, t, c)], tg.get((method, 1, t, c))
        lines.append(f"| `{method}` | {_spread(r)} | {_num(r['speed_ratio'], 2)} | {_num(one and one['speed_ratio'], 2)} |")
    return lines


def _write(rows: list[dict], measured_on: str, path: Path = RESULT_PATH) -> None:
    path.write_text(json.dumps({"machine": measured_on, "rows": rows}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(fast_table(rows, measured_on), encoding="utf-8")
    sync_results(rows, measured_on, chapter="fast")


def main(argv: list[str] | None = None) -> int:
    safe_console()
    parser = argparse.ArgumentParser(description="Benchmark of chapter 7 (SmolLM2-135M decoding, fast paths).")
    parser.add_argument("--repeats", type=int, default=7, help="timing rounds of the main and batch-8 groups (3 to 7)")
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
