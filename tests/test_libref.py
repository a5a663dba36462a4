import pytest
import torch
import torch.nn as nn

from lightweight import libref


def _mlp(in_f=64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(in_f, 128), nn.ReLU(), nn.Linear(128, 64)).eval()


def _rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("method,dtype,tol", [("int8-weight-only", torch.float32, 0.02),
                                               ("int4-weight-only", torch.bfloat16, 0.2),
                                               ("int8-dynamic", torch.float32, 0.05)])
def test_torchao_methods_convert_every_layer(method, dtype, tol):
    model = _mlp().to(dtype)
    x = torch.randn(4, 64).to(dtype)
    ref = model(x)
    names = libref.torchao_(model, method, group_size=32, skip=())
    assert names == ["0", "2"]
    assert _rel(model(x), ref) < tol


def test_torchao_refuses_a_group_size_that_would_skip_layers():
    model = _mlp(in_f=96).to(torch.bfloat16)
    with pytest.raises(ValueError, match="does not divide"):
        libref.torchao_(model, "int4-weight-only", group_size=64, skip=())
    with pytest.raises(ValueError, match="method"):
        libref.torchao_(model, "int3")


def test_ao_dynamic_int8_skips_the_named_layers():
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    model = _mlp()
    ao = libref.ao_dynamic_int8(model, skip=["2"])
    assert isinstance(ao[0], DynamicQuantizedLinear) and type(ao[2]) is nn.Linear
    assert ao[0].weight().qscheme() == torch.per_channel_affine  # per-channel weights
    assert isinstance(model[0], nn.Linear)  # the original is left alone
    with pytest.raises(ValueError, match="no nn.Linear named"):
        libref.ao_dynamic_int8(model, skip=["lm_head"])
