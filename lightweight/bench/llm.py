"""Benchmark rows of chapter 6: SmolLM2-135M made lighter by every technique of the course.

    python -m lightweight.bench --only llm                       # with the other chapters' machinery
    python -m lightweight.bench.llm   # alone: book/bench/llm.json (rewritten after each row) and llm.md
    python -m lightweight.bench.llm --only int4-gptq-g64   # one configuration; the file keeps the others
    python -m lightweight.bench.llm --from-json           # llm.md rewritten from llm.json

Every configuration is scored on the held-out text of both domains (perplexity, bits per byte, KL to
the FP32 model) with the same :class:`~lightweight.llm.evaluation.Evaluator`: 64 windows of 512
tokens spread over each domain's held-out text (32,768 tokens; KL on 8 of the windows). Each
perplexity row carries the paired-bootstrap 95% interval of its ratio to FP32
(``setting["ratio_low"]``, ``setting["ratio_high"]``), and ``llm_windows.json`` keeps the per-window
negative log-likelihoods every interval comes from (:func:`compare` recomputes any pair).
``size_ratio`` is whole-model stored bytes over FP32 whole-model bytes; ``setting["minutes"]`` is the
compression's compute time here (calibration statistics + the method, or training). Calibration
windows come from the calibration splits only (never the held-out text); GPTQ, AWQ and SparseGPT
are run with three calibration seeds (``-seed1``, ``-seed2`` rows beside the seed-0 row).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn as nn

from .. import lowrank as L
from .. import prune as P
from .. import quantize as Q
from ..calibration import set_module
from ..console import safe_console
from ..distill import llm_student, train_causal_lm
from ..libref import ao_dynamic_int8
from ..llm import awq as A
from ..llm import fast, gguf_export, llamacpp_quant
from ..llm.evaluation import DOMAINS, Evaluator, Interval, Score, calibration_windows, paired_ratio, score_ratio
from ..llm.lowbit import qtensor_of
from ..llm.model import block_linears, calibration_run, compress_blockwise_, load_smollm2, stored_bytes, verify_gguf
from ..machine import describe
from .core import BenchContext, row, sync_results

MODEL = "smollm2-135m"
CAL_SEEDS = (1, 2)  # besides seed 0: the seed rows of GPTQ, AWQ and SparseGPT
CAL_WINDOWS = 64  # 64 x 512 = 32,768 calibration tokens, both domains in turn
CLIP_GRID = 80  # GPTQ's clipping search: range factors 1.00, 0.99, ..., 0.21 per group (as the GPTQ reference code)
DEPTH_DROP = 6  # of 30 blocks
STUDENT_KEEP = tuple(range(0, 30, 2))  # 15 blocks
STUDENT_STEPS = 120
STUDENT_WINDOWS = 512  # 512 x 128 training tokens from the calibration splits
STUDENT_LR = 3e-4
RESULT_PATH = Path(__file__).resolve().parents[2] / "book" / "bench" / "llm.json"
WINDOWS_PATH = RESULT_PATH.with_name("llm_windows.json")
# Pairs the chapter compares: (A, B, the pair in the book's words); ppl(A) / ppl(B) with its interval, per domain.
COMPARISONS = (
    ("int4-gptq-g64", "int4-awq-g64", "GPTQ so với AWQ, INT4 nhóm 64"),
    ("int4-gptq-g64", "int4-rtn-g64", "GPTQ so với RTN, INT4 nhóm 64"),
    ("int4-gptq-asym-clip-g64", "int4-gptq-g64", "GPTQ INT4 nhóm 64: có điểm không và dò ngưỡng kẹp so với đối xứng"),
    ("int4-gptq-asym-clip-g32", "int4-gptq-asym-clip-g64", "GPTQ INT4 có điểm không và dò ngưỡng kẹp: nhóm 32 so với nhóm 64"),
    ("int4-awq-g64", "int4-rtn-g64", "AWQ so với RTN, INT4 nhóm 64"),
    ("int3-gptq-g64", "int3-awq-g64", "GPTQ so với AWQ, INT3 nhóm 64"),
    ("int3-awq-paper-sym-g64", "int3-rtn-g64", "AWQ như bài báo so với RTN, INT3 nhóm 64 đối xứng"),
    ("int3-awq-paper-g64", "int3-rtn-asym-g64", "AWQ như bài báo so với RTN, INT3 nhóm 64 có điểm không"),
    ("int3-awq-paper-sym-g64", "int3-awq-g64", "AWQ như bài báo so với AWQ từng lớp, INT3 đối xứng"),
    ("int3-awq-paper-out-sym-g64", "int3-rtn-g64", "AWQ dò trên đầu ra khối con so với RTN, INT3 nhóm 64 đối xứng"),
    ("int3-awq-paper-out-g64", "int3-rtn-asym-g64", "AWQ dò trên đầu ra khối con so với RTN, INT3 nhóm 64 có điểm không"),
    ("int3-awq-paper-out-sym-g64", "int3-awq-paper-sym-g64", "AWQ: dò trên đầu ra khối con so với đầu ra từng lớp, INT3 đối xứng"),
    ("int3-awq-paper-out-g64", "int3-awq-paper-g64", "AWQ: dò trên đầu ra khối con so với đầu ra từng lớp, INT3 có điểm không"),
    ("int3-awq-paper-g64", "int3-gptq-asym-clip-g64", "AWQ như bài báo so với GPTQ, INT3 có điểm không"),
    ("int3-awq-paper-gptq-g64", "int3-gptq-asym-clip-g64", "AWQ rồi GPTQ so với chỉ GPTQ, INT3 có điểm không"),
    ("int4-awq-paper-g64", "int4-gptq-asym-clip-g64", "AWQ như bài báo so với GPTQ, INT4 nhóm 64 có điểm không"),
    ("int4-awq-paper-gptq-g64", "int4-gptq-asym-clip-g64", "AWQ rồi GPTQ so với chỉ GPTQ, INT4 nhóm 64 có điểm không"),
    ("fp32-gguf-llamacpp", "fp32-reference", "kiểm tra: tệp F32 chạy bằng llama.cpp so với PyTorch"),
    ("int4-llamacpp-q4_0-imatrix", "int4-llamacpp-q4_0", "Q4_0 của llama.cpp: có imatrix so với không"),
    ("int4-gptq-q40-g32-gguf", "int4-llamacpp-q4_0", "tệp Q4_0 từ GPTQ của ta so với Q4_0 của llama.cpp"),
    ("int4-gptq-q40-g32-gguf", "int4-llamacpp-q4_0-imatrix", "tệp Q4_0 từ GPTQ của ta so với Q4_0 có imatrix"),
    ("int4-gptq-q40-g32-gguf", "int4-llamacpp-iq4_nl-imatrix", "tệp Q4_0 từ GPTQ của ta so với IQ4_NL có imatrix"),
    ("int4-awq-gptq-q40-g32-gguf", "int4-gptq-q40-g32-gguf", "tệp Q4_0: AWQ rồi GPTQ so với chỉ GPTQ"),
    ("int4-gptq-q40-g32-gguf", "int4-gptq-q40-g32", "cùng số nguyên: llama.cpp (bảng nhúng Q8_0) so với PyTorch"),
    ("sparsegpt-50", "wanda-50", "SparseGPT so với Wanda, thưa 50%"),
    ("wanda-50", "magnitude-50", "Wanda so với độ lớn, thưa 50%"),
    ("sparsegpt-2:4", "wanda-2:4", "SparseGPT so với Wanda, 2:4"),
    ("fp8-e4m3", "int8-rtn-channel", "FP8 E4M3 so với INT8, theo hàng"),
    ("fp8-e4m3", "fp8-e5m2", "FP8 E4M3 so với E5M2"),
    ("int8-ao-dynamic", "int8-ao-dynamic-keephead", "torch.ao: lm_head INT8 so với FP32"),
    ("int8-fbgemm-keephead", "int8-fbgemm-fullrange-keephead", "fbgemm: kích hoạt 7 bit so với 8 bit"),
    ("int8-fbgemm-fullrange-keephead", "int8-dynamic-token-keephead", "kích hoạt 8 bit: một thang đo cho cả tensor so với cho mỗi token"),
    ("kd-halfdepth", "text-halfdepth", "nửa chiều sâu: chưng cất so với học từ văn bản"),
    ("combo-depth6-gptq4-emb8", "structured-depth6", "bỏ 6 khối + GPTQ INT4 so với chỉ bỏ 6 khối"),
    ("int3-gptq-g64-cal-shakespeare", "int3-gptq-g64-cal-sotu", "GPTQ INT3 hiệu chỉnh trên Shakespeare so với trên diễn văn"),
    ("sparsegpt-50-cal-shakespeare", "sparsegpt-50-cal-sotu", "SparseGPT 50% hiệu chỉnh trên Shakespeare so với trên diễn văn"),
)


def _rows(method: str, ev: Evaluator, scores: dict, size: float | None, minutes: float, needs: str,
          **setting) -> list[dict]:
    out = []
    for d in DOMAINS:
        ref, s = ev.reference[d], scores[d]
        common = dict(needs=needs, part="all", minutes=round(minutes, 2), domain=d, **setting)
        ci = score_ratio(s, ref)
        out.append(row("llm", method, MODEL, "ppl", ref.ppl, s.ppl, size, None, ratio_low=round(ci.low, 4),
                       ratio_high=round(ci.high, 4), **common))
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

    seeded = {s: calibration_windows(tok, CAL_WINDOWS, seed=s) for s in CAL_SEEDS}
    gptq4 = lambda blk, r: Q.gptq_(blk, r, 4, 64, act_order=True)  # noqa: E731
    awq4 = lambda blk, r: Q.awq_(blk, r, 4, 64)  # noqa: E731
    sparsegpt50 = lambda blk, r: P.prune_oneshot_(blk, 0.5, "sparsegpt", r)  # noqa: E731
    gptq4z = lambda g: lambda blk, r: Q.gptq_(blk, r, 4, g, act_order=True, symmetric=False, shrink=CLIP_GRID)  # noqa: E731
    yield "int8-rtn-channel", q(lambda m: Q.quantize_(m, 8, None, skip=skip)), "none", dict(bits=8)
    for fmt in ("e4m3", "e5m2"):
        yield f"fp8-{fmt}", q(lambda m, f=fmt: _fp8_(m, f, skip)), "none", dict(bits=8)
    yield "int4-rtn-g64", q(lambda m: Q.quantize_(m, 4, 64, skip=skip)), "none", dict(bits=4, group_size=64)
    yield "int4-gptq-g64", blockwise(gptq4), "calibration", dict(bits=4, group_size=64, seed=0)
    yield "int4-awq-g64", blockwise(awq4), "calibration", dict(bits=4, group_size=64, seed=0)
    for g in (64, 32):
        yield f"int4-gptq-asym-clip-g{g}", blockwise(gptq4z(g)), "calibration", dict(bits=4, group_size=g, seed=0)
    for bits in (3, 4):  # AWQ as the paper (scales folded, clipping, zero-points), alone and before GPTQ
        yield f"int{bits}-awq-paper-g64", blockwise(_awq_paper(bits, 64)), "calibration", dict(bits=bits, group_size=64)
        yield f"int{bits}-awq-paper-gptq-g64", blockwise(_awq_paper(bits, 64, gptq=True)), "calibration", \
            dict(bits=bits, group_size=64)
    yield "int3-awq-paper-sym-g64", blockwise(lambda blk, r: A.awq_block_(blk, r, 3, 64, symmetric=True)), "calibration", \
        dict(bits=3, group_size=64)
    for symmetric, tag in ((False, ""), (True, "-sym")):  # the scales of q/k/v and gate/up searched on the module output
        yield f"int3-awq-paper-out{tag}-g64", blockwise(lambda blk, r, s=symmetric: A.awq_block_(
            blk, r, 3, 64, symmetric=s, loss="module")), "calibration", dict(bits=3, group_size=64)
    yield "int3-rtn-asym-g64", q(lambda m: _rtn_(m, 3, 64, symmetric=False)), "none", dict(bits=3, group_size=64)
    yield "int3-gptq-asym-clip-g64", blockwise(lambda blk, r: Q.gptq_(blk, r, 3, 64, act_order=True, symmetric=False,
                                                                      shrink=CLIP_GRID)), "calibration", dict(bits=3, group_size=64)
    # 4.5 bits per weight: integers on ggml's Q4_0 grid (groups of 32), exportable to a Q4_0 file
    yield "int4-gptq-q40-g32", blockwise(lambda blk, r: Q.gptq_(blk, r, 4, 32, act_order=True, shrink=CLIP_GRID,
                                                                full_range=True)), "calibration", dict(bits=4, group_size=32)
    yield "int4-awq-gptq-q40-g32", blockwise(_awq_paper(4, 32, gptq=True, q4_0=True)), "calibration", dict(bits=4, group_size=32)
    yield "magnitude-50", q(lambda m: P.prune_oneshot_(m, 0.5, "magnitude", skip=skip)), "none", dict(sparsity=0.5)
    yield "wanda-50", blockwise(lambda blk, r: P.prune_oneshot_(blk, 0.5, "wanda", r)), "calibration", dict(sparsity=0.5)
    yield "sparsegpt-50", blockwise(sparsegpt50), "calibration", dict(sparsity=0.5, seed=0)
    for seed, c in seeded.items():
        yield f"int4-gptq-g64-seed{seed}", blockwise(gptq4, c), "calibration", dict(bits=4, group_size=64, seed=seed)
        yield f"int4-awq-g64-seed{seed}", blockwise(awq4, c), "calibration", dict(bits=4, group_size=64, seed=seed)
        yield f"sparsegpt-50-seed{seed}", blockwise(sparsegpt50, c), "calibration", dict(sparsity=0.5, seed=seed)
        yield f"int4-gptq-asym-clip-g32-seed{seed}", blockwise(gptq4z(32), c), "calibration", \
            dict(bits=4, group_size=32, seed=seed)
    yield "int8-ao-dynamic", lambda: ao_dynamic_int8(fp32), "none", dict(bits=8)
    yield "int8-ao-dynamic-keephead", lambda: ao_dynamic_int8(fp32, skip=skip), "none", dict(bits=8)
    yield "int8-fbgemm-keephead", q(lambda m: Q.fbgemm_int8_(m, skip, seven_bit=True)), "none", dict(bits=8)
    yield "int8-fbgemm-fullrange-keephead", q(lambda m: Q.fbgemm_int8_(m, skip, seven_bit=False)), "none", dict(bits=8)
    yield "int8-dynamic-token-keephead", q(lambda m: Q.dynamic_int8_(m, True, skip)), "none", dict(bits=8)
    yield "kd-halfdepth", lambda: _student(fp32, tok, teacher=True), "training", dict(blocks=len(STUDENT_KEEP), steps=STUDENT_STEPS)
    yield "text-halfdepth", lambda: _student(fp32, tok, teacher=False), "training", dict(blocks=len(STUDENT_KEEP), steps=STUDENT_STEPS)
    yield f"combo-depth{DEPTH_DROP}-gptq4-emb8", q(lambda m: _combo(m, cal)), "calibration", dict(bits=4, group_size=64)
    yield "combo-gptq4-emb8", q(lambda m: _combo(m, cal, drop=0)), "calibration", dict(bits=4, group_size=64)
    for bits in (3,):
        yield f"int{bits}-rtn-g64", q(lambda m, b=bits: Q.quantize_(m, b, 64, skip=skip)), "none", dict(bits=bits, group_size=64)
        yield f"int{bits}-gptq-g64", blockwise(lambda blk, r, b=bits: Q.gptq_(blk, r, b, 64, act_order=True)), "calibration", \
            dict(bits=bits, group_size=64)
        yield f"int{bits}-awq-g64", blockwise(lambda blk, r, b=bits: Q.awq_(blk, r, b, 64)), "calibration", dict(bits=bits, group_size=64)
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
    if fast.llama_cpp_available():
        yield from _llama_cpp_configurations(fp32, cal)


LLAMA_CPP_FORMATS = (("q4_0", False), ("q4_0", True), ("iq4_nl", True), ("iq4_xs", True), ("q4_k_m", True))
EXPORTED = ("int4-gptq-q40-g32", "int4-awq-gptq-q40-g32")  # also written to a Q4_0 file and scored by llama.cpp


class _Folder:
    """A temporary folder for the bench's GGUF files, made on first use (F32 export: about 540 MB)."""

    def __init__(self):
        self._dir: tempfile.TemporaryDirectory | None = None

    @property
    def path(self) -> Path:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="lightweight-gguf-")
        return Path(self._dir.name)


_GGUF_DIR = _Folder()


def _f32_gguf(fp32: nn.Module) -> Path:
    path = _GGUF_DIR.path / "f32.gguf"
    if not path.exists():
        gguf_export.export_gguf(fp32, path, "f32", source=verify_gguf())
    return path


def _llama_cpp_configurations(fp32: nn.Module, cal: torch.Tensor) -> Iterator[tuple[str, Callable[[], Path], str, dict]]:
    """llama.cpp's own quantizers on our F32 file (embedding table Q8_0, as our Q4_0 export), with an
    importance matrix from the same calibration windows as our methods; the F32 file itself as a check
    of llama.cpp's perplexity against PyTorch's."""
    imatrix: dict = {}

    def make(fmt: str, with_imatrix: bool) -> Callable[[], Path]:
        def run() -> Path:
            if with_imatrix and not imatrix:
                imatrix.update(llamacpp_quant.importance_matrix(fp32, cal, progress=False))
            dest = _GGUF_DIR.path / f"{fmt}{'-imatrix' if with_imatrix else ''}.gguf"
            return llamacpp_quant.quantize_gguf(_f32_gguf(fp32), dest, fmt, imatrix if with_imatrix else None)
        return run

    yield "fp32-gguf-llamacpp", lambda: _f32_gguf(fp32), "none", dict(bits=32, format="f32")
    for fmt, with_imatrix in LLAMA_CPP_FORMATS:
        yield f"int4-llamacpp-{fmt}{'-imatrix' if with_imatrix else ''}", make(fmt, with_imatrix), \
            "calibration" if with_imatrix else "none", dict(bits=4, format=fmt)


def _gguf_scores(ev: Evaluator, path: Path) -> dict[str, Score]:
    """Chapter 6's evaluation of a GGUF file run by llama.cpp: the same windows, per-window NLL (no KL)."""
    out = {}
    with fast.LlamaCpp(path, n_ctx=ev.windows[DOMAINS[0]].shape[1], logits_all=True) as runner:
        for d, w in ev.windows.items():
            nll = runner.window_nll(w)
            per = w.shape[1] - 1
            out[d] = Score(ppl=math.exp(sum(nll) / (per * len(w))), bpb=sum(nll) / math.log(2) / sum(ev.bytes[d]),
                           kl=None, tokens=per * len(w), window_nll=tuple(nll))
    return out


def _gguf_bytes(path: Path) -> int:
    """Bytes of the tensors of a GGUF file (the tokenizer and metadata not counted, as for our models)."""
    return sum(int(t.n_bytes) for t in gguf_export._gguf().GGUFReader(str(path)).tensors)


def _export_q4_0(model: nn.Module, fp32: nn.Module, method: str) -> Path:
    """Our Q4_0-grid integers of every block linear, and every other tensor of ``model`` (AWQ changed the
    RMSNorm gains), in a Q4_0 GGUF file (embedding Q8_0)."""
    names = block_linears(fp32)
    qts = {n: qtensor_of(model.get_submodule(n)) for n in names}
    floats = copy.deepcopy(fp32)
    with torch.no_grad():
        for name, p in floats.named_parameters():
            if name.rpartition(".")[0] not in qts:
                p.copy_(model.get_parameter(name))
        for n in names:
            floats.get_submodule(n).weight.copy_(qts[n].dequantize())
    return gguf_export.export_gguf(floats, _GGUF_DIR.path / f"{method}.gguf", "q4_0", source=verify_gguf(), qtensors=qts)


def _awq_paper(bits: int, group: int, gptq: bool = False, q4_0: bool = False) -> Callable[[nn.Module, Callable], object]:
    """AWQ on a block (:func:`~lightweight.llm.awq.awq_block_`): asymmetric with clipping, or, with ``q4_0``,
    on ggml's Q4_0 grid (the scale search then measures the symmetric grid); with ``gptq``, GPTQ (act-order,
    clipping search) quantizes the scaled weights with the scaled statistics instead of round-to-nearest."""
    def quantize(name: str, lin: nn.Linear, st: A.ActStats) -> Q.QTensor:
        return Q.gptq_quantize(lin.weight, st.H, bits, group, act_order=True, symmetric=q4_0, shrink=CLIP_GRID,
                               full_range=q4_0)

    return lambda blk, r: A.awq_block_(blk, r, bits, group, symmetric=q4_0, quantize=quantize if gptq else None)


def _rtn_(m: nn.Module, bits: int, group: int, symmetric: bool) -> None:
    """Round-to-nearest every block linear on the given grid (stored as :class:`~lightweight.quantize.QuantizedLinear`)."""
    for n in block_linears(m):
        lin = m.get_submodule(n)
        set_module(m, n, Q.QuantizedLinear(lin, qtensor=Q.quantize_tensor(lin.weight, bits, group, symmetric)))


def _fp8_(m: nn.Module, fmt: str, skip: list[str]) -> None:
    """FP8 weights (``fmt``: e4m3 or e5m2) with one FP32 scale per output row, written back as floats;
    every block linear except ``skip``."""
    with torch.no_grad():
        for n in block_linears(m):
            if n not in skip:
                w = m.get_submodule(n).weight
                w.copy_(Q.fp8_fake_quantize(w, fmt, block=(1, w.shape[1])))


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


def _int8_bytes(fp32: nn.Module) -> int:
    """Whole-model bytes with every block linear as per-row INT8 (embedding and its tied lm_head FP32)."""
    return stored_bytes(Q.quantize_(copy.deepcopy(fp32), 8, None, skip=["lm_head"]))


def _stored(method: str, model: nn.Module, fp32: nn.Module, int8_bytes: int) -> int:
    """Whole-model bytes of a configuration. FP8 rows and the dynamic-INT8 rows store one byte per
    weight plus one scale per row, like ``int8-rtn-channel``; ``int8-ao-dynamic`` also stores an INT8
    copy of ``lm_head`` beside the FP32 embedding it was tied to."""
    if method.startswith("fp8-") or method.endswith("-keephead"):
        return int8_bytes
    if method == "int8-ao-dynamic":
        vocab, dim = fp32.lm_head.weight.shape
        return int8_bytes + vocab * dim + 8 * vocab
    sparse = method.split("-")[0] in ("magnitude", "wanda", "sparsegpt")
    return stored_bytes(model, sparse=sparse)


def _write(out: Path, rows: list[dict], windows: dict) -> None:
    out.write_text(json.dumps({"machine": windows["machine"], "rows": rows}, indent=1, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    out.with_name(WINDOWS_PATH.name).write_text(json.dumps(windows, ensure_ascii=False) + "\n", encoding="utf-8")


def llm_bench(out: Path | None = None, only: set[str] | None = None, keep: list[dict] = (),
              keep_windows: dict | None = None) -> tuple[list[dict], dict]:
    """``(rows, windows)``: all rows (or those of the methods in ``only``, with the rows in ``keep`` and
    the per-window data in ``keep_windows`` of the other methods kept as they were) and the per-window
    NLL of every method (see :func:`compare`); with ``out``, both files are rewritten after each
    configuration. When the kept data comes from another machine, its FP32 reference is kept (every kept
    row was compared with it) and the files' machine line names both machines and the rows measured here."""
    fp32, tok = load_smollm2()
    fp32.requires_grad_(False)
    ev = Evaluator(fp32, tok)
    base, int8_bytes = stored_bytes(fp32), _int8_bytes(fp32)
    cal = calibration_windows(tok, CAL_WINDOWS)
    first = next(iter(ev.windows.values()))
    windows = {"windows": len(first), "tokens_per_window": first.shape[1] - 1, "machine": describe(),
               "nll": {"fp32-reference": {d: _rounded(ev.reference[d].window_nll) for d in DOMAINS}}}
    measured = {"fp32-reference": _rows("fp32-reference", ev, ev.reference, 1.0, 0.0, "none")}
    if keep_windows is not None and (keep_windows["windows"], keep_windows["tokens_per_window"]) == \
            (windows["windows"], windows["tokens_per_window"]):
        other = keep_windows.get("machine") != windows["machine"] and "fp32-reference" in keep_windows["nll"]
        windows["nll"] = {**windows["nll"], **keep_windows["nll"]} if other else {**keep_windows["nll"], **windows["nll"]}
        if other:
            measured.pop("fp32-reference")
            windows["machine"] = f"{keep_windows['machine']}; the rows {', '.join(sorted(only or ()))}: {windows['machine']}"
    configs = list(configurations(fp32, tok, cal))
    unknown = set(only or ()) - {c[0] for c in configs}
    if unknown:
        raise ValueError(f"unknown configurations {sorted(unknown)}; known: {[c[0] for c in configs]}")
    kept = {}
    for r in keep:
        kept.setdefault(r["method"], []).append(r)

    def ordered() -> list[dict]:
        names = ["fp32-reference"] + [n for c in configs for n in (c[0], f"{c[0]}-gguf")]
        return [r for n in names for r in measured.get(n, kept.get(n, []))]

    def record(method: str, scores: dict[str, Score], size: float, minutes: float, needs: str, setting: dict) -> None:
        measured[method] = _rows(method, ev, scores, size, minutes, needs, **setting)
        windows["nll"][method] = {d: _rounded(scores[d].window_nll) for d in DOMAINS}
        print(f"{method}: {[(r['setting']['domain'], r['value']) for r in measured[method] if r['metric'] == 'ppl']}", flush=True)
        if out is not None:
            _write(out, ordered(), windows)

    for method, make, needs, setting in configs:
        if only is not None and method not in only:
            continue
        start = time.perf_counter()
        model = make()
        minutes = (time.perf_counter() - start) / 60
        if isinstance(model, Path):  # a GGUF file, run by llama.cpp
            bpw = round(llamacpp_quant.bits_per_weight(model), 4)
            record(method, _gguf_scores(ev, model), _gguf_bytes(model) / base, minutes, needs,
                   {**setting, "runtime": "llama.cpp", "bits_per_weight": bpw})
            continue
        record(method, ev.score(model), _stored(method, model, fp32, int8_bytes) / base, minutes, needs, setting)
        if method in EXPORTED and fast.llama_cpp_available():
            path = _export_q4_0(model, fp32, method)
            record(f"{method}-gguf", _gguf_scores(ev, path), _gguf_bytes(path) / base, minutes, needs,
                   {**setting, "runtime": "llama.cpp", "format": "q4_0",
                    "bits_per_weight": round(llamacpp_quant.bits_per_weight(path), 4)})
        del model
    return ordered(), windows


def _rounded(values: tuple[float, ...]) -> list[float]:
    return [round(v, 4) for v in values]


def compare(windows: dict, a: str, b: str, domain: str) -> Interval:
    """``ppl(a) / ppl(b)`` on ``domain`` with its paired-bootstrap 95% interval, from the per-window
    NLL of ``llm_windows.json`` (``KeyError`` naming the command if a method was not measured)."""
    for m in (a, b):
        if m not in windows["nll"]:
            raise KeyError(f"{m!r} is not in {WINDOWS_PATH.name}: run `python -m lightweight.bench.llm --only {m}`")
    return paired_ratio(windows["nll"][a][domain], windows["nll"][b][domain], windows["tokens_per_window"])


def share_removed(windows: dict, method: str, baseline: str, domain: str, n_boot: int = 10_000, seed: int = 0) -> Interval:
    """The share of ``baseline``'s log-perplexity increase over FP32 that ``method`` removes on ``domain``,
    ``1 − log(PPL_m / PPL_fp32) / log(PPL_b / PPL_fp32)``, with a paired percentile bootstrap over the
    windows of ``llm_windows.json`` (both increases resampled on the same windows)."""
    for m in (method, baseline):
        if m not in windows["nll"]:
            raise KeyError(f"{m!r} is not in {WINDOWS_PATH.name}: run `python -m lightweight.bench.llm --only {m}`")
    ref = torch.tensor(windows["nll"]["fp32-reference"][domain], dtype=torch.float64)
    dm = torch.tensor(windows["nll"][method][domain], dtype=torch.float64) - ref
    db = torch.tensor(windows["nll"][baseline][domain], dtype=torch.float64) - ref
    if float(db.mean()) <= 0:
        raise ValueError(f"{baseline!r} is not worse than FP32 on {domain}: there is no increase to remove")
    idx = torch.randint(len(ref), (n_boot, len(ref)), generator=torch.Generator().manual_seed(seed))
    boots = 1 - dm[idx].mean(1) / db[idx].mean(1)
    low, high = torch.quantile(boots, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return Interval(1 - float(dm.mean() / db.mean()), low, high)


def _num(v: float, digits: int) -> str:
    return f"{v:.{digits}f}".replace(".", ",")


def _pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f}%".replace(".", ",")


def llm_table(rows: list[dict], measured_on: str | None = None) -> str:
    """One Markdown line per method, in Vietnamese: perplexity on both domains with its change from
    FP32 and the 95% interval of that change, KL on both domains, whole-model size ratio, minutes of
    compression (numbers with a decimal comma)."""
    get = {(r["method"], r["metric"], r["setting"]["domain"]): r for r in rows if r["model"] == MODEL}
    methods = list(dict.fromkeys(m for m, _, _ in get))
    lines = [f"Đo trên máy: {measured_on or describe()}", "",
             "| cấu hình | PPL Shakespeare (so với FP32, KTC 95%) | PPL diễn văn (so với FP32, KTC 95%) | KL Shakespeare "
             "| KL diễn văn | tỉ lệ kích thước | phút |",
             "|---|---|---|---|---|---|---|"]
    for m in methods:
        cells = []
        for d in DOMAINS:
            r = get[(m, "ppl", d)]
            if m == "fp32-reference":
                cells.append(_num(r["value"], 2))
            else:
                st = r["setting"]
                cells.append(f"{_num(r['value'], 2)} ({_pct(r['value'] / r['baseline'])} "
                             f"[{_pct(st['ratio_low'])}; {_pct(st['ratio_high'])}])")
        kl = [get[(m, "kl", d)]["value"] for d in DOMAINS]
        first = get[(m, "ppl", DOMAINS[0])]
        size = "—" if first["size_ratio"] is None else _num(first["size_ratio"], 3)
        lines.append(f"| `{m}` | {cells[0]} | {cells[1]} | " + " | ".join("—" if v is None else _num(v, 3) for v in kl)
                     + f" | {size} | {_num(first['setting']['minutes'], 1)} |")
    return "\n".join(lines) + "\n"


def seed_spread(rows: list[dict], method: str, domain: str) -> tuple[float, float, int]:
    """``(lowest, highest, n)`` perplexity ratio to FP32 of ``method`` over its calibration seeds."""
    ratios = [r["value"] / r["baseline"] for r in rows if r["metric"] == "ppl" and r["setting"]["domain"] == domain
              and (r["method"] == method or r["method"].startswith(f"{method}-seed"))]
    if not ratios:
        raise KeyError(f"no row of {method!r}: run `python -m lightweight.bench.llm --only {method}`")
    return min(ratios), max(ratios), len(ratios)


def comparisons_table(rows: list[dict], windows: dict) -> str:
    """Markdown, in Vietnamese: each pair of :data:`COMPARISONS` as ``ppl(A) / ppl(B)`` with its 95%
    interval on both domains and what the interval allows one to say; then the spread over seeds."""
    domain_vi = {"shakespeare": "Shakespeare", "sotu": "diễn văn"}
    lines = ["| so sánh (A so với B) | PPL A / PPL B, Shakespeare (KTC 95%) | PPL A / PPL B, diễn văn (KTC 95%) | kết luận |",
             "|---|---|---|---|"]
    for a, b, what in COMPARISONS:
        if a not in windows["nll"] or b not in windows["nll"]:
            continue
        cis = {d: compare(windows, a, b, d) for d in DOMAINS}
        verdict = []
        for d, ci in cis.items():
            if not ci.excludes(1.0):
                verdict.append(f"không phân biệt được trên {domain_vi[d]}")
            else:
                verdict.append(f"{'A' if ci.high < 1 else 'B'} tốt hơn trên {domain_vi[d]}")
        cells = [f"{_num(c.value, 3)} [{_num(c.low, 3)}; {_num(c.high, 3)}]" for c in cis.values()]
        lines.append(f"| {what}: `{a}` so với `{b}` | {cells[0]} | {cells[1]} | {'; '.join(verdict)} |")
    lines += ["", "| cấu hình | số seed hiệu chỉnh | PPL so với FP32, Shakespeare (thấp nhất … cao nhất) "
              "| PPL so với FP32, diễn văn (thấp nhất … cao nhất) |", "|---|---|---|---|"]
    for m in ("int4-gptq-g64", "int4-awq-g64", "int4-gptq-asym-clip-g32", "sparsegpt-50"):
        try:
            spread = {d: seed_spread(rows, m, d) for d in DOMAINS}
        except KeyError:
            continue
        cells = [f"{_pct(lo)} … {_pct(hi)}" for lo, hi, _ in spread.values()]
        lines.append(f"| `{m}` | {spread[DOMAINS[0]][2]} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def _markdown(rows: list[dict], windows: dict, measured_on: str | None = None) -> str:
    return llm_table(rows, measured_on) + "\n" + comparisons_table(rows, windows)


def llm_rows(ctx: BenchContext) -> list[dict]:
    """Chapter 6's rows for ``python -m lightweight.bench``; chapter 6's own files get them too."""
    rows, windows = llm_bench(RESULT_PATH)
    RESULT_PATH.with_suffix(".md").write_text(_markdown(rows, windows), encoding="utf-8")
    return rows


def main(argv: list[str] | None = None) -> int:
    safe_console()
    parser = argparse.ArgumentParser(description="Benchmark of chapter 6 (SmolLM2-135M).")
    parser.add_argument("--json", type=Path, default=RESULT_PATH,
                        help="rows written here after each configuration (and the per-window NLL beside it)")
    parser.add_argument("--markdown", type=Path, default=RESULT_PATH.with_suffix(".md"), help="the rows as Markdown tables")
    parser.add_argument("--only", nargs="+", help="methods to run (default: all); the files keep the other methods' data")
    parser.add_argument("--from-json", action="store_true", help="rewrite the Markdown tables from --json, measuring nothing")
    args = parser.parse_args(argv)
    windows_path = args.json.with_name(WINDOWS_PATH.name)
    if args.from_json:
        if args.only:
            parser.error("--from-json measures nothing: it cannot be combined with --only")
        data = json.loads(args.json.read_text(encoding="utf-8"))
        windows = json.loads(windows_path.read_text(encoding="utf-8"))
        args.markdown.write_text(_markdown(data["rows"], windows, data["machine"]), encoding="utf-8")
        if args.json == RESULT_PATH:
            sync_results(data["rows"], data["machine"])
        return 0
    keep, keep_windows = [], None
    if args.only and args.json.exists() and windows_path.exists():
        keep = json.loads(args.json.read_text(encoding="utf-8"))["rows"]
        keep_windows = json.loads(windows_path.read_text(encoding="utf-8"))
    rows, windows = llm_bench(args.json, set(args.only) if args.only else None, keep, keep_windows)
    args.markdown.write_text(_markdown(rows, windows, windows["machine"]), encoding="utf-8")
    if args.json == RESULT_PATH:
        sync_results(rows, windows["machine"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
