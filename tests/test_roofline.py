import pytest
import torch
import torch.nn as nn

from lightweight.llm import roofline as R


def test_matrix_bytes_of_each_layout():
    assert R.FORMATS["fp32"].matrix_bytes(10, 64) == 10 * 64 * 4
    assert R.FORMATS["bf16"].matrix_bytes(10, 64) == 10 * 64 * 2
    assert R.FORMATS["int8"].matrix_bytes(10, 64) == 10 * 64 + 10 * 2  # one BF16 scale per row
    assert R.FORMATS["int4-g32"].matrix_bytes(10, 64) == 10 * 32 + 10 * 2 * 4  # BF16 scale + zero per group
    assert R.FORMATS["q4_0"].matrix_bytes(1, 32) == 18  # llama.cpp's block: FP16 scale + 16 bytes
    assert R.FORMATS["q8_0"].matrix_bytes(1, 32) == 34
    with pytest.raises(ValueError, match="does not divide"):
        R.FORMATS["int4-g64"].matrix_bytes(4, 576 + 32)
    with pytest.raises(ValueError, match="positive"):
        R.FORMATS["fp32"].matrix_bytes(0, 4)


def test_bytes_per_token_and_keep_float():
    shapes = {"a": (8, 32), "head": (100, 32)}
    assert R.bytes_per_token(shapes, "fp32") == 4 * (8 * 32 + 100 * 32)
    mixed = R.bytes_per_token(shapes, "int8", keep_float={"head": R.FORMATS["bf16"]})
    assert mixed == 8 * 32 + 8 * 2 + 100 * 32 * 2


class Tied(nn.Module):
    def __init__(self, tie: bool):
        super().__init__()
        self.emb = nn.Embedding(100, 16)
        self.body = nn.Linear(16, 16, bias=False)
        self.head = nn.Linear(16, 100, bias=False)
        if tie:
            self.head.weight = self.emb.weight


def test_read_bytes_counts_a_tied_table_once_and_an_untied_one_by_row():
    tied, untied = Tied(True), Tied(False)
    assert R.read_bytes_per_token(tied) == 4 * (16 * 16 + 100 * 16)
    assert R.read_bytes_per_token(untied) == 4 * (16 * 16 + 100 * 16 + 16)
    assert R.linear_shapes(tied) == {"body": (16, 16), "head": (100, 16)}


def test_bounds_arithmetic():
    assert R.tokens_per_s_bound(1e9, 20) == pytest.approx(20.0)
    # 1 GB per token at 20 GB/s: 50 ms per step; 2 GFLOP per token at 400 GFLOP/s: 5 ms per token
    assert R.compute_bound_batch(1e9, 2e9, 20, 400) == pytest.approx(10.0)
    assert R.decode_bound(1, 1e9, 2e9, 20, 400) == pytest.approx(20.0)
    assert R.decode_bound(10, 1e9, 2e9, 20, 400) == pytest.approx(200.0)
    assert R.decode_bound(40, 1e9, 2e9, 20, 400) == pytest.approx(200.0)  # compute-bound: flat
    assert R.flops_per_token({"a": (3, 5), "b": (2, 2)}) == 2 * 15 + 2 * 4
    with pytest.raises(ValueError):
        R.decode_bound(0, 1, 1, 1, 1)
    with pytest.raises(ValueError):
        R.tokens_per_s_bound(0, 1)


def test_measurements_return_positive_numbers():
    bw = R.memory_bandwidth(16, repeats=1)
    assert bw["copy"] > 0 and bw["read"] > 0
    assert R.matmul_peak(64, repeats=1) > 0
    with pytest.raises(ValueError):
        R.memory_bandwidth(1)


def _ao_stored_bytes(ao: nn.Module) -> int:
    from lightweight import libref

    return sum(t.numel() * t.element_size() for m in ao.modules() if libref.is_ao_int8_linear(m)
               for t in libref.ao_int8_weight(m).values())


@pytest.mark.parametrize("bias", [False, True])
def test_read_bytes_of_torch_ao_dynamic_int8_are_its_stored_int8_plus_what_stays_fp32(bias):
    from lightweight import libref
    from lightweight.measure import safetensors_bytes

    model = Tied(True)
    if bias:
        model.body = nn.Linear(16, 16)
    ao = libref.ao_dynamic_int8(model)  # converts the tied head too: INT8 copy, the table stays FP32
    stored = _ao_stored_bytes(ao)
    assert stored == (16 * 16 + 16 * (4 + 1)) + (100 * 16 + 100 * (4 + 1))  # INT8 + FP32 scale + INT8 zero per row
    kept_fp32 = 16 * 4 + (16 * 4 if bias else 0)  # one embedding row per token (the head no longer reads it), the bias
    assert R.read_bytes_per_token(ao) == stored + kept_fp32
    # the stored size counts the same tensors (safetensors adds only its header)
    int8 = {f"{n}.{k}": t for n, m in ao.named_modules() if libref.is_ao_int8_linear(m)
            for k, t in libref.ao_int8_weight(m).items()}
    assert libref.ao_linear_weight_bytes(model)[1] == safetensors_bytes(int8)
    # the old bound counted the head in FP32 while the size counted it in INT8
    old = R.bytes_per_token(R.linear_shapes(model), "int8", keep_float={"head": R.FORMATS["fp32"]})
    assert old > R.read_bytes_per_token(ao) + 100 * 16 * 2


def test_benchmark_bound_of_torch_ao_counts_its_int8_head():
    from lightweight import libref
    from lightweight.bench import fast as bench_fast

    model = Tied(True)
    ao = libref.ao_dynamic_int8(model)
    read = bench_fast.read_bytes({"fp32": model, "int8-ours": model, "torch.ao-int8-dynamic": ao, "torchao-int8": model})
    assert read["fp32"] == 4 * (16 * 16 + 100 * 16)
    assert read["torchao-int8"] == read["int8-ours"]
    assert read["torch.ao-int8-dynamic"] == _ao_stored_bytes(ao) + 16 * 4


def _smollm2_config():
    from transformers import LlamaConfig

    # SmolLM2-135M's config.json: 30 layers, hidden 576, 9 query heads, 3 key-value heads (head_dim 64)
    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192)


def test_kv_cache_bytes_of_smollm2():
    cfg = _smollm2_config()
    assert R.kv_shape(cfg) == R.KVShape(layers=30, kv_heads=3, head_dim=64)
    assert R.kv_bytes_per_token(cfg) == 2 * 30 * 3 * 64 * 4 == 46_080
    assert R.kv_bytes_per_token(cfg, torch.bfloat16) == R.kv_bytes_per_token(cfg, 2) == 23_040
    assert R.kv_cache_bytes(cfg, 4096, torch.bfloat16) == 4096 * 23_040  # 94 MB: more than the INT4 weights
    assert R.kv_cache_bytes(cfg, 0) == 0
    # a model (its .config) works too; without num_key_value_heads every head is cached
    from types import SimpleNamespace

    mha = SimpleNamespace(num_hidden_layers=2, hidden_size=64, num_attention_heads=4)
    assert R.kv_shape(SimpleNamespace(config=mha)) == R.KVShape(2, 4, 16)
    with pytest.raises(ValueError):
        R.kv_cache_bytes(cfg, -1)
    with pytest.raises(ValueError):
        R.kv_bytes_per_token(cfg, 0)


def test_bytes_and_bound_with_the_cache_and_where_it_overtakes_the_weights():
    assert R.decode_bytes_per_token(1000, 10, 0) == 1000
    assert R.decode_bytes_per_token(1000, 10, 50) == 1500
    assert R.context_bound(1e9, 1e6, 0, 20) == pytest.approx(20.0)
    assert R.context_bound(1e9, 1e6, 1000, 20) == pytest.approx(10.0)  # the cache doubles the bytes
    assert R.context_bound(1e9, 1e6, 1000, 20, batch=4) == pytest.approx(4 * 20 / 5)  # one read of weights, 4 caches
    assert R.cache_overtakes_weights(1000, 10) == 101  # 100 tokens: equal; 101: the cache is larger
    assert R.cache_overtakes_weights(1001, 10) == 101
    # SmolLM2: aten INT4 g32 everywhere (84,049,920 bytes) with a BF16 cache; FP32 with an FP32 cache
    assert R.cache_overtakes_weights(84_049_920, 23_040) == 3649
    assert R.cache_overtakes_weights(R.bytes_per_token({"w": (64, 64)}, "fp32"), 46_080) == 1
    assert R.cache_overtakes_weights(537_919_488, 46_080) == 11_674  # beyond the 8,192-token context
    with pytest.raises(ValueError):
        R.cache_overtakes_weights(1000, 0)
    with pytest.raises(ValueError):
        R.context_bound(1e9, 1e6, 10, 20, batch=0)
