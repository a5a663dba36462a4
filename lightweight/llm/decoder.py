"""A lean Llama decoder in one file (the shape of gpt-fast and llama2.c): RMSNorm, rotary positions,
grouped-query attention over a preallocated KV cache, SwiGLU, and nothing else.

It loads the weights of a transformers Llama (SmolLM2) and computes the same function with fewer
operations per token: q/k/v are one fused matrix, gate/up another, the cache is written in place and
every step has the same shapes (so ``torch.compile`` compiles the step once). Its linear layers are
plain modules ``(..., in) -> (..., out)``, so any of them can be swapped for a low-bit one: aten's INT4
kernel (:mod:`lightweight.llm.lowbit`) or the numba kernel of chapter 8 (:mod:`lightweight.llm.kernel`).

Shapes: ``B`` sequences, ``T`` new tokens, ``H`` query heads and ``KV`` key-value heads of ``D``
dimensions, a cache of ``S`` slots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..quantize import QTensor


@dataclass(frozen=True)
class LlamaShape:
    """The sizes of a Llama model: vocabulary, width, layers, heads, FFN width, and its constants."""

    vocab: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    eps: float
    rope_theta: float
    max_positions: int
    tied: bool

    @classmethod
    def of(cls, config) -> LlamaShape:
        """Read the sizes from a transformers ``LlamaConfig``. Refuses what this decoder does not
        implement (biases, rope scaling) rather than computing another function silently."""
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            raise ValueError("this decoder has no biases; the model uses attention_bias or mlp_bias")
        if getattr(config, "rope_scaling", None) not in (None, {}) and (config.rope_scaling or {}).get("rope_type", "default") != "default":
            raise ValueError(f"rope scaling {config.rope_scaling} is not implemented here")
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
        return cls(config.vocab_size, config.hidden_size, config.num_hidden_layers, heads, config.num_key_value_heads,
                   head_dim, config.intermediate_size, float(config.rms_norm_eps), float(theta),
                   config.max_position_embeddings, bool(getattr(config, "tie_word_embeddings", False)))


# ----------------------------------------------------------------------------- the three pieces
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm ``(..., dim) -> (..., dim)``: ``x / sqrt(mean(x²) + eps) · weight``, computed in FP32 and
    returned in the dtype of ``x`` (as transformers does)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rope_tables(head_dim: int, positions: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines ``(positions, head_dim / 2)`` of the rotary angles ``p · theta^(-2i/D)``, FP32."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, heads, T, D)`` by the angles of its ``T`` positions (``cos``/``sin`` ``(T, D/2)``).

    Dimension ``i`` is paired with ``i + D/2`` (the two halves of the head), transformers' convention;
    the original Llama paired neighbours ``2i, 2i+1``, which is why chapter 7's ``permute_qk``
    reorders q/k rows for llama.cpp."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Causal attention of the queries ``q`` ``(B, H, T, D)`` at positions ``pos`` ``(T,)`` over a cache
    ``(B, KV, S, D)`` whose slots ``0 .. pos[t]`` are written: query ``t`` sees the slots ``s <= pos[t]``;
    later slots (stale or empty) are masked. Query head ``h`` reads key-value head ``h // (H / KV)``
    (grouped-query attention). Returns ``(B, H, T, D)`` in the dtype of ``q``.

    Written out, for each query head ``h`` with its key-value head ``g = h // (H / KV)``:
    ``softmax(q_h K_g^T / sqrt(D) + mask) V_g``. Here one fused operator computes it
    (``F.scaled_dot_product_attention`` with ``enable_gqa``: the shared keys are read, not copied per
    head): an eager step pays a few microseconds for every operator it calls, so fewer is faster."""
    b, h, t, d = q.shape
    kv = k_cache.shape[1]
    if h % kv:
        raise ValueError(f"{h} query heads cannot share {kv} key-value heads")
    visible = torch.arange(k_cache.shape[2], device=q.device)[None, :] <= pos[:, None]  # (T, S)
    return F.scaled_dot_product_attention(q, k_cache.to(q.dtype), v_cache.to(q.dtype), attn_mask=visible, enable_gqa=True)


@contextmanager
def using(**pieces: Callable) -> Iterator[None]:
    """Run the decoder with your own ``rms_norm``, ``apply_rope`` and/or ``attend`` (same signatures) in
    place of this module's, and restore them afterwards, even on an error::

        with using(rms_norm=my_rms_norm, attend=my_attend):
            tokens = LeanLoop(lean).generate(prompt, 24)
    """
    unknown = set(pieces) - {"rms_norm", "apply_rope", "attend"}
    if unknown:
        raise ValueError(f"only rms_norm, apply_rope and attend can be replaced, got {sorted(unknown)}")
    module = globals()
    before = {name: module[name] for name in pieces}
    module.update(pieces)
    try:
        yield
    finally:
        module.update(before)


# ----------------------------------------------------------------------------- the model
class KVCache(nn.Module):
    """Keys and values ``(B, KV, S, D)`` of one layer, preallocated and written in place at the
    positions of each call."""

    def __init__(self, batch: int, kv_heads: int, slots: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("k", torch.zeros(batch, kv_heads, slots, head_dim, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(batch, kv_heads, slots, head_dim, dtype=dtype), persistent=False)

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``, ``v`` ``(B, KV, T, D)`` at positions ``pos`` ``(T,)``; returns the whole cache."""
        self.k.index_copy_(2, pos, k.to(self.k.dtype))
        self.v.index_copy_(2, pos, v.to(self.v.dtype))
        return self.k, self.v


class Block(nn.Module):
    """One decoder layer: ``x + attention(norm(x))``, then ``x + SwiGLU(norm(x))``, with q/k/v fused
    into ``wqkv`` ``((H + 2 KV) D, dim)`` and gate/up into ``w13`` ``(2 ffn, dim)``."""

    def __init__(self, s: LlamaShape):
        super().__init__()
        self.s = s
        self.attn_norm = nn.Parameter(torch.ones(s.dim))
        self.ffn_norm = nn.Parameter(torch.ones(s.dim))
        self.wqkv = nn.Linear(s.dim, (s.n_heads + 2 * s.n_kv_heads) * s.head_dim, bias=False)
        self.wo = nn.Linear(s.n_heads * s.head_dim, s.dim, bias=False)
        self.w13 = nn.Linear(s.dim, 2 * s.ffn, bias=False)
        self.w2 = nn.Linear(s.ffn, s.dim, bias=False)
        self.cache: KVCache | None = None

    def forward(self, x: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, T, dim)`` at positions ``pos`` ``(T,)`` -> ``(B, T, dim)``; writes the cache."""
        s, (b, t, _) = self.s, x.shape
        qkv = self.wqkv(rms_norm(x, self.attn_norm, s.eps))
        q, k, v = qkv.split([s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim, s.n_kv_heads * s.head_dim], dim=-1)
        q = apply_rope(q.view(b, t, s.n_heads, s.head_dim).transpose(1, 2), cos, sin)
        k = apply_rope(k.view(b, t, s.n_kv_heads, s.head_dim).transpose(1, 2), cos, sin)
        v = v.view(b, t, s.n_kv_heads, s.head_dim).transpose(1, 2)
        k_all, v_all = self.cache.update(pos, k, v)
        a = attend(q, k_all, v_all, pos).transpose(1, 2).reshape(b, t, s.n_heads * s.head_dim)
        x = x + self.wo(a)
        gate, up = self.w13(rms_norm(x, self.ffn_norm, s.eps)).chunk(2, dim=-1)
        return x + self.w2(F.silu(gate) * up)


class LeanLlama(nn.Module):
    """The whole decoder: embedding, blocks, final norm, output head (tied to the embedding when the
    model ties them). Call :meth:`setup_cache` before :meth:`forward`."""

    def __init__(self, s: LlamaShape):
        super().__init__()
        self.s = s
        self.embed = nn.Embedding(s.vocab, s.dim)
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.n_layers))
        self.norm = nn.Parameter(torch.ones(s.dim))
        self.head = nn.Linear(s.dim, s.vocab, bias=False)
        if s.tied:
            self.head.weight = self.embed.weight
        cos, sin = rope_tables(s.head_dim, s.max_positions, s.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.slots = 0

    def setup_cache(self, batch: int, slots: int, dtype: torch.dtype | None = None) -> None:
        """Allocate every layer's cache: ``batch`` sequences of ``slots`` positions, in ``dtype`` (default:
        the dtype of the norms, i.e. of the activations)."""
        if not 1 <= slots <= self.s.max_positions:
            raise ValueError(f"slots must lie in 1..{self.s.max_positions} (the model's positions), got {slots}")
        dtype = dtype or self.norm.dtype
        for blk in self.blocks:
            blk.cache = KVCache(batch, self.s.n_kv_heads, slots, self.s.head_dim, dtype)
        self.slots = slots

    def cache_bytes_per_token(self) -> int:
        """Bytes one token of context adds to the caches (keys and values of every layer, one sequence)."""
        c = self.blocks[0].cache
        if c is None:
            raise RuntimeError("call setup_cache first")
        return 2 * self.s.n_layers * self.s.n_kv_heads * self.s.head_dim * c.k.element_size()

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, last_only: bool = True) -> torch.Tensor:
        """Logits for the tokens ``ids`` ``(B, T)`` at positions ``pos`` ``(T,)``: ``(B, V)`` of the last
        position (``last_only``) or ``(B, T, V)``, FP32. Writes positions ``pos`` of the caches."""
        if self.blocks[0].cache is None:
            raise RuntimeError("call setup_cache(batch, slots) first")
        x = self.embed(ids)
        cos, sin = self.cos[pos], self.sin[pos]
        for blk in self.blocks:
            x = blk(x, pos, cos, sin)
        x = rms_norm(x[:, -1] if last_only else x, self.norm, self.s.eps)
        return self.head(x).float()


# ----------------------------------------------------------------------------- from transformers
def from_hf(model: nn.Module) -> LeanLlama:
    """A :class:`LeanLlama` holding the FP32 weights of a transformers Llama (``LlamaForCausalLM``),
    with q/k/v and gate/up concatenated along their outputs. The source is left unchanged."""
    s = LlamaShape.of(model.config)
    lean = LeanLlama(s)
    src = model.model
    with torch.no_grad():
        lean.embed.weight.copy_(src.embed_tokens.weight.float())
        lean.norm.copy_(src.norm.weight.float())
        if not s.tied:
            lean.head.weight.copy_(model.lm_head.weight.float())
        for blk, layer in zip(lean.blocks, src.layers):
            a, m = layer.self_attn, layer.mlp
            blk.attn_norm.copy_(layer.input_layernorm.weight.float())
            blk.ffn_norm.copy_(layer.post_attention_layernorm.weight.float())
            blk.wqkv.weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).float())
            blk.wo.weight.copy_(a.o_proj.weight.float())
            blk.w13.weight.copy_(torch.cat([m.gate_proj.weight, m.up_proj.weight]).float())
            blk.w2.weight.copy_(m.down_proj.weight.float())
    return lean.eval()


FUSED = {"wqkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "wo": ("self_attn.o_proj",),
         "w13": ("mlp.gate_proj", "mlp.up_proj"), "w2": ("mlp.down_proj",)}


def fuse_qtensors(qtensors: dict[str, QTensor], n_layers: int) -> dict[str, QTensor]:
    """Integers named by transformers' layers (``model.layers.3.self_attn.q_proj``, e.g. GPTQ's) as the
    lean decoder's fused layers (``blocks.3.wqkv``): rows of q, k, v (gate, up) stacked, as the fused
    weights are. Groups run along the inputs, so stacking rows keeps every group whole."""
    out = {}
    for i in range(n_layers):
        for lean_name, parts in FUSED.items():
            names = [f"model.layers.{i}.{p}" for p in parts]
            missing = [n for n in names if n not in qtensors]
            if missing:
                raise KeyError(f"no integers for {missing}")
            qts = [qtensors[n] for n in names]
            if len({(q.bits, q.group_size) for q in qts}) != 1:
                raise ValueError(f"{names} mix bit widths or group sizes")
            out[f"blocks.{i}.{lean_name}"] = QTensor(torch.cat([q.q for q in qts]), torch.cat([q.scale for q in qts]),
                                                     torch.cat([q.zero for q in qts]), qts[0].bits, qts[0].group_size)
    return out


def block_linears(lean: LeanLlama) -> dict[str, nn.Module]:
    """Name -> module of the linear layers of the blocks (``blocks.i.wqkv``, ``wo``, ``w13``, ``w2``)."""
    return {f"blocks.{i}.{n}": getattr(blk, n) for i, blk in enumerate(lean.blocks) for n in FUSED}


def swap_linears_(lean: LeanLlama, make: Callable[[str, nn.Linear], nn.Module]) -> LeanLlama:
    """Replace each linear layer of the blocks by ``make(name, layer)`` (a module ``(..., in) -> (..., out)``),
    in place; the embedding and the head stay as they are. Returns ``lean``."""
    for name, layer in block_linears(lean).items():
        i, attr = name.split(".")[1:]
        new = make(name, layer)
        if getattr(new, "in_features", layer.in_features) != layer.in_features or \
                getattr(new, "out_features", layer.out_features) != layer.out_features:
            raise ValueError(f"{name}: the new layer does not have the shape ({layer.out_features}, {layer.in_features})")
        setattr(lean.blocks[int(i)], attr, new)
    return lean


# ----------------------------------------------------------------------------- greedy decoding
class LeanLoop:
    """Greedy decoding with a :class:`LeanLlama`: the prompt in one batched forward (prefill), then one
    token per step over the cache; ``compile=True`` compiles the one-token step with ``torch.compile``
    (the prefill stays eager). It also times itself the way :func:`lightweight.llm.fast.time_pp_tg`
    expects (``prompt_seconds``, ``prepare``, ``generation_seconds``, ``release``)."""

    def __init__(self, lean: LeanLlama, compile: bool = False, time_prompt: bool | None = None):
        self.lean = lean.eval()
        self.compiled = compile
        self.step = torch.compile(self._step, dynamic=False) if compile else self._step
        self.times_prompt = (not compile) if time_prompt is None else time_prompt
        self.runtime = "lean-compile" if compile else "lean"
        self._tg: tuple | None = None
        self._batch_slots: tuple[int, int] | None = None
        self._holds: torch.Tensor | None = None  # the ids whose keys and values the cache holds from position 0

    def _ensure_cache(self, batch: int, slots: int) -> None:
        if self._batch_slots != (batch, slots):
            self.lean.setup_cache(batch, slots)
            self._batch_slots = (batch, slots)

    def _step(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.lean(token, pos).argmax(-1, keepdim=True)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """One forward over ``ids`` ``(B, P)`` into positions ``0 .. P-1``; returns the next token ``(B, 1)``."""
        if ids.dim() != 2 or ids.shape[1] > self.lean.slots:
            raise ValueError(f"ids must be (batch, P) with P <= {self.lean.slots} cache slots, got {tuple(ids.shape)}")
        return self.lean(ids, torch.arange(ids.shape[1])).argmax(-1, keepdim=True)

    @torch.inference_mode()
    def decode(self, token: torch.Tensor, start: int, n: int) -> torch.Tensor:
        """``n`` one-token steps from position ``start``; returns the generated ids ``(B, n)``."""
        if n < 1 or start + n > self.lean.slots:
            raise ValueError(f"{n} steps from position {start} do not fit a cache of {self.lean.slots} slots")
        ids = []
        for p in range(start, start + n):
            token = self.step(token, torch.tensor([p]))
            ids.append(token)
        return torch.cat(ids, dim=1)

    def generate(self, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """``new_tokens`` greedy ids ``(B, new_tokens)`` after ``prompt`` ``(B, P)`` (the same tokens as
        transformers' ``generate(do_sample=False)``)."""
        if prompt.dim() != 2 or new_tokens < 1:
            raise ValueError(f"prompt must be token ids (batch, P) and new_tokens >= 1, got {tuple(prompt.shape)}, {new_tokens}")
        self._ensure_cache(prompt.shape[0], prompt.shape[1] + new_tokens)
        first = self.prefill(prompt)
        if new_tokens == 1:
            return first
        return torch.cat([first, self.decode(first, prompt.shape[1], new_tokens - 1)], dim=1)

    # the timing protocol of lightweight.llm.fast.time_pp_tg
    def prompt_seconds(self, ids: torch.Tensor) -> float:
        """Seconds of one forward over ``ids`` ``(B, P)`` (into the prepared cache when it is large
        enough, so that a compiled step keeps its cache; else into a new one of ``P`` slots)."""
        if self._batch_slots is None or self._batch_slots[0] != ids.shape[0] or self._batch_slots[1] < ids.shape[1]:
            self._ensure_cache(ids.shape[0], ids.shape[1])
        start = time.perf_counter()
        self.prefill(ids)
        seconds = time.perf_counter() - start
        self._holds = ids
        return seconds

    def prepare(self, context: torch.Tensor, new_tokens: int) -> None:
        """Prefill ``context`` ``(B, C)`` into a cache of ``C + new_tokens`` slots (not timed)."""
        self._ensure_cache(context.shape[0], context.shape[1] + new_tokens)
        self._tg = (context, self.prefill(context), new_tokens)
        self._holds = context

    def generation_seconds(self) -> float:
        """Seconds of ``new_tokens`` one-token steps after the prepared context, from position ``C``
        (the context is prefilled again, untimed, when a prompt timing replaced it)."""
        if self._tg is None:
            raise RuntimeError("call prepare(context, new_tokens) first")
        context, first, n = self._tg
        if self._batch_slots != (context.shape[0], context.shape[1] + n) or not (
                self._holds is context or torch.equal(self._holds[:, : context.shape[1]], context)):
            self.prepare(context, n)
        start = time.perf_counter()
        self.decode(first, context.shape[1], n)
        return time.perf_counter() - start

    def cache_bytes_per_token(self) -> int:
        return self.lean.cache_bytes_per_token()

    def release(self) -> None:
        """Forget the prepared context (the caches are reallocated at the next shape)."""
        self._tg = self._holds = None


__all__ = ["LlamaShape", "using", "rms_norm", "rope_tables", "apply_rope", "attend", "KVCache", "Block", "LeanLlama",
           "from_hf", "fuse_qtensors", "block_linears", "swap_linears_", "LeanLoop", "FUSED"]
