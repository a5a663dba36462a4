import numpy as np
import pytest
import torch

from lightweight.course import checks
from lightweight.llm import fast
from lightweight.llm import lowbit as L
from lightweight.course.checks import ch07


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def test_every_path_builds_generates_and_leaves_the_model_alone():
    model = _tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = torch.randint(128, (1, 5), generator=torch.Generator().manual_seed(0))
    runs = {}
    for name in fast.PATHS:
        m = fast.build_path(model, name)
        runs[name] = fast.generator(m, prompt, 3)
    assert isinstance(fast.build_path(model, "int4-ours-head").lm_head, L.Int4WeightOnlyLinear)
    rates = fast.interleaved_rates(runs, tokens_per_run=3, rounds=1, progress=False)
    assert set(rates) == set(fast.PATHS) and all(r > 0 for r in rates.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="unknown path"):
        fast.build_path(model, "int2")
    with pytest.raises(ValueError, match="batch"):
        fast.generator(model, prompt[0], 3)


def test_interleaved_rates_are_tokens_over_median_time(monkeypatch):
    clock = iter([0.0, 1.0, 1.0, 3.0, 3.0, 5.0, 5.0, 5.5, 5.5, 9.5, 9.5, 10.0])
    monkeypatch.setattr(fast.time, "perf_counter", lambda: next(clock))
    rates = fast.interleaved_rates({"a": lambda: None, "b": lambda: None}, 10, rounds=3, warmup=0, progress=False)
    # interleaved: a took 1, 2, 4 s (median 2); b took 2, 0.5, 0.5 s (median 0.5)
    assert rates == {"a": 5.0, "b": 20.0}
    with pytest.raises(ValueError):
        fast.interleaved_rates({"a": lambda: None}, 10, rounds=0)


def test_llama_cpp_message_when_missing():
    if fast.llama_cpp_available():
        pytest.skip("llama-cpp-python is installed here")
    with pytest.raises(ModuleNotFoundError, match="course.py deploy"):
        fast.LlamaCpp("x.gguf")


def _run(check, fn):
    assert check(fn) is None
    return checks.RESULTS[-1]


def test_ch07_right_answers_pass_and_typical_mistakes_get_hints():
    right = {
        ch07.int4_bytes: lambda o, i, g: o * i // 2 + o * (i // g) * 4,
        ch07.compute_bound_batch: lambda b, f, bw, p: b * p / (bw * f),
        ch07.q4_0_block: lambda q, d: np.float16(d).tobytes() + bytes(
            (int(q[j]) + 8) | ((int(q[j + 16]) + 8) << 4) for j in range(16)),
        ch07.int4_table: lambda s, z: torch.stack([s.t(), (-z * s).t()], dim=-1),
        ch07.permute_qk: lambda w, h: w.reshape(h, 2, w.shape[0] // h // 2, w.shape[1]).transpose(1, 2).reshape(w.shape),
    }
    for check, fn in right.items():
        assert _run(check, fn).status == "pass", check.__name__
    wrong = [
        (ch07.int4_bytes, lambda o, i, g: o * i // 2, "scale"),
        (ch07.int4_bytes, lambda o, i, g: o * i // 2 + o * (i // g) * 2, "4 byte"),
        (ch07.compute_bound_batch, lambda b, f, bw, p: bw * f / (b * p), "nghịch đảo"),
        (ch07.q4_0_block, lambda q, d: np.float16(d).tobytes() + bytes(
            (int(q[2 * j]) + 8) | ((int(q[2 * j + 1]) + 8) << 4) for j in range(16)), "u[j+16]"),
        (ch07.q4_0_block, lambda q, d: np.float32(d).tobytes() + bytes(16), "18 byte"),
        (ch07.int4_table, lambda s, z: torch.stack([s.t(), (z * s).t()], dim=-1), "dấu"),
        (ch07.int4_table, lambda s, z: torch.stack([s, -z * s], dim=-1), "hình dạng"),
        (ch07.permute_qk, lambda w, h: w.reshape(h, w.shape[0] // h // 2, 2, w.shape[1]).transpose(1, 2).reshape(w.shape),
         "phép ngược"),
        (ch07.permute_qk, lambda w, h: w, "xen kẽ"),
    ]
    for check, fn, hint in wrong:
        r = _run(check, fn)
        assert r.status == "fail" and hint in r.message, (check.__name__, r.message)
    def todo(*a):
        raise NotImplementedError()
    assert _run(ch07.int4_bytes, todo).status == "not attempted"


def test_static_generator_gives_the_greedy_tokens_of_generate():
    model = _tiny_llama()
    prompt = torch.randint(128, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, min_new_tokens=6,
                                  do_sample=False, pad_token_id=0)[:, 5:]
    got = fast.static_generator(model, prompt, 6)()
    assert got.shape == (2, 6) and torch.equal(got, expected)
    with pytest.raises(ValueError, match="new_tokens"):
        fast.static_generator(model, prompt, 0)


def test_gptq_int4_gives_symmetric_groups_for_every_block_linear_and_leaves_the_model_alone():
    model = _tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    windows = torch.randint(128, (4, 16), generator=torch.Generator().manual_seed(2))
    qts = fast.gptq_int4(model, windows, group_size=32, progress=False)
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")}
    assert set(qts) == linears
    for name, qt in qts.items():
        w = model.get_submodule(name).weight
        assert qt.bits == 4 and qt.group_size == 32 and qt.q.shape == w.shape
        assert int(qt.q.min()) >= -8 and int(qt.q.max()) <= 7 and bool((qt.zero == 0).all())
        assert float((qt.dequantize() - w).norm() / w.norm()) < 0.2, name  # a 4-bit copy, not noise
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    m = fast.build_path(model, "int4-ours", qtensors=qts)
    layer = m.get_submodule("model.layers.0.mlp.down_proj")
    ref = qts["model.layers.0.mlp.down_proj"].dequantize()
    assert float((layer.dequantized_weight() - ref).norm() / ref.norm()) < 0.01
