"""Checks of chapter 0 (measuring models): memory arithmetic, fitting a device, GPT parameters."""

from __future__ import annotations

import math
from collections.abc import Callable

from ...measure import count_parameters
from ...models import GPTConfig, TinyGPT
from . import CheckFailed, as_bool, as_float, as_int, close, exercise, isolated_rng, recognise

FORMAT_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
MEMORY_CASES = [(7e9, "fp32"), (7e9, "fp16"), (1.3e9, "bf16"), (7e9, "int8"), (70e9, "fp8"), (7e9, "int4"),
                (70e9, "int4"), (123_456_789, "fp16")]


@exercise("ch00.memory_gb", "Bộ nhớ của trọng số")
def memory_gb(fn: Callable[[float, str], float]) -> None:
    """``fn(n_params, fmt)`` must give the weights' size in GB (10^9 bytes), as a Python float."""
    got = [as_float(fn(n, fmt), f"memory_gb({n:.4g}, {fmt!r})") for n, fmt in MEMORY_CASES]
    want = [n * FORMAT_BYTES[f] / 1e9 for n, f in MEMORY_CASES]
    recognise(got, {
        "bạn chia cho 2^30 (GiB). Sách dùng GB = 10^9 byte.": [n * FORMAT_BYTES[f] / 2**30 for n, f in MEMORY_CASES],
        "bạn trả về số byte; hãy đổi ra GB (chia cho 10^9).": [n * FORMAT_BYTES[f] for n, f in MEMORY_CASES],
        "bạn trả về số bit chia 10^9 (gigabit): mỗi byte có 8 bit, hãy chia thêm cho 8.": [n * FORMAT_BYTES[f] * 8 / 1e9 for n, f in MEMORY_CASES],
        "INT4 dùng 4 bit = nửa byte cho mỗi tham số, không phải 1 byte.": [n * max(FORMAT_BYTES[f], 1.0) / 1e9 for n, f in MEMORY_CASES],
    }, close)
    for (n, fmt), g, w in zip(MEMORY_CASES, got, want):
        if not close(g, w):
            raise CheckFailed(f"memory_gb({n:.4g}, {fmt!r}): mong đợi {w:.6g} GB, nhận {g:.6g}. "
                              "Gợi ý: số tham số × số bit / 8 / 10^9.")


FITS_CASES = [
    (7e9, "int4", 8.0),     # 3.5 GB on an 8 GB phone: fits
    (7e9, "fp16", 16.0),    # 14 GB > 11.2 GB usable on a 16 GB laptop
    (7e9, "int8", 8.0),     # 7 GB > 5.6 GB usable: RAM is shared with the OS
    (70e9, "int4", 64.0),   # 35 GB <= 44.8 GB
    (70e9, "fp16", 80.0),   # 140 GB: not even one 80 GB GPU
    (1e9, "fp32", 4.0),     # 4 GB > 2.8 GB
    (3e9, "fp16", 12.0),    # 6 GB <= 8.4 GB
    (1e9, "int8", 1.5),     # 1 GB <= 1.05 GB
]


@exercise("ch00.fits", "Mô hình có vừa thiết bị không?")
def fits(fn: Callable[[float, str, float], bool]) -> None:
    """``fn(n_params, fmt, ram_gb)``: True when the weights take at most 70% of the device's RAM."""
    got = [as_bool(fn(n, fmt, ram), f"fits({n:.0e}, {fmt!r}, {ram:g})") for n, fmt, ram in FITS_CASES]
    need = [n * FORMAT_BYTES[fmt] / 1e9 for n, fmt, _ in FITS_CASES]
    want = [m <= 0.7 * ram for m, (_, _, ram) in zip(need, FITS_CASES)]
    recognise(got, {
        "bạn so với toàn bộ RAM; đừng quên chỉ 70% RAM dành được cho trọng số.": [m <= ram for m, (*_, ram) in zip(need, FITS_CASES)],
        "kết quả bị đảo ngược: True nghĩa là *vừa* (trọng số ≤ 70% RAM).": [not w for w in want],
        "bạn nhân 70% vào dung lượng trọng số; 70% là phần RAM được dùng: so memory_gb(...) ≤ 0,7 · ram_gb.":
            [0.7 * m <= ram for m, (*_, ram) in zip(need, FITS_CASES)],
    }, lambda a, b: a == b)
    for (n, fmt, ram), m, g, w in zip(FITS_CASES, need, got, want):
        if g != w:
            raise CheckFailed(f"{n:.0e} tham số {fmt} ({m:g} GB) trên máy {ram:g} GB: mong đợi {w}, nhận {g}.")


GPT_CASES = [(65, 128, 6, 128), (80, 64, 2, 64), (50, 256, 4, 192), (7, 9, 1, 12)]


@exercise("ch00.gpt_params", "Đếm tham số của TinyGPT bằng công thức")
def gpt_params(fn: Callable[[int, int, int, int], int]) -> None:
    """``fn(vocab_size, block_size, n_layer, n_embd)`` must equal the real TinyGPT's parameter count (an int)."""
    def count(v: int, t: int, n: int, c: int) -> int:
        return count_parameters(TinyGPT(GPTConfig(vocab_size=v, block_size=t, n_layer=n, n_head=4, n_embd=c)))

    real = [count(*case) for case in GPT_CASES[:3]]  # these models draw from the global RNG, as this check always has
    with isolated_rng():
        real += [count(*case) for case in GPT_CASES[3:]]
    got = [as_int(fn(v, t, n, c), f"gpt_params{(v, t, n, c)}") for v, t, n, c in GPT_CASES]
    diffs = [r - g for r, g in zip(real, got)]
    recognise(diffs, {
        "bạn quên các bias và tham số LayerNorm trong mỗi khối (13·C mỗi khối).": [n * 13 * c for v, t, n, c in GPT_CASES],
        "bạn quên các bias của bốn lớp Linear trong mỗi khối (3C + C + 4C + C = 9C mỗi khối).": [n * 9 * c for v, t, n, c in GPT_CASES],
        "bạn quên hai LayerNorm trong mỗi khối (2 × 2C mỗi khối).": [n * 4 * c for v, t, n, c in GPT_CASES],
        "đầu ra (head) không chia sẻ trọng số với embedding: cần thêm V·C.": [v * c for v, t, n, c in GPT_CASES],
        "đầu ra (head) không có bias: bỏ V tham số bạn đã cộng thêm.": [-v for v, t, n, c in GPT_CASES],
        "bạn quên bảng nhúng vị trí pos_emb (block_size·C).": [t * c for v, t, n, c in GPT_CASES],
        "bạn quên LayerNorm cuối cùng (2·C).": [2 * c for v, t, n, c in GPT_CASES],
        "MLP mở rộng 4 lần: fc là C → 4C và proj là 4C → C, tức 8C² + 5C mỗi khối.": [n * (6 * c * c + 3 * c) for v, t, n, c in GPT_CASES],
    }, lambda a, b: a == b)
    for (v, t, n, c), r, g, d in zip(GPT_CASES, real, got, diffs):
        if d:
            raise CheckFailed(f"với V={v}, T={t}, L={n}, C={c}: mô hình thật có {r:,} tham số, bạn tính {g:,} "
                              f"(lệch {d:+,}). Hãy đếm lại từng lớp: qkv, proj, fc, proj, 2 LayerNorm mỗi khối.")


@exercise("ch00.bits_per_char", "Đổi nats sang bit mỗi ký tự")
def bits_per_char(fn: Callable[[float], float]) -> None:
    """``fn(loss_nats)`` must convert nats per character to bits per character (a Python float)."""
    losses = (math.log(2), 1.6, 4.2, 0.37)
    got = [as_float(fn(x), f"bits_per_char({x:.4f})") for x in losses]
    recognise(got, {
        "bạn chia cho ln 10; một bit ứng với ln 2 nats.": [x / math.log(10) for x in losses],
        "bạn nhân với ln 2; đổi nats sang bit là *chia* cho ln 2 (1 bit = ln 2 ≈ 0,693 nats).": [x * math.log(2) for x in losses],
        "bạn lấy log₂ của loss; đổi đơn vị chỉ là chia loss cho ln 2.": [math.log2(x) for x in losses],
        "bạn trả về perplexity e^loss; đề bài cần bit mỗi ký tự: loss / ln 2.": [math.exp(x) for x in losses],
    }, close)
    for x, g in zip(losses, got):
        if not close(g, x / math.log(2)):
            raise CheckFailed(f"bits_per_char({x:.4f}): mong đợi {x / math.log(2):.6g}, nhận {g:.6g}. Gợi ý: 1 bit = ln 2 ≈ 0,693 nats.")
