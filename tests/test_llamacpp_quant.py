"""llama.cpp's own quantizers driven from Python (needs ``python course.py deploy``; skipped without
llama-cpp-python), on a tiny random Llama whose widths are 256 (a multiple of the 256-weight super-blocks
of IQ4_XS and Q4_K) and 320 (not one: ``ffn_down`` falls back to another type)."""

import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (python course.py deploy)")
gguf = pytest.importorskip("gguf")

from lightweight.llm import gguf_export as G  # noqa: E402
from lightweight.llm import llamacpp_quant as LQ  # noqa: E402
from lightweight.llm.fast import INSTALL_LLAMA_CPP  # noqa: E402

HEADS, KV_HEADS = 4, 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(model, windows, f32 GGUF path, imatrix)``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=320, num_hidden_layers=2,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    windows = torch.randint(0, 256, (6, 32), generator=torch.Generator().manual_seed(1))
    f32 = G.export_gguf(model, tmp_path_factory.mktemp("tiny") / "f32.gguf", "f32")
    return model, windows, f32, LQ.importance_matrix(model, windows, batch_size=4, progress=False)


def _data(path) -> dict[str, bytes]:
    return {t.name: np.array(t.data).tobytes() for t in gguf.GGUFReader(str(path)).tensors}


def _matrices(path) -> list[str]:
    return [t.name for t in gguf.GGUFReader(str(path)).tensors if t.name.startswith("blk.") and len(t.shape) == 2]


# ----------------------------------------------------------------------------- the importance matrix
def test_importance_matrix_is_the_mean_square_of_each_input_column(tiny):
    model, windows, _, im = tiny
    with torch.no_grad():  # by hand: what enters layer 0's attention projections
        layer = model.model.layers[0]
        x = layer.input_layernorm(model.model.embed_tokens(windows)).double()
    expected = (x ** 2).reshape(-1, x.shape[-1]).mean(dim=0).float()
    got = im["blk.0.attn_q.weight"]
    assert got.dtype == torch.float32 and got.shape == (256,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    assert torch.equal(im["blk.0.attn_k.weight"], got) and torch.equal(im["blk.0.attn_v.weight"], got)  # same input


def test_imatrix_names_and_widths_are_the_gguf_tensors_inputs(tiny):
    model, _, f32, im = tiny
    tensors = {t.name: t for t in gguf.GGUFReader(str(f32)).tensors}
    assert set(im) == set(_matrices(f32)) and len(im) == 14
    for name, values in im.items():
        assert values.shape == (int(tensors[name].shape[0]),)  # GGUF shape[0] (ggml ne[0]): the input width
    assert im["blk.1.ffn_down.weight"].shape == (model.config.intermediate_size,)
    assert bool((torch.cat(list(im.values())) > 0).all())


# ----------------------------------------------------------------------------- quantizing
def test_q4_0_without_imatrix_is_ggmls_reference_rounding(tiny, tmp_path):
    model, _, f32, _ = tiny
    path = LQ.quantize_gguf(f32, tmp_path / "q4_0.gguf", "q4_0", threads=2)
    types = LQ.tensor_types(path)
    assert {types[n] for n in _matrices(path)} == {"Q4_0"} and types["token_embd.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == "F32"
    theirs = G.read_gguf_weights(path, HEADS, KV_HEADS)
    for name, w in model.state_dict().items():
        if name.startswith("model.layers.") and w.dim() == 2:
            assert torch.equal(theirs[G.gguf_name(name)], G.gguf_dequantized(G.quantize_q4_0(w))), name
    assert not (tmp_path / "q4_0.gguf.tmp").exists()


@pytest.mark.parametrize("fmt", ["q4_0", "iq4_nl"])
def test_an_imatrix_changes_every_matrix_and_only_its_ratios_count(tiny, tmp_path, fmt):
    _, _, f32, im = tiny
    none = _data(LQ.quantize_gguf(f32, tmp_path / "none.gguf", fmt))
    weighted = _data(LQ.quantize_gguf(f32, tmp_path / "im.gguf", fmt, imatrix=im))
    times4 = _data(LQ.quantize_gguf(f32, tmp_path / "im4.gguf", fmt, imatrix={k: 4 * v for k, v in im.items()}))
    ones = _data(LQ.quantize_gguf(f32, tmp_path / "ones.gguf", fmt, imatrix={k: torch.ones_like(v) for k, v in im.items()}))
    matrices = _matrices(tmp_path / "none.gguf")
    assert all(none[n] != weighted[n] for n in matrices)
    assert weighted == times4  # a power of two scales every weighted sum exactly: the same choices
    # all-ones is not "no imatrix": the importance becomes sqrt(sigma^2 + w^2) instead of ggml's default
    # (Q4_0: none, plain rounding; IQ4_NL: w^2)
    assert all(none[n] != ones[n] for n in matrices)
    assert none["token_embd.weight"] == weighted["token_embd.weight"]  # Q8_0 has no weighted search


@pytest.mark.parametrize("fmt", ["q4_0", "iq4_nl", "iq4_xs"])
def test_heavily_weighted_columns_are_reproduced_better(tiny, tmp_path, fmt):
    model, _, f32, im = tiny
    heavy = {k: torch.where(torch.arange(len(v)) % 8 == 0, 1e4, 1.0) for k, v in im.items()}
    plain = G.read_gguf_weights(LQ.quantize_gguf(f32, tmp_path / "a.gguf", fmt), HEADS, KV_HEADS)
    weighted = G.read_gguf_weights(LQ.quantize_gguf(f32, tmp_path / "b.gguf", fmt, imatrix=heavy), HEADS, KV_HEADS)
    for name, w in model.state_dict().items():
        if name.startswith("model.layers.") and w.dim() == 2:
            g, cols = G.gguf_name(name), torch.arange(w.shape[1]) % 8 == 0
            err_plain = float(((plain[g] - w)[:, cols] ** 2).sum())
            err_weighted = float(((weighted[g] - w)[:, cols] ** 2).sum())
            assert err_weighted < 0.7 * err_plain, (name, err_weighted, err_plain)


# ----------------------------------------------------------------------------- sizes and type mixtures
def test_bits_per_weight_and_the_fallbacks_for_widths_not_multiple_of_256(tiny, tmp_path):
    _, _, f32, im = tiny
    q4_0 = LQ.quantize_gguf(f32, tmp_path / "q4_0.gguf", "q4_0")
    assert LQ.bits_per_weight(q4_0) == 4.5
    assert LQ.bits_per_weight(q4_0, "all") > 4.5  # + the Q8_0 embedding table and the F32 norms
    assert LQ.bits_per_weight(f32) == 32.0

    xs = LQ.quantize_gguf(f32, tmp_path / "iq4_xs.gguf", "iq4_xs", imatrix=im)
    types = LQ.tensor_types(xs)
    assert {n: t for n, t in types.items() if t not in ("IQ4_XS", "F32")} == {
        "token_embd.weight": "Q8_0", "blk.0.ffn_down.weight": "IQ4_NL", "blk.1.ffn_down.weight": "IQ4_NL"}
    sizes = {t.name: int(t.n_elements) for t in gguf.GGUFReader(str(xs)).tensors}
    blocks = _matrices(xs)
    expected = sum(sizes[n] * (4.5 if types[n] == "IQ4_NL" else 4.25) for n in blocks) / sum(sizes[n] for n in blocks)
    assert LQ.bits_per_weight(xs) == pytest.approx(expected, rel=1e-12) and 4.25 < expected < 4.5

    km = LQ.quantize_gguf(f32, tmp_path / "q4_k_m.gguf", "q4_k_m", imatrix=im)
    types = LQ.tensor_types(km)
    assert types["blk.0.attn_q.weight"] == "Q4_K" and types["blk.1.attn_v.weight"] == "Q6_K"  # more bits at the end
    assert types["blk.0.ffn_down.weight"] == "Q5_0" and types["blk.1.ffn_down.weight"] == "Q8_0"  # Q4_K, Q6_K fell back
    assert LQ.bits_per_weight(km) > 4.5


# ----------------------------------------------------------------------------- errors
def test_bad_inputs_raise(tiny, tmp_path):
    _, _, f32, im = tiny
    dest = tmp_path / "out.gguf"
    with pytest.raises(ValueError, match="fmt must be one of"):
        LQ.quantize_gguf(f32, dest, "q3_k")
    with pytest.raises(ValueError, match="no tensor of the GGUF file"):
        LQ.quantize_gguf(f32, dest, "iq4_nl", imatrix={**im, "blk.9.attn_q.weight": torch.ones(256)})
    with pytest.raises(ValueError, match="input width is 320"):
        LQ.quantize_gguf(f32, dest, "iq4_nl", imatrix={**im, "blk.0.ffn_down.weight": torch.ones(256)})
    with pytest.raises(ValueError, match="non-finite"):
        LQ.quantize_gguf(f32, dest, "iq4_nl", imatrix={**im, "blk.0.attn_q.weight": torch.full((256,), float("nan"))})
    with pytest.raises(ValueError, match="empty"):
        LQ.quantize_gguf(f32, dest, "iq4_nl", imatrix={})
    with pytest.raises(FileNotFoundError):
        LQ.quantize_gguf(tmp_path / "missing.gguf", dest, "q4_0")
    q4_0 = LQ.quantize_gguf(f32, tmp_path / "q4_0.gguf", "q4_0")
    with pytest.raises(RuntimeError, match="requantizing from type q4_0 is disabled"):
        LQ.quantize_gguf(q4_0, dest, "q4_1")
    assert not dest.exists() and not (tmp_path / "out.gguf.tmp").exists()
    with pytest.raises(ValueError, match="which must be"):
        LQ.bits_per_weight(q4_0, "embeddings")
    with pytest.raises(ValueError, match="windows must be"):
        LQ.importance_matrix(tiny[0], torch.zeros(0, 8, dtype=torch.long), progress=False)


def test_without_llama_cpp_the_install_hint_is_raised(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(LQ, "llama_cpp_available", lambda: False)
    with pytest.raises(ModuleNotFoundError) as e:
        LQ.quantize_gguf(tiny[2], tmp_path / "out.gguf", "q4_0")
    assert str(e.value) == INSTALL_LLAMA_CPP
