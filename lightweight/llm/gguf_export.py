"""Export a Llama model to GGUF, the file llama.cpp runs, from our own integers.

llama.cpp's two simplest block formats (gguf-py ``quants.py``; 32 weights per block, along a row):

- ``Q8_0``: an FP16 scale ``d`` then 32 int8 values; ``w = d · q``. 34 bytes per block.
- ``Q4_0``: an FP16 scale ``d`` then 16 bytes; byte ``j`` holds ``u_j`` in its low nibble and
  ``u_{j+16}`` in its high nibble, ``w = d · (u - 8)``. 18 bytes per block.

Any integers in range fit these blocks (GPTQ's with groups of 32, say); only the scale is rounded
to FP16. Without given integers, the export rounds as ggml itself does (``quantize_row_q8_0_ref`` and
``quantize_row_q4_0_ref`` in ggml-quants.c, also in gguf-py), so that our blocks are the bytes llama.cpp's
own quantizer writes for the same float weights (:func:`quantize_q8_0`, :func:`quantize_q4_0`):

- Q8_0 is our symmetric grid (``d = max|w| / 127``) except for the rounding: ``q = roundf(w · (1/d))``,
  halves away from zero (``torch.round`` rounds them to even, and ``w / d`` can differ from ``w · (1/d)``);
- Q4_0 is *not* our symmetric INT4 grid (15 levels, ``d = max|w| / 7``): it uses all 16 levels. ``max``
  is the weight of largest ``|w|`` with its sign, ``d = max / -8``, so that weight is exactly ``q = -8``
  and the grid ``d · [-8, 7]`` reaches 8 steps on its side and 7 on the other (clamped at ``u = 15``).

Norms stay F32. llama.cpp stores the query and key rows in another order than transformers (its rotary embedding
pairs neighbouring dimensions): :func:`permute_qk` does what llama.cpp's converter does.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..quantize import QTensor

FORMATS = ("f32", "f16", "q8_0", "q4_0")
BLOCK = 32
_COPIED_PREFIXES = ("tokenizer.", "general.")
_NOT_COPIED = {"general.architecture", "general.file_type", "general.quantization_version", "general.alignment"}


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise ModuleNotFoundError("the gguf package is missing: install it with `pip install gguf==0.19.0`") from e
    return gguf


# ----------------------------------------------------------------------------- blocks
def _check_blocks(qt: QTensor, bits: int) -> None:
    if qt.bits != bits or qt.group_size != BLOCK:
        raise ValueError(f"expected {bits}-bit integers in groups of {BLOCK}, got bits={qt.bits}, group_size={qt.group_size}")
    if not bool((qt.zero == 0).all()):
        raise ValueError("Q8_0 and Q4_0 are symmetric: zero-points must be 0")
    lo = -127 if bits == 8 else -8
    if qt.q.numel() and (qt.q.min() < lo or qt.q.max() > 2 ** (bits - 1) - 1):
        raise ValueError(f"integers out of the {bits}-bit range")


def _fp16_scales(qt: QTensor) -> np.ndarray:
    """``(rows, n_blocks, 2)`` bytes of the FP16 scales."""
    return qt.scale.to(torch.float16).numpy().view(np.uint8).reshape(qt.scale.shape[0], -1, 2)


def q8_0_blocks(qt: QTensor) -> np.ndarray:
    """An INT8 ``QTensor`` (groups of 32, no zero-point: ours or :func:`quantize_q8_0`'s) as Q8_0 bytes
    ``(rows, n_blocks · 34)`` uint8."""
    _check_blocks(qt, 8)
    rows, cols = qt.q.shape
    q = qt.q.numpy().view(np.uint8).reshape(rows, cols // BLOCK, BLOCK)
    return np.concatenate([_fp16_scales(qt), q], axis=-1).reshape(rows, -1)


def q4_0_blocks(qt: QTensor) -> np.ndarray:
    """An INT4 ``QTensor`` (groups of 32, no zero-point, integers in ``[-8, 7]``: ours, GPTQ's or
    :func:`quantize_q4_0`'s) as Q4_0 bytes ``(rows, n_blocks · 18)`` uint8."""
    _check_blocks(qt, 4)
    rows, cols = qt.q.shape
    u = (qt.q.to(torch.int16) + 8).to(torch.uint8).numpy().reshape(rows, cols // BLOCK, BLOCK)
    packed = u[..., : BLOCK // 2] | (u[..., BLOCK // 2:] << 4)
    return np.concatenate([_fp16_scales(qt), packed], axis=-1).reshape(rows, -1)


def _blocks_of(w: torch.Tensor) -> torch.Tensor:
    if w.dim() != 2 or w.shape[1] % BLOCK:
        raise ValueError(f"expected a 2-D weight whose rows split into blocks of {BLOCK}, got shape {tuple(w.shape)}")
    x = w.detach().to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("the weight has non-finite values")
    return x.reshape(w.shape[0], -1, BLOCK)


def quantize_q8_0(w: torch.Tensor) -> QTensor:
    """ggml's Q8_0 rule (``quantize_row_q8_0_ref``), per block of 32 along a row, in FP32:
    ``d = amax / 127``, ``id = 1/d`` (0 when ``d`` is 0), ``q = roundf(w · id)`` (halves away from zero)."""
    x = _blocks_of(w)
    d = x.abs().amax(dim=-1) / 127
    inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    v = x * inv[..., None]
    t = torch.trunc(v)
    q = t + torch.sign(v) * ((v - t).abs() >= 0.5)  # roundf; v - t is exact
    return QTensor(q.reshape(w.shape).to(torch.int8), d, torch.zeros_like(d), 8, BLOCK)


def quantize_q4_0(w: torch.Tensor) -> QTensor:
    """ggml's Q4_0 rule (``quantize_row_q4_0_ref``), per block of 32 along a row, in FP32: ``max`` is the
    first value of largest ``|w|`` (sign kept; ``+0.0`` in an all-zero block), ``d = max / -8``,
    ``id = 1/d`` (0 when ``d`` is 0), ``u = min(15, trunc(w · id + 8.5))`` and ``q = u - 8`` in ``[-8, 7]``.
    The scale ``d`` is negative when ``max`` is positive (and ``-0.0`` for an all-zero block), as in ggml."""
    x = _blocks_of(w)
    a = x.abs()
    amax = a.amax(dim=-1, keepdim=True)
    first = a.argmax(dim=-1, keepdim=True)  # the first index of the largest |w|, as ggml's strict `<` finds it
    top = torch.where(amax > 0, x.gather(-1, first), torch.zeros_like(amax)).squeeze(-1)
    d = top / -8
    inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    u = torch.trunc(x * inv[..., None] + 8.5).clamp(max=15)  # two FP32 roundings, as in C (not one fused)
    q = (u - 8).to(torch.int8)
    return QTensor(q.reshape(w.shape), d, torch.zeros_like(d), 4, BLOCK)


def gguf_dequantized(qt: QTensor) -> torch.Tensor:
    """The FP32 weight llama.cpp computes with: our integers times the FP16-rounded scales."""
    g = qt.group_size
    s = qt.scale.to(torch.float16).float()
    return (qt.q.float().view(qt.q.shape[0], -1, g) * s[..., None]).view(qt.q.shape)


# ----------------------------------------------------------------------------- names and layout
def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """transformers' query/key rows ``(n_head · d, ...)`` in llama.cpp's order (its converter's ``permute``)."""
    if w.shape[0] % (2 * n_head):
        raise ValueError(f"{w.shape[0]} rows do not split into {n_head} heads of even size")
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of :func:`permute_qk` (what transformers does when it reads a GGUF)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


_LAYER_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def gguf_name(hf_name: str) -> str:
    """A transformers Llama tensor name as llama.cpp names it (``model.layers.3.mlp.up_proj.weight``
    -> ``blk.3.ffn_up.weight``)."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf_name in fixed:
        return fixed[hf_name]
    parts = hf_name.split(".")
    if parts[:2] == ["model", "layers"] and len(parts) >= 5:
        inner = ".".join(parts[3:-1])
        if inner in _LAYER_NAMES:
            return f"blk.{parts[2]}.{_LAYER_NAMES[inner]}.{parts[-1]}"
    raise ValueError(f"no GGUF name for the tensor {hf_name!r} (not a Llama model?)")


def _heads_of(name: str, cfg) -> int | None:
    if name.endswith("self_attn.q_proj.weight"):
        return cfg.num_attention_heads
    if name.endswith("self_attn.k_proj.weight"):
        return cfg.num_key_value_heads
    return None


# ----------------------------------------------------------------------------- export
def _metadata(writer, cfg, fmt: str, source: str | os.PathLike | None) -> None:
    gguf = _gguf()
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[fmt]
    if source is not None:
        for key, field in gguf.GGUFReader(str(source)).fields.items():
            if key.startswith(_COPIED_PREFIXES) and key not in _NOT_COPIED:
                sub = field.types[1] if len(field.types) > 1 else None
                writer.add_key_value(key, field.contents(), field.types[0], sub)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def export_gguf(model: nn.Module, path: str | os.PathLike, fmt: str = "q4_0", source: str | os.PathLike | None = None,
                qtensors: dict[str, QTensor] | None = None) -> Path:
    """Write a Llama ``model`` (transformers ``LlamaForCausalLM``) to a GGUF file llama.cpp can run.

    ``fmt``: ``f32``, ``f16`` (2-D weights in FP16), ``q8_0`` or ``q4_0`` (every block Linear from our
    integers: ``qtensors[name]`` when given, e.g. GPTQ with groups of 32, else ggml's own rounding,
    :func:`quantize_q8_0` / :func:`quantize_q4_0`; the embedding table in Q8_0). The tokenizer and
    ``general.*`` metadata are copied from the ``source`` GGUF (llama.cpp needs a tokenizer to load the
    file). Written to a temporary file, then renamed."""
    gguf = _gguf()
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    cfg = model.config
    if getattr(cfg, "model_type", None) != "llama":
        raise ValueError(f"expected a Llama model, got model_type={getattr(cfg, 'model_type', None)!r}")
    qtensors = dict(qtensors or {})
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    if tied:
        state.pop("lm_head.weight", None)
    unknown = {n[: -len(".weight")] if n.endswith(".weight") else n for n in qtensors} - {k[:-7] for k in state}
    if unknown:
        raise ValueError(f"qtensors name no weight of the model: {sorted(unknown)}")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch="llama")
    _metadata(writer, cfg, fmt, source)
    for name, w in state.items():
        out_name = gguf_name(name)
        heads = _heads_of(name, cfg)
        if w.dim() == 1 or fmt == "f32":
            writer.add_tensor(out_name, (permute_qk(w, heads) if heads else w).numpy())
            continue
        if fmt == "f16":
            writer.add_tensor(out_name, (permute_qk(w, heads) if heads else w).half().numpy())
            continue
        bits = 8 if fmt == "q8_0" or name == "model.embed_tokens.weight" else 4
        qt = qtensors.get(name[: -len(".weight")]) or (quantize_q8_0 if bits == 8 else quantize_q4_0)(w)
        if heads:
            qt = QTensor(permute_qk(qt.q, heads), permute_qk(qt.scale, heads), permute_qk(qt.zero, heads),
                         qt.bits, qt.group_size)
        blocks, kind = (q8_0_blocks(qt), gguf.GGMLQuantizationType.Q8_0) if qt.bits == 8 else \
            (q4_0_blocks(qt), gguf.GGMLQuantizationType.Q4_0)
        writer.add_tensor(out_name, blocks, raw_dtype=kind)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, path)
    return path


def read_gguf_weights(path: str | os.PathLike, n_head: int | None = None, n_head_kv: int | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a GGUF file, dequantized by gguf's own code, ``name -> FP32 tensor`` in the
    ``(out, in)`` layout; with ``n_head``/``n_head_kv``, query and key rows back in transformers' order."""
    gguf = _gguf()
    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        w = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
        if n_head and ".attn_q." in t.name:
            w = unpermute_qk(w, n_head)
        elif n_head_kv and ".attn_k." in t.name:
            w = unpermute_qk(w, n_head_kv)
        out[t.name] = w
    return out
