"""Checks of chapter 1 (knowledge distillation): each compares the student's code with lightweight.distill."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import distill as D
from . import CheckFailed, as_float, as_scalar_tensor, as_tensor, call, close, exercise, expect, recognise_one, same_tensor


def _randn(seed: int, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _labels(seed: int, n: int, k: int) -> torch.Tensor:
    return torch.randint(k, (n,), generator=torch.Generator().manual_seed(seed))


def _near(rel: float = 1e-4) -> Callable[[float, float], bool]:
    return lambda a, b: close(a, b, rel=rel, abs_=1e-7)


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) of each row, from log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def _differentiable(loss: torch.Tensor, what: str) -> None:
    expect(loss.requires_grad, f"{what} không còn gắn với đồ thị tính gradient, nên loss.backward() sẽ không cập nhật gì: "
           "đừng dùng .detach(), .item(), .numpy() hay torch.no_grad() bên trong hàm.")


# ----------------------------------------------------------------------------- softmax with temperature
SOFTMAX_CASES = [((4, 10), 1.0, torch.float32), ((4, 10), 4.0, torch.float32), ((3, 5, 7), 10.0, torch.float32),
                 ((2, 9), 0.5, torch.float64), ((6,), 2.5, torch.float32)]


@exercise("ch01.softmax_t", "Softmax với nhiệt độ")
def softmax_t(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    for i, (shape, T, dtype) in enumerate(SOFTMAX_CASES):
        z = _randn(i, *shape, dtype=dtype) * 3
        what = f"softmax_t(z{tuple(shape)}, {T})"
        got = as_tensor(call(fn, z, T, names=("logits", "T")), what, shape)
        expect(got.dtype == z.dtype, f"{what}: kết quả cần cùng dtype với logits ({z.dtype}), nhận {got.dtype}.")
        want = F.softmax(z / T, dim=-1)
        mistakes = {
            "bạn nhân logit với T; cần *chia* cho T: T lớn làm phân phối mềm hơn.": F.softmax(z * T, dim=-1),
            "bạn quên nhiệt độ: chia logit cho T trước softmax.": F.softmax(z, dim=-1),
            "bạn chuẩn hóa trên cả tensor; mỗi hàng (chiều cuối) phải có tổng bằng 1.": (z / T).exp() / (z / T).exp().sum(),
        }
        for d in range(z.dim() - 1):
            mistakes[f"softmax phải lấy theo chiều cuối (các lớp), dim=-1, không theo dim={d}."] = F.softmax(z / T, dim=d)
        recognise_one(got, want, mistakes, lambda a, b: same_tensor(a, b, atol=1e-6))
        expect(same_tensor(got, want, atol=1e-6),
               f"{what} chưa đúng (sai lệch lớn nhất {(got - want).abs().max().item():.3g}): exp(z_i / T) / Σ_j exp(z_j / T) theo chiều cuối.")


# ----------------------------------------------------------------------------- the distillation loss
KD_CASES = [((16, 10), 4.0, 0.5), ((16, 10), 2.0, 0.0), ((16, 10), 1.0, 1.0), ((5, 3), 8.0, 0.2), ((7, 13), 3.0, 0.7)]


def _kd_variants(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float, a: float) -> dict[str, float]:
    log_s, log_t = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    ce, ce_T = float(F.cross_entropy(s, y)), float(F.cross_entropy(s / T, y))
    kl_rows = _kl(log_t, log_s)
    kl, n, k = float(kl_rows.mean()), s.shape[0], s.shape[1]
    rev = float(_kl(log_s, log_t).mean())
    t_plain = float(_kl(F.log_softmax(t, -1), log_s).mean())
    return {
        "thiếu hệ số T² ở phần mềm: gradient của nó nhỏ đi 1/T², nhân lại T² để hai phần cân nhau.": a * ce + (1 - a) * kl,
        "phần mềm cần nhân T², không phải T.": a * ce + (1 - a) * kl * T,
        "chiều KL bị ngược: cần KL(thầy ‖ trò) = Σ p_thầy (log p_thầy − log p_trò).": a * ce + (1 - a) * rev * T * T,
        "bạn chia KL cho cả số lớp (như reduction='mean'); KL cần trung bình theo mẫu (chia cho N, như 'batchmean').":
            a * ce + (1 - a) * float(kl_rows.sum()) / (n * k) * T * T,
        "bạn cộng KL của mọi mẫu mà không chia cho số mẫu N: lấy trung bình theo hàng.": a * ce + (1 - a) * float(kl_rows.sum()) * T * T,
        "α và 1 − α bị đổi chỗ: α nhân với phần nhãn cứng (cross-entropy).": (1 - a) * ce + a * kl * T * T,
        "phần nhãn cứng dùng logit gốc của trò (T = 1), không chia cho T.": a * ce_T + (1 - a) * kl * T * T,
        "logit của thầy cũng phải chia cho T trước softmax.": a * ce + (1 - a) * t_plain * T * T,
    }


@exercise("ch01.kd_loss", "Hàm mất mát chưng cất")
def kd_loss(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, float], torch.Tensor]) -> None:
    for i, ((n, k), T, alpha) in enumerate(KD_CASES):
        s, t = _randn(10 + i, n, k) * 2, _randn(20 + i, n, k) * 3
        y = _labels(30 + i, n, k)
        what = f"kd_loss trên logit {(n, k)} với T={T}, α={alpha}"
        loss = as_scalar_tensor(call(fn, s.requires_grad_(), t, y, T, alpha, names=("student_logits", "teacher_logits", "labels", "T", "alpha")), what)
        _differentiable(loss, what)
        got, want = float(loss.detach()), float(D.kd_loss(s.detach(), t, y, T, alpha))
        if close(got, want, rel=1e-4, abs_=1e-6):
            continue
        recognise_one(got, want, _kd_variants(s.detach(), t, y, T, alpha), _near())
        raise CheckFailed(f"{what}: mong đợi {want:.5g}, nhận {got:.5g}. "
                          "Công thức: α·CE(trò, nhãn) + (1 − α)·T²·KL(softmax(thầy/T) ‖ softmax(trò/T)), trung bình theo N hàng.")


# ----------------------------------------------------------------------------- one distillation step
def _reference_step(student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
                    T: float, alpha: float, zero_grad: bool = True) -> float:
    with torch.no_grad():
        t_logits = teacher(x)
    loss = D.kd_loss(student(x), t_logits, y, T, alpha)
    if zero_grad:
        opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def _same_weights(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> bool:
    return all(torch.allclose(p, q, atol=atol) for p, q in zip(a.parameters(), b.parameters()))


@exercise("ch01.distill_step", "Một bước chưng cất")
def distill_step(fn: Callable[..., float]) -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 5))
    student = nn.Linear(8, 5)
    teacher_before = copy.deepcopy(teacher.state_dict())
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    ref, acc = copy.deepcopy(student), copy.deepcopy(student)  # right steps, and steps that never zero the gradients
    ref_opt, acc_opt = torch.optim.SGD(ref.parameters(), lr=0.1), torch.optim.SGD(acc.parameters(), lr=0.1)
    for step, (T, alpha) in enumerate([(4.0, 0.5), (2.0, 0.3)], start=1):
        x, y = _randn(40 + step, 12, 8), _labels(50 + step, 12, 5)
        before = copy.deepcopy(student)
        xs, ys = x.clone(), y.clone()
        got = as_float(fn(student, teacher, xs, ys, opt, T, alpha), f"giá trị trả về ở bước {step}")
        expect(torch.equal(xs, x) and torch.equal(ys, y), "hàm của bạn đã sửa x hoặc y tại chỗ: hãy để nguyên dữ liệu của người gọi.")
        for k, v in teacher.state_dict().items():
            expect(torch.equal(v, teacher_before[k]), "trọng số của thầy đã bị thay đổi: thầy chỉ được chạy xuôi, trong torch.no_grad().")
        expect(all(p.grad is None for p in teacher.parameters()),
               "thầy có gradient: hãy tính logit của thầy trong `with torch.no_grad():` (hoặc .detach()).")
        want = _reference_step(ref, teacher, x, y, ref_opt, T, alpha)
        _reference_step(acc, teacher, x, y, acc_opt, T, alpha, zero_grad=False)
        if _same_weights(student, ref):
            if not close(got, want, rel=1e-4):
                with torch.no_grad():
                    after = float(D.kd_loss(student(x), teacher(x), y, T, alpha))
                if close(got, after, rel=1e-4):
                    raise CheckFailed("bạn trả về mất mát tính *sau* khi cập nhật; hãy trả về loss.item() của chính bước này.")
                raise CheckFailed(f"bước {step}: trọng số đúng, nhưng giá trị trả về {got:.5g} khác mất mát của bước ({want:.5g}): "
                                  "trả về loss.item().")
            continue
        if _same_weights(student, before, atol=0.0):
            raise CheckFailed(f"sau bước {step}, trọng số của trò không đổi: thiếu opt.step(), hoặc opt.zero_grad() bị đặt "
                              "giữa loss.backward() và opt.step().")
        if step > 1 and _same_weights(student, acc):
            raise CheckFailed("thiếu opt.zero_grad() trước loss.backward(): gradient của bước trước bị cộng dồn vào bước này.")
        raise CheckFailed(f"sau bước {step} (T={T}, α={alpha}), trọng số của trò khác với một bước SGD trên kd_loss: "
                          "nhớ opt.zero_grad(), loss.backward(), opt.step(), và dùng kd_loss(logit_trò, logit_thầy, y, T, alpha).")


# ----------------------------------------------------------------------------- choosing T and alpha
CHOICE_CASES = [
    {(1.0, 0.5): {"val": 95.0, "test": 91.0}, (4.0, 0.5): {"val": 94.0, "test": 93.5}, (10.0, 0.1): {"val": 90.0, "test": 95.0}},
    {(1.0, 0.5): {"val": 91.0, "test": 93.5}, (4.0, 0.5): {"val": 94.0, "test": 92.0},
     (4.0, 0.1): {"val": 93.0, "test": 94.5}, (10.0, 0.5): {"val": 92.5, "test": 92.5}},
    {(2.0, 0.9): {"val": 88.0}, (8.0, 0.3): {"val": 86.5}, (1.0, 0.0): {"val": 89.5}},
]


@exercise("ch01.choose_setting", "Chọn T và α cho đúng cách")
def choose_setting(fn: Callable[[dict], tuple[float, float]]) -> None:
    for results in CHOICE_CASES:
        got = call(fn, results, names=("results",))
        if isinstance(got, dict) and got in results.values():
            raise CheckFailed("bạn trả về giá trị results[...] (các độ chính xác); cần trả về *khóa* của nó, cặp (T, alpha).")
        expect(isinstance(got, tuple) and len(got) == 2, f"hàm cần trả về cặp (T, alpha) — một tuple, như khóa của results; nhận {got!r}.")
        best = max(results, key=lambda k: results[k]["val"])
        if got == best:
            continue
        mistakes = {"bạn chọn cặp có độ chính xác kiểm định *thấp nhất*; cần cao nhất (max, không phải min).":
                    min(results, key=lambda k: results[k]["val"])}
        if all("test" in r for r in results.values()):
            mistakes["bạn chọn theo độ chính xác trên tập *kiểm tra*: như vậy con số báo cáo không còn trung thực. "
                     "Chọn theo tập kiểm định (val), rồi mới đo trên tập kiểm tra một lần."] = max(results, key=lambda k: results[k]["test"])
            mistakes["bạn gộp cả tập kiểm tra vào tiêu chí chọn; chỉ dùng val để chọn, tập kiểm tra chỉ để báo cáo một lần."] = \
                max(results, key=lambda k: results[k]["val"] + results[k]["test"])
        recognise_one(got, best, mistakes, lambda a, b: a == b)
        raise CheckFailed(f"cần chọn cặp có độ chính xác kiểm định cao nhất: mong đợi {best}, nhận {got}.")


# ----------------------------------------------------------------------------- token-level KD
TOKEN_CASES = [((3, 7, 11), 1.0), ((3, 7, 11), 2.0), ((2, 5, 4), 3.0), ((1, 9, 3), 1.5)]


@exercise("ch01.token_kd", "Chưng cất từng ký tự cho mô hình ngôn ngữ")
def token_kd(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> None:
    for i, (shape, T) in enumerate(TOKEN_CASES):
        s, t = _randn(60 + i, *shape), _randn(70 + i, *shape) * 2
        what = f"token_kd trên logit {shape} với T={T}"
        loss = as_scalar_tensor(call(fn, s.requires_grad_(), t, T, names=("student_logits", "teacher_logits", "T")), what)
        _differentiable(loss, what)
        got = float(loss.detach())
        s = s.detach()
        b, l, v = shape
        rows = _kl(F.log_softmax(t / T, -1), F.log_softmax(s / T, -1))  # (B, L)
        want = float(rows.mean()) * T * T
        if close(got, want, rel=1e-4, abs_=1e-7):
            continue
        recognise_one(got, want, {
            "'batchmean' trên tensor (B, L, V) chỉ chia cho B: hãy làm phẳng thành (B·L, V) để lấy trung bình trên mọi vị trí.":
                float(rows.sum()) / b * T * T,
            "bạn chia cả cho số ký tự V của bộ từ vựng (reduction='mean'); chỉ lấy trung bình theo B·L vị trí.": float(rows.sum()) / (b * l * v) * T * T,
            "bạn cộng KL của mọi vị trí mà không chia cho B·L.": float(rows.sum()) * T * T,
            "thiếu hệ số T²: nhân KL với T * T.": float(rows.mean()),
            "chiều KL bị ngược: cần KL(thầy ‖ trò).": float(_kl(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)).mean()) * T * T,
        }, _near())
        raise CheckFailed(f"{what}: mong đợi {want:.5g}, nhận {got:.5g}. Gợi ý: làm phẳng logit thành (B·L, V), rồi "
                          "T²·KL(softmax(thầy/T) ‖ softmax(trò/T)) trung bình theo vị trí.")


# ----------------------------------------------------------------------------- reverse KL
REVERSE_SHAPES = [(5, 9), (12, 4), (1, 6)]


@exercise("ch01.reverse_kl", "KL ngược (MiniLLM) — bài nâng cao")
def reverse_kl(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    for i, (n, k) in enumerate(REVERSE_SHAPES):
        s, t = _randn(80 + i, n, k) * 2, _randn(90 + i, n, k) * 2
        what = f"reverse_kl trên logit {(n, k)}"
        loss = as_scalar_tensor(call(fn, s.requires_grad_(), t, names=("student_logits", "teacher_logits")), what)
        _differentiable(loss, what)
        got, s = float(loss.detach()), s.detach()
        log_s, log_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
        rows = _kl(log_s, log_t)
        want = float(rows.mean())
        if close(got, want, rel=1e-4, abs_=1e-7):
            continue
        recognise_one(got, want, {
            "đây là KL xuôi KL(thầy ‖ trò); KL ngược là Σ p_trò (log p_trò − log p_thầy).": float(_kl(log_t, log_s).mean()),
            "dấu bị ngược: Σ p_trò (log p_trò − log p_thầy) ≥ 0.": -want,
            "bạn cộng theo hàng mà không chia cho số hàng N: lấy trung bình theo hàng.": float(rows.sum()),
            "bạn chia cả cho số lớp K: cộng theo lớp, rồi trung bình theo hàng.": float(rows.sum()) / (n * k),
        }, _near())
        raise CheckFailed(f"{what}: mong đợi {want:.5g}, nhận {got:.5g}. "
                          "Gợi ý: Σ_k p_trò,k (log p_trò,k − log p_thầy,k), trung bình theo hàng.")
