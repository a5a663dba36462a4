import pytest
import torch
import torch.nn as nn

from lightweight.llm import lowbit as L
from lightweight import quantize as Q


def _linear(out_f, in_f, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f, bias=bias)


def _rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("shape", [(24, 64), (1536, 576), (576, 1536), (40, 48)])
def test_int8_matches_the_dequantized_weights(shape):
    lin = _linear(*shape)
    qt = Q.quantize_tensor(lin.weight, bits=8)
    layer = L.Int8WeightOnlyLinear(lin, qt)
    # the kernel takes its scales in the activations' dtype: BF16-rounded scales, the same integers
    assert torch.equal(layer.weight_int8, qt.q)
    assert torch.equal(layer.dequantized_weight(), qt.q.float() * qt.scale.bfloat16().float())
    assert _rel(layer.dequantized_weight(), qt.dequantize()) < 0.005
    x = torch.randn(3, 5, shape[1])
    ref = nn.functional.linear(x, qt.dequantize(), lin.bias)
    y = layer(x)
    assert y.shape == (3, 5, shape[0]) and y.dtype == torch.float32
    assert _rel(y, ref) < 0.01  # BF16 activations and outputs
    fp32 = L.Int8WeightOnlyLinear(lin, qt, act_dtype=torch.float32)
    assert _rel(fp32(x), ref) < 1e-5


def test_int8_refuses_input_sizes_the_kernel_gets_wrong():
    lin = _linear(32, 40)
    # (calling the raw kernel here gives wrong numbers, or reads out of bounds and crashes)
    with pytest.raises(ValueError, match="multiple of 16"):
        L.Int8WeightOnlyLinear(lin)
    with pytest.raises(ValueError, match="per-channel"):
        L.Int8WeightOnlyLinear(_linear(8, 64), Q.quantize_tensor(_linear(8, 64).weight, bits=8, group_size=32))


@pytest.mark.parametrize("group_size", [32, 64])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_packing_and_numerics(group_size, symmetric):
    lin = _linear(48, 192)
    qt = Q.quantize_tensor(lin.weight, bits=4, group_size=group_size, symmetric=symmetric)
    layer = L.Int4WeightOnlyLinear(lin, qt)
    assert layer.weight_int4pack.dtype == torch.uint8 and layer.weight_int4pack.shape == (48, 96)
    assert layer.scales_and_zeros.shape == (192 // group_size, 48, 2)
    # the weight the kernel computes with (read back through an identity input) is dequantized_weight()
    eye = torch.eye(192, dtype=torch.bfloat16)
    assert _rel(layer.dequantized_weight(), layer._kernel(eye).float().t()) < 0.005
    assert _rel(layer.dequantized_weight(), qt.dequantize()) < 0.01
    x = torch.randn(7, 192)
    ref = nn.functional.linear(x, qt.dequantize(), lin.bias)
    assert _rel(layer(x), ref) < 0.01
    assert _rel(L.Int4WeightOnlyLinear(lin, qt, act_dtype=torch.float32)(x), ref) < 1e-4


def test_int4_input_checks():
    lin = _linear(16, 96)
    with pytest.raises(ValueError, match="groups of"):
        L.Int4WeightOnlyLinear(lin, Q.quantize_tensor(lin.weight, bits=4, group_size=48))
    with pytest.raises(ValueError, match="4-bit"):
        L.Int4WeightOnlyLinear(lin, Q.quantize_tensor(lin.weight, bits=8))
    with pytest.raises(ValueError, match="act_dtype"):
        L.Int4WeightOnlyLinear(lin, act_dtype=torch.float16)
    with pytest.raises(ValueError, match="inputs"):
        L.Int4WeightOnlyLinear(lin)(torch.randn(2, 95))


def test_gptq_and_quantized_linear_results_plug_in():
    lin = _linear(32, 64)
    x = torch.randn(256, 64)
    qt = Q.gptq_quantize(lin.weight, x.t() @ x, bits=4, group_size=32)
    layer = L.Int4WeightOnlyLinear(lin, qt)
    assert _rel(layer(x), nn.functional.linear(x, qt.dequantize(), lin.bias)) < 0.01
    ql = Q.QuantizedLinear(lin, bits=4, group_size=32)
    back = L.qtensor_of(ql)
    assert torch.equal(back.q, Q.quantize_tensor(lin.weight, bits=4, group_size=32).q)


def _tiny_llama(tie=True):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tie)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("bits", [8, 4])
def test_swap_into_a_llama_model(bits):
    model = _tiny_llama()
    ids = torch.randint(128, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
    left = L.swap_(model, bits=bits, group_size=32)
    assert left == []
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert n_linear == 1 and isinstance(model.lm_head, nn.Linear)  # the tied head kept
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert len(L.lowbit_layers(model)) == 2 * 7
    with torch.no_grad():
        out = model(ids).logits
    assert _rel(out, ref) < (0.05 if bits == 8 else 0.3)
    gen = model.generate(ids[:1, :4], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 9)


def test_swap_unties_and_quantizes_the_head():
    model = _tiny_llama()
    L.swap_(model, bits=4, group_size=32, lm_head=True)
    assert isinstance(model.lm_head, L.Int4WeightOnlyLinear)
    assert model.config.tie_word_embeddings is False
    assert isinstance(model.model.embed_tokens, nn.Embedding)
    eight = _tiny_llama()
    emb = eight.model.embed_tokens.weight.detach().clone()
    L.swap_(eight, bits=4, group_size=32, lm_head=8)
    assert isinstance(eight.lm_head, L.Int8WeightOnlyLinear)
    assert isinstance(eight.model.layers[0].mlp.down_proj, L.Int4WeightOnlyLinear)
    w = eight.model.embed_tokens.weight
    assert w.dtype == torch.float32 and _rel(eight.lm_head.dequantized_weight(), w) < 0.01  # INT8 copy of the embedding
    assert torch.equal(emb, w)  # the embedding itself is left as it was
    with pytest.raises(ValueError, match="lm_head"):
        L.swap_(_tiny_llama(), bits=4, lm_head=2)


def test_swap_leaves_float_what_int8_cannot_run_and_checks_names():
    model = nn.Sequential(nn.Linear(40, 32), nn.Linear(32, 16))
    assert L.swap_(model, bits=8) == ["0"]
    assert isinstance(model[0], nn.Linear) and isinstance(model[1], L.Int8WeightOnlyLinear)
    with pytest.raises(ValueError, match="not swapped"):
        L.swap_(nn.Sequential(nn.Linear(32, 32)), bits=4, qtensors={"x": None})
    with pytest.raises(ValueError, match="bits"):
        L.swap_(nn.Sequential(nn.Linear(32, 32)), bits=3)


def test_dense_copy_computes_what_the_kernels_compute():
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
    L.swap_(model, bits=4, group_size=32)
    four = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
    L.swap_(four, bits=8)
    x = torch.randn(5, 64)
    for low in (model, four):
        dense = L.dense_copy(low)
        assert not L.lowbit_layers(dense) and L.lowbit_layers(low), "a copy: the low-bit model is untouched"
        assert all(isinstance(m, nn.Linear) and m.weight.dtype == torch.float32 for m in (dense[0], dense[2]))
        assert _rel(dense(x), low(x)) < 0.01  # only the BF16 rounding of activations differs


def test_dense_copy_folds_an_input_scale():
    lin = _linear(32, 64)
    s = torch.rand(64) + 0.5
    layer = L.Int4WeightOnlyLinear(lin, Q.quantize_tensor(lin.weight, bits=4, group_size=32), act_dtype=torch.float32)
    layer.input_scale = s
    x = torch.randn(3, 64)
    assert _rel(L.dense_copy(nn.Sequential(layer))(x), layer(x)) < 1e-4


def test_the_kernel_probe_decides_by_the_measured_ratio():
    assert L.KernelProbe(int4_s=1.0, bf16_s=1.7).vectorised  # AVX-512 here, one thread
    assert L.KernelProbe(int4_s=1.0, bf16_s=1.15).vectorised  # AVX2
    assert not L.KernelProbe(int4_s=8.0, bf16_s=1.0).vectorised  # the scalar fallback
    threads = torch.get_num_threads()
    probe = L.probe_int4_kernel(repeats=3)
    assert probe.int4_s > 0 and probe.bf16_s > 0 and probe.ratio == probe.bf16_s / probe.int4_s
    assert torch.get_num_threads() == threads, "the probe runs on one thread and gives the others back"


def test_aten_reads_a_non_contiguous_table_wrongly_so_the_module_keeps_it_contiguous():
    lin = _linear(48, 192)
    qt = Q.quantize_tensor(lin.weight, bits=4, group_size=32, symmetric=False)
    table = L.int4_scales_and_zeros(qt)
    view = table.transpose(0, 1).contiguous().transpose(0, 1)  # the same numbers, another memory layout
    assert torch.equal(view, table) and table.is_contiguous() and not view.is_contiguous()
    packed, x = L.pack_int4_for_cpu(qt), torch.randn(3, 192).bfloat16()
    good = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, table)
    bad = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, 32, view)
    assert _rel(bad, good) > 0.05, "aten no longer misreads a non-contiguous table: update chapter 7's trap"
    assert L.Int4WeightOnlyLinear(lin, qt).scales_and_zeros.is_contiguous()
