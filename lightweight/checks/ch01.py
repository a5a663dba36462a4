"""Checks of chapter 1 (knowledge distillation): each compares the student's code with lightweight.distill."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distill as D
from . import CheckFailed, exercise, expect, expect_close


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _tensor(got: object, what: str) -> torch.Tensor:
    expect(isinstance(got, torch.Tensor), f"{what} phải là một tensor, nhận {type(got).__name__}.")
    return got


def _number(got: object, what: str) -> float:
    if isinstance(got, torch.Tensor):
        expect(got.numel() == 1, f"{what} phải là một số (tensor một phần tử), nhận hình dạng {tuple(got.shape)}.")
        return float(got)
    expect(isinstance(got, (int, float)) and not isinstance(got, bool), f"{what} phải là một số, nhận {type(got).__name__}.")
    return float(got)


@exercise("ch01.softmax_t", "Softmax với nhiệt độ")
def softmax_t(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    z = _randn(0, 4, 10) * 3
    for T in (1.0, 4.0, 10.0):
        got = _tensor(fn(z.clone(), T), f"softmax_t(z, {T})")
        want = F.softmax(z / T, dim=-1)
        expect(got.shape == z.shape, f"kết quả cần cùng hình dạng với z {tuple(z.shape)}, nhận {tuple(got.shape)}.")
        if T != 1 and torch.allclose(got, F.softmax(z * T, dim=-1), atol=1e-5):
            raise CheckFailed("bạn nhân logit với T; cần *chia* cho T: T lớn làm phân phối mềm hơn.")
        if torch.allclose(got, F.softmax(z / T, dim=0), atol=1e-5) and not torch.allclose(want, F.softmax(z / T, dim=0)):
            raise CheckFailed("softmax phải lấy theo chiều cuối (các lớp), dim=-1, không theo chiều lô.")
        expect(torch.allclose(got.sum(-1), torch.ones(4), atol=1e-5), "mỗi hàng xác suất phải có tổng bằng 1.")
        expect(torch.allclose(got, want, atol=1e-5), f"softmax_t(z, {T}) chưa đúng: exp(z_i / T) / Σ_j exp(z_j / T).")


@exercise("ch01.kd_loss", "Hàm mất mát chưng cất")
def kd_loss(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, float], torch.Tensor]) -> None:
    s, t = _randn(1, 16, 10) * 2, _randn(2, 16, 10) * 3
    y = torch.randint(10, (16,), generator=torch.Generator().manual_seed(3))
    for T, alpha in ((4.0, 0.5), (2.0, 0.0), (1.0, 1.0), (8.0, 0.2)):
        got = _number(fn(s.clone(), t.clone(), y.clone(), T, alpha), f"kd_loss(T={T}, α={alpha})")
        want = float(D.kd_loss(s, t, y, T, alpha))
        if math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-6):
            continue
        soft = float(F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="batchmean", log_target=True))
        ce = float(F.cross_entropy(s, y))
        if alpha < 1 and T != 1 and math.isclose(got, alpha * ce + (1 - alpha) * soft, rel_tol=1e-4):
            raise CheckFailed("thiếu hệ số T² ở phần mềm: gradient của nó nhỏ đi 1/T², nhân lại T² để hai phần cân nhau.")
        reverse = float((F.softmax(s / T, -1) * (F.log_softmax(s / T, -1) - F.log_softmax(t / T, -1))).sum(-1).mean()) * T * T
        if alpha < 1 and math.isclose(got, alpha * ce + (1 - alpha) * reverse, rel_tol=1e-4):
            raise CheckFailed("chiều KL bị ngược: cần KL(thầy ‖ trò) = Σ p_thầy (log p_thầy − log p_trò). "
                              "F.kl_div(input=log p_trò, target=p_thầy).")
        p_t = F.softmax(t / T, -1)
        mean_all = float((p_t * (p_t.log() - F.log_softmax(s / T, -1))).mean()) * T * T  # what reduction="mean" gives
        if alpha < 1 and math.isclose(got, alpha * ce + (1 - alpha) * mean_all, rel_tol=1e-4):
            raise CheckFailed("reduction='mean' chia cho cả số lớp; KL cần reduction='batchmean' (chia cho số mẫu).")
        swapped = (1 - alpha) * ce + alpha * soft * T * T
        if 0 < alpha < 1 and alpha != 0.5 and math.isclose(got, swapped, rel_tol=1e-4):
            raise CheckFailed("α và 1 − α bị đổi chỗ: α nhân với phần nhãn cứng (cross-entropy).")
        raise CheckFailed(f"với T={T}, α={alpha}: mong đợi {want:.5g}, nhận {got:.5g}. "
                          "Công thức: α·CE(trò, nhãn) + (1 − α)·T²·KL(softmax(thầy/T) ‖ softmax(trò/T)).")


@exercise("ch01.distill_step", "Một bước chưng cất")
def distill_step(fn: Callable[..., float]) -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 5))
    student = nn.Linear(8, 5)
    x, y = _randn(4, 12, 8), torch.randint(5, (12,), generator=torch.Generator().manual_seed(5))
    ref_student = copy.deepcopy(student)
    teacher_before = copy.deepcopy(teacher.state_dict())
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    got = _number(fn(student, teacher, x.clone(), y.clone(), opt, 4.0, 0.5), "giá trị mất mát trả về")
    ref_opt = torch.optim.SGD(ref_student.parameters(), lr=0.1)
    with torch.no_grad():
        t_logits = teacher(x)
    loss = D.kd_loss(ref_student(x), t_logits, y, 4.0, 0.5)
    ref_opt.zero_grad()
    loss.backward()
    ref_opt.step()
    for k, v in teacher.state_dict().items():
        expect(torch.equal(v, teacher_before[k]), "trọng số của thầy đã bị thay đổi: thầy chỉ được chạy xuôi, trong torch.no_grad().")
    expect(all(p.grad is None for p in teacher.parameters()),
           "thầy có gradient: hãy tính logit của thầy trong `with torch.no_grad():` (hoặc .detach()).")
    if not (torch.allclose(student.weight, ref_student.weight, atol=1e-6) and torch.allclose(student.bias, ref_student.bias, atol=1e-6)):
        raise CheckFailed("sau một bước, trọng số của trò khác với một bước SGD trên kd_loss: nhớ opt.zero_grad(), "
                          "loss.backward(), opt.step(), và dùng kd_loss(logit_trò, logit_thầy, y, T, α).")
    expect_close(got, float(loss.detach()), "giá trị mất mát trả về", rel=1e-4, hint="trả về loss.item() của bước này (trước khi cập nhật).")


@exercise("ch01.token_kd", "Chưng cất từng ký tự cho mô hình ngôn ngữ")
def token_kd(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> None:
    s, t = _randn(6, 3, 7, 11), _randn(7, 3, 7, 11) * 2
    for T in (1.0, 2.0):
        got = _number(fn(s.clone(), t.clone(), T), f"token_kd(T={T})")
        want = float(D.kd_loss(s.flatten(0, 1), t.flatten(0, 1), None, T, 0.0))
        per_seq = float(F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="batchmean", log_target=True)) * T * T
        if math.isclose(got, per_seq, rel_tol=1e-4):
            raise CheckFailed("'batchmean' trên tensor (B, L, V) chỉ chia cho B: hãy làm phẳng thành (B·L, V) "
                              "để lấy trung bình trên mọi vị trí.")
        expect_close(got, want, f"token_kd(T={T})", rel=1e-4,
                     hint="làm phẳng logit thành (B·L, V), rồi T²·KL(softmax(thầy/T) ‖ softmax(trò/T)) trung bình theo vị trí.")


@exercise("ch01.choose_setting", "Chọn T và α cho đúng cách")
def choose_setting(fn: Callable[[dict], tuple[float, float]]) -> None:
    results = {  # (T, alpha) -> {"val": accuracy on validation, "test": accuracy on test}
        (1.0, 0.5): {"val": 91.0, "test": 93.5},
        (4.0, 0.5): {"val": 94.0, "test": 92.0},
        (4.0, 0.1): {"val": 93.0, "test": 94.5},
        (10.0, 0.5): {"val": 92.5, "test": 92.5},
    }
    got = fn(copy.deepcopy(results))
    expect(isinstance(got, tuple) and len(got) == 2, "hàm cần trả về cặp (T, alpha).")
    got = (float(got[0]), float(got[1]))
    if got == (4.0, 0.1):
        raise CheckFailed("bạn chọn theo độ chính xác trên tập *kiểm tra*: như vậy con số báo cáo không còn trung thực. "
                          "Chọn theo tập kiểm định (val), rồi mới đo trên tập kiểm tra một lần.")
    expect(got == (4.0, 0.5), f"cần chọn cặp có độ chính xác kiểm định cao nhất; nhận {got}.")


@exercise("ch01.reverse_kl", "KL ngược (MiniLLM) — bài nâng cao")
def reverse_kl(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    s, t = _randn(8, 5, 9) * 2, _randn(9, 5, 9) * 2
    got = _number(fn(s.clone(), t.clone()), "reverse_kl")
    want = float(D.reverse_kl(s, t))
    forward = float(D.kd_loss(s, t, None, 1.0, 0.0))
    if math.isclose(got, forward, rel_tol=1e-4):
        raise CheckFailed("đây là KL xuôi KL(thầy ‖ trò); KL ngược là Σ p_trò (log p_trò − log p_thầy).")
    expect_close(got, want, "reverse_kl", rel=1e-4, hint="Σ_k p_trò,k (log p_trò,k − log p_thầy,k), trung bình theo hàng.")
