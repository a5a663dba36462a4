"""Benchmark rows of chapter 6: SmolLM2-135M made lighter by every technique of the course.

    python -m lightweight.bench --only llm                       # with the other chapters' machinery
    python -m lightweight.bench.llm   # alone: book/bench/llm.json (rewritten after each row) and llm.md
    python -m lightweight.bench.llm --only int4-gptq-g64   # one configuration; the file keeps the others
    python -m lightweight.bench.llm --from-json           # llm.md rewritten from llm.json

Every configuration is scored on the held-out text of both domains (perplexity, bits per byte, KL to
the FP32 model) with the same :class:`~lightweight.llm.evaluation.Evaluator`; ``size_ratio`` is whole-model
stored bytes over FP32 whole-model bytes; ``setting["minutes"]`` is the compression's compute time
here (calibration statistics + the method, or training). Calibration windows come from the
calibration splits only (never the held-out text).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn as nn

from .. import lowrank as L
from .. import prune as P
from .. import quantize as Q
from ..console import safe_console
from ..distill import llm_student, train_causal_lm
from ..llm.evaluation import DOMAINS, Evaluator, calibration_windows
from ..llm.model import block_linears, calibration_run, compress_blockwise_, load_smollm2, stored_bytes
from ..machine import describe
from .core import BenchContext, row, sync_results

MODEL = "smollm2-135m"
EVAL_TOKENS = 1024  # per domain, windows of 256
KL_TOKENS = 512
CAL_WINDOWS = 64  # 64 x 256 = 16,384 calibration tokens, both domains in turn
DEPTH_DROP = 6  # of 30 blocks
STUDENT_KEEP = tuple(range(0, 30, 2))  # 15 blocks
STUDENT_STEPS = 120
STUDENT_WINDOWS = 512  # 512 x 128 training tokens from the calibration splits
STUDENT_LR = 3e-4
RESULT_PATH = Path(__file__).resolve().parents[2] / "book" / "bench" / "llm.json"


def _rows(method: str, ev: Evaluator, model: nn.Module, size: float, minutes: float, needs: str, **setting) -> list[dict]:
    scores = ev.score(model)
    out = []
    for d in DOMAINS:
        ref, s = ev.reference[d], scores[d]
        common = dict(needs=needs, part="all", minutes=round(minutes, 2), domain=d, **setting)
        out.append(row("llm", method, MODEL, "ppl", ref.ppl, s.ppl, size, None, **common))
        out.append(row("llm", method, MODEL, "bpb", ref.bpb, s.bpb, size, None, **common))
        out.append(row("llm", method, MODEL, "kl", 0.0, s.kl, size, None, **common))
    return out


def configurations(fp32: nn.Module, tok, cal: torch.Tensor) -> Iterator[tuple[str, Callable[[], nn.Module], str, dict]]:
    """``(method, make, needs, setting)`` for every configuration, most important first."""
    skip = ["lm_head"]
    run = lambda m, c=cal: calibration_run(m, c)  # noqa: E731
    one = {d: calibration_windows(tok, CAL_WINDOWS, domains=(d,), seed=1) for d in DOMAINS}

    def q(fn):
        def make():
            m = copy.deepcopy(fp32)
            fn(m)
            return m
        return make

    def blockwise(compress, c=cal):
        """Block by block on the calibration windows ``c``: each block calibrated on the compressed earlier ones."""
        return q(lambda m: compress_blockwise_(m, c, compress, progress=False))

    for bits in (4,):
        yield f"int{bits}-rtn-g64", q(lambda m, b=bits: Q.quantize_(m, b, 64, skip=skip)), "none", dict(bits=bits, group_size=64)
        yield f"int{bits}-gptq-g64", blockwise(lambda blk, r, b=bits: Q.gptq_(blk, r, b, 64, act_order=True)), "calibration", \
            dict(bits=bits, group_size=64)
        yield f"int{bits}-awq-g64", blockwise(lambda blk, r, b=bits: Q.awq_(blk, r, b, 64)), "calibration", dict(bits=bits, group_size=64)
    yield "magnitude-50", q(lambda m: P.prune_oneshot_(m, 0.5, "magnitude", skip=skip)), "none", dict(sparsity=0.5)
    for method in ("wanda", "sparsegpt"):
        yield f"{method}-50", blockwise(lambda blk, r, k=method: P.prune_oneshot_(blk, 0.5, k, r)), "calibration", dict(sparsity=0.5)
    yield "kd-halfdepth", lambda: _student(fp32, tok, teacher=True), "training", dict(blocks=len(STUDENT_KEEP), steps=STUDENT_STEPS)
    yield "text-halfdepth", lambda: _student(fp32, tok, teacher=False), "training", dict(blocks=len(STUDENT_KEEP), steps=STUDENT_STEPS)
    yield f"combo-depth{DEPTH_DROP}-gptq4-emb8", q(lambda m: _combo(m, cal)), "calibration", dict(bits=4, group_size=64)
    yield "combo-gptq4-emb8", q(lambda m: _combo(m, cal, drop=0)), "calibration", dict(bits=4, group_size=64)
    for bits in (3,):
        yield f"int{bits}-rtn-g64", q(lambda m, b=bits: Q.quantize_(m, b, 64, skip=skip)), "none", dict(bits=bits, group_size=64)
        yield f"int{bits}-gptq-g64", blockwise(lambda blk, r, b=bits: Q.gptq_(blk, r, b, 64, act_order=True)), "calibration", \
            dict(bits=bits, group_size=64)
        yield f"int{bits}-awq-g64", blockwise(lambda blk, r, b=bits: Q.awq_(blk, r, b, 64)), "calibration", dict(bits=bits, group_size=64)
    yield "int8-rtn-channel", q(lambda m: Q.quantize_(m, 8, None, skip=skip)), "none", dict(bits=8)
    yield "magnitude-2:4", q(lambda m: P.prune_oneshot_(m, 0.5, "magnitude", nm=(2, 4), skip=skip)), "none", dict(sparsity=0.5)
    for method in ("wanda", "sparsegpt"):
        yield f"{method}-2:4", blockwise(lambda blk, r, k=method: P.prune_oneshot_(blk, 0.5, k, r, nm=(2, 4))), "calibration", \
            dict(sparsity=0.5)
    yield f"structured-depth{DEPTH_DROP}", q(lambda m: _drop(m, cal, DEPTH_DROP)), "calibration", dict(blocks=30 - DEPTH_DROP)
    for ratio in (0.9, 0.8):
        yield f"svd-whiten-{ratio}", q(lambda m, r=ratio: L.factorize_(m, param_ratio=r, method="whiten", run_calibration=run(m),
                                                                   allocation="global", skip=skip, progress=False)), \
            "calibration", dict(param_ratio=ratio)
    for d in DOMAINS:
        yield f"int3-gptq-g64-cal-{d}", blockwise(lambda blk, r: Q.gptq_(blk, r, 3, 64, act_order=True), one[d]), \
            "calibration", dict(bits=3, group_size=64, calibration=d)
        yield f"sparsegpt-50-cal-{d}", blockwise(lambda blk, r: P.prune_oneshot_(blk, 0.5, "sparsegpt", r), one[d]), \
            "calibration", dict(sparsity=0.5, calibration=d)
    yield "int4-minmax-g32", q(_minmax_g32), "none", dict(bits=4, group_size=32)


def _minmax_g32(m: nn.Module) -> None:
    """GGUF-grid asymmetric INT4, groups of 32, written back as floats (the lossless trap)."""
    with torch.no_grad():
        for n in block_linears(m):
            lin = m.get_submodule(n)
            lin.weight.copy_(Q.minmax_fake_quantize(lin.weight, 4, 32))


def _drop(m: nn.Module, cal: torch.Tensor, k: int) -> nn.Module:
    bi = P.block_influence(m.model.layers, calibration_run(m, cal))
    return P.drop_blocks_(m, bi.argsort()[:k].tolist())


def _combo(m: nn.Module, cal: torch.Tensor, drop: int = DEPTH_DROP) -> nn.Module:
    """Depth pruning (``drop`` blocks by block influence, none when 0) + GPTQ INT4 g64 blocks (block by
    block) + INT8 per-row shared embedding."""
    if drop:
        _drop(m, cal, drop)
    compress_blockwise_(m, cal, lambda blk, r: Q.gptq_(blk, r, 4, 64, act_order=True), progress=False)
    quantize_embedding_(m)
    return m


def quantize_embedding_(m: nn.Module) -> nn.Module:
    """Tied embedding and lm_head as one INT8 per-row :class:`~lightweight.quantize.QuantizedLinear`
    (the embedding looks rows up from its dequantized weight)."""
    emb = m.model.embed_tokens
    lin = nn.Linear(emb.embedding_dim, emb.num_embeddings, bias=False)
    lin.weight = emb.weight
    qlin = Q.QuantizedLinear(lin, 8, None)
    m.lm_head = qlin
    m.model.embed_tokens = _QuantizedEmbedding(qlin)
    m.config.tie_word_embeddings = False
    return m


class _QuantizedEmbedding(nn.Module):
    """Looks token ids up in a shared INT8 :class:`~lightweight.quantize.QuantizedLinear` (no own storage)."""

    def __init__(self, table: Q.QuantizedLinear):
        super().__init__()
        self.table = [table]  # a list: not a submodule, so its bytes are counted once (as lm_head)
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = self.table[0]
        rows = t.qweight[ids].float() * t.scale[ids].float()
        return rows.view(*ids.shape, self.embedding_dim)


def _student(fp32: nn.Module, tok, teacher: bool) -> nn.Module:
    student = llm_student(fp32, STUDENT_KEEP)
    windows = calibration_windows(tok, STUDENT_WINDOWS, seq_len=128, seed=2)
    train_causal_lm(student, windows, STUDENT_STEPS, teacher=fp32 if teacher else None, batch_size=4, lr=STUDENT_LR)
    return student


def llm_bench(out: Path | None = None, only: set[str] | None = None, keep: list[dict] = ()) -> list[dict]:
    """All rows (or those of the methods in ``only``, with the rows in ``keep`` of the other methods kept
    as they were); with ``out``, the file is rewritten after each configuration."""
    fp32, tok = load_smollm2()
    fp32.requires_grad_(False)
    ev = Evaluator(fp32, tok, n_tokens=EVAL_TOKENS, kl_tokens=KL_TOKENS)
    base = stored_bytes(fp32)
    cal = calibration_windows(tok, CAL_WINDOWS)
    measured = {"fp32-reference": _rows("fp32-reference", ev, fp32, 1.0, 0.0, "none")}
    configs = list(configurations(fp32, tok, cal))
    unknown = set(only or ()) - {c[0] for c in configs}
    if unknown:
        raise ValueError(f"unknown configurations {sorted(unknown)}; known: {[c[0] for c in configs]}")
    kept = {}
    for r in keep:
        kept.setdefault(r["method"], []).append(r)

    def ordered() -> list[dict]:
        names = ["fp32-reference"] + [c[0] for c in configs]
        return [r for n in names for r in measured.get(n, kept.get(n, []))]

    for method, make, needs, setting in configs:
        if only is not None and method not in only:
            continue
        start = time.perf_counter()
        model = make()
        minutes = (time.perf_counter() - start) / 60
        sparse = method.split("-")[0] in ("magnitude", "wanda", "sparsegpt")
        measured[method] = _rows(method, ev, model, stored_bytes(model, sparse=sparse) / base, minutes, needs, **setting)
        print(f"{method}: {[(r['setting']['domain'], r['value']) for r in measured[method] if r['metric'] == 'ppl']}", flush=True)
        if out is not None:
            out.write_text(json.dumps({"machine": describe(), "rows": ordered()}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        del model
    return ordered()


def llm_table(rows: list[dict], measured_on: str | None = None) -> str:
    """One Markdown line per method, in Vietnamese: perplexity, bits per byte and KL on both domains,
    whole-model size ratio, minutes of compression (numbers with a decimal comma)."""
    get = {(r["method"], r["metric"], r["setting"]["domain"]): r for r in rows if r["model"] == MODEL}
    methods = list(dict.fromkeys(m for m, _, _ in get))
    num = lambda v, digits: f"{v:.{digits}f}".replace(".", ",")  # noqa: E731
    lines = [f"Đo trên máy: {measured_on or describe()}", "",
             "| cấu hình | PPL Shakespeare | PPL diễn văn | bpb Shakespeare | bpb diễn văn | KL Shakespeare | KL diễn văn "
             "| tỉ lệ kích thước | phút |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        v = lambda metric, d: get[(m, metric, d)]["value"]  # noqa: E731
        first = get[(m, "ppl", DOMAINS[0])]
        lines.append(f"| `{m}` | {num(v('ppl', 'shakespeare'), 2)} | {num(v('ppl', 'sotu'), 2)} | {num(v('bpb', 'shakespeare'), 3)} | "
                     f"{num(v('bpb', 'sotu'), 3)} | {num(v('kl', 'shakespeare'), 3)} | {num(v('kl', 'sotu'), 3)} | "
                     f"{num(first['size_ratio'], 3)} | {num(first['setting']['minutes'], 1)} |")
    return "\n".join(lines) + "\n"



def llm_rows(ctx: BenchContext) -> list[dict]:
    """Chapter 6's rows for ``python -m lightweight.bench``; chapter 6's own files get them too."""
    rows = llm_bench(RESULT_PATH)
    RESULT_PATH.with_suffix(".md").write_text(llm_table(rows), encoding="utf-8")
    return rows


def main(argv: list[str] | None = None) -> int:
    safe_console()
    parser = argparse.ArgumentParser(description="Benchmark of chapter 6 (SmolLM2-135M).")
    parser.add_argument("--json", type=Path, default=RESULT_PATH, help="rows written here after each configuration")
    parser.add_argument("--markdown", type=Path, default=RESULT_PATH.with_suffix(".md"), help="the rows as a Markdown table")
    parser.add_argument("--only", nargs="+", help="methods to run (default: all); the file keeps the other methods' rows")
    parser.add_argument("--from-json", action="store_true", help="rewrite the Markdown table from --json, measuring nothing")
    args = parser.parse_args(argv)
    if args.from_json:
        if args.only:
            parser.error("--from-json measures nothing: it cannot be combined with --only")
        data = json.loads(args.json.read_text(encoding="utf-8"))
        args.markdown.write_text(llm_table(data["rows"], data["machine"]), encoding="utf-8")
        if args.json == RESULT_PATH:
            sync_results(data["rows"], data["machine"])
        return 0
    keep = json.loads(args.json.read_text(encoding="utf-8"))["rows"] if args.only and args.json.exists() else []
    rows = llm_bench(args.json, set(args.only) if args.only else None, keep)
    args.markdown.write_text(llm_table(rows), encoding="utf-8")
    if args.json == RESULT_PATH:
        sync_results(rows, describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
