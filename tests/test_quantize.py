import math

import pytest
import torch
import torch.nn as nn

from lightweight import quantize as Q
from lightweight.llm import lowbit


def test_pack_int4_roundtrip_is_exhaustive():
    values = torch.arange(-8, 8, dtype=torch.int8)
    pairs = torch.cartesian_prod(values, values)  # all 256 pairs of 4-bit values
    packed = Q.pack_int4(pairs)
    assert packed.shape == (256, 1) and packed.dtype == torch.uint8
    assert torch.equal(Q.unpack_int4(packed), pairs)
    assert sorted(packed.flatten().tolist()) == list(range(256))  # every byte pattern used exactly once


def test_pack_int4_bad_input():
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        Q.pack_int4(torch.tensor([8, 0], dtype=torch.int8))
    with pytest.raises(TypeError):
        Q.pack_int4(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="even"):
        Q.pack_int4(torch.tensor([1, 2, 3], dtype=torch.int8))


def test_symmetric_and_affine_quantization():
    w = torch.tensor([[-1.0, -0.5, 0.0, 0.25, 1.0, 2.0]])
    qt = Q.quantize_tensor(w, bits=8)
    assert qt.scale.item() == pytest.approx(2.0 / 127) and qt.q.max() == 127
    assert (qt.dequantize() - w).abs().max() <= qt.scale.item() / 2 + 1e-7
    qa = Q.quantize_tensor(w, bits=8, symmetric=False)
    assert qa.scale.item() == pytest.approx(3.0 / 255) and qa.q.min() == -128 and qa.q.max() == 127
    assert (qa.dequantize() - w).abs().max() <= qa.scale.item() / 2 + 1e-6


def test_granularity_orders_error():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g) * torch.logspace(-1, 1, 64)[:, None]  # rows of different scale
    err = {name: Q.mse(w, Q.fake_quantize(w, 4, **kw)) for name, kw in
           [("tensor", dict(per_tensor=True)), ("channel", {}), ("g128", dict(group_size=128)), ("g32", dict(group_size=32))]}
    assert err["tensor"] > err["channel"] > err["g128"] > err["g32"]
    assert Q.sqnr_db(w, Q.fake_quantize(w, 8)) > Q.sqnr_db(w, Q.fake_quantize(w, 4)) + 20  # ~6 dB per bit


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(bits=1), ValueError, "bits"), (dict(bits=9), ValueError, "bits"),
    (dict(bits=4, group_size=100), ValueError, "divisor"), (dict(bits=4, group_size=0), ValueError, "divisor"),
])
def test_quantize_tensor_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Q.quantize_tensor(torch.randn(4, 256), **kwargs)


def test_non_float_is_refused():
    with pytest.raises(TypeError, match="floating-point"):
        Q.quantize_tensor(torch.ones(4, 4, dtype=torch.long))


def test_quantized_linear_and_quantize_():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(5, 64)
    ref = model(x)
    Q.quantize_(model, bits=4, group_size=32)
    assert isinstance(model[0], Q.QuantizedLinear) and model[0].qweight.dtype == torch.uint8
    assert model[0].qweight.shape == (32, 32) and model[0].scale.dtype == torch.float16
    assert torch.allclose(model(x), ref, atol=0.3)
    state = Q.quantized_state(model)
    assert set(state) == {"0.qweight", "0.scale", "0.bias", "2.qweight", "2.scale", "2.bias"}
    with pytest.raises(ValueError, match="no nn.Linear"):
        Q.quantize_(nn.Sequential(nn.ReLU()))


def test_quantized_linear_stores_zero_points_only_when_it_has_them():
    lin = nn.Linear(64, 16)
    qt = Q.quantize_tensor(lin.weight + 0.3, 4, 32, symmetric=False)  # shifted rows: non-zero zero-points
    q = Q.QuantizedLinear(lin, qtensor=qt)
    assert q.zero.dtype == torch.int8 and q.zero.shape == (16, 2)
    assert torch.allclose(q.weight(), qt.dequantize(), atol=1e-2 * float(qt.scale.max()))  # FP16 scales
    assert torch.equal(lowbit.qtensor_of(q).zero, qt.zero) and "zero" in q.state_dict()
    assert Q.QuantizedLinear(lin, 4, 32).zero is None  # symmetric: nothing extra stored
    with pytest.raises(ValueError, match="integers"):
        Q.QuantizedLinear(lin, qtensor=Q.QTensor(qt.q, qt.scale, qt.zero + 0.5, 4, 32))


def test_percentile_and_calibration():
    x = torch.cat([torch.linspace(-1, 1, 9999), torch.tensor([100.0])])
    assert Q.percentile_clip(x, 100) == 100.0 and Q.percentile_clip(x, 99.9) <= 1.0
    with pytest.raises(ValueError, match="empty"):
        Q.percentile_clip(torch.empty(0))
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ValueError, match="empty"):
        Q.calibrate_activations(model, lambda: None)
    ranges = Q.calibrate_activations(model, lambda: model(torch.randn(16, 8)))
    assert ranges["0"].channel_max.shape == (8,)


def test_w8a8_outliers_and_smoothquant_help_on_outlier_channels():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(512, 64, generator=g)
    x[:, 3] *= 60.0  # one outlier channel, as in transformers
    model = nn.Sequential(lin)
    ranges = Q.calibrate_activations(model, lambda: model(x))
    ref = lin(x).detach()
    err = {}
    for name, kw in [("plain", {}), ("outliers", dict(outlier_threshold=10.0)), ("smooth", dict(smooth_alpha=0.5))]:
        q = nn.Sequential(nn.Linear(64, 32))
        q.load_state_dict(model.state_dict())
        Q.w8a8_(q, ranges, **kw)
        err[name] = Q.mse(ref, q(x).detach())
    assert err["outliers"] < 0.1 * err["plain"] and err["smooth"] < 0.5 * err["plain"]


def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4096, 128, generator=g) @ torch.randn(128, 128, generator=g)  # correlated features
    W = torch.randn(64, 128, generator=g)
    H = (X.T @ X).double()
    err = lambda Wq: float(((X @ W.T - X @ Wq.T) ** 2).mean())  # noqa: E731
    rtn = err(Q.fake_quantize(W, 4, 32))
    for act_order in (False, True):
        qt = Q.gptq_quantize(W, H, bits=4, group_size=32, act_order=act_order)
        assert qt.q.dtype == torch.int8 and qt.q.abs().max() <= 7 and qt.scale.shape == (64, 4)
        assert err(qt.dequantize()) < 0.7 * rtn
    with pytest.raises(ValueError, match="H must be"):
        Q.gptq_quantize(W, torch.eye(3), 4, 32)


def test_gptq_zero_points_and_clipping_search_lower_the_output_error():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4096, 128, generator=g) @ torch.randn(128, 128, generator=g)
    W = torch.randn(64, 128, generator=g) + 0.5  # shifted rows: a symmetric grid wastes levels
    H = (X.T @ X).double()
    err = lambda Wq: float(((X @ W.T - X @ Wq.T) ** 2).mean())  # noqa: E731
    for act_order in (False, True):
        sym = err(Q.gptq_quantize(W, H, 4, 32, act_order=act_order).dequantize())
        qt = Q.gptq_quantize(W, H, 4, 32, act_order=act_order, symmetric=False)
        assert qt.q.min() >= -8 and qt.q.max() <= 7 and int(qt.q.min()) == -8  # all 16 levels in use
        assert err(qt.dequantize()) < 0.8 * sym
        clipped = Q.gptq_quantize(W, H, 4, 32, act_order=act_order, symmetric=False, shrink=20)
        assert clipped.q.min() >= -8 and clipped.q.max() <= 7 and err(clipped.dequantize()) < 0.8 * sym


def test_group_grid_search_never_loses_to_the_full_range_and_keeps_rtn_without_shrink():
    w = torch.randn(16, 4, 32, generator=torch.Generator().manual_seed(1))
    w[:, :, 0] *= 8  # one large weight per group: clipping it pays off
    for symmetric in (True, False):
        s0, z0 = Q.group_grid(w, 4, symmetric)
        ref = Q.quantize_tensor(w.reshape(16, 128), 4, 32, symmetric)
        assert torch.allclose(s0, ref.scale.view(16, 4)) and torch.equal(z0, ref.zero.view(16, 4))
        s, z = Q.group_grid(w, 4, symmetric, shrink=50)
        qmin, qmax = Q.qrange(4, symmetric)
        err = lambda s, z: ((torch.clamp(torch.round(w / s[..., None]) + z[..., None], qmin, qmax)  # noqa: E731
                             - z[..., None]) * s[..., None] - w).abs().pow(2.4).sum(-1)
        assert bool((err(s, z) <= err(s0, z0) + 1e-4).all()) and bool((s < s0).any())


def test_full_range_grid_is_ggml_q4_0_and_gptq_on_it_exports_exactly(tmp_path):
    from lightweight.llm import gguf_export as G

    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    s, z = Q.group_grid(w.view(8, 2, 32), 4, full_range=True)
    ref = G.quantize_q4_0(w)
    assert torch.allclose(s, ref.scale) and bool((z == 0).all())  # d = max / -8, sign kept
    with pytest.raises(ValueError, match="symmetric"):
        Q.group_grid(w, 4, symmetric=False, full_range=True)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2048, 64, generator=g) @ torch.randn(64, 64, generator=g)
    H = (X.T @ X).double()
    err = lambda qt: Q.output_error(w, qt.dequantize(), H)  # noqa: E731
    for act_order in (False, True):
        qt = Q.gptq_quantize(w, H, 4, 32, act_order=act_order, full_range=True, shrink=20)
        assert int(qt.q.min()) == -8 and int(qt.q.max()) <= 7  # the 16th level is used
        assert err(qt) < err(Q.gptq_quantize(w, H, 4, 32, act_order=act_order))  # 16 levels beat 15
        assert err(qt) < 0.7 * err(ref)
        assert torch.allclose(G.gguf_dequantized(qt), qt.dequantize(), rtol=1e-3, atol=1e-5)  # FP16 scales in the file


def test_fp8_and_fbgemm():
    vals = Q.fp8_values("e4m3")
    assert vals.max() == 448 and vals.min() == -448 and Q.fp8_values("e5m2").max() == 57344
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    assert Q.sqnr_db(x, Q.fp8_fake_quantize(x)) > 25
    assert Q.fp8_fake_quantize(x, block=(128, 128)).shape == x.shape
    with pytest.raises(ValueError, match="tiles"):
        Q.fp8_fake_quantize(x[:100], block=(128, 128))
    lin = nn.Linear(64, 32)
    y = Q.FbgemmInt8Linear(lin)(torch.randn(4, 64))
    assert y.shape == (4, 32)
    with pytest.raises(ValueError, match="per-channel INT8"):
        Q.FbgemmInt8Linear(lin, Q.quantize_tensor(lin.weight, 4, 32))
    assert math.isinf(Q.sqnr_db(x, x))


def test_dynamic_activation_quantization_per_tensor_and_per_token():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 64, generator=gen)
    x[..., 3] *= 60  # one outlier channel, as in LLM activations
    x[1, 0] *= 0.01  # one quiet token
    per_tensor, per_token = Q.fake_quantize_activations(x, False), Q.fake_quantize_activations(x, True)
    assert per_tensor.shape == per_token.shape == x.shape
    step = float(x.max() - x.min()) / 255  # one grid for the whole tensor: 256 levels over its range
    assert float((per_tensor - x).abs().max()) <= step / 2 + 1e-5
    quiet = x[1, 0]  # its own grid per token: the quiet token keeps its detail, the shared grid flattens it
    assert float((per_token[1, 0] - quiet).abs().max()) <= float(quiet.max() - quiet.min()) / 255 / 2 + 1e-6
    assert Q.sqnr_db(quiet, per_token[1, 0]) > Q.sqnr_db(quiet, per_tensor[1, 0]) + 20
    zero = torch.zeros(3, 4)
    assert torch.equal(Q.fake_quantize_activations(zero, True), zero)  # no division by a zero range


def test_dynamic_int8_linear_and_fbgemm_range_option():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = torch.randn(5, 64)
    x[:, 7] *= 50
    with torch.no_grad():
        ref = lin(x)
        token = Q.DynamicInt8Linear(lin, per_token=True)(x)
        tensor = Q.DynamicInt8Linear(lin, per_token=False)(x)
    assert token.shape == ref.shape
    assert Q.sqnr_db(ref, token) > Q.sqnr_db(ref, tensor)
    eight = Q.sqnr_db(ref, Q.FbgemmInt8Linear(lin, seven_bit=False)(x))
    seven = Q.sqnr_db(ref, Q.FbgemmInt8Linear(lin, seven_bit=True)(x))
    assert seven > 25  # the safe setting is faithful on every CPU
    if not Q.reduce_range():  # qnnpack ignores the option: 8 bits either way
        assert abs(eight - seven) < 1e-6
    elif torch.cpu._is_vnni_supported():  # VNNI accumulates in 32 bits: one more bit, about 6 dB
        assert eight > seven + 3
    elif torch.cpu._is_avx2_supported():  # AVX2's u8*s8 pairs saturate 16 bits: why reduce_range exists
        assert eight < seven - 10
    assert Q.FbgemmInt8Linear(lin).seven_bit == Q.reduce_range()
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    Q.dynamic_int8_(model, per_token=True, skip=["2"])
    assert isinstance(model[0], Q.DynamicInt8Linear) and isinstance(model[2], nn.Linear)
