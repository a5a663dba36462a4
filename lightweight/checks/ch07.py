"""Checks of chapter 7 (fast on your machine): each compares the student's function with
lightweight.roofline, lightweight.lowbit and lightweight.gguf_export."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .. import gguf_export as G
from .. import lowbit as L
from .. import quantize as Q
from .. import roofline as R
from . import CheckFailed, exercise, expect, expect_close



@exercise("ch07.int4_bytes", "Số byte của một ma trận INT4 theo nhóm")
def int4_bytes(fn: Callable[[int, int, int], int]) -> None:
    for out_f, in_f, g in ((576, 576, 32), (1536, 576, 64), (49152, 576, 32), (8, 256, 128)):
        got = fn(out_f, in_f, g)
        want = R.WeightFormat("int4", 4, g, 4).matrix_bytes(out_f, in_f)
        expect(isinstance(got, (int, np.integer)) and not isinstance(got, bool),
               f"hàm cần trả về một số nguyên (byte), nhận {type(got).__name__}.")
        if got == out_f * in_f // 2:
            raise CheckFailed("bạn mới đếm các số nguyên 4 bit; còn mỗi nhóm một scale và một zero BF16 (2 + 2 byte).")
        if got == out_f * in_f // 2 + out_f * (in_f // g) * 2:
            raise CheckFailed("nhân tính toán int4 của aten lưu cả scale lẫn zero cho mỗi nhóm: 4 byte, không phải 2.")
        expect(got == want, f"({out_f}, {in_f}) nhóm {g}: mong đợi {want} byte, nhận {got}. "
                            "Gợi ý: out·in/2 + out·(in/g)·4.")


@exercise("ch07.compute_bound_batch", "Cỡ lô mà giải mã chuyển sang giới hạn tính toán")
def compute_bound_batch(fn: Callable[[float, float, float, float], float]) -> None:
    for bytes_tok, flops_tok, bw, peak in ((1e9, 2e9, 20.0, 400.0), (2.7e8, 2.7e8, 28.0, 1500.0), (5e8, 1e9, 50.0, 300.0)):
        got = fn(bytes_tok, flops_tok, bw, peak)
        want = R.compute_bound_batch(bytes_tok, flops_tok, bw, peak)
        if isinstance(got, (int, float)) and math.isclose(float(got), 1 / want, rel_tol=1e-6):
            raise CheckFailed("kết quả bị nghịch đảo: B* = peak · bytes / (bandwidth · FLOPs).")
        expect_close(got, want, "B*", rel=1e-6,
                     hint="thời gian đọc bytes/(bandwidth·1e9) bằng thời gian tính B·FLOPs/(peak·1e9).")


@exercise("ch07.q4_0_block", "Đóng gói một khối Q4_0 của llama.cpp")
def q4_0_block(fn: Callable[[torch.Tensor, float], bytes]) -> None:
    for seed in (0, 1, 2):
        w = torch.randn(1, 32, generator=torch.Generator().manual_seed(seed))
        qt = Q.quantize_tensor(w, bits=4, group_size=32)
        want = G.q4_0_blocks(qt).tobytes()
        got = fn(qt.q[0].clone(), float(qt.scale[0, 0]))
        expect(isinstance(got, (bytes, bytearray)), f"hàm cần trả về bytes, nhận {type(got).__name__}.")
        got = bytes(got)
        expect(len(got) == 18, f"một khối Q4_0 dài 18 byte (2 byte scale FP16 + 16 byte), nhận {len(got)}.")
        expect(got[:2] == want[:2], "2 byte đầu là scale ở FP16 (little-endian): np.float16(d).tobytes().")
        u = (qt.q[0] + 8).tolist()
        interleaved = bytes((u[2 * j] | (u[2 * j + 1] << 4)) for j in range(16))
        if got[2:] == interleaved:
            raise CheckFailed("Q4_0 không ghép hai số kề nhau: byte j chứa u[j] (nửa thấp) và u[j+16] (nửa cao).")
        expect(got[2:] == want[2:], "16 byte sau: byte j = u[j] | (u[j+16] << 4), với u = q + 8.")


@exercise("ch07.int4_table", "Bảng scale và zero của nhân int4 aten")
def int4_table(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    for symmetric in (True, False):
        w = torch.randn(12, 128, generator=torch.Generator().manual_seed(3))
        qt = Q.quantize_tensor(w, bits=4, group_size=32, symmetric=symmetric)
        got = fn(qt.scale.clone(), qt.zero.clone())
        expect(isinstance(got, torch.Tensor), f"hàm cần trả về một tensor, nhận {type(got).__name__}.")
        want = L.int4_scales_and_zeros(qt, torch.float32)
        expect(tuple(got.shape) == tuple(want.shape),
               f"hình dạng cần là (in/g, out, 2) = {tuple(want.shape)}, nhận {tuple(got.shape)}.")
        if not symmetric and torch.allclose(got.float()[..., 1], (qt.zero * qt.scale).t()):
            raise CheckFailed("dấu của zero bị ngược: aten tính w = (u − 8)·scale + zero, còn ta có w = (q − z)·s, "
                              "nên zero = −z·s.")
        expect(torch.allclose(got.float(), want, rtol=1e-6, atol=1e-8),
               f"bảng chưa đúng ({'đối xứng' if symmetric else 'có zero-point'}): [..., 0] = scale chuyển vị, "
               "[..., 1] = −zero·scale chuyển vị.")


@exercise("ch07.permute_qk", "Thứ tự hàng query/key của llama.cpp")
def permute_qk(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    for rows, cols, heads in ((12, 5, 3), (576, 8, 9), (192, 4, 3)):
        w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows))
        got = fn(w.clone(), heads)
        expect(isinstance(got, torch.Tensor), f"hàm cần trả về một tensor, nhận {type(got).__name__}.")
        expect(tuple(got.shape) == (rows, cols), f"hình dạng phải giữ nguyên ({rows}, {cols}), nhận {tuple(got.shape)}.")
        if torch.equal(got, G.unpermute_qk(w, heads)) and not torch.equal(got, G.permute_qk(w, heads)):
            raise CheckFailed("đây là phép ngược (transformers → đọc GGUF). Chiều xuất: reshape(n_head, 2, d/2, in) "
                              "rồi đổi hai trục 1 và 2.")
        expect(torch.equal(got, G.permute_qk(w, heads)),
               f"thứ tự hàng chưa đúng với {heads} đầu: mỗi đầu có hai nửa [0, d/2) và [d/2, d); llama.cpp xếp "
               "xen kẽ hàng i của nửa đầu với hàng i của nửa sau.")
