"""The roofline of LLM decoding on this machine: how fast memory and matmuls are, and what that
allows in tokens per second.

Generating one token at batch 1 multiplies every weight matrix by one vector: each weight is read
once and used for two floating-point operations (a multiply and an add). Memory, not arithmetic,
sets the limit: ``tokens/s <= bandwidth / bytes read per token``, where the bytes are the weights plus
the KV cache of the context so far (``C · 2 · layers · kv_heads · head_dim · bytes per element``; see
:func:`context_bound` and :func:`cache_overtakes_weights`). With ``B`` sequences decoded
together the same bytes serve ``B`` tokens, until the arithmetic (``2 · params · B`` FLOPs per
step) takes longer than the reading: the batch size where decoding becomes compute-bound is
``B* = peak FLOP/s · bytes per token / (bandwidth · FLOPs per token)``.

Measurements return medians of several timings (seconds vary run to run on a shared machine).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..measure import latency
from ..train import progress_bar


# ----------------------------------------------------------------------------- measured on this machine
def memory_bandwidth(mbytes: int = 256, repeats: int = 9) -> dict[str, float]:
    """Memory bandwidth in GB/s (10^9 bytes per second), medians of ``repeats`` timings on an FP32
    buffer of ``mbytes`` MiB (far larger than any cache):

    - ``copy``: ``dst.copy_(src)`` counts the bytes read plus the bytes written (``2 ·`` size);
    - ``read``: ``src.sum()`` reads every byte once (what decoding does to weights).
    """
    if not isinstance(mbytes, int) or mbytes < 16:
        raise ValueError(f"mbytes must be an int >= 16 (larger than the caches), got {mbytes!r}")
    n = mbytes * 2**20 // 4
    src, dst = torch.ones(n), torch.empty(n)
    nbytes = n * 4
    t_copy = latency(lambda: dst.copy_(src), repeats, warmup=1)
    t_read = latency(lambda: src.sum(), repeats, warmup=1)
    return {"copy": 2 * nbytes / t_copy / 1e9, "read": nbytes / t_read / 1e9}


def matmul_peak(n: int = 1024, dtype: torch.dtype = torch.float32, repeats: int = 7) -> float:
    """Measured matmul throughput in GFLOP/s: an ``(n, n) @ (n, n)`` product is ``2 n^3`` FLOPs (median)."""
    if not isinstance(n, int) or n < 64:
        raise ValueError(f"n must be an int >= 64, got {n!r}")
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
    return 2 * n**3 / latency(lambda: a @ b, repeats, warmup=1) / 1e9


@dataclass(frozen=True)
class Machine:
    """What this machine can do: bandwidth in GB/s and matmul peaks in GFLOP/s per dtype."""

    bandwidth: float
    peak: dict[str, float]
    threads: int


def measure_machine(mbytes: int = 256, n: int = 1024, repeats: int = 9, progress: bool = True) -> Machine:
    """Bandwidth and FP32/BF16 matmul peaks, with a progress bar. The bandwidth is the larger of the
    read and copy benchmarks: a bound must not sit below what some kernel reaches."""
    steps = ["bandwidth", "float32", "bfloat16"]
    out: dict[str, float] = {}
    for step in progress_bar(steps, progress, desc="measuring the machine"):
        if step == "bandwidth":
            out[step] = max(memory_bandwidth(mbytes, repeats).values())
        else:
            out[step] = matmul_peak(n, getattr(torch, step), repeats=max(3, repeats // 2))
    return Machine(out["bandwidth"], {"float32": out["float32"], "bfloat16": out["bfloat16"]},
                   torch.get_num_threads())


# ----------------------------------------------------------------------------- bytes per token
@dataclass(frozen=True)
class WeightFormat:
    """How a weight matrix is stored: ``bits`` per weight plus ``scale_bytes`` per group of
    ``group_size`` inputs (``None``: one group per output row)."""

    name: str
    bits: int
    group_size: int | None = None
    scale_bytes: int = 0

    def matrix_bytes(self, out_features: int, in_features: int) -> int:
        """Bytes of one ``(out, in)`` weight matrix in this format."""
        if out_features <= 0 or in_features <= 0:
            raise ValueError(f"a matrix needs positive dimensions, got ({out_features}, {in_features})")
        g = in_features if self.group_size is None else self.group_size
        if in_features % g:
            raise ValueError(f"group size {g} does not divide in_features {in_features}")
        weights = out_features * in_features * self.bits // 8
        return weights + out_features * (in_features // g) * self.scale_bytes


# The layouts of the kernels the chapter runs: BF16 scales per row (aten int8), a BF16 scale and a
# BF16 zero per group (aten int4), llama.cpp's blocks of 32 with an FP16 scale (Q8_0: 34 bytes,
# Q4_0: 18 bytes per block).
FORMATS = {
    "fp32": WeightFormat("fp32", 32),
    "bf16": WeightFormat("bf16", 16),
    "int8": WeightFormat("int8", 8, None, 2),
    "int4-g32": WeightFormat("int4-g32", 4, 32, 4),
    "int4-g64": WeightFormat("int4-g64", 4, 64, 4),
    "q8_0": WeightFormat("q8_0", 8, 32, 2),
    "q4_0": WeightFormat("q4_0", 4, 32, 2),
}


def linear_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``name -> (out, in)`` of every matrix a decoding step multiplies by: each ``nn.Linear`` and
    the output head (a tied head counts once: it is the embedding matrix, read in full)."""
    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            shapes[name] = (m.out_features, m.in_features)
    if not shapes:
        raise ValueError("the model has no nn.Linear layer")
    return shapes


def bytes_per_token(shapes: dict[str, tuple[int, int]], fmt: WeightFormat | str,
                    keep_float: dict[str, WeightFormat] | None = None) -> int:
    """Weight bytes read to decode one step at batch 1 when every matrix of ``shapes`` is stored in
    ``fmt``, except the names in ``keep_float`` (stored in the format given there)."""
    fmt = FORMATS[fmt] if isinstance(fmt, str) else fmt
    keep_float = keep_float or {}
    return sum(keep_float.get(n, fmt).matrix_bytes(o, i) for n, (o, i) in shapes.items())


def read_bytes_per_token(model: nn.Module) -> int:
    """Bytes of the tensors a decoding step reads from a built model (what is really stored):
    every parameter and buffer once, except that an embedding table contributes one row per token
    (unless the output head shares it, when it is read in full). Rotary tables are not weights.
    A torch.ao dynamic INT8 layer (``libref.ao_dynamic_int8``, which converts the output head too)
    keeps its weight packed, outside parameters and buffers: it counts what ``libref.ao_int8_weight``
    counts (so what its stored size counts), plus its FP32 bias."""
    from ..libref import ao_int8_weight, is_ao_int8_linear

    seen: set[int] = set()
    total = 0
    embeddings = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            embeddings.append(module.weight)
            continue
        if name.endswith("rotary_emb"):
            continue
        if is_ao_int8_linear(module):
            bias = module.bias()
            total += sum(t.numel() * t.element_size() for t in ao_int8_weight(module).values())
            total += 0 if bias is None else bias.numel() * bias.element_size()
            continue
        for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if t is None or t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    for w in embeddings:
        if w.data_ptr() not in seen:
            total += w.shape[1] * w.element_size()
    return total


# ----------------------------------------------------------------------------- bounds
def tokens_per_s_bound(bytes_per_token: float, bandwidth_gbs: float) -> float:
    """The memory roofline at batch 1: ``bandwidth / bytes per token`` tokens per second."""
    if bytes_per_token <= 0 or bandwidth_gbs <= 0:
        raise ValueError("bytes_per_token and bandwidth must be positive")
    return bandwidth_gbs * 1e9 / bytes_per_token


def decode_bound(batch: int, bytes_per_token: float, flops_per_token: float, bandwidth_gbs: float,
                 peak_gflops: float) -> float:
    """Tokens per second (all sequences together) at ``batch``: one step reads the weights once
    and does ``batch · flops_per_token`` FLOPs, so it takes at least the larger of the two times."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if min(bytes_per_token, flops_per_token, bandwidth_gbs, peak_gflops) <= 0:
        raise ValueError("bytes, FLOPs, bandwidth and peak must be positive")
    step = max(bytes_per_token / (bandwidth_gbs * 1e9), batch * flops_per_token / (peak_gflops * 1e9))
    return batch / step


def compute_bound_batch(bytes_per_token: float, flops_per_token: float, bandwidth_gbs: float,
                        peak_gflops: float) -> float:
    """The batch size ``B*`` from which decoding is compute-bound: reading the weights and doing the
    arithmetic take equally long, ``bytes / bandwidth = B* · FLOPs / peak``."""
    if min(bytes_per_token, flops_per_token, bandwidth_gbs, peak_gflops) <= 0:
        raise ValueError("bytes, FLOPs, bandwidth and peak must be positive")
    return bytes_per_token * peak_gflops / (bandwidth_gbs * flops_per_token)


def flops_per_token(shapes: dict[str, tuple[int, int]]) -> int:
    """Matmul FLOPs of one decoded token: ``2 · out · in`` per matrix (attention over the cache is
    small next to it for short contexts and is left out)."""
    return sum(2 * o * i for o, i in shapes.values())


# ----------------------------------------------------------------------------- the KV cache
# A step at context C attends over C cached positions: it reads every layer's keys and values,
# ``(kv_heads, C, head_dim)`` each, besides the weights. Per token of context that is
# ``2 · layers · kv_heads · head_dim`` elements (SmolLM2-135M: 2 · 30 · 3 · 64 = 11,520, so 46,080 bytes
# in FP32 and 23,040 in BF16), so the bytes per step grow linearly with the context while the weight
# bytes stay fixed. The bound below counts each cached byte once; an implementation that copies the
# cache (a growing cache rebuilt by concatenation, keys repeated per query head) reads more.
@dataclass(frozen=True)
class KVShape:
    """What one token of context adds to the KV cache: ``layers`` × (keys and values) × ``kv_heads`` ×
    ``head_dim`` elements."""

    layers: int
    kv_heads: int
    head_dim: int

    def elements_per_token(self) -> int:
        """Cached elements per token of context: ``2 · layers · kv_heads · head_dim``."""
        return 2 * self.layers * self.kv_heads * self.head_dim


def kv_shape(model_or_config) -> KVShape:
    """The :class:`KVShape` of a transformers decoder (a model or its config): ``num_hidden_layers``,
    ``num_key_value_heads`` (grouped-query attention; default: ``num_attention_heads``) and
    ``head_dim`` (default: ``hidden_size // num_attention_heads``)."""
    config = getattr(model_or_config, "config", model_or_config)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return KVShape(config.num_hidden_layers, kv_heads, head_dim)


def _element_bytes(dtype: torch.dtype | int) -> int:
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    if not isinstance(dtype, int) or dtype < 1:
        raise ValueError(f"bytes per element must be a torch.dtype or a positive int, got {dtype!r}")
    return dtype


def kv_bytes_per_token(model_or_config, dtype: torch.dtype | int = torch.float32) -> int:
    """Bytes one token of context adds to the cache, read again at every later step:
    ``2 · layers · kv_heads · head_dim · bytes per element`` of the cache's ``dtype`` (a ``torch.dtype``
    or a byte count; the cache holds the activations' dtype: FP32, BF16 for our low-bit paths, F16 in
    llama.cpp by default)."""
    return kv_shape(model_or_config).elements_per_token() * _element_bytes(dtype)


def kv_cache_bytes(model_or_config, context: int, dtype: torch.dtype | int = torch.float32) -> int:
    """Bytes of the KV cache holding ``context`` tokens (one sequence): what one decoding step at that
    context reads besides the weights."""
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    return context * kv_bytes_per_token(model_or_config, dtype)


def decode_bytes_per_token(weight_bytes: int, kv_per_token: int, context: int) -> int:
    """Bytes read to generate one token at batch 1 after ``context`` tokens:
    ``weight_bytes + context · kv_per_token`` (weights once, then the whole cache)."""
    if weight_bytes <= 0 or kv_per_token < 0 or context < 0:
        raise ValueError("need weight_bytes > 0, kv_per_token >= 0 and context >= 0")
    return weight_bytes + context * kv_per_token


def context_bound(weight_bytes: int, kv_per_token: int, context: int, bandwidth_gbs: float, batch: int = 1) -> float:
    """The memory roofline at context ``C``, in tokens per second (all sequences together):
    ``bandwidth / (weight bytes + C · KV bytes per token)`` at batch 1; with ``B`` sequences a step
    reads the weights once and ``B`` caches, and makes ``B`` tokens (the compute ceiling is left out:
    see :func:`decode_bound`)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return batch * tokens_per_s_bound(decode_bytes_per_token(weight_bytes, batch * kv_per_token, context), bandwidth_gbs)


def cache_overtakes_weights(weight_bytes: int, kv_per_token: int) -> int:
    """The shortest context ``C`` (tokens) whose cache is larger than the weights,
    ``C · kv_per_token > weight_bytes``: from there a step reads more cache than weights, and shrinking
    the weights further buys less than shrinking the cache."""
    if weight_bytes <= 0 or kv_per_token <= 0:
        raise ValueError("weight_bytes and kv_per_token must be positive")
    return weight_bytes // kv_per_token + 1
