"""Our GGUF files run by llama.cpp (needs ``python course.py deploy``; skipped without llama-cpp-python): the F32
file computes what PyTorch computes, and our Q8_0 / Q4_0 integers keep the model."""

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
    return model, tokenizer, Evaluator(model, tokenizer, n_tokens=512, kl_tokens=0, domains=("shakespeare",))


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
    assert ref < ppl["q4_0"] < ref * 1.6, (ppl, ref)  # round-to-nearest INT4 symmetric g32 (chapter 6: +30-50%)
    prompt = tokenizer("Once upon a time, in a small village by the sea,", return_tensors="pt").input_ids
    ours = fast.static_generator(model, prompt, 8)()[0].tolist()
    got = []
    with fast.LlamaCpp(files["f32"]) as cpp:
        for token in cpp.llm.generate(prompt[0].tolist(), top_k=1, temp=0.0, reset=True):
            got.append(token)
            if len(got) == 8:
                break
    assert got[:4] == ours[:4], (got, ours)  # greedy tokens of the same F32 weights
