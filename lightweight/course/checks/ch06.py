"""Checks of chapter 6 (a real LLM): bits per byte, KL to the reference, AWQ's scale search and folding, block
influence, the blocks to drop."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ... import quantize as Q
from . import CheckFailed, as_float, as_tensor, call, close, exercise, expect, expect_close, recognise

BPB_CASES = [(1000.0, 2000), (math.log(2) * 512, 512), (3.5, 7), (12345.0, 4321)]


@exercise("ch06.bits_per_byte", "Bit trên mỗi byte")
def bits_per_byte(fn: Callable[[float, int], float]) -> None:
    got = [as_float(call(fn, nll, n, names=["nll_nats", "n_bytes"]), f"bits_per_byte({nll:g}, {n})") for nll, n in BPB_CASES]
    want = [nll / math.log(2) / n for nll, n in BPB_CASES]
    recognise(got, {
        "bạn chia cho số byte nhưng quên đổi nat sang bit: chia thêm cho ln 2.": [nll / n for nll, n in BPB_CASES],
        "đổi nat sang bit là chia cho ln 2 (≈ 0,693), không phải nhân.": [nll * math.log(2) / n for nll, n in BPB_CASES],
        "đổi nat sang bit là chia cho ln 2, không phải ln 10 (log10 là chữ số thập phân, không phải bit).":
            [nll / math.log(10) / n for nll, n in BPB_CASES],
        "bạn đã đổi sang bit nhưng chưa chia cho số byte: bpb là số bit *trên mỗi byte* văn bản.":
            [nll / math.log(2) for nll, _ in BPB_CASES],
        "bạn chia cho số bit của văn bản (8 × số byte) thay vì số byte.": [nll / math.log(2) / (8 * n) for nll, n in BPB_CASES],
    }, lambda a, b: close(a, b, 1e-6), want)
    for (nll, n), g, w in zip(BPB_CASES, got, want):
        expect_close(g, w, f"bpb với NLL = {nll:g} nat trên {n} byte", rel=1e-6,
                     hint="bpb = (tổng NLL tính bằng nat) / ln 2 / (số byte UTF-8).")


def _log_probs(seed: int, n: int, vocab: int, sharp: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(n, vocab, generator=g) * sharp, dim=-1)


KL_CASES = [(0, 5, 7, 1.0), (1, 3, 50, 3.0), (2, 8, 11, 0.5)]  # seed, positions, vocabulary, sharpness


@exercise("ch06.kl_to_reference", "KL so với mô hình gốc")
def kl_to_reference(fn: Callable[[torch.Tensor, torch.Tensor], float]) -> None:
    pairs = [(_log_probs(s, n, v, t), _log_probs(s + 10, n, v, t)) for s, n, v, t in KL_CASES]
    got = [as_float(call(fn, ref, q, names=["ref_logp", "logp"]), f"kl_to_reference với ({ref.shape[0]}, {ref.shape[1]})")
           for ref, q in pairs]
    want = [float((ref.exp() * (ref - q)).sum(-1).mean()) for ref, q in pairs]
    recognise(got, {
        "đây là KL theo chiều ngược lại, KL(p_nén ‖ p_gốc): trọng số phải là xác suất của mô hình *gốc*, exp(ref_logp).":
            [float((q.exp() * (q - ref)).sum(-1).mean()) for ref, q in pairs],
        "trọng số của tổng là xác suất p_gốc = exp(ref_logp), không phải log-xác suất.":
            [float((ref * (ref - q)).sum(-1).mean()) for ref, q in pairs],
        "KL của một vị trí là *tổng* trên mọi token của từ vựng; chỉ lấy trung bình trên các vị trí.":
            [float((ref.exp() * (ref - q)).mean()) for ref, q in pairs],
        "cần trung bình trên các vị trí (chia cho N), không phải tổng.":
            [float((ref.exp() * (ref - q)).sum()) for ref, q in pairs],
    }, lambda a, b: close(a, b, 1e-5, 1e-9), want)
    for (ref, _), a, b in zip(pairs, got, want):
        expect_close(a, b, f"KL với {ref.shape[0]} vị trí, từ vựng {ref.shape[1]}", rel=1e-5, abs_=1e-9,
                     hint="KL = trung bình theo vị trí của Σ_v exp(ref_logp) · (ref_logp − logp).")
    same = as_float(call(fn, pairs[0][0], pairs[0][0], names=["ref_logp", "logp"]), "kl_to_reference(p, p)")
    expect_close(same, 0.0, "KL của một mô hình với chính nó", abs_=1e-7, hint="hai phân phối giống nhau thì KL = 0.")


def _case(seed: int, out: int, cols: int, kind: str = "spread") -> tuple[torch.Tensor, torch.Tensor]:
    """A weight ``(out, cols)`` and the Gram ``H = XᵀX`` of its inputs. ``kind``: ``"spread"``, channel
    scales spread over e^0..e^4 (the best alpha is inside the grid); ``"salient"``, one channel in 16
    a thousand times larger than the rest (alpha = 1 is best); ``"heavy"``, weight columns as large as
    their inputs (scaling them up only hurts: alpha = 0 is best)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "salient":
        scale = torch.full((cols,), 0.01)
        scale[::16] = 10.0
    else:
        scale = (torch.rand(cols, generator=g) * (8 if kind == "heavy" else 4)).exp()
    X = torch.randn(512 if kind != "spread" else 1024, cols, generator=g) * scale
    W = torch.randn(out, cols, generator=g) * 0.05
    if kind == "heavy":
        W = W * scale / scale.mean()
    return W, (X.T @ X).double()


# seed, out, in, bits, group, n_grid, kind
AWQ_CASES = [(0, 24, 128, 4, 32, 10, "spread"), (1, 17, 96, 3, 32, 5, "spread"), (2, 8, 192, 4, 64, 4, "spread"),
             (1, 10, 64, 4, 32, 4, "salient"), (0, 12, 64, 4, 32, 4, "heavy")]


@exercise("ch06.awq_search", "Tìm thang đo của AWQ")
def awq_search(fn: Callable[[torch.Tensor, torch.Tensor, int, int, int], tuple[torch.Tensor, torch.Tensor]]) -> None:
    for seed, out, cols, bits, group, n_grid, kind in AWQ_CASES:
        W, H = _case(seed, out, cols, kind)
        where = f"W {tuple(W.shape)}, bits={bits}, group_size={group}, n_grid={n_grid}"
        got = call(fn, W, H, bits, group, n_grid, names=["W", "H", "bits", "group_size", "n_grid"])
        expect(isinstance(got, tuple) and len(got) == 2, f"{where}: hàm cần trả về cặp (w_hat, s), nhận {type(got).__name__}.")
        w_hat = as_tensor(got[0], f"w_hat ({where})", shape=W.shape)
        s = as_tensor(got[1], f"s ({where})", shape=(cols,))
        expect(bool(torch.isfinite(s).all()) and bool((s > 0).all()), f"{where}: mọi thang đo s_j phải dương và hữu hạn.")
        s64 = s.double()
        scaled = Q.fake_quantize((W.double() * s64).float(), bits, group).double()
        if torch.allclose(w_hat.double(), scaled, rtol=1e-4, atol=1e-7) and not torch.allclose(s64, torch.ones_like(s64)):
            raise CheckFailed(f"{where}: w_hat là Q(W·diag(s)) nhưng chưa chia lại cho s: "
                              "trọng số tương đương phải là Q(W·diag(s))·diag(s)⁻¹.")
        for b, gs in {(4, 64), (4, 32), (bits, 64), (4, group)} - {(bits, group)}:
            if cols % gs == 0 and torch.allclose(w_hat.double() * s64, Q.fake_quantize((W.double() * s64).float(), b, gs).double(),
                                                 rtol=1e-4, atol=1e-7):
                raise CheckFailed(f"{where}: w_hat được lượng tử với bits={b}, group_size={gs} thay vì bits={bits}, "
                                  f"group_size={group}: dùng đúng các tham số được truyền vào.")
        expect(torch.allclose(w_hat.double() * s64, scaled, rtol=1e-4, atol=1e-6),
               f"{where}: w_hat phải là Q(W·diag(s))·diag(s)⁻¹: lượng tử hóa W nhân s theo cột (làm tròn đối xứng, "
               f"Q.fake_quantize(W * s, bits, group_size)), rồi chia lại cho s.")
        rtn = Q.output_error(W, Q.fake_quantize(W, bits, group), H)
        ref_q, ref_s = Q.awq_quantize(W, H, bits, group, n_grid)
        ref = Q.output_error(W, ref_q.dequantize().double() / ref_s.double(), H)
        err = Q.output_error(W, w_hat, H)
        expect(err <= rtn * (1 + 1e-9),
               f"{where}: sai số đầu ra {err:.4g} lớn hơn của làm tròn thường ({rtn:.4g}): alpha = 0 (s = 1) luôn nằm "
               "trong lưới, nên cặp có sai số *nhỏ nhất* không thể tệ hơn.")
        expect(err <= ref * (1 + 1e-3),
               f"{where}: sai số đầu ra {err:.4g} lớn hơn lời giải tham chiếu ({ref:.4g}): hãy thử mọi alpha trong "
               "{0, 1/n_grid, ..., 1} (n_grid + 1 giá trị, kể cả hai đầu 0 và 1) với s = a^alpha (a = căn của đường "
               "chéo H) và giữ alpha cho tr(E H Eᵀ) nhỏ nhất.")


def _influences(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The right block influence and what typical mistakes give, for ``(B, T, C)`` tensors."""
    c = x.shape[-1]
    per_token = F.cosine_similarity(x.reshape(-1, c), y.reshape(-1, c), dim=-1)
    return {
        "right": float((1 - per_token).mean()),
        "bạn trả về cos trung bình; ảnh hưởng của khối là 1 − cos (khối không làm gì thì ảnh hưởng bằng 0).":
            float(per_token.mean()),
        "cosine phải lấy theo chiều cuối (C, vector ẩn của từng token), không theo chiều token (dim=1).":
            float((1 - F.cosine_similarity(x, y, dim=1)).mean()),
        "bạn lấy một cosine cho cả tensor làm phẳng; cần cosine của từng token (mỗi vector theo chiều cuối), rồi trung bình.":
            float(1 - F.cosine_similarity(x.reshape(1, -1), y.reshape(1, -1), dim=-1)),
        "bạn lấy cos của các vector trung bình; cần trung bình của 1 − cos trên từng token.":
            float(1 - F.cosine_similarity(x.reshape(-1, c).mean(0), y.reshape(-1, c).mean(0), dim=0)),
        "ảnh hưởng là 1 − cos, không phải |1 − cos| hay 1 − |cos|: một khối đảo hướng vector (cos = −1) có ảnh hưởng 2.":
            float((1 - per_token.abs()).mean()),
    }


@exercise("ch06.block_influence", "Ảnh hưởng của một khối")
def block_influence(fn: Callable[[torch.Tensor, torch.Tensor], float]) -> None:
    g = torch.Generator().manual_seed(0)
    cases = []
    for shape in [(2, 7, 16), (1, 5, 9), (3, 4, 32)]:
        x = torch.randn(*shape, generator=g)
        flip = torch.ones(shape[0], shape[1], 1)
        flip[0, 0] = -1.0
        cases += [(x, x * 3.0, "y = 3x"), (x, x * flip + 0.5 * torch.randn(*shape, generator=g), "y = ±x + nhiễu")]
    got, expected = [], []
    for x, y, what in cases:
        r = call(fn, x, y, names=["x_in", "x_out"])
        got.append(as_float(r, f"block_influence với {what}, {tuple(x.shape)}"))
        expected.append(_influences(x, y))
    mistakes = {m: [e[m] for e in expected] for m in expected[0] if m != "right"}
    recognise(got, mistakes, lambda a, b: close(a, b, 1e-4, 1e-6), [e["right"] for e in expected])
    for (x, _, what), value, e in zip(cases, got, expected):
        expect_close(value, e["right"], f"ảnh hưởng khi {what}, {tuple(x.shape)}", rel=1e-4, abs_=1e-6,
                     hint="lấy 1 − cos(x_t, y_t) cho từng token t (vector theo chiều cuối), rồi trung bình trên mọi token.")


DROP_CASES = [(0, 30, 6), (1, 7, 1), (2, 12, 4)]  # seed, blocks, k


@exercise("ch06.blocks_to_drop", "Chọn các khối để bỏ")
def blocks_to_drop(fn: Callable[[torch.Tensor, int], list[int]]) -> None:
    for seed, n, k in DROP_CASES:
        influence = torch.rand(n, generator=torch.Generator().manual_seed(seed))
        got = call(fn, influence, k, names=["influence", "k"])
        where = f"{n} khối, k = {k}"
        if isinstance(got, torch.Tensor):
            raise CheckFailed(f"{where}: hàm cần trả về một list các số nguyên Python, nhận một tensor; dùng .tolist().")
        expect(isinstance(got, list) and all(type(i) is int for i in got),
               f"{where}: hàm cần trả về một list các số nguyên Python (int), nhận {type(got).__name__}"
               + (f" chứa {type(got[0]).__name__}" if isinstance(got, list) and got else "") + ".")
        want = sorted(influence.argsort()[:k].tolist())
        if got == sorted(influence.argsort(descending=True)[:k].tolist()):
            raise CheckFailed(f"{where}: bạn chọn các khối có ảnh hưởng *lớn* nhất; cần bỏ những khối làm ít nhất (BI nhỏ nhất).")
        if sorted(got) == want and got != want:
            raise CheckFailed(f"{where}: đúng các khối, nhưng list phải sắp theo chỉ số tăng dần (sorted).")
        expect(got == want, f"{where}: mong đợi {want}, nhận {got}. Gợi ý: chỉ số của k giá trị nhỏ nhất, sắp tăng dần.")


def _rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain


def _fold_case(seed: int, cols: int, outs: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """An RMSNorm gain ``(cols,)``, the weights ``(out_i, cols)`` that read its output, and AWQ-like scales."""
    g = torch.Generator().manual_seed(seed)
    gain = 1 + 0.5 * torch.rand(cols, generator=g)
    weights = [torch.randn(o, cols, generator=g) * 0.1 for o in outs]
    s = torch.exp(torch.randn(cols, generator=g))  # both above and below 1
    return gain, weights, s


FOLD_CASES = [(0, 16, (16,)), (1, 64, (64, 16, 16)), (2, 96, (256, 256)), (3, 32, (32, 8))]  # seed, C, outputs


@exercise("ch06.fold_scales", "Gộp thang đo của AWQ vào RMSNorm")
def fold_scales(fn: Callable[[torch.Tensor, list[torch.Tensor], torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]) -> None:
    for seed, cols, outs in FOLD_CASES:
        gain, weights, s = _fold_case(seed, cols, outs)
        where = f"C = {cols}, {len(outs)} lớp {[tuple(w.shape) for w in weights]}"
        got = call(fn, gain, weights, s, names=["gain", "weights", "s"])
        expect(isinstance(got, tuple) and len(got) == 2, f"{where}: hàm cần trả về cặp (gain_mới, weights_mới), nhận {type(got).__name__}.")
        new_gain = as_tensor(got[0], f"gain_mới ({where})", shape=(cols,))
        expect(isinstance(got[1], (list, tuple)) and len(got[1]) == len(weights),
               f"{where}: weights_mới phải là một list gồm {len(weights)} ma trận, mỗi lớp một ma trận.")
        new_w = [as_tensor(w, f"weights_mới[{i}] ({where})", shape=weights[i].shape) for i, w in enumerate(got[1])]
        if torch.allclose(new_gain, gain * s, rtol=1e-5) and all(torch.allclose(a, w / s, rtol=1e-5) for a, w in zip(new_w, weights)):
            raise CheckFailed(f"{where}: bạn gộp ngược chiều: mô hình vẫn tính đúng hàm cũ, nhưng các kênh nổi bật (s_j lớn) "
                              "lại có trọng số *nhỏ* đi. AWQ nhân cột j của W với s_j (để kênh quan trọng có bước lượng tử "
                              "mịn hơn tương đối) và chia gain của RMSNorm cho s_j.")
        if torch.allclose(new_gain, gain, rtol=1e-6):
            raise CheckFailed(f"{where}: gain của RMSNorm không đổi: phải chia nó cho s (gain / s), nếu không đầu ra của các lớp bị nhân thêm s.")
        for i, (a, w) in enumerate(zip(new_w, weights)):
            if torch.allclose(a, w, rtol=1e-6):
                raise CheckFailed(f"{where}: lớp {i} không được nhân với s: *mọi* lớp đọc đầu ra của RMSNorm này (q, k, v "
                                  "hay gate, up) phải nhân cột với cùng s, vì chúng cùng nhận x / s.")
            if w.shape[0] == cols and torch.allclose(a, w * s[:, None], rtol=1e-5):
                raise CheckFailed(f"{where}: bạn nhân *hàng* của W với s; thang đo thuộc về kênh đầu vào, tức là cột: W * s[None, :] "
                                  "(W có dạng (out, in)).")
        expect(torch.allclose(new_gain, gain / s, rtol=1e-5), f"{where}: gain mới phải là gain / s (phép chia từng phần tử).")
        x = torch.randn(5, 7, cols, generator=torch.Generator().manual_seed(seed + 100))
        for i, (a, w) in enumerate(zip(new_w, weights)):
            before, after = _rms_norm(x, gain) @ w.T, _rms_norm(x, new_gain) @ a.T
            expect(torch.allclose(before, after, rtol=1e-4, atol=1e-5),
                   f"{where}: đầu ra của lớp {i} sau RMSNorm đã đổi (sai lệch lớn nhất {float((before - after).abs().max()):.3g}): "
                   "cột j của W phải nhân với s_j, W * s[None, :], để W·diag(s)·(x / s) = W·x.")
