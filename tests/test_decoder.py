"""The lean decoder (chapter 8): the same function as transformers' Llama, the same greedy tokens,
pluggable low-bit layers, and its timing protocol."""

import pytest
import torch

from lightweight.llm import decoder as D
from lightweight.llm import fast
from lightweight.llm import kernel as K
from lightweight.llm import lean as LN
from lightweight.llm import lowbit as L


def _tiny_llama(heads: int = 4, kv: int = 2, tied: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=heads,
                      num_key_value_heads=kv, max_position_embeddings=64, tie_word_embeddings=tied, rope_theta=500.0)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("heads,kv,tied", [(4, 2, True), (4, 4, False), (4, 1, True)])
def test_lean_logits_equal_transformers(heads, kv, tied):
    model = _tiny_llama(heads, kv, tied)
    lean = D.from_hf(model)
    ids = torch.randint(96, (2, 11), generator=torch.Generator().manual_seed(1))
    lean.setup_cache(2, 16)
    with torch.inference_mode():
        got = lean(ids, torch.arange(11), last_only=False)
        want = model(ids).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def test_prefill_then_steps_equal_one_forward():
    """Feeding the tokens one by one through the cache gives the logits of the whole sequence."""
    model = _tiny_llama()
    lean = D.from_hf(model)
    ids = torch.randint(96, (1, 9), generator=torch.Generator().manual_seed(2))
    lean.setup_cache(1, 12)
    with torch.inference_mode():
        whole = lean(ids, torch.arange(9), last_only=False)
        lean.setup_cache(1, 12)
        lean(ids[:, :4], torch.arange(4))
        steps = [lean(ids[:, p:p + 1], torch.tensor([p])) for p in range(4, 9)]
    assert torch.allclose(torch.stack(steps, 1), whole[:, 4:], atol=1e-5)


def test_greedy_tokens_equal_generate():
    model = _tiny_llama()
    prompt = torch.randint(96, (1, 5), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        want = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, min_new_tokens=12,
                              do_sample=False, pad_token_id=0)[:, 5:]
    got = D.LeanLoop(D.from_hf(model)).generate(prompt, 12)
    assert torch.equal(got, want)


def test_bf16_path_stays_close_and_source_is_untouched():
    model = _tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lean = D.from_hf(model)
    bf16 = LN.build_lean(lean, "bf16")
    ids = torch.randint(96, (1, 8), generator=torch.Generator().manual_seed(4))
    for m in (lean, bf16):
        m.setup_cache(1, 8)
    with torch.inference_mode():
        a, b = lean(ids, torch.arange(8), last_only=False), bf16(ids, torch.arange(8), last_only=False)
    assert b.dtype == torch.float32 and (a - b).abs().max() < 0.05 * a.abs().max()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert lean.blocks[0].wqkv.weight.dtype == torch.float32


def test_int4_paths_compute_with_the_same_integers():
    """aten's INT4 layers and our numba layers hold the same integers: their dequantized weights agree,
    and the two decoders' logits agree up to BF16 activations."""
    model = _tiny_llama()
    lean = D.from_hf(model)
    qts = LN.rtn_int4(lean)
    aten, numba_ = LN.build_lean(lean, "int4-aten", qts), LN.build_lean(lean, "int4-numba", qts)
    for name in D.block_linears(lean):
        i, attr = name.split(".")[1:]
        wa = getattr(aten.blocks[int(i)], attr).dequantized_weight()
        wn = getattr(numba_.blocks[int(i)], attr).dequantized_weight()
        assert torch.allclose(wa, wn, rtol=1e-2, atol=1e-3)  # aten keeps its scales in BF16
    assert isinstance(aten.head, L.Int8WeightOnlyLinear) and isinstance(numba_.head, K.Int8Linear)
    ids = torch.randint(96, (1, 6), generator=torch.Generator().manual_seed(5))
    for m in (aten, numba_):
        m.setup_cache(1, 8)
    with torch.inference_mode():
        a, b = aten(ids, torch.arange(6)), numba_(ids, torch.arange(6))
    assert (a - b).abs().max() < 0.05 * b.abs().max()


def test_gptq_names_are_fused_in_row_order():
    model = _tiny_llama()
    from lightweight import quantize as Q

    hf = {n: Q.quantize_tensor(m.weight, bits=4, group_size=32) for n, m in model.named_modules()
          if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")}
    fused = D.fuse_qtensors(hf, 2)
    q = fused["blocks.1.wqkv"].q
    assert torch.equal(q, torch.cat([hf[f"model.layers.1.self_attn.{p}_proj"].q for p in "qkv"]))
    assert torch.equal(fused["blocks.0.w13"].scale, torch.cat([hf["model.layers.0.mlp.gate_proj"].scale,
                                                               hf["model.layers.0.mlp.up_proj"].scale]))
    del hf["model.layers.1.mlp.up_proj"]
    with pytest.raises(KeyError, match="up_proj"):
        D.fuse_qtensors(hf, 2)


def test_lean_loop_times_like_the_other_timers():
    model = _tiny_llama()
    loop = D.LeanLoop(D.from_hf(model))
    context = torch.randint(96, (1, 10), generator=torch.Generator().manual_seed(6))
    out = fast.time_pp_tg({"lean": loop, "loop": fast.LoopTimer(model)}, context, 4, rounds=2, progress=False)
    assert out["lean"].tg.n == 2 and out["lean"].pp.median > 0 and out["lean"].context == 10
    assert loop.cache_bytes_per_token() == fast.LoopTimer(model).loop.model.config.num_hidden_layers * 2 * 2 * 16 * 4
    with pytest.raises(ValueError, match="slots"):
        loop.decode(torch.zeros(1, 1, dtype=torch.long), 10, 20)


def test_clear_errors():
    model = _tiny_llama()
    lean = D.from_hf(model)
    with pytest.raises(RuntimeError, match="setup_cache"):
        lean(torch.zeros(1, 2, dtype=torch.long), torch.arange(2))
    with pytest.raises(ValueError, match="slots"):
        lean.setup_cache(1, 1000)
    with pytest.raises(ValueError, match="unknown path"):
        LN.build_lean(lean, "int3")
    model.config.attention_bias = True
    with pytest.raises(ValueError, match="bias"):
        D.LlamaShape.of(model.config)


def test_step_profile_splits_kernels_from_the_rest():
    model = _tiny_llama()
    loop = D.LeanLoop(D.from_hf(model))
    prompt = torch.randint(96, (1, 4), generator=torch.Generator().manual_seed(7))
    prof = LN.step_profile(lambda: loop.generate(prompt, 5), tokens=5)
    assert 0 < prof.kernel_s < prof.total_s and 0 < prof.kernel_share < 1
    assert prof.ops > 2 * 5  # at least the five matrices of each of two blocks... per token, and more
    with pytest.raises(ValueError):
        LN.step_profile(lambda: None, 0)


def test_using_swaps_the_pieces_and_restores_them():
    model = _tiny_llama()
    loop = D.LeanLoop(D.from_hf(model))
    prompt = torch.randint(96, (1, 5), generator=torch.Generator().manual_seed(8))
    want = loop.generate(prompt, 6)
    calls = []

    def counting_norm(x, w, eps):
        calls.append(1)
        return D.rms_norm.__wrapped__(x, w, eps) if hasattr(D.rms_norm, "__wrapped__") else original(x, w, eps)

    original = D.rms_norm
    with D.using(rms_norm=counting_norm):
        got = loop.generate(prompt, 6)
    assert torch.equal(got, want) and len(calls) == 6 * (2 * 2 + 1)  # 2 norms per block, 2 blocks, + the final one
    assert D.rms_norm is original
    with D.using(attend=lambda q, k, v, pos: torch.zeros_like(q)):
        assert not torch.equal(loop.generate(prompt, 6), want)
    with pytest.raises(ValueError, match="only rms_norm"):
        with D.using(softmax=torch.softmax):
            pass


def test_real_smollm2_greedy_tokens_and_bf16_logits():
    from lightweight.llm.model import load_smollm2

    model, tok = load_smollm2(verbose=False)
    prompt = tok("The most important thing about a small computer is", return_tensors="pt").input_ids
    with torch.inference_mode():
        # no min_new_tokens: it would forbid the end-of-turn token, which this prompt reaches (generate stops there)
        want = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, do_sample=False,
                              pad_token_id=0)[:, prompt.shape[1]:]
        ref = model(prompt).logits[:, -1]
    lean = D.from_hf(model)
    got = D.LeanLoop(lean).generate(prompt, 24)
    assert want.shape[1] > 8 and torch.equal(got[:, : want.shape[1]], want)
    bf16 = LN.build_lean(lean, "bf16")
    bf16.setup_cache(1, prompt.shape[1])
    with torch.inference_mode():
        got = bf16(prompt, torch.arange(prompt.shape[1]))
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    assert got.argmax() == ref.argmax()
