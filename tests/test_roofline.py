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
