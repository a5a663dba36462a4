"""AWQ as the paper does it (lightweight.llm.awq): scale groups, folding, the searches, the lab's ablations."""

import copy

import pytest
import torch
import torch.nn as nn

from lightweight import quantize as Q
from lightweight.llm import awq as A
from lightweight.llm import model as llm

from test_llm import ids, tiny_llama


def mha_llama(layers: int = 2) -> nn.Module:
    """A tiny Llama without grouped-query attention (v_proj's outputs are o_proj's inputs)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=True)
    torch.manual_seed(3)
    return LlamaForCausalLM(cfg).eval()


def _randomise_gains_(model: nn.Module) -> None:
    """Non-trivial RMSNorm gains (a fresh model has all ones, which would hide a folding mistake)."""
    with torch.no_grad():
        for block in model.model.layers:
            for norm in (block.input_layernorm, block.post_attention_layernorm):
                norm.weight.copy_(0.5 + torch.rand(norm.weight.shape))


@pytest.mark.parametrize("make", [tiny_llama, mha_llama], ids=["gqa", "mha"])
def test_folding_every_scale_group_leaves_the_fp32_model_unchanged(make):
    model = make()
    _randomise_gains_(model)
    x = ids(12)
    with torch.no_grad():
        before = model(x).logits
        gen = torch.Generator().manual_seed(0)
        for block in model.model.layers:
            for g in A.scale_groups(block):
                layers = [block.get_submodule(n) for n in g.layers]
                s = torch.exp(torch.randn(layers[0].in_features, generator=gen))
                A.fold_scales_(block.get_submodule(g.prev), layers, s)
        after = model(x).logits
    assert not torch.equal(before, after)  # the weights did change ...
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4)  # ... the function did not


def test_scale_groups_skip_v_to_o_only_with_grouped_query_attention():
    gqa = [g.prev for g in A.scale_groups(tiny_llama().model.layers[0])]
    mha = [g.prev for g in A.scale_groups(mha_llama().model.layers[0])]
    assert gqa == ["input_layernorm", "post_attention_layernorm", "mlp.up_proj"]
    assert mha == ["input_layernorm", "self_attn.v_proj", "post_attention_layernorm", "mlp.up_proj"]


def test_fold_scales_refuses_bad_scales():
    block = tiny_llama().model.layers[0]
    layers = [block.mlp.gate_proj, block.mlp.up_proj]
    with pytest.raises(ValueError, match="positive"):
        A.fold_scales_(block.post_attention_layernorm, layers, torch.zeros(32))
    with pytest.raises(ValueError, match="reads 32 inputs"):
        A.fold_scales_(block.post_attention_layernorm, layers, torch.ones(16))
    with pytest.raises(ValueError, match="gain"):
        A.fold_scales_(nn.ReLU(), layers, torch.ones(32))


def test_the_scale_search_starts_at_round_to_nearest_and_keeps_the_smallest_error():
    g = torch.Generator().manual_seed(0)
    st = A.ActStats(64)
    st.add(torch.randn(256, 64, generator=g) * torch.exp(2 * torch.rand(64, generator=g)))
    ws = [torch.randn(16, 64, generator=g), torch.randn(8, 64, generator=g)]
    s, alpha, errors = A.search_scale(ws, st, 3, 32, n_grid=10)
    rtn = sum(Q.output_error(w, Q.fake_quantize(w, 3, 32, symmetric=False), st.H) for w in ws)
    assert len(errors) == 11 and errors[0] == pytest.approx(rtn, rel=1e-9)
    assert min(errors) == errors[round(alpha * 10)] and min(errors) < rtn
    assert s.shape == (64,) and bool((s > 0).all())


def test_the_module_search_measures_the_whole_attention_and_restores_the_weights():
    model = tiny_llama(layers=1)
    _randomise_gains_(model)
    block = model.model.layers[0]
    attn = block.self_attn
    layers = [attn.q_proj, attn.k_proj, attn.v_proj]
    calls, remove = A.record_calls({"self_attn": attn}, 1)
    try:
        stats = A.collect_act_stats(block, lambda: model.model(ids(16, batch=2), use_cache=False), ["self_attn.q_proj"])
    finally:
        remove()
    args, kwargs = calls["self_attn"][0]
    before = [lin.weight.detach().clone() for lin in layers]
    s, alpha, errors = A.search_scale_on_module(attn, calls["self_attn"], layers, stats["self_attn.q_proj"], 3, 16, n_grid=8)
    assert all(torch.equal(lin.weight, w) for lin, w in zip(layers, before))  # restored
    with torch.no_grad():
        ref = attn(*args, **kwargs)[0]
        rtn = copy.deepcopy(attn)
        for lin in (rtn.q_proj, rtn.k_proj, rtn.v_proj):
            lin.weight.copy_(Q.fake_quantize(lin.weight, 3, 16, symmetric=False))
        err_rtn = float((rtn(*args, **kwargs)[0] - ref).double().pow(2).sum())
    assert len(errors) == 9 and errors[0] == pytest.approx(err_rtn, rel=1e-6)  # alpha = 0: RTN, measured after o_proj
    assert min(errors) == errors[round(alpha * 8)] and s.shape == (32,)
    with pytest.raises(ValueError, match="no recorded inputs"):
        A.search_scale_on_module(attn, [], layers, stats["self_attn.q_proj"], 3, 16)
    with pytest.raises(ValueError, match="loss must be"):
        A.awq_block_(block, lambda: None, 3, 16, loss="block")


@pytest.mark.parametrize("symmetric", [True, False])
def test_clipping_is_never_worse_than_the_full_range(symmetric):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(512, 64, generator=g)
    H = (X.T @ X).double()
    w = torch.randn(24, 64, generator=g)
    w[0, 3] = 8.0  # an outlier that clipping should cut
    full = Q.quantize_tensor(w, 3, 32, symmetric)
    clipped = A.clip_quantize(w, H, 3, 32, symmetric)
    assert Q.output_error(w, clipped.dequantize(), H) < Q.output_error(w, full.dequantize(), H)
    assert (clipped.zero == 0).all() if symmetric else (clipped.zero != 0).any()
    lo, hi = Q.qrange(3, symmetric)
    assert int(clipped.q.min()) >= lo and int(clipped.q.max()) <= hi
    with pytest.raises(ValueError, match="H must be"):
        A.clip_quantize(w, H[:32, :32], 3, 32)


def test_awq_block_quantizes_every_linear_without_extra_stored_vectors():
    model = tiny_llama(layers=2)
    rtn = copy.deepcopy(model)
    alphas = []
    llm.compress_blockwise_(model, ids(16, batch=4), lambda b, run: alphas.append(A.awq_block_(b, run, 4, 16)),
                            progress=False)
    assert all(isinstance(model.get_submodule(n), Q.QuantizedLinear) for n in llm.block_linears(model))
    assert all(set(a) == {"input_layernorm", "post_attention_layernorm", "mlp.up_proj"} for a in alphas)
    for n in llm.block_linears(rtn):
        lin = rtn.get_submodule(n)
        qt = Q.quantize_tensor(lin.weight, 4, 16, symmetric=False)
        from lightweight.calibration import set_module
        set_module(rtn, n, Q.QuantizedLinear(lin, qtensor=qt))
    assert llm.stored_bytes(model) == llm.stored_bytes(rtn)  # the scales live in the norms and weights


class _Caught(Exception):
    pass


def _block_inputs(model: nn.Module, index: int, windows: torch.Tensor) -> tuple[tuple, dict]:
    """The positional and keyword arguments block ``index`` receives for ``windows`` ``(N, T)``."""
    caught = []

    def catch(module, args, kwargs):
        caught.append((args, kwargs))
        raise _Caught

    hook = model.model.layers[index].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        with pytest.raises(_Caught):
            model.model(windows, use_cache=False)
    finally:
        hook.remove()
    return caught[0]


@pytest.mark.parametrize("symmetric,loss", [(True, "layers"), (False, "layers"), (False, "module")])
def test_awq_beats_round_to_nearest_on_real_smollm2_blocks(symmetric, loss):
    from lightweight.llm.evaluation import calibration_windows

    model, tok = llm.load_smollm2(verbose=False)
    args, kwargs = _block_inputs(model, 3, calibration_windows(tok, 2))
    block = model.model.layers[3]

    def out(b):
        y = b(*args, **kwargs)
        return y[0] if isinstance(y, tuple) else y

    with torch.no_grad():
        ref = out(block)
        rtn = copy.deepcopy(block)
        for lin in [m for m in rtn.modules() if isinstance(m, nn.Linear)]:
            lin.weight.copy_(Q.fake_quantize(lin.weight, 3, 64, symmetric))
        awq = copy.deepcopy(block)
        A.awq_block_(awq, lambda: out(awq), 3, 64, symmetric, loss=loss)
        err = {name: float((out(b) - ref).pow(2).sum()) for name, b in (("rtn", rtn), ("awq", awq))}
    assert err["awq"] < 0.7 * err["rtn"]


def test_salient_ablations_keep_or_scale_the_chosen_columns():
    model = tiny_llama(layers=1)
    name = "model.layers.0.mlp.down_proj"
    stats = A.collect_act_stats(model, llm.calibration_run(model, ids(16, batch=4)), [name])
    w0 = model.get_submodule(name).weight.detach().clone()
    keep = A.salient_channels(stats[name], w0, 0.1, "activation")
    assert keep.numel() == round(0.1 * 64) and set(keep.tolist()) == set(stats[name].mean_abs.topk(6).indices.tolist())
    kept = A.salient_keep_(copy.deepcopy(model), stats, 3, 16, 0.1).get_submodule(name).weight  # the lab's zero-point grid
    assert torch.equal(kept[:, keep], w0[:, keep].half().float())
    rest = torch.ones(64, dtype=torch.bool)
    rest[keep] = False
    assert torch.equal(kept[:, rest], Q.fake_quantize(w0, 3, 16, symmetric=False)[:, rest])
    scaled = A.salient_scale_(copy.deepcopy(model), stats, 3, 16, 0.1, 2.0).get_submodule(name).weight
    assert not torch.equal(scaled, Q.fake_quantize(w0, 3, 16, symmetric=False)) and not torch.equal(scaled[:, keep], w0[:, keep])
    by_weight = A.salient_channels(stats[name], w0, 0.1, "weight")
    assert set(by_weight.tolist()) == set(w0.abs().mean(0).topk(6).indices.tolist())
    with pytest.raises(ValueError, match="by must be"):
        A.salient_channels(stats[name], w0, 0.1, "gradient")
    with pytest.raises(ValueError, match="fraction"):
        A.salient_channels(stats[name], w0, 1.5, "random")


def test_an_awq_gptq_model_on_the_q4_0_grid_exports_with_its_folded_norms(tmp_path, monkeypatch):
    from lightweight.bench import llm as bench_llm
    from lightweight.llm import gguf_export as G

    fp32 = tiny_llama(layers=2)
    model = copy.deepcopy(fp32)

    def quantize(name, lin, st):
        return Q.gptq_quantize(lin.weight, st.H, 4, 32, act_order=True, shrink=10, full_range=True)

    llm.compress_blockwise_(model, ids(16, batch=4), lambda b, r: A.awq_block_(b, r, 4, 32, symmetric=True, quantize=quantize),
                            progress=False)
    monkeypatch.setattr(bench_llm._GGUF_DIR, "_dir", None)
    monkeypatch.setattr(bench_llm._Folder, "path", property(lambda self: tmp_path))
    monkeypatch.setattr(bench_llm, "verify_gguf", lambda: None)
    path = bench_llm._export_q4_0(model, fp32, "awq-gptq")
    back = G.read_gguf_weights(path, n_head=4, n_head_kv=2)
    for n in llm.block_linears(fp32):
        want = G.gguf_dequantized(bench_llm.qtensor_of(model.get_submodule(n)))
        assert torch.equal(back[G.gguf_name(n + ".weight")], want), n
    norm = model.model.layers[1].post_attention_layernorm.weight
    assert not torch.equal(norm, fp32.model.layers[1].post_attention_layernorm.weight)  # AWQ folded into it
    assert torch.equal(back["blk.1.ffn_norm.weight"], norm.detach())
