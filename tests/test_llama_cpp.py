"""Our GGUF files run by llama.cpp (needs ``python course.py deploy``; skipped without llama-cpp-python): the F32
file computes what PyTorch computes, our Q8_0 / Q4_0 integers keep the model, and our Q8_0 / Q4_0 files are
the bytes llama.cpp's own quantizer writes from our F32 file."""

import ctypes

import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

from lightweight.llm import fast  # noqa: E402
from lightweight.llm import gguf_export as G  # noqa: E402
from lightweight.llm.model import load_smollm2, verify_gguf  # noqa: E402
from lightweight.llm.evaluation import Evaluator  # noqa: E402


@pytest.fixture(scope="module")
def smollm2():
    model, tokenizer = load_smollm2(verbose=False)
    return model, tokenizer, Evaluator(model, tokenizer, n_windows=1, kl_windows=0, domains=("shakespeare",))


def test_our_gguf_files_through_llama_cpp_match_pytorch(smollm2, tmp_path):
    model, tokenizer, evaluator = smollm2
    windows = evaluator.windows["shakespeare"]
    ref = evaluator.reference["shakespeare"].ppl
    files = {fmt: G.export_gguf(model, tmp_path / f"{fmt}.gguf", fmt, source=verify_gguf()) for fmt in ("f32", "q8_0", "q4_0")}
    ppl = {}
    for fmt, p in files.items():
        with fast.LlamaCpp(p, logits_all=True) as cpp:
            ppl[fmt] = cpp.perplexity(windows)
    # same weights in F32: the same model up to float summation order (a wrong q/k permutation or
    # tokenizer would cost far more than 1%)
    assert abs(ppl["f32"] / ref - 1) < 0.01, (ppl, ref)
    assert ppl["q8_0"] < ref * 1.03, (ppl, ref)
    assert ref < ppl["q4_0"] < ref * 1.6, (ppl, ref)  # ggml's round-to-nearest Q4_0 (16 levels, groups of 32)
    prompt = tokenizer("Once upon a time, in a small village by the sea,", return_tensors="pt").input_ids
    ours = fast.static_generator(model, prompt, 8)()[0].tolist()
    got = []
    with fast.LlamaCpp(files["f32"]) as cpp:
        for token in cpp.llm.generate(prompt[0].tolist(), top_k=1, temp=0.0, reset=True):
            got.append(token)
            if len(got) == 8:
                break
    assert got[:4] == ours[:4], (got, ours)  # greedy tokens of the same F32 weights


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_our_blocks_are_what_llama_cpp_quantizes_from_our_f32_file(tmp_path, fmt):
    import gguf
    import llama_cpp
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # blocks where a rounding rule shows: zeros, -0.0, ties, halves on the grids, an outlier
        w = model.model.layers[0].mlp.down_proj.weight
        w[0, :32], w[1, :32] = 0.0, -0.0
        w[2, :32], w[2, 5], w[2, 7] = 0.0, 1.0, -1.0
        w[3, :32] = (torch.arange(32) - 16) * 0.0625
        w[4, :32] = torch.cat([torch.tensor([127.0]), torch.arange(31) - 15.5]) * 0.0625  # d = 1/16: exact halves
        w[5, 40] = 5.0
    f32 = G.export_gguf(model, tmp_path / "f32.gguf", "f32")
    ours = G.export_gguf(model, tmp_path / f"{fmt}.gguf", fmt)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}[fmt]
    params.pure = True  # every matrix in fmt (no Q6_K for the tied embedding) ...
    params.token_embedding_type = llama_cpp.GGML_TYPE_Q8_0  # ... except the embedding, which we write in Q8_0
    params.nthread = 1
    theirs = tmp_path / f"llama-{fmt}.gguf"
    assert llama_cpp.llama_model_quantize(str(f32).encode(), str(theirs).encode(), ctypes.byref(params)) == 0

    def tensors(path):
        return {t.name: (t.tensor_type.name, np.array(t.data).tobytes()) for t in gguf.GGUFReader(str(path)).tensors}

    a, b = tensors(ours), tensors(theirs)
    assert a.keys() == b.keys()
    assert {n: a[n][0] for n in a} == {n: b[n][0] for n in b}
    assert [n for n in a if a[n][1] != b[n][1]] == []
