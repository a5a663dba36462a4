"""Checks of chapter 6 (a real LLM): bits per byte, AWQ's scale search, block influence."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .. import quantize as Q
from . import CheckFailed, exercise, expect, expect_close


@exercise("ch06.bits_per_byte", "Bit trên mỗi byte")
def bits_per_byte(fn: Callable[[float, int], float]) -> None:
    for nll, n_bytes in [(1000.0, 2000), (math.log(2) * 512, 512), (3.5, 7)]:
        want = nll / math.log(2) / n_bytes
        got = fn(nll, n_bytes)
        if isinstance(got, (int, float)) and math.isclose(float(got), nll / n_bytes, rel_tol=1e-6) and want != nll / n_bytes:
            raise CheckFailed("bạn chia cho số byte nhưng quên đổi nat sang bit: chia thêm cho ln 2.")
        if isinstance(got, (int, float)) and math.isclose(float(got), nll / math.log2(math.e) / n_bytes, rel_tol=1e-6):
            raise CheckFailed("đổi nat sang bit là chia cho ln 2 (≈ 0,693), không phải nhân.")
        expect_close(got, want, f"bpb với NLL = {nll:g} nat trên {n_bytes} byte", rel=1e-6,
                     hint="bpb = (tổng NLL tính bằng nat) / ln 2 / (số byte UTF-8).")


def _case(seed: int, out: int = 24, cols: int = 128):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(1024, cols, generator=g) * (torch.rand(cols, generator=g) * 4).exp()
    W = torch.randn(out, cols, generator=g) * 0.05
    return W, (X.T @ X).double()


@exercise("ch06.awq_search", "Tìm thang đo của AWQ")
def awq_search(fn: Callable[[torch.Tensor, torch.Tensor, int, int, int], tuple[torch.Tensor, torch.Tensor]]) -> None:
    for seed in (0, 1):
        W, H = _case(seed)
        got = fn(W.clone(), H.clone(), 4, 32, 10)
        expect(isinstance(got, tuple) and len(got) == 2, "hàm cần trả về cặp (w_hat, s): trọng số xấp xỉ và thang đo.")
        w_hat, s = got
        expect(isinstance(w_hat, torch.Tensor) and w_hat.shape == W.shape,
               f"w_hat phải là tensor cùng kích thước {tuple(W.shape)} với W.")
        expect(isinstance(s, torch.Tensor) and s.shape == (W.shape[1],), f"s phải là vector ({W.shape[1]},), mỗi kênh vào một giá trị.")
        rtn = Q.output_error(W, Q.fake_quantize(W, 4, 32), H)
        ref_q, ref_s = Q.awq_quantize(W, H, 4, 32, 10)
        ref = Q.output_error(W, ref_q.dequantize().double() / ref_s.double(), H)
        err = Q.output_error(W, w_hat, H)
        expect(torch.allclose(w_hat.double() * s.double(), Q.fake_quantize((W.double() * s.double()).float(), 4, 32).double(),
                              rtol=1e-4, atol=1e-6),
               "w_hat phải là Q(W·diag(s))·diag(s)⁻¹: lượng tử hóa W nhân s theo cột (làm tròn đối xứng, nhóm 32), rồi chia lại cho s.")
        expect(err <= rtn * (1 + 1e-9),
               f"sai số đầu ra {err:.4g} lớn hơn của làm tròn thường ({rtn:.4g}): alpha = 0 (s = 1) luôn nằm trong lưới, "
               "nên lời giải tốt nhất không thể tệ hơn.")
        expect(err <= ref * (1 + 1e-3),
               f"sai số đầu ra {err:.4g} lớn hơn lời giải tham chiếu ({ref:.4g}): hãy thử mọi alpha trong {{0, 1/n, ..., 1}} "
               "với s = a^alpha (a = căn của đường chéo H) và giữ alpha cho tr(E H Eᵀ) nhỏ nhất.")


@exercise("ch06.block_influence", "Ảnh hưởng của một khối")
def block_influence(fn: Callable[[torch.Tensor, torch.Tensor], float]) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 16, generator=g)
    for y, what in [(x.clone(), "y = x"), (x * 3.0, "y = 3x"), (x + torch.randn(2, 7, 16, generator=g), "y = x + nhiễu")]:
        want = float((1 - F.cosine_similarity(x.reshape(-1, 16), y.reshape(-1, 16), dim=-1)).mean())
        got = fn(x.clone(), y.clone())
        expect_close(got, want, f"ảnh hưởng khi {what}", rel=1e-4, abs_=1e-6,
                     hint="lấy 1 − cos(x_t, y_t) cho từng token t (vector theo chiều cuối), rồi trung bình trên mọi token.")
