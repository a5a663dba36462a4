"""Benchmark rows of the ``decoder`` chapter (8): the reader's INT4 kernel step by step, and the lean
decoder against transformers' ``generate``, aten's INT4 kernel and llama.cpp.

    python -m lightweight.bench.decoder              # writes book/bench/decoder.json, decoder.md, its rows of results.json
    python -m lightweight.bench.decoder --from-json  # rewrites the tables from decoder.json, measuring nothing

- Kernel rows (``metric: gbs``): GB/s of the stored matrix at batch 1 for each step of
  :mod:`lightweight.llm.kernel` (naive, Q4_0 layout, per-lane sums, threads), aten's int4 kernel and
  ``F.linear`` FP32/BF16, on SmolLM2's four fused shapes and an (11008, 4096) matrix; one interleaved
  run per shape (:func:`lightweight.llm.kernel.step_speeds`). ``baseline`` = the naive loop's GB/s,
  ``speed_ratio`` = value / baseline; ``setting.part`` = the shape.
- Decoding rows (``metric: tg`` / ``pp``): one interleaved run of ``generate`` FP32, the lean decoder
  (FP32, BF16, aten INT4, numba INT4; each eager and with ``torch.compile``) and llama.cpp F32/Q4_0 when
  installed, all with chapter 7's GPTQ integers (groups of 32) and an INT8 output head, context 64,
  32 new tokens, on all threads, then the eager and llama.cpp paths again on one thread. ``baseline``
  = ``generate`` FP32 tg of the same group; ``setting`` holds the spread, the measured bandwidth and
  the bytes read per step, so that every "% of the roofline" can be recomputed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from ..console import safe_console
from ..llm import decoder as D
from ..llm import fast, gguf_export
from ..llm import kernel as K
from ..llm import lean as LN
from ..llm import roofline as R
from ..llm.model import load_smollm2, verify_gguf
from ..machine import describe
from .core import BenchContext, row, sync_results

NEW_TOKENS, CONTEXT = 32, 64
RESULT_PATH = Path(__file__).resolve().parents[2] / "book" / "bench" / "decoder.json"
KERNELS = {"naive": "int4-numba-naive", "q4_0": "int4-numba-q4_0", "lanes": "int4-numba-lanes",
           "threads": "int4-numba-threads", "aten int4": "int4-aten", "F.linear fp32": "fp32-flinear",
           "F.linear bf16": "bf16-flinear"}
PATHS = {"fp32": ("fp32-lean", 32), "bf16": ("bf16-lean", 16), "int4-aten": ("int4-lean-aten-gptq-g32", 4),
         "int4-numba": ("int4-lean-numba-gptq-g32", 4)}


def _kernel_rows(rounds: int) -> list[dict]:
    rows = []
    for part, speeds in K.step_speeds(rounds=rounds).items():
        shape = K.SHAPES[part]
        model = "smollm2-135m" if shape != (11008, 4096) else "mlp-11008x4096"
        for name, gbs in speeds.items():
            bits = 32 if "fp32" in name else 16 if "bf16" in name else 4
            rows.append(row("decoder", KERNELS[name], model, "gbs", speeds["naive"], gbs, None, gbs / speeds["naive"],
                            needs="none", part=part, bits=bits, group_size=32 if bits == 4 else None,
                            threads=torch.get_num_threads()))
    return rows


def _timing_rows(results: dict, info: dict, bandwidth: float, threads: int) -> list[dict]:
    base = results["generate fp32"].tg.median
    rows = []
    for name, r in results.items():
        method, bits, weight_bytes, kv = info[name]
        for metric, spread, tokens in (("tg", r.tg, r.new_tokens), ("pp", r.pp, r.prompt_tokens)):
            if spread is None:
                continue
            baseline = base if metric == "tg" else results["generate fp32"].pp.median
            extra = {}
            if weight_bytes:
                extra = {"weight_bytes": weight_bytes, "kv_bytes_per_token": kv,
                         "bound_tokens_per_s": round(R.context_bound(weight_bytes, kv, r.context + tokens // 2, bandwidth), 1)}
            rows.append(row("decoder", method, "smollm2-135m", metric, baseline, spread.median, None,
                            spread.median / baseline, needs="calibration" if bits == 4 else "none", bits=bits,
                            group_size=32 if bits == 4 else None, runtime=name, threads=threads, context=r.context,
                            tokens=tokens, rounds=spread.n, tokens_per_s_low=round(spread.low, 2),
                            tokens_per_s_high=round(spread.high, 2), bandwidth_gbs=round(bandwidth, 2), **extra))
    return rows


def decoder_rows(ctx: BenchContext) -> list[dict]:
    """Every row (see the module's docstring); ``ctx.repeats`` rounds (3 to 7) per timing group."""
    rounds = max(3, min(ctx.repeats, 7))
    rows = _kernel_rows(rounds)
    model, tokenizer = load_smollm2(verbose=False)
    gptq = fast.gptq_int4_cached(model, tokenizer, 16, progress=False)
    lean = D.from_hf(model)
    paths = {n: LN.build_lean(lean, n, gptq) for n in PATHS}
    context = fast.context_tokens(tokenizer, CONTEXT)
    every = torch.get_num_threads()
    eager = {f"lean {n}": D.LeanLoop(m) for n, m in paths.items()}
    generate = {"generate fp32": fast.GenerateTimer(model, tokenizer.eos_token_id)}
    compiled = {}
    for n, m in paths.items():
        loop = D.LeanLoop(m, compile=True)
        try:
            loop.prepare(context, NEW_TOKENS)
            loop.generation_seconds()
            compiled[f"lean {n} + compile"] = loop
        except Exception as e:  # noqa: BLE001 (Inductor raises many kinds of errors)
            print(f"torch.compile failed for {n}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
    info = {"generate fp32": ("fp32-pytorch-generate", 32, R.read_bytes_per_token(model), R.kv_bytes_per_token(model))}
    for name, timer in eager.items() | compiled.items():
        method, bits = PATHS[name.split()[1]]
        info[name] = (method + ("-compile" if "compile" in name else ""), bits, LN.weight_bytes_per_token(timer.lean),
                      timer.cache_bytes_per_token())
    with tempfile.TemporaryDirectory() as folder:
        cpp = {}
        if fast.llama_cpp_available():
            for fmt in ("f32", "q4_0"):
                path = gguf_export.export_gguf(model, Path(folder) / f"smollm2-{fmt}.gguf", fmt, source=verify_gguf(),
                                               qtensors=gptq if fmt == "q4_0" else None)
                cpp[f"llama.cpp {fmt}"] = fast.LlamaCpp(path, n_ctx=CONTEXT + NEW_TOKENS + 8)
                info[f"llama.cpp {fmt}"] = (f"{'fp32' if fmt == 'f32' else 'int4'}-gguf-{fmt}-llama.cpp",
                                            32 if fmt == "f32" else 4, None, None)
        bandwidth = {}
        for n in dict.fromkeys((1, every)):
            with fast.threads(n):
                bandwidth[n] = max(R.memory_bandwidth().values())
        main = fast.time_pp_tg(generate | eager | compiled | cpp, context, NEW_TOKENS, rounds)
        rows += _timing_rows(main, info, bandwidth[every], every)
        if every > 1:
            with fast.threads(1):
                one = fast.time_pp_tg(generate | eager | cpp, context, NEW_TOKENS, rounds)
            rows += _timing_rows(one, info, bandwidth[1], 1)
        for c in cpp.values():
            c.close()
    return rows


def _markdown(rows: list[dict], measured_on: str) -> str:
    lines = [f"Đo trên: {measured_on}", "", "**Bảng 1.** GB/s của ma trận đã lưu, lô 1 (trung vị; × = so với vòng lặp đơn giản).", "",
             "| ma trận | " + " | ".join(KERNELS) + " |", "|---" * (len(KERNELS) + 1) + "|"]
    parts = list(dict.fromkeys(r["setting"]["part"] for r in rows if r["metric"] == "gbs"))
    for part in parts:
        by = {r["method"]: r for r in rows if r["metric"] == "gbs" and r["setting"]["part"] == part}
        cells = [f"{by[m]['value']:.2f} (×{by[m]['speed_ratio']:.1f})" if m in by else "—" for m in KERNELS.values()]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    for threads in sorted({r["setting"]["threads"] for r in rows if r["metric"] == "tg"}, reverse=True):
        lines += ["", f"**Bảng {2 if threads > 1 else 3}.** Sinh văn bản (tg) và xử lý lời nhắc (pp), token/s, lô 1, ngữ cảnh "
                  f"{CONTEXT}, {threads} luồng (trung vị [min, max]; × = so với `generate` FP32; % trần: tg / trần mái nhà).", "",
                  "| đường chạy | tg | × generate | % trần | pp |", "|---|---|---|---|---|"]
        group = [r for r in rows if r["setting"].get("threads") == threads and r["metric"] in ("tg", "pp")]
        for name in dict.fromkeys(r["setting"]["runtime"] for r in group):
            tg = next(r for r in group if r["setting"]["runtime"] == name and r["metric"] == "tg")
            pp = next((r for r in group if r["setting"]["runtime"] == name and r["metric"] == "pp"), None)
            s = tg["setting"]
            bound = f"{tg['value'] / s['bound_tokens_per_s']:.0%}" if "bound_tokens_per_s" in s else "—"
            pp_cell = f"{pp['value']:.0f}" if pp else "—"
            lines.append(f"| {name} | {tg['value']:.1f} [{s['tokens_per_s_low']:.1f}, {s['tokens_per_s_high']:.1f}] | "
                         f"{tg['speed_ratio']:.2f} | {bound} | {pp_cell} |")
    return "\n".join(lines) + "\n"


def _write(rows: list[dict], measured_on: str) -> None:
    RESULT_PATH.write_text(json.dumps({"machine": measured_on, "rows": rows}, indent=1, ensure_ascii=False) + "\n",
                           encoding="utf-8")
    RESULT_PATH.with_suffix(".md").write_text(_markdown(rows, measured_on), encoding="utf-8")
    sync_results(rows, measured_on, chapter="decoder")


def decoder_bench(ctx: BenchContext) -> list[dict]:
    """Chapter 8's rows for ``python -m lightweight.bench``; chapter 8's own files get them too."""
    rows = decoder_rows(ctx)
    _write(rows, describe())
    return rows


def main(argv: list[str] | None = None) -> int:
    safe_console()
    parser = argparse.ArgumentParser(description="Chapter 8's benchmark: the INT4 kernel's steps and the lean decoder.")
    parser.add_argument("--repeats", type=int, default=7, help="timing rounds (3 to 7)")
    parser.add_argument("--from-json", action="store_true", help="rewrite the tables from decoder.json, measuring nothing")
    args = parser.parse_args(argv)
    if args.from_json:
        data = json.loads(RESULT_PATH.read_text(encoding="utf-8"))
        _write(data["rows"], data["machine"])
    else:
        decoder_bench(BenchContext(repeats=args.repeats))
    print(RESULT_PATH.with_suffix(".md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
