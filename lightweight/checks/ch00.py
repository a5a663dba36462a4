"""Checks of chapter 0 (measuring models): memory arithmetic, fitting a device, GPT parameters."""

from __future__ import annotations

import math
from collections.abc import Callable

from ..measure import count_parameters
from ..models import GPTConfig, TinyGPT
from . import CheckFailed, exercise, expect, expect_close

FORMAT_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}


@exercise("ch00.memory_gb", "Bộ nhớ của trọng số")
def memory_gb(fn: Callable[[float, str], float]) -> None:
    """``fn(n_params, fmt)`` must give the weights' size in GB (10^9 bytes)."""
    for n, fmt in [(7e9, "fp32"), (7e9, "fp16"), (7e9, "bf16"), (7e9, "int8"), (70e9, "fp8"), (7e9, "int4"), (70e9, "int4")]:
        expected = n * FORMAT_BYTES[fmt] / 1e9
        got = fn(n, fmt)
        if isinstance(got, (int, float)):
            if math.isclose(got, n * FORMAT_BYTES[fmt] / 2**30, rel_tol=1e-6):
                raise CheckFailed(f"với {n:.0e} tham số {fmt} bạn chia cho 2^30 (GiB). Sách dùng GB = 10^9 byte.")
            if math.isclose(got, n * FORMAT_BYTES[fmt], rel_tol=1e-6):
                raise CheckFailed(f"với {n:.0e} tham số {fmt} bạn trả về số byte; hãy đổi ra GB (chia cho 10^9).")
            if fmt == "int4" and math.isclose(got, 2 * expected, rel_tol=1e-6):
                raise CheckFailed("INT4 dùng 4 bit = nửa byte cho mỗi tham số, không phải 1 byte.")
        expect_close(got, expected, f"memory_gb({n:.0e}, {fmt!r})")


@exercise("ch00.fits", "Mô hình có vừa thiết bị không?")
def fits(fn: Callable[[float, str, float], bool]) -> None:
    """``fn(n_params, fmt, ram_gb)``: True when the weights take at most 70% of the device's RAM."""
    cases = [
        (7e9, "int4", 8.0, True),     # 3.5 GB on an 8 GB phone
        (7e9, "fp16", 16.0, False),   # 14 GB > 11.2 GB usable on a 16 GB laptop
        (7e9, "int8", 8.0, False),    # 7 GB > 5.6 GB usable: RAM is shared with the OS
        (70e9, "int4", 64.0, True),   # 35 GB <= 44.8 GB
        (70e9, "fp16", 80.0, False),  # 140 GB: not even one 80 GB GPU
        (1e9, "fp32", 4.0, False),    # 4 GB > 2.8 GB
    ]
    for n, fmt, ram, ok in cases:
        got = fn(n, fmt, ram)
        expect(isinstance(got, bool), f"hàm cần trả về bool của Python (True/False), nhưng trả về {type(got).__name__}; thử bọc kết quả trong bool(...).")
        if got != ok:
            need = n * FORMAT_BYTES[fmt] / 1e9
            hint = " Đừng quên chỉ 70% RAM dành được cho trọng số." if need <= ram else ""
            raise CheckFailed(f"{n:.0e} tham số {fmt} ({need:g} GB) trên máy {ram:g} GB: mong đợi {ok}, nhận {got}.{hint}")


@exercise("ch00.gpt_params", "Đếm tham số của TinyGPT bằng công thức")
def gpt_params(fn: Callable[[int, int, int, int], int]) -> None:
    """``fn(vocab_size, block_size, n_layer, n_embd)`` must equal the real TinyGPT's parameter count."""
    for v, t, n_layer, c in [(65, 128, 6, 128), (80, 64, 2, 64), (50, 256, 4, 192)]:
        real = count_parameters(TinyGPT(GPTConfig(vocab_size=v, block_size=t, n_layer=n_layer, n_head=4, n_embd=c)))
        got = fn(v, t, n_layer, c)
        expect(isinstance(got, int) and not isinstance(got, bool), f"số tham số phải là số nguyên (int), nhận {got!r}.")
        diff = real - got
        hints = {
            n_layer * 13 * c: "bạn quên các bias và tham số LayerNorm trong mỗi khối (13·C mỗi khối).",
            v * c: "đầu ra (head) không chia sẻ trọng số với embedding: cần thêm V·C.",
            t * c: "bạn quên bảng nhúng vị trí pos_emb (block_size·C).",
            2 * c: "bạn quên LayerNorm cuối cùng (2·C).",
        }
        expect(diff == 0, f"với V={v}, T={t}, L={n_layer}, C={c}: mô hình thật có {real:,} tham số, "
               f"bạn tính {got:,} (lệch {diff:+,}). " + hints.get(diff, "Hãy đếm lại từng lớp: qkv, proj, fc, proj, 2 LayerNorm."))


@exercise("ch00.bits_per_char", "Đổi nats sang bit mỗi ký tự")
def bits_per_char(fn: Callable[[float], float]) -> None:
    """``fn(loss_nats)`` must convert nats per character to bits per character."""
    for loss in (math.log(2), 1.6, 4.2):
        got = fn(loss)
        if isinstance(got, float) and math.isclose(got, loss / math.log(10), rel_tol=1e-6):
            raise CheckFailed("bạn chia cho ln 10; một bit ứng với ln 2 nats.")
        expect_close(got, loss / math.log(2), f"bits_per_char({loss:.4f})", hint="1 bit = ln 2 ≈ 0.693 nats.")
