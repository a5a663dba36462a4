"""Chapter 8's numba INT4 kernels: every step computes W x with the dequantized weights, the layouts are
the ones they claim, and shapes the kernels do not take are refused with a clear error."""

import numpy as np
import pytest
import torch

from lightweight import quantize as Q
from lightweight.llm import gguf_export as G
from lightweight.llm import kernel as K


def _layer(out: int, n: int, seed: int = 0):
    w = torch.randn(out, n, generator=torch.Generator().manual_seed(seed))
    qt = Q.quantize_tensor(w, bits=4, group_size=32)
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1)).numpy()
    return qt, x


@pytest.mark.parametrize("shape", [(8, 64), (3, 96), (576, 576), (1536, 576), (576, 1536), (7, 32)])
def test_every_step_computes_the_dequantized_product(shape):
    qt, x = _layer(*shape)
    scales = K.block_scales(qt)
    want = (K.dequantize(qt.q, scales).double() @ torch.from_numpy(x).double()).numpy()
    tol = 1e-4 * (1 + np.abs(want).max())
    assert np.abs(K.gemv_naive(x, K.pack_neighbours(qt.q), scales) - want).max() < tol
    for step in ("q4_0", "lanes", "threads"):
        assert np.abs(K.STEPS[step](x, K.pack_q4_0(qt.q), scales) - want).max() < tol


def test_layouts():
    q = torch.arange(-8, 8, dtype=torch.int8).repeat(4)[None]  # one row, 64 values
    assert np.array_equal(K.pack_neighbours(q), Q.pack_int4(q).numpy())  # chapter 4's bytes
    qt = G.quantize_q4_0(torch.randn(3, 64, generator=torch.Generator().manual_seed(2)))
    blocks = G.q4_0_blocks(qt)  # llama.cpp's own blocks: 2 bytes of FP16 scale, then 16 bytes of nibbles
    nibbles = blocks.reshape(-1)[: 3 * 2 * 18].reshape(3, 2, 18)[:, :, 2:].reshape(3, 32)
    assert np.array_equal(K.pack_q4_0(qt.q), nibbles)


def test_q4linear_matches_its_weight_for_tokens_and_prompts():
    qt, _ = _layer(96, 64, seed=3)
    layer = K.Q4Linear(qt)
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(4))
    want = x @ layer.dequantized_weight().t()
    assert torch.allclose(layer(x), want, atol=1e-4)  # prompt: the block matmul
    assert torch.allclose(layer(x[:1, :1]), want[:1, :1], atol=1e-4)  # one token: the GEMV
    assert torch.equal(layer.dequantized_weight(), K.dequantize(qt.q, K.block_scales(qt)))
    int8 = K.Int8Linear(Q.quantize_tensor(torch.randn(10, 64), bits=8))
    assert torch.allclose(int8(x), x @ (int8.weight_int8.float() * int8.scale[:, None]).t(), atol=1e-4)


def test_the_op_compiles_without_graph_breaks():
    qt, _ = _layer(64, 64, seed=5)
    layer = K.Q4Linear(qt)
    x = torch.randn(1, 64)
    explain = torch._dynamo.explain(lambda t: layer(torch.relu(t)))(x)
    assert explain.graph_break_count == 0


def test_clear_errors():
    qt, x = _layer(8, 64)
    p, s = K.pack_q4_0(qt.q), K.block_scales(qt)
    with pytest.raises(ValueError, match="multiple of 32"):
        K.pack_q4_0(torch.zeros(2, 48, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        K.pack_neighbours(torch.full((1, 32), 9, dtype=torch.int8))
    with pytest.raises(TypeError, match="float32"):
        K.gemv_q4_0(x.astype(np.float64), p, s)
    with pytest.raises(ValueError, match="shapes do not fit"):
        K.gemv_q4_0(x[:32], p, s)
    with pytest.raises(ValueError, match="contiguous"):
        K.gemv_q4_0(np.ascontiguousarray(np.stack([x, x], 1))[:, 0], p, s)
    with pytest.raises(TypeError, match="numpy"):
        K.gemv_naive(torch.from_numpy(x), p, s)
    with pytest.raises(ValueError, match="zero-points"):
        K.block_scales(Q.quantize_tensor(torch.randn(4, 64), bits=4, group_size=32, symmetric=False))
    with pytest.raises(ValueError, match="groups of 32"):
        K.block_scales(Q.quantize_tensor(torch.randn(4, 64), bits=4, group_size=64))
    with pytest.raises(ValueError, match=r"\(\.\.\., 64\)"):
        K.Q4Linear(qt)(torch.randn(1, 32))
    assert K.packed_bytes(1536, 576) == 1536 * 18 * 20
