"""Checks of chapter 7 (fast on your machine): each compares the student's function with
lightweight.llm.roofline, lightweight.llm.lowbit and lightweight.llm.gguf_export."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ... import quantize as Q
from ...llm import gguf_export as G
from ...llm import lowbit as L
from ...llm import roofline as R
from . import CheckFailed, as_float, as_int, as_tensor, call, close, exercise, expect, expect_close, recognise

INT4_SHAPES = ((576, 576, 32), (1536, 576, 64), (49152, 576, 32), (8, 256, 128), (3, 96, 32))


@exercise("ch07.int4_bytes", "Số byte của một ma trận INT4 theo nhóm")
def int4_bytes(fn: Callable[[int, int, int], int]) -> None:
    got = [as_int(call(fn, o, i, g, names=["out_features", "in_features", "group_size"]), f"int4_bytes({o}, {i}, {g})")
           for o, i, g in INT4_SHAPES]
    want = [R.WeightFormat("int4", 4, g, 4).matrix_bytes(o, i) for o, i, g in INT4_SHAPES]
    recognise(got, {
        "bạn mới đếm các số nguyên 4 bit; còn mỗi nhóm một scale và một zero BF16 (2 + 2 byte).":
            [o * i // 2 for o, i, _ in INT4_SHAPES],
        "nhân tính toán int4 của aten lưu cả scale lẫn zero cho mỗi nhóm: 4 byte, không phải 2.":
            [o * i // 2 + o * (i // g) * 2 for o, i, g in INT4_SHAPES],
        "mỗi số INT4 chiếm nửa byte: out·in/2, không phải out·in.": [o * i + o * (i // g) * 4 for o, i, g in INT4_SHAPES],
        "các nhóm chạy dọc theo chiều vào (in): có out·(in/g) nhóm, không phải (out/g)·in.":
            [o * i // 2 + (o // g) * i * 4 for o, i, g in INT4_SHAPES],
    }, lambda a, b: a == b, want)
    for (o, i, g), a, b in zip(INT4_SHAPES, got, want):
        expect(a == b, f"({o}, {i}) nhóm {g}: mong đợi {b} byte, nhận {a}. Gợi ý: out·in/2 + out·(in/g)·4.")


ROOF_CASES = ((1e9, 2e9, 20.0, 400.0), (2.7e8, 2.7e8, 28.0, 1500.0), (5e8, 1e9, 50.0, 300.0), (1.2e8, 2.6e8, 9.5, 210.0))


@exercise("ch07.compute_bound_batch", "Cỡ lô mà giải mã chuyển sang giới hạn tính toán")
def compute_bound_batch(fn: Callable[[float, float, float, float], float]) -> None:
    got = [as_float(call(fn, *c, names=["bytes_per_token", "flops_per_token", "bandwidth_gbs", "peak_gflops"]),
                    f"compute_bound_batch{c}") for c in ROOF_CASES]
    want = [R.compute_bound_batch(*c) for c in ROOF_CASES]
    recognise(got, {
        "kết quả bị nghịch đảo: B* = peak · bytes / (bandwidth · FLOPs).": [1 / w for w in want],
        "băng thông và đỉnh tính toán bị đổi chỗ: thời gian đọc là bytes/bandwidth, thời gian tính là B·FLOPs/peak.":
            [b * bw / (pk * f) for b, f, bw, pk in ROOF_CASES],
        "bạn mới lấy cường độ số học bytes/FLOPs của máy tính, chưa nhân với peak/bandwidth của máy.":
            [b / f for b, f, _, _ in ROOF_CASES],
    }, lambda a, b: close(a, b, 1e-6), want)
    for c, a, b in zip(ROOF_CASES, got, want):
        expect_close(a, b, f"B* với bytes={c[0]:g}, FLOPs={c[1]:g}, bandwidth={c[2]:g} GB/s, peak={c[3]:g} GFLOP/s",
                     rel=1e-6, hint="thời gian đọc bytes/(bandwidth·1e9) bằng thời gian tính B·FLOPs/(peak·1e9).")


def _q4_0_mistakes(q: torch.Tensor, d: float) -> dict[str, bytes]:
    u = (q.to(torch.int16) + 8).tolist()
    raw = [int(v) & 0xF for v in q.tolist()]
    scale = np.float16(d).tobytes()
    return {
        "Q4_0 không ghép hai số kề nhau: byte j chứa u[j] (nửa thấp) và u[j+16] (nửa cao).":
            scale + bytes((u[2 * j] | (u[2 * j + 1] << 4)) for j in range(16)),
        "hai nửa bị đảo: u[j] nằm ở 4 bit thấp, u[j+16] ở 4 bit cao.": scale + bytes((u[j + 16] | (u[j] << 4)) for j in range(16)),
        "Q4_0 lưu u = q + 8 (0..15), không lưu q theo bù hai: cộng 8 trước khi ghép.":
            scale + bytes((raw[j] | (raw[j + 16] << 4)) for j in range(16)),
    }


@exercise("ch07.q4_0_block", "Đóng gói một khối Q4_0 của llama.cpp")
def q4_0_block(fn: Callable[[torch.Tensor, float], bytes]) -> None:
    for seed in (0, 1, 2):
        w = torch.randn(1, 32, generator=torch.Generator().manual_seed(seed))
        qt = G.quantize_q4_0(w)  # llama.cpp's own integers: all 16 levels, q = -8 included (u = 0)
        q, d = qt.q[0].clone(), float(qt.scale[0, 0])
        want = G.q4_0_blocks(qt).tobytes()
        got = call(fn, q, d, names=["q", "d"])
        expect(isinstance(got, (bytes, bytearray)), f"hàm cần trả về bytes, nhận {type(got).__name__}.")
        got = bytes(got)
        if len(got) == 20 and got[4:] == want[2:]:
            raise CheckFailed("scale của Q4_0 là FP16 (2 byte): np.float16(d).tobytes(), không phải float32 (4 byte).")
        expect(len(got) == 18, f"một khối Q4_0 dài 18 byte (2 byte scale FP16 + 16 byte), nhận {len(got)}.")
        expect(got[:2] == want[:2], "2 byte đầu là scale ở FP16 (little-endian): np.float16(d).tobytes().")
        for message, wrong in _q4_0_mistakes(q, d).items():
            if got == wrong != want:
                raise CheckFailed(message)
        expect(got == want, "16 byte sau: byte j = u[j] | (u[j+16] << 4), với u = q + 8.")


@exercise("ch07.int4_table", "Bảng scale và zero của nhân int4 aten")
def int4_table(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    for symmetric, (out, cols) in ((True, (12, 128)), (False, (12, 128)), (False, (7, 96))):
        w = torch.randn(out, cols, generator=torch.Generator().manual_seed(3 + out))
        qt = Q.quantize_tensor(w, bits=4, group_size=32, symmetric=symmetric)
        want = L.int4_scales_and_zeros(qt, torch.float32)
        got = call(fn, qt.scale, qt.zero, names=["scale", "zero"])
        kind = "đối xứng" if symmetric else "có zero-point"
        got = as_tensor(got, f"bảng ({kind}, W {out}×{cols})")
        if tuple(got.shape) == (out, cols // 32, 2):
            raise CheckFailed(f"bảng cần hình dạng (in/g, out, 2) = {tuple(want.shape)}: chuyển vị scale và zero (.t()) "
                              "trước khi ghép.")
        expect(tuple(got.shape) == tuple(want.shape),
               f"hình dạng cần là (in/g, out, 2) = {tuple(want.shape)}, nhận {tuple(got.shape)}.")
        if not symmetric and torch.allclose(got.float()[..., 1], (qt.zero * qt.scale).t()):
            raise CheckFailed("dấu của zero bị ngược: aten tính w = (u − 8)·scale + zero, còn ta có w = (q − z)·s, "
                              "nên zero = −z·s.")
        if not symmetric and torch.allclose(got.float()[..., 1], -qt.zero.t().float()):
            raise CheckFailed("cột zero của aten tính bằng đơn vị của trọng số: zero = −z·s (nhân zero-point với scale).")
        expect(torch.allclose(got.float(), want, rtol=1e-6, atol=1e-8),
               f"bảng chưa đúng ({kind}): [..., 0] = scale chuyển vị, [..., 1] = −zero·scale chuyển vị.")
        if not got.is_contiguous():
            raise CheckFailed("giá trị đúng, nhưng bảng không liền trong bộ nhớ (non-contiguous: một view sau .transpose() "
                              "hay .t()). Nhân int4 của aten đọc bảng như thể nó liền, và khi đó trả về kết quả sai mà "
                              "không báo lỗi (đo được: sai tới 10 trên đầu ra cỡ 19). Thêm .contiguous().")


@exercise("ch07.permute_qk", "Thứ tự hàng query/key của llama.cpp")
def permute_qk(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    for rows, cols, heads in ((12, 5, 3), (576, 8, 9), (192, 4, 3)):
        w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows))
        got = as_tensor(call(fn, w, heads, names=["w", "n_head"]), f"permute_qk (W {rows}×{cols}, {heads} đầu)",
                        shape=(rows, cols))
        want = G.permute_qk(w, heads)
        if torch.equal(got, G.unpermute_qk(w, heads)) and not torch.equal(got, want):
            raise CheckFailed("đây là phép ngược (transformers → đọc GGUF). Chiều xuất: reshape(n_head, 2, d/2, in) "
                              "rồi đổi hai trục 1 và 2.")
        if torch.equal(got, G.permute_qk(w, 1)) and not torch.equal(got, want):
            raise CheckFailed(f"bạn hoán vị cả ma trận như một đầu; phải làm trong từng đầu ({heads} đầu, mỗi đầu "
                              f"{rows // heads} hàng).")
        expect(torch.equal(got, want),
               f"thứ tự hàng chưa đúng với {heads} đầu: mỗi đầu có hai nửa [0, d/2) và [d/2, d); llama.cpp xếp "
               "xen kẽ hàng i của nửa đầu với hàng i của nửa sau.")
