import math

import pytest

from lightweight import checks
from lightweight.checks import ch00


def run(check, fn):
    """Run a check and return the result it recorded."""
    assert check(fn) is None
    return checks.RESULTS[-1]
from lightweight.models import GPTConfig, TinyGPT
from lightweight.measure import count_parameters


@checks.exercise("demo", "Bài mẫu")
def demo(fn):
    checks.expect_close(fn(2), 4.0, "fn(2)", hint="nhân đôi")


def test_statuses_and_messages(capsys):
    assert run(demo, lambda x: 2 * x).status == "pass"
    r = run(demo, lambda x: x + 1)
    assert r.status == "fail" and "mong đợi 4" in r.message and "nhân đôi" in r.message

    def todo(x):
        raise NotImplementedError()

    assert run(demo, todo).status == "not attempted"
    r = run(demo, lambda x: 1 / 0)
    assert r.status == "error" and "ZeroDivisionError" in r.message
    r = run(demo, lambda x: "4")
    assert r.status == "fail" and "cần một con số" in r.message
    out = capsys.readouterr().out
    assert "Traceback" not in out and out.count("[demo]") == 5
    assert [x.status for x in checks.RESULTS[-5:]] == ["pass", "fail", "not attempted", "error", "fail"]


BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8, "int4": 4}


def memory_gb(n, fmt):
    return n * BITS[fmt] / 8 / 1e9


def test_ch00_right_answers_pass():
    assert run(ch00.memory_gb, memory_gb).passed
    assert run(ch00.fits, lambda n, f, ram: memory_gb(n, f) <= 0.7 * ram).passed
    assert run(ch00.gpt_params, lambda v, t, L, c: 2 * v * c + t * c + L * (12 * c * c + 13 * c) + 2 * c).passed
    assert run(ch00.bits_per_char, lambda loss: loss / math.log(2)).passed


@pytest.mark.parametrize("fn, hint", [
    (lambda n, f: n * BITS[f] / 8 / 2**30, "GiB"),
    (lambda n, f: n * BITS[f] / 8, "số byte"),
    (lambda n, f: n * max(BITS[f], 8) / 8 / 1e9, "nửa byte"),
])
def test_ch00_memory_mistakes_get_hints(fn, hint):
    r = run(ch00.memory_gb, fn)
    assert r.status == "fail" and hint in r.message


def test_ch00_fits_mistake_gets_hint():
    r = run(ch00.fits, lambda n, f, ram: memory_gb(n, f) <= ram)
    assert r.status == "fail" and "70%" in r.message
    r = run(ch00.fits, lambda n, f, ram: 1)
    assert r.status == "fail" and "bool" in r.message


@pytest.mark.parametrize("missing, hint", [("bias", "LayerNorm"), ("head", "head"), ("pos", "vị trí")])
def test_ch00_gpt_params_mistakes_get_hints(missing, hint):
    def fn(v, t, L, c):
        total = 2 * v * c + t * c + L * (12 * c * c + 13 * c) + 2 * c
        return total - {"bias": L * 13 * c, "head": v * c, "pos": t * c}[missing]

    r = run(ch00.gpt_params, fn)
    assert r.status == "fail" and hint in r.message


def test_ch00_gpt_formula_matches_the_model():
    cfg = GPTConfig(vocab_size=84, block_size=128, n_layer=6, n_head=4, n_embd=128)
    v, t, L, c = 84, 128, 6, 128
    assert count_parameters(TinyGPT(cfg)) == 2 * v * c + t * c + L * (12 * c * c + 13 * c) + 2 * c


def test_ch00_bits_mistake():
    r = run(ch00.bits_per_char, lambda loss: loss / math.log(10))
    assert r.status == "fail" and "ln 10" in r.message


def test_ch02_right_answers_pass_and_typical_mistakes_get_hints():
    import torch

    from lightweight import prune as P
    from lightweight.checks import ch02

    right = [(ch02.magnitude_mask, P.magnitude_mask), (ch02.global_masks, P.global_magnitude_masks),
             (ch02.cubic_sparsity, P.cubic_sparsity),
             (ch02.bitmask_bytes, lambda w: int((w != 0).sum()) * 4 + math.ceil(w.numel() / 8)),
             (ch02.nm_mask, P.nm_mask), (ch02.keep_channels, P.l1_keep_channels), (ch02.wanda_mask, P.wanda_mask)]
    for check, fn in right:
        assert run(check, fn).passed, check.__name__
    mistakes = [
        (ch02.magnitude_mask, lambda w, s: ~P.magnitude_mask(w, 1 - s), "nhỏ nhất"),
        (ch02.magnitude_mask, lambda w, s: P.magnitude_mask(w, s).float(), "torch.bool"),
        (ch02.global_masks, lambda ws, s: {k: P.magnitude_mask(v, s) for k, v in ws.items()}, "trong từng lớp"),
        (ch02.cubic_sparsity, lambda st, t, f: f * min(st, t) / t, "tuyến tính"),
        (ch02.bitmask_bytes, lambda w: int((w != 0).sum()) * 4 + w.numel(), "1 *bit*"),
        (ch02.bitmask_bytes, lambda w: int((w != 0).sum()) * 4 + w.numel() // 8, "làm tròn lên"),
        (ch02.nm_mask, lambda w: P.nm_mask(w.T.contiguous()).T, "theo cột"),
        (ch02.keep_channels, lambda w, k: w.flatten(1).norm(dim=1).topk(k).indices.sort().values, "L2"),
        (ch02.keep_channels, lambda w, k: P.l1_keep_channels(w, k).flip(0), "sắp xếp"),
        (ch02.wanda_mask, lambda w, n, s: P.row_mask(w.abs(), s), "|W|"),
        (ch02.wanda_mask, lambda w, n, s: P.magnitude_mask(w.abs() * n, s), "từng hàng"),
    ]
    for check, fn, hint in mistakes:
        r = run(check, fn)
        assert r.status == "fail" and hint in r.message, (check.__name__, r.message)


def test_ch04_right_answers_pass_and_typical_mistakes_get_hints():
    import torch
    import torch.nn.functional as F

    from lightweight import quantize as Q
    from lightweight.checks import ch04

    def sym(x, bits, rounding=torch.round):
        qmax = 2 ** (bits - 1) - 1
        s = float(x.abs().max()) / qmax
        return torch.clamp(rounding(x / s), -qmax, qmax), s

    def affine(lo, hi, bits):
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        s = (hi - lo) / (qmax - qmin)
        return s, int(qmin - round(lo / s))

    def qforward(x, q, scale, bias, g):
        out, cols = q.shape
        return F.linear(x, (q.float().view(out, -1, g) * scale[..., None]).view(out, cols), bias)

    def step(W, Hinv, j, scale, bits, divide=True):
        W = W.clone()
        q = torch.clamp(torch.round(W[:, j] / scale), -7, 7) * scale
        err = (W[:, j] - q) / (Hinv[j, j] if divide else 1.0)
        W[:, j:] -= err[:, None] * Hinv[j, j:][None, :]
        return W

    right = [(ch04.quantize_symmetric, sym), (ch04.affine_params, affine),
             (ch04.group_scales, lambda w, g, b: Q.quantize_tensor(w, b, g).scale), (ch04.pack_int4, Q.pack_int4),
             (ch04.qlinear_forward, qforward), (ch04.percentile_clip, Q.percentile_clip), (ch04.gptq_step, step)]
    for check, fn in right:
        assert run(check, fn).passed, check.__name__
    mistakes = [
        (ch04.quantize_symmetric, lambda x, b: (torch.round(x / (x.abs().max() / 2 ** (b - 1))), float(x.abs().max()) / 2 ** (b - 1)), "2^(b−1)"),
        (ch04.quantize_symmetric, lambda x, b: sym(x, b, torch.trunc), "torch.round"),
        (ch04.affine_params, lambda lo, hi, b: (affine(lo, hi, b)[0], -affine(lo, hi, b)[1]), "dấu"),
        (ch04.group_scales, lambda w, g, b: Q.quantize_tensor(w, b).scale, "per-channel"),
        (ch04.group_scales, lambda w, g, b: w.view(w.shape[0], g, -1).abs().amax(dim=1) / 7, "liên tiếp"),
        (ch04.pack_int4, lambda q: (lambda p: (p >> 4) | ((p & 0xF) << 4))(Q.pack_int4(q)), "đảo"),
        (ch04.qlinear_forward, lambda x, q, s, b, g: F.linear(x, q.float() * s[:, :1], b), "cả hàng"),
        (ch04.qlinear_forward, lambda x, q, s, b, g: qforward(x, q, s, None, g), "bias"),
        (ch04.percentile_clip, lambda x, p: float(x.abs().max()), "max|x|"),
        (ch04.gptq_step, lambda W, H, j, s, b: step(W, H, j, s, b, divide=False), "Hinv[j, j]"),
    ]
    for check, fn, hint in mistakes:
        r = run(check, fn)
        assert r.status == "fail" and hint in r.message, (check.__name__, r.message)


def test_ch03_right_answers_pass_and_typical_mistakes_get_hints():
    import torch
    import torch.nn as nn

    from lightweight import lowrank as L
    from lightweight.checks import ch03

    def svd(W, r, keep_s=True, extra=0):
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        k = r + extra
        root = S[:k].sqrt() if keep_s else torch.ones(k)
        return U[:, :k] * root, root[:, None] * Vh[:k]

    class Good(nn.Module):
        def __init__(self, linear, rank, double_bias=False):
            super().__init__()
            A, B = L.truncated_svd(linear.weight.detach(), rank)
            self.down = nn.Linear(linear.in_features, rank, bias=False)
            self.up = nn.Linear(rank, linear.out_features)
            self.double_bias = double_bias
            with torch.no_grad():
                self.down.weight.copy_(B)
                self.up.weight.copy_(A)
                self.up.bias.copy_(linear.bias)

        def forward(self, x):
            y = self.up(self.down(x))
            return y + self.up.bias if self.double_bias else y

    def white(W, X, r, inverse=True):
        S = torch.linalg.cholesky(X.T.double() @ X.double())
        U, s, Vh = torch.linalg.svd(W.double() @ S, full_matrices=False)
        Wr = (U[:, :r] * s[:r]) @ Vh[:r]
        return (torch.linalg.solve_triangular(S, Wr, upper=False, left=False) if inverse else Wr).float()

    right = [(ch03.truncated_svd, svd), (ch03.rank_for_energy, L.rank_for_energy), (ch03.lowrank_linear, Good),
             (ch03.whitened_truncation, white)]
    for check, fn in right:
        assert run(check, fn).passed, check.__name__
    ch03.counting(L.lowrank_params, L.break_even_rank)
    assert checks.RESULTS[-1].passed
    mistakes = [
        (ch03.truncated_svd, lambda W, r: svd(W, r, keep_s=False), "giá trị kỳ dị"),
        (ch03.truncated_svd, lambda W, r: svd(W, r + 1), "hình dạng"),
        (ch03.truncated_svd, lambda W, r: (lambda U, S, Vh: (U[:, :r] * S[:r], Vh[:r]))(*torch.linalg.svd(W, full_matrices=False)),
         "chia đều"),
        (ch03.rank_for_energy, lambda s, e: int((torch.cumsum(s, 0) / s.sum() < e).sum()) + 1, "σ_i²"),
        (ch03.rank_for_energy, lambda s, e: max(L.rank_for_energy(s, e) - 1, 0), "thiếu"),
        (ch03.lowrank_linear, lambda lin, r: Good(lin, r, double_bias=True), "hai lần"),
        (ch03.whitened_truncation, lambda W, X, r: torch.matmul(*L.truncated_svd(W, r)), "SVD thường"),
        (ch03.whitened_truncation, lambda W, X, r: white(W, X, r, inverse=False), "S⁻¹"),
    ]
    for check, fn, hint in mistakes:
        r = run(check, fn)
        assert r.status == "fail" and hint in r.message, (check.__name__, r.message)
    for params, be, hint in [(lambda m, n, r: m * r * n, L.break_even_rank, "m·r·n"),
                             (L.lowrank_params, lambda m, n: min(m, n) / 2, "vuông")]:
        ch03.counting(params, be)
        assert checks.RESULTS[-1].status == "fail" and hint in checks.RESULTS[-1].message


def test_ch01_right_answers_pass_and_typical_mistakes_get_hints():
    import torch
    import torch.nn.functional as F

    from lightweight import distill as D
    from lightweight.checks import ch01

    def kd(s, t, y, T, a, squared=True, reduction="batchmean", reverse=False):
        log_s, log_t = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
        if reverse:
            soft = (log_s.exp() * (log_s - log_t)).sum(-1).mean()
        elif reduction == "mean":  # the elementwise mean F.kl_div(reduction="mean") computes (with a warning)
            soft = (log_t.exp() * (log_t - log_s)).mean()
        else:
            soft = F.kl_div(log_s, log_t, reduction=reduction, log_target=True)
        return a * F.cross_entropy(s, y) + (1 - a) * soft * (T * T if squared else 1)

    def step(student, teacher, x, y, opt, T, a, no_grad=True):
        if no_grad:
            with torch.no_grad():
                t = teacher(x)
        else:
            t = teacher(x)
        s = student(x)
        soft = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T
        loss = a * F.cross_entropy(s, y) + (1 - a) * soft
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    right = [(ch01.softmax_t, lambda z, T: F.softmax(z / T, -1)), (ch01.kd_loss, D.kd_loss), (ch01.distill_step, step),
             (ch01.token_kd, lambda s, t, T: D.kd_loss(s.flatten(0, 1), t.flatten(0, 1), None, T, 0.0)),
             (ch01.choose_setting, lambda r: max(r, key=lambda k: r[k]["val"])), (ch01.reverse_kl, D.reverse_kl)]
    for check, fn in right:
        assert run(check, fn).passed, check.__name__
    mistakes = [
        (ch01.softmax_t, lambda z, T: F.softmax(z * T, -1), "chia"),
        (ch01.softmax_t, lambda z, T: F.softmax(z / T, 0), "dim=-1"),
        (ch01.kd_loss, lambda s, t, y, T, a: kd(s, t, y, T, a, squared=False), "T²"),
        (ch01.kd_loss, lambda s, t, y, T, a: kd(s, t, y, T, a, reverse=True), "ngược"),
        (ch01.kd_loss, lambda s, t, y, T, a: kd(s, t, y, T, a, reduction="mean"), "batchmean"),
        (ch01.distill_step, lambda *args: step(*args, no_grad=False), "no_grad"),
        (ch01.token_kd, lambda s, t, T: F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T,
         "(B·L, V)"),
        (ch01.choose_setting, lambda r: max(r, key=lambda k: r[k]["test"]), "kiểm tra"),
        (ch01.reverse_kl, lambda s, t: D.kd_loss(s, t, None, 1.0, 0.0), "KL xuôi"),
    ]
    for check, fn, hint in mistakes:
        r = run(check, fn)
        assert r.status == "fail" and hint in r.message, (check.__name__, r.message)


def test_ch05_right_answers_pass_and_typical_mistakes_get_hints():
    import torch

    from lightweight import combine as C
    from lightweight import prune as P
    from lightweight import quantize as Q
    from lightweight.checks import ch05

    def ptq(w, s, b, g, affine=False, per_row=False, prune=True):
        m = w * P.magnitude_mask(w, s) if prune else w
        return Q.fake_quantize(m, b, None if per_row else g, symmetric=not affine)

    from lightweight.advise import quality_drop

    def ratio(fp32, fixed, n, b, forget_fixed=False, bits_as_bytes=False, inverse=False):
        stored = (0 if forget_fixed else fixed) + n * b / (1 if bits_as_bytes else 8)
        return stored / fp32 if inverse else fp32 / stored

    def drop(r, relative_acc=False, absolute_loss=False, flip=False):
        d = quality_drop(r)
        if relative_acc and r["metric"] == "accuracy":
            d = d / r["baseline"]
        if absolute_loss and r["metric"] == "val_loss":
            d = r["value"] - r["baseline"]
        return -d if flip else d

    right = [(ch05.bits_per_weight, lambda s, b, g: C.bits_per_weight(s, b, g)), (ch05.prune_then_quantize, ptq),
             (ch05.pareto_front, C.pareto_front), (ch05.whole_model_ratio, ratio), (ch05.quality_drop, quality_drop)]
    for check, fn in right:
        assert run(check, fn).passed, (check.__name__, checks.RESULTS[-1].message)
    mistakes = [
        (ch05.bits_per_weight, lambda s, b, g: (1 - s) * b + 16 / g if s else b + 16 / g, "bitmask"),
        (ch05.bits_per_weight, lambda s, b, g: C.bits_per_weight(s, b, g) - 16 / g, "quên các thang đo"),
        (ch05.bits_per_weight, lambda s, b, g: C.bits_per_weight(s, b, g) + 16 / g, "FP16"),
        (ch05.bits_per_weight, lambda s, b, g: s * b + 1 + 16 / g if s else b + 16 / g, "phần bị cắt"),
        (ch05.bits_per_weight, lambda s, b, g: (1 - s) * b + 1 + 16 / g if s else b + 16 / g, "min"),
        (ch05.prune_then_quantize, lambda w, s, b, g: ptq(w, s, b, g, prune=False), "cắt tỉa theo độ lớn"),
        (ch05.prune_then_quantize, lambda w, s, b, g: ptq(w, s, b, g, affine=True), "đối xứng"),
        (ch05.prune_then_quantize, lambda w, s, b, g: ptq(w, s, b, g, per_row=True), "một thang đo cho cả hàng"),
        (ch05.prune_then_quantize,
         lambda w, s, b, g: Q.fake_quantize(w * P.magnitude_mask(w.abs().flip(0), s), b, g), "nhỏ nhất"),
        (ch05.pareto_front, lambda pts: list(range(len(pts))), "mọi điểm"),
        (ch05.pareto_front, lambda pts: C.pareto_front(pts, higher_is_better=True), "càng thấp càng tốt"),
        (ch05.pareto_front, lambda pts: sorted(C.pareto_front(pts), key=lambda i: pts[i][1]), "sắp xếp"),
        (ch05.pareto_front, lambda pts: sorted(C.pareto_front(pts) + ([4] if len(pts) == 7 else [])), "trội hơn"),
        (ch05.whole_model_ratio, lambda *a: ratio(*a, forget_fixed=True), "phần cố định"),
        (ch05.whole_model_ratio, lambda *a: ratio(*a, bits_as_bytes=True), "chia cho 8"),
        (ch05.whole_model_ratio, lambda *a: ratio(*a, inverse=True), "ngược"),
        (ch05.quality_drop, lambda r: drop(r, relative_acc=True), "điểm phần trăm"),
        (ch05.quality_drop, lambda r: drop(r, absolute_loss=True), "tương đối"),
        (ch05.quality_drop, lambda r: drop(r, flip=True), "dấu"),
    ]
    for check, fn, hint in mistakes:
        r = run(check, fn)
        assert r.status == "fail" and hint in r.message, (check.__name__, hint, r.message)


def test_ch06_right_answers_pass_and_typical_mistakes_get_hints():
    import torch
    import torch.nn.functional as F

    from lightweight import quantize as Q
    from lightweight.checks import ch06

    def awq_search(W, H, bits, group_size, n_grid):
        a = H.diagonal().double().clamp_min(1e-12).sqrt()
        best = None
        for i in range(n_grid + 1):
            s = a ** (i / n_grid)
            w_hat = (Q.fake_quantize((W.double() * s).float(), bits, group_size).double() / s).float()
            err = Q.output_error(W, w_hat, H)
            if best is None or err < best[0]:
                best = (err, w_hat, s.float())
        return best[1], best[2]

    def influence(x, y):
        return float((1 - F.cosine_similarity(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]), dim=-1)).mean())

    for check, fn in [(ch06.bits_per_byte, lambda n, b: n / math.log(2) / b), (ch06.awq_search, awq_search),
                      (ch06.block_influence, influence)]:
        check(fn)
        assert checks.RESULTS[-1].passed, checks.RESULTS[-1].message
    for check, fn, hint in [
        (ch06.bits_per_byte, lambda n, b: n / b, "ln 2"),
        (ch06.awq_search, lambda W, H, b, g, n: (Q.fake_quantize(W, b, g), torch.ones(W.shape[1])), "alpha"),
        (ch06.block_influence, lambda x, y: float(F.cosine_similarity(x, y, dim=-1).mean()), "1 − cos"),
    ]:
        check(fn)
        assert checks.RESULTS[-1].status == "fail" and hint in checks.RESULTS[-1].message
