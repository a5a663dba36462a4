"""The lean decoder's paths (chapter 8) and where a decoding step spends its time.

:func:`build_lean` makes a copy of a :class:`~lightweight.llm.decoder.LeanLlama` into one path:

- ``fp32``, ``bf16``: every weight in that dtype;
- ``int4-aten``: the blocks' INT4 integers (groups of 32) run by aten's ``_weight_int4pack_mm_for_cpu``
  with BF16 activations, the output head INT8 per row by ``_weight_int8pack_mm`` (chapter 7's
  ``int4-ours-head8``);
- ``int4-numba``: the same integers run by chapter 8's numba kernel (:mod:`lightweight.llm.kernel`, FP32
  activations), the same INT8 head by a numba kernel.

:func:`step_profile` splits the time of decoding steps into the matrix kernels and everything else.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import quantize as Q
from . import kernel as K
from . import lowbit
from .decoder import LeanLlama, fuse_qtensors, swap_linears_

LEAN_PATHS = ("fp32", "bf16", "int4-aten", "int4-numba")


def rtn_int4(lean: LeanLlama, group_size: int = 32) -> dict[str, Q.QTensor]:
    """Symmetric round-to-nearest INT4 integers (groups of ``group_size``) of the blocks' fused layers."""
    from .decoder import block_linears

    return {n: Q.quantize_tensor(m.weight.detach(), bits=4, group_size=group_size) for n, m in block_linears(lean).items()}


def build_lean(lean: LeanLlama, name: str, qtensors: dict[str, Q.QTensor] | None = None) -> LeanLlama:
    """A copy of the FP32 ``lean`` made into the path ``name`` (:data:`LEAN_PATHS`). ``qtensors``: the
    INT4 integers, named either by the lean layers (``blocks.3.wqkv``) or by transformers' layers (GPTQ's,
    fused here); default: round-to-nearest. The embedding stays in the path's activation dtype."""
    if name not in LEAN_PATHS:
        raise ValueError(f"unknown path {name!r}; expected one of {LEAN_PATHS}")
    m = copy.deepcopy(lean).eval()
    if name == "fp32":
        return m
    if name == "bf16":
        return m.to(torch.bfloat16)
    if qtensors is None:
        qts = rtn_int4(m)
    elif any(k.startswith("model.layers.") for k in qtensors):
        qts = fuse_qtensors(qtensors, m.s.n_layers)
    else:
        qts = dict(qtensors)
    head_weight = m.head.weight.detach().clone()
    head_qt = Q.quantize_tensor(head_weight, bits=8)  # per row, symmetric
    if name == "int4-aten":
        m = m.to(torch.bfloat16)
        swap_linears_(m, lambda n, layer: lowbit.Int4WeightOnlyLinear(layer, qts[n], 32))
        head = nn.Linear(m.s.dim, m.s.vocab, bias=False)
        head.weight = nn.Parameter(head_weight)
        m.head = lowbit.Int8WeightOnlyLinear(head, head_qt)
    else:
        swap_linears_(m, lambda n, layer: K.Q4Linear(qts[n]))
        m.head = K.Int8Linear(head_qt)
    return m


def weight_bytes_per_token(lean: LeanLlama) -> int:
    """Bytes of weights one decoding step reads from a built lean path (what is really stored): every
    tensor of the blocks' layers and norms, the final norm, the output head, and one row of the
    embedding (the whole table when the head shares it). The caches and rotary tables are not weights."""
    tensors: dict[int, int] = {}

    def add(module: nn.Module) -> None:
        for t in list(module.parameters()) + list(module.buffers()):
            tensors[t.data_ptr()] = t.numel() * t.element_size()

    for blk in lean.blocks:
        for name in ("wqkv", "wo", "w13", "w2"):
            add(getattr(blk, name))
        for norm in (blk.attn_norm, blk.ffn_norm):
            tensors[norm.data_ptr()] = norm.numel() * norm.element_size()
    tensors[lean.norm.data_ptr()] = lean.norm.numel() * lean.norm.element_size()
    add(lean.head)
    emb = lean.embed.weight
    if emb.data_ptr() not in tensors:
        tensors[emb.data_ptr()] = emb.shape[1] * emb.element_size()
    return sum(tensors.values())


# ----------------------------------------------------------------------------- where the time goes
KERNEL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear",
              "aten::_weight_int4pack_mm_for_cpu", "aten::_weight_int8pack_mm",
              "lightweight::q4_0_linear", "lightweight::int8_linear")
_OUTER = ("aten::linear", "aten::matmul")  # these call aten::mm / addmm: count their inner calls only


@dataclass(frozen=True)
class StepProfile:
    """One profiled run of decoding steps: seconds of the weight-matrix kernels, seconds of the whole
    run (wall clock, under the profiler), and the number of operator calls, per token."""

    kernel_s: float
    total_s: float
    ops: float
    tokens: int

    @property
    def kernel_share(self) -> float:
        """Fraction of the step's time spent inside the matrix kernels (the rest: everything else)."""
        return self.kernel_s / self.total_s


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send the process's standard error (file descriptor 2) to the null device for the body: the
    profiler's C++ library logs its start and stop there, which a notebook would print in every cell."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w", encoding="utf-8") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def step_profile(run: Callable[[], object], tokens: int) -> StepProfile:
    """Profile one call of ``run`` (which generates ``tokens`` tokens) with ``torch.profiler`` and split
    its time into the matrix products (:data:`KERNEL_OPS`, self time plus the time of aten::mm called
    by linear) and the rest. The profiler adds its own cost to every operator, which lands in the
    rest: the kernel share it gives is a lower bound."""
    if tokens < 1:
        raise ValueError(f"tokens must be >= 1, got {tokens}")
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run()
        total = time.perf_counter() - start
    kernel_us, calls = 0.0, 0
    for e in prof.key_averages():
        calls += e.count
        if e.key in KERNEL_OPS and e.key not in _OUTER:
            kernel_us += e.self_cpu_time_total
    return StepProfile(kernel_us / 1e6 / tokens, total / tokens, calls / tokens, tokens)


__all__ = ["LEAN_PATHS", "rtn_int4", "build_lean", "weight_bytes_per_token", "KERNEL_OPS", "StepProfile", "step_profile"]
