import numpy as np
import pytest
import torch

from lightweight.llm import gguf_export as G
from lightweight import quantize as Q

gguf = pytest.importorskip("gguf")


def _w(rows=8, cols=64, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def test_q8_0_blocks_are_the_bytes_gguf_itself_writes():
    w = _w()
    ours = G.q8_0_blocks(Q.quantize_tensor(w, bits=8, group_size=32))
    theirs = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0)
    assert ours.shape == (8, 2 * 34) and np.array_equal(ours, theirs)


@pytest.mark.parametrize("bits,kind", [(8, "Q8_0"), (4, "Q4_0")])
def test_blocks_dequantize_with_gguf_to_our_values(bits, kind):
    w = _w()
    qt = Q.quantize_tensor(w, bits=bits, group_size=32)
    blocks = G.q8_0_blocks(qt) if bits == 8 else G.q4_0_blocks(qt)
    assert blocks.shape == (8, 2 * (34 if bits == 8 else 18))
    back = gguf.quants.dequantize(blocks, getattr(gguf.GGMLQuantizationType, kind))
    assert torch.equal(torch.from_numpy(back), G.gguf_dequantized(qt))
    assert float((G.gguf_dequantized(qt) - qt.dequantize()).abs().max()) <= float(qt.scale.max()) * 2 * 2**-11 * 127


# ----------------------------------------------------------------------------- ggml's own rounding rules
# Scalar transliterations of ggml-quants.c (quantize_row_q4_0_ref, quantize_row_q8_0_ref), written apart from
# the module: FP32 arithmetic step by step (np.float32), C's strict `<` for the first largest |x|, (int8_t)
# truncation, roundf (halves away from zero), the scale rounded to FP16 to nearest even.
_F = np.float32


def _ggml_q4_0(row) -> bytes:
    out = bytearray()
    for i in range(0, len(row), 32):
        x = [_F(v) for v in row[i:i + 32]]
        amax, top = _F(0.0), _F(0.0)
        for v in x:
            if amax < abs(v):
                amax, top = abs(v), v
        d = _F(top / _F(-8))
        inv = _F(_F(1.0) / d) if d != 0 else _F(0.0)
        out += np.float16(d).tobytes()
        for j in range(16):
            u0 = min(15, int(_F(_F(x[j] * inv) + _F(8.5))))
            u1 = min(15, int(_F(_F(x[j + 16] * inv) + _F(8.5))))
            out.append(u0 | (u1 << 4))
    return bytes(out)


def _roundf(v) -> int:
    t = int(v)  # toward zero
    return t + (1 if v > 0 else -1) * (abs(float(v) - t) >= 0.5)


def _ggml_q8_0(row) -> bytes:
    out = bytearray()
    for i in range(0, len(row), 32):
        x = [_F(v) for v in row[i:i + 32]]
        amax = _F(0.0)
        for v in x:
            amax = max(amax, abs(v))
        d = _F(amax / _F(127))
        inv = _F(_F(1.0) / d) if d != 0 else _F(0.0)
        out += np.float16(d).tobytes() + bytes(_roundf(_F(v * inv)) & 0xFF for v in x)
    return bytes(out)


def _adversarial_blocks() -> torch.Tensor:
    """Blocks of 32 where a careless rule goes wrong, one per row."""
    g = torch.Generator().manual_seed(7)
    rows = {
        "zeros": torch.zeros(32),
        "negative zeros": torch.full((32,), -0.0),
        "-0.0 first, then zeros": torch.cat([torch.tensor([-0.0]), torch.zeros(31)]),
        "one positive outlier": torch.zeros(32).index_fill(0, torch.tensor([11]), 3.0),
        "one negative outlier": torch.zeros(32).index_fill(0, torch.tensor([20]), -3.0),
        "outlier in noise": torch.randn(32, generator=g) * 0.01 + torch.eye(32)[5] * 40,
        "positive max": torch.linspace(-0.9, 1.0, 32),
        "negative max": torch.linspace(-1.0, 0.9, 32),
        "tie, + first": torch.zeros(32).index_put((torch.tensor([3, 9]),), torch.tensor([1.0, -1.0])),
        "tie, - first": torch.zeros(32).index_put((torch.tensor([3, 9]),), torch.tensor([-1.0, 1.0])),
        "all equal": torch.full((32,), 0.7),
        "both extremes (u = 16 clamps to 15)": torch.linspace(-2.0, 2.0, 32),
        "halves on the Q4_0 grid": (torch.arange(32) - 16) * 0.0625,
        "halves on the Q8_0 grid": torch.cat([torch.tensor([127.0]), torch.arange(31) - 15.5]),
        "tiny (FP16 subnormal scale)": torch.randn(32, generator=g) * 1e-6,
        "large": torch.randn(32, generator=g) * 3e3,
    }
    return torch.stack(list(rows.values()))


def _random_blocks() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    scales = torch.logspace(-4, 2, 64)[:, None]
    return torch.randn(64, 256, generator=g) * scales


@pytest.mark.parametrize("blocks", [_random_blocks, _adversarial_blocks])
def test_q4_0_is_ggml_reference_quantizer_bit_for_bit(blocks):
    w = blocks()
    qt = G.quantize_q4_0(w)
    ours = G.q4_0_blocks(qt)
    ref = np.frombuffer(b"".join(_ggml_q4_0(r) for r in w.numpy()), np.uint8).reshape(ours.shape)
    assert np.array_equal(ours, ref)
    # gguf-py's numpy port of the same rule: equal too, except for an all-zero block that starts with -0.0
    # (it keeps that -0.0 as `max` and writes d = +0.0; ggml never takes a zero as `max` and writes -0.0)
    theirs = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q4_0)
    plain = ~((w == 0).all(dim=1) & torch.signbit(w[:, 0])).numpy()
    assert np.array_equal(ours[plain], theirs[plain])
    back = gguf.quants.dequantize(ours, gguf.GGMLQuantizationType.Q4_0)
    assert torch.equal(torch.from_numpy(back), G.gguf_dequantized(qt))


def test_q4_0_uses_16_levels_with_the_largest_weight_on_minus_8():
    w = _random_blocks()
    qt = G.quantize_q4_0(w)
    assert int(qt.q.min()) == -8 and int(qt.q.max()) == 7
    blocks = w.view(64, -1, 32)
    top = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True)).squeeze(-1)
    assert torch.equal(qt.scale, top / -8)  # negative when the largest weight is positive
    q = qt.q.view(64, -1, 32)
    assert bool((q.gather(-1, blocks.abs().argmax(-1, keepdim=True)) == -8).all())  # that weight is exact
    # our symmetric INT4 grid has 15 levels (scale max|w| / 7): not what llama.cpp writes
    ours_sym = G.q4_0_blocks(Q.quantize_tensor(w, bits=4, group_size=32))
    assert not np.array_equal(ours_sym, G.q4_0_blocks(qt))
    # on its 16 levels, the step is 7/8 of the symmetric one, and the error smaller
    err = (G.gguf_dequantized(qt) - w).pow(2).mean()
    err_sym = (Q.quantize_tensor(w, bits=4, group_size=32).dequantize() - w).pow(2).mean()
    assert err < err_sym


@pytest.mark.parametrize("blocks", [_random_blocks, _adversarial_blocks])
def test_q8_0_is_ggml_reference_quantizer_bit_for_bit(blocks):
    w = blocks()
    ours = G.q8_0_blocks(G.quantize_q8_0(w))
    ref = np.frombuffer(b"".join(_ggml_q8_0(r) for r in w.numpy()), np.uint8).reshape(ours.shape)
    assert np.array_equal(ours, ref)
    assert np.array_equal(ours, gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0))


def test_ggml_rules_refuse_other_shapes():
    with pytest.raises(ValueError, match="blocks of 32"):
        G.quantize_q4_0(torch.randn(2, 48))
    with pytest.raises(ValueError, match="non-finite"):
        G.quantize_q8_0(torch.full((1, 32), float("nan")))


def test_blocks_refuse_other_layouts():
    w = _w()
    with pytest.raises(ValueError, match="groups of 32"):
        G.q4_0_blocks(Q.quantize_tensor(w, bits=4, group_size=64))
    with pytest.raises(ValueError, match="symmetric"):
        G.q4_0_blocks(Q.quantize_tensor(w, bits=4, group_size=32, symmetric=False))


def test_permutation_round_trip_and_names():
    w = _w(12, 4)
    assert torch.equal(G.unpermute_qk(G.permute_qk(w, 3), 3), w)
    assert not torch.equal(G.permute_qk(w, 3), w)
    assert G.gguf_name("model.layers.3.mlp.up_proj.weight") == "blk.3.ffn_up.weight"
    assert G.gguf_name("model.embed_tokens.weight") == "token_embd.weight"
    with pytest.raises(ValueError, match="no GGUF name"):
        G.gguf_name("encoder.layer.0.weight")


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("fmt", G.FORMATS)
def test_export_reads_back_to_our_weights(tmp_path, fmt):
    model = _tiny_llama()
    path = G.export_gguf(model, tmp_path / f"m-{fmt}.gguf", fmt)
    assert path.exists() and not (tmp_path / f"m-{fmt}.gguf.tmp").exists()
    back = G.read_gguf_weights(path, n_head=4, n_head_kv=2)
    assert "output.weight" not in back  # tied head: llama.cpp reuses token_embd
    assert len(back) == 2 * 9 + 2
    for name, w in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        got = back[G.gguf_name(name)]
        if w.dim() == 1 or fmt == "f32":
            expected = w
        elif fmt == "f16":
            expected = w.half().float()
        else:
            eight = fmt == "q8_0" or name == "model.embed_tokens.weight"
            expected = G.gguf_dequantized((G.quantize_q8_0 if eight else G.quantize_q4_0)(w))
        assert torch.equal(got, expected), name
    fields = gguf.GGUFReader(str(path)).fields
    assert fields["llama.block_count"].contents() == 2
    assert fields["llama.attention.head_count_kv"].contents() == 2


def test_export_takes_gptq_integers_and_checks_names(tmp_path):
    model = _tiny_llama()
    lin = model.model.layers[0].mlp.down_proj
    x = torch.randn(256, 128)
    qt = Q.gptq_quantize(lin.weight, x.t() @ x, bits=4, group_size=32)
    path = G.export_gguf(model, tmp_path / "g.gguf", "q4_0", qtensors={"model.layers.0.mlp.down_proj": qt})
    assert torch.equal(G.read_gguf_weights(path)["blk.0.ffn_down.weight"], G.gguf_dequantized(qt))
    with pytest.raises(ValueError, match="no weight"):
        G.export_gguf(model, tmp_path / "h.gguf", "q4_0", qtensors={"model.nope": qt})
    with pytest.raises(ValueError, match="fmt"):
        G.export_gguf(model, tmp_path / "h.gguf", "q5_k")


def test_transformers_reads_our_file_back(tmp_path):
    from transformers import AutoModelForCausalLM

    model = _tiny_llama()
    path = G.export_gguf(model, tmp_path / "m.gguf", "f32")
    # transformers undoes llama.cpp's query/key row order when it reads a GGUF: same logits
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.randint(96, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-5)
