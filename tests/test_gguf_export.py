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
            bits = 8 if fmt == "q8_0" or name == "model.embed_tokens.weight" else 4
            expected = G.gguf_dequantized(Q.quantize_tensor(w, bits=bits, group_size=32))
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
