"""Typical wrong answers ("mutants") of every exercise: each must be rejected with its own specific message.

A mutant is what a student plausibly writes: off by one, wrong axis, floor instead of round, a
forgotten clamp or abs, per-tensor instead of per-group, a transpose, an in-place edit, a wrong
type or dtype. ``fragment`` is a piece of the message that only that diagnosis (or the generic
"expected … got …" message) contains.
"""

from __future__ import annotations

import collections
import math
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lightweight.course import checks
from lightweight import combine as C
from lightweight import distill as D
from lightweight import lowrank as L
from lightweight import prune as P
from lightweight import quantize as Q
from lightweight.course.checks import ch00, ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08
from lightweight.advise import quality_drop
from lightweight.course.grade import exercises_of

ROOT = Path(__file__).resolve().parent.parent
MUTANTS: list = []


def mutant(check, fragment: str):
    """Register the decorated function as a wrong answer that ``check`` must reject with ``fragment``."""

    def register(fn):
        MUTANTS.append(pytest.param(check, fn, fragment, id=f"{check.exercise_id}:{fn.__name__}"))
        return fn

    return register


def run(check, answer):
    """Run a check on one answer and return the result it recorded. The answer of a check that takes
    several functions (``ch03.counting``) is a function without arguments that returns them."""
    check(*answer()) if check is ch03.counting else check(answer)
    return checks.RESULTS[-1]


# ----------------------------------------------------------------------------- chapter 0
BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8, "int4": 4}


def memory_gb(n, fmt):
    return n * BITS[fmt] / 8 / 1e9


@mutant(ch00.memory_gb, "GiB")
def memory_in_gib(n, fmt):
    return n * BITS[fmt] / 8 / 2**30


@mutant(ch00.memory_gb, "số byte")
def memory_in_bytes(n, fmt):
    return n * BITS[fmt] / 8


@mutant(ch00.memory_gb, "chia thêm cho 8")
def memory_in_gigabits(n, fmt):
    return n * BITS[fmt] / 1e9


@mutant(ch00.memory_gb, "nửa byte")
def memory_int4_one_byte(n, fmt):
    return n * max(BITS[fmt], 8) / 8 / 1e9


@mutant(ch00.fits, "70%")
def fits_whole_ram(n, fmt, ram):
    return memory_gb(n, fmt) <= ram


@mutant(ch00.fits, "bool của Python")
def fits_as_int(n, fmt, ram):
    return int(memory_gb(n, fmt) <= 0.7 * ram)


@mutant(ch00.fits, "bị đảo ngược")
def fits_inverted(n, fmt, ram):
    return memory_gb(n, fmt) > 0.7 * ram


@mutant(ch00.fits, "70% vào dung lượng trọng số")
def fits_discounts_weights(n, fmt, ram):
    return 0.7 * memory_gb(n, fmt) <= ram


@mutant(ch00.fits, "mong đợi True, nhận False")
def fits_bytes_against_gb(n, fmt, ram):
    return n * BITS[fmt] / 8 <= 0.7 * ram


def gpt_total(v, t, n, c):
    return 2 * v * c + t * c + n * (12 * c * c + 13 * c) + 2 * c


@mutant(ch00.gpt_params, "13·C mỗi khối")
def gpt_without_biases_and_norms(v, t, n, c):
    return gpt_total(v, t, n, c) - n * 13 * c


@mutant(ch00.gpt_params, "V·C")
def gpt_tied_head(v, t, n, c):
    return gpt_total(v, t, n, c) - v * c


@mutant(ch00.gpt_params, "pos_emb")
def gpt_without_positions(v, t, n, c):
    return gpt_total(v, t, n, c) - t * c


@mutant(ch00.gpt_params, "không có bias")
def gpt_head_bias(v, t, n, c):
    return gpt_total(v, t, n, c) + v


@mutant(ch00.gpt_params, "MLP mở rộng 4 lần")
def gpt_narrow_mlp(v, t, n, c):
    return gpt_total(v, t, n, c) - n * (6 * c * c + 3 * c)


@mutant(ch00.gpt_params, "số nguyên Python (int)")
def gpt_as_float(v, t, n, c):
    return float(gpt_total(v, t, n, c))


@mutant(ch00.bits_per_char, "ln 10")
def bits_ln10(loss):
    return loss / math.log(10)


@mutant(ch00.bits_per_char, "*chia* cho ln 2")
def bits_times_ln2(loss):
    return loss * math.log(2)


@mutant(ch00.bits_per_char, "log₂ của loss")
def bits_log2_of_loss(loss):
    return math.log2(loss)


@mutant(ch00.bits_per_char, "float(...) hoặc .item()")
def bits_as_tensor(loss):
    return torch.tensor(loss) / math.log(2)


# ----------------------------------------------------------------------------- chapter 1
@mutant(ch01.softmax_t, "*chia* cho T")
def softmax_times_t(z, T):
    return F.softmax(z * T, -1)


@mutant(ch01.softmax_t, "dim=0")
def softmax_over_batch(z, T):
    return F.softmax(z / T, 0)


@mutant(ch01.softmax_t, "dim=1")
def softmax_dim_one(z, T):
    return F.softmax(z / T, 1)


@mutant(ch01.softmax_t, "quên nhiệt độ")
def softmax_without_t(z, T):
    return F.softmax(z, -1)


@mutant(ch01.softmax_t, "tại chỗ (in-place)")
def softmax_in_place(z, T):
    z /= T
    return F.softmax(z, -1)


@mutant(ch01.softmax_t, "trên cả tensor")
def softmax_whole_tensor(z, T):
    e = (z / T).exp()
    return e / e.sum()


@mutant(ch01.softmax_t, "cùng dtype")
def softmax_always_float32(z, T):
    return F.softmax(z.float() / T, -1)


def kd(s, t, y, T, a, squared=True, reduction="batchmean", reverse=False, swap=False):
    log_s, log_t = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    if reverse:
        soft = (log_s.exp() * (log_s - log_t)).sum(-1).mean()
    elif reduction == "mean":  # what F.kl_div(reduction="mean") computes: the mean over all N·K entries
        soft = (log_t.exp() * (log_t - log_s)).mean()
    else:
        soft = F.kl_div(log_s, log_t, reduction=reduction, log_target=True)
    soft = soft * (T * T if squared else 1)
    hard = F.cross_entropy(s, y)
    return (1 - a) * hard + a * soft if swap else a * hard + (1 - a) * soft


@mutant(ch01.kd_loss, "thiếu hệ số T²")
def kd_without_t_squared(s, t, y, T, a):
    return kd(s, t, y, T, a, squared=False)


@mutant(ch01.kd_loss, "chiều KL bị ngược")
def kd_reverse_kl(s, t, y, T, a):
    return kd(s, t, y, T, a, reverse=True)


@mutant(ch01.kd_loss, "'batchmean'")
def kd_reduction_mean(s, t, y, T, a):
    return kd(s, t, y, T, a, reduction="mean")


@mutant(ch01.kd_loss, "không chia cho số mẫu N")
def kd_reduction_sum(s, t, y, T, a):
    return kd(s, t, y, T, a, reduction="sum")


@mutant(ch01.kd_loss, "bị đổi chỗ")
def kd_swapped_alpha(s, t, y, T, a):
    return kd(s, t, y, T, a, swap=True)


@mutant(ch01.kd_loss, "Đừng gọi .item()")
def kd_as_float(s, t, y, T, a):
    return kd(s, t, y, T, a).item()


@mutant(ch01.kd_loss, "đồ thị tính gradient")
def kd_detached(s, t, y, T, a):
    return kd(s, t, y, T, a).detach()


def step(student, teacher, x, y, opt, T, a, no_grad=True, zero_grad=True, update=True, as_tensor=False, after=False):
    if no_grad:
        with torch.no_grad():
            t = teacher(x)
    else:
        t = teacher(x)
    loss = kd(student(x), t, y, T, a)  # like the notebook's kd_loss: the teacher's logits are not detached
    if zero_grad:
        opt.zero_grad()
    loss.backward()
    if update:
        opt.step()
    if after:
        with torch.no_grad():
            return D.kd_loss(student(x), teacher(x), y, T, a).item()
    return loss.detach() if as_tensor else loss.item()


@mutant(ch01.distill_step, "no_grad")
def step_teacher_with_grad(*args):
    return step(*args, no_grad=False)


@mutant(ch01.distill_step, "thiếu opt.zero_grad()")
def step_without_zero_grad(*args):
    return step(*args, zero_grad=False)


@mutant(ch01.distill_step, "thiếu opt.step()")
def step_without_update(*args):
    return step(*args, update=False)


@mutant(ch01.distill_step, "số thực Python (float)")
def step_returns_tensor(*args):
    return step(*args, as_tensor=True)


@mutant(ch01.distill_step, "*sau* khi cập nhật")
def step_returns_loss_after(*args):
    return step(*args, after=True)


@mutant(ch01.choose_setting, "tập *kiểm tra*")
def choose_by_test(r):
    return max(r, key=lambda k: r[k]["test"])


@mutant(ch01.choose_setting, "*thấp nhất*")
def choose_lowest(r):
    return min(r, key=lambda k: r[k]["val"])


@mutant(ch01.choose_setting, "*khóa* của nó")
def choose_returns_value(r):
    return r[max(r, key=lambda k: r[k]["val"])]


@mutant(ch01.choose_setting, "gộp cả tập kiểm tra")
def choose_by_val_and_test(r):
    return max(r, key=lambda k: r[k]["val"] + r[k].get("test", 0))


@mutant(ch01.choose_setting, "tại chỗ (in-place)")
def choose_pops_entries(r):
    best = max(r, key=lambda k: r[k]["val"])
    for k in list(r):
        if k != best:
            del r[k]
    return best


def token(s, t, T, flatten=True, reduction="batchmean", squared=True, reverse=False):
    if flatten:
        s, t = s.flatten(0, 1), t.flatten(0, 1)
    a, b = (F.log_softmax(t / T, -1), F.log_softmax(s / T, -1))
    if reverse:
        a, b = b, a
    kl = F.kl_div(b, a, reduction=reduction, log_target=True)
    return kl * (T * T if squared else 1)


@mutant(ch01.token_kd, "(B·L, V)")
def token_per_sequence(s, t, T):
    return token(s, t, T, flatten=False)


@mutant(ch01.token_kd, "reduction='mean'")
def token_mean_over_vocab(s, t, T):
    return token(s, t, T, reduction="mean")


@mutant(ch01.token_kd, "thiếu hệ số T²")
def token_without_t_squared(s, t, T):
    return token(s, t, T, squared=False)


@mutant(ch01.token_kd, "chiều KL bị ngược")
def token_reverse(s, t, T):
    return token(s, t, T, reverse=True)


def rkl(s, t, sign=1.0, reduce="mean"):
    log_s, log_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
    rows = (log_s.exp() * (log_s - log_t)).sum(-1)
    return sign * (rows.mean() if reduce == "mean" else rows.sum())


@mutant(ch01.reverse_kl, "KL xuôi")
def reverse_is_forward(s, t):
    return D.kd_loss(s, t, None, 1.0, 0.0)


@mutant(ch01.reverse_kl, "dấu bị ngược")
def reverse_negated(s, t):
    return rkl(s, t, sign=-1.0)


@mutant(ch01.reverse_kl, "không chia cho số hàng N")
def reverse_summed(s, t):
    return rkl(s, t, reduce="sum")


@mutant(ch01.reverse_kl, "chia cả cho số lớp K")
def reverse_mean_over_classes(s, t):
    log_s, log_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
    return (log_s.exp() * (log_s - log_t)).mean()


# ----------------------------------------------------------------------------- chapter 2
def cut_k(w, k, largest=False, signed=False):
    scores = (w if signed else w.abs()).flatten()
    mask = torch.ones(w.numel(), dtype=torch.bool)
    if k:
        mask[scores.topk(k, largest=largest).indices] = False
    return mask.view_as(w)


@mutant(ch02.magnitude_mask, "*nhỏ nhất*")
def magnitude_keeps_smallest(w, s):
    return cut_k(w, round(s * w.numel()), largest=True)


@mutant(ch02.magnitude_mask, "mặt nạ bị đảo")
def magnitude_inverted(w, s):
    return ~P.magnitude_mask(w, s)


@mutant(ch02.magnitude_mask, "floor(sparsity · numel)")
def magnitude_floor(w, s):
    return cut_k(w, int(s * w.numel()))


@mutant(ch02.magnitude_mask, "w có dấu")
def magnitude_signed(w, s):
    return cut_k(w, round(s * w.numel()), signed=True)


@mutant(ch02.magnitude_mask, "torch.bool")
def magnitude_float_mask(w, s):
    return P.magnitude_mask(w, s).float()


@mutant(ch02.magnitude_mask, "tại chỗ (in-place)")
def magnitude_abs_in_place(w, s):
    w.abs_()
    return P.magnitude_mask(w, s)


@mutant(ch02.magnitude_mask, "trong từng hàng")
def magnitude_per_row(w, s):
    flat = w.abs().flatten(1)
    return P.row_mask(flat, s).view_as(w)


@mutant(ch02.global_masks, "*trong từng lớp*")
def global_per_layer(ws, s):
    return {k: P.magnitude_mask(v, s) for k, v in ws.items()}


@mutant(ch02.global_masks, "w có dấu")
def global_signed(ws, s):
    flat = torch.cat([v.flatten() for v in ws.values()])
    keep = cut_k(flat, round(s * flat.numel()), signed=True)
    return dict(zip(ws, (p.view_as(v) for p, v in zip(keep.split([v.numel() for v in ws.values()]), ws.values()))))


@mutant(ch02.global_masks, "mặt nạ bị đảo")
def global_inverted(ws, s):
    return {k: ~m for k, m in P.global_magnitude_masks(ws, s).items()}


@mutant(ch02.global_masks, "torch.bool")
def global_float(ws, s):
    return {k: m.float() for k, m in P.global_magnitude_masks(ws, s).items()}


@mutant(ch02.global_masks, "cùng khóa")
def global_as_list(ws, s):
    return list(P.global_magnitude_masks(ws, s).values())


@mutant(ch02.cubic_sparsity, "tuyến tính")
def cubic_linear(step, total, final):
    return final * min(step, total) / total


@mutant(ch02.cubic_sparsity, "min(step, total_steps)")
def cubic_no_clamp(step, total, final):
    return final * (1 - (1 - step / total) ** 3)


@mutant(ch02.cubic_sparsity, "không phải 2")
def cubic_squared(step, total, final):
    return final * (1 - (1 - min(step, total) / total) ** 2)


@mutant(ch02.cubic_sparsity, "tăng chậm lúc đầu")
def cubic_t_cubed(step, total, final):
    return final * (min(step, total) / total) ** 3


@mutant(ch02.cubic_sparsity, "phép chia nguyên")
def cubic_integer_division(step, total, final):
    return final * (1 - (1 - min(step, total) // total) ** 3)


def nnz(w):
    return int((w != 0).sum())


@mutant(ch02.bitmask_bytes, "1 *bit*")
def bitmask_byte_per_position(w):
    return nnz(w) * 4 + w.numel()


@mutant(ch02.bitmask_bytes, "làm tròn xuống")
def bitmask_floor(w):
    return nnz(w) * 4 + w.numel() // 8


@mutant(ch02.bitmask_bytes, "math.ceil")
def bitmask_float_division(w):
    return nnz(w) * 4 + w.numel() / 8


@mutant(ch02.bitmask_bytes, "*khác 0*")
def bitmask_dense_values(w):
    return w.numel() * 4 + math.ceil(w.numel() / 8)


@mutant(ch02.bitmask_bytes, "số nguyên Python (int)")
def bitmask_as_tensor(w):
    return (w != 0).sum() * 4 + math.ceil(w.numel() / 8)


@mutant(ch02.nm_mask, "theo cột")
def nm_by_columns(w, n=2, m=4):
    return P.nm_mask(w.T.contiguous(), n, m).T


@mutant(ch02.nm_mask, "luôn dùng 2:4")
def nm_ignores_parameters(w, n=2, m=4):
    return P.nm_mask(w)


@mutant(ch02.nm_mask, "*nhỏ nhất*")
def nm_keeps_smallest(w, n=2, m=4):
    groups = w.abs().reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.topk(n, dim=1, largest=False).indices, True)
    return keep.view_as(w)


@mutant(ch02.nm_mask, "w có dấu")
def nm_signed(w, n=2, m=4):
    groups = w.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.topk(n, dim=1).indices, True)
    return keep.view_as(w)


@mutant(ch02.nm_mask, "*liên tiếp*")
def nm_strided_groups(w, n=2, m=4):
    out, cols = w.shape
    g = w.abs().reshape(out, m, cols // m)
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(1, g.topk(n, dim=1).indices, True)
    return keep.reshape(out, cols)


@mutant(ch02.nm_mask, "torch.bool")
def nm_float(w, n=2, m=4):
    return P.nm_mask(w, n, m).float()


@mutant(ch02.keep_channels, "chuẩn L2")
def channels_l2(w, k):
    return w.flatten(1).norm(dim=1).topk(k).indices.sort().values


@mutant(ch02.keep_channels, "chưa sắp xếp")
def channels_unsorted(w, k):
    return w.abs().flatten(1).sum(1).topk(k).indices


@mutant(ch02.keep_channels, "|w| lớn nhất của kênh")
def channels_max(w, k):
    return w.abs().flatten(1).amax(1).topk(k).indices.sort().values


@mutant(ch02.keep_channels, "w có dấu")
def channels_signed_sum(w, k):
    return w.flatten(1).sum(1).topk(k).indices.sort().values


@mutant(ch02.keep_channels, "*nhỏ nhất*")
def channels_smallest(w, k):
    return w.abs().flatten(1).sum(1).topk(k, largest=False).indices.sort().values


@mutant(ch02.keep_channels, "chiều 1")
def channels_input_dim(w, k):
    return w.abs().sum(dim=(0, 2, 3)).topk(k).indices.sort().values


@mutant(ch02.keep_channels, "mặt nạ bool")
def channels_bool_mask(w, k):
    mask = torch.zeros(w.shape[0], dtype=torch.bool)
    mask[P.l1_keep_channels(w, k)] = True
    return mask


@mutant(ch02.wanda_mask, "chỉ dùng |W|")
def wanda_magnitude_only(w, n, s):
    return P.row_mask(w.abs(), s)


@mutant(ch02.wanda_mask, "trên cả ma trận")
def wanda_global(w, n, s):
    return P.magnitude_mask(w.abs() * n, s)


@mutant(ch02.wanda_mask, "col_norms[None, :]")
def wanda_norms_per_row(w, n, s):
    return P.row_mask(w.abs() * n[:, None], s)


@mutant(ch02.wanda_mask, "mặt nạ bị đảo")
def wanda_inverted(w, n, s):
    return ~P.wanda_mask(w, n, s)


@mutant(ch02.wanda_mask, "quên trị tuyệt đối")
def wanda_signed(w, n, s):
    return P.row_mask(w * n, s)


@mutant(ch02.wanda_mask, "không phải floor")
def wanda_floor(w, n, s):
    scores = w.abs() * n
    k = int(s * w.shape[1])
    mask = torch.ones_like(w, dtype=torch.bool)
    if k:
        mask.scatter_(1, scores.topk(k, dim=1, largest=False).indices, False)
    return mask


# ----------------------------------------------------------------------------- chapter 3
def svd_factors(W, r, keep_s=True, extra=0, smallest=False, columns=False, unbalanced=False):
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    k = r + extra
    if smallest:
        U, S, Vh = U[:, -k:], S[-k:], Vh[-k:]
    else:
        U, S, Vh = U[:, :k], S[:k], (Vh[:, :k].T if columns else Vh[:k])
    if unbalanced:
        return U * S, Vh
    root = S.sqrt() if keep_s else torch.ones(k)
    return U * root, root[:, None] * Vh


@mutant(ch03.truncated_svd, "quên các giá trị kỳ dị")
def svd_without_s(W, r):
    return svd_factors(W, r, keep_s=False)


@mutant(ch03.truncated_svd, "bạn giữ 4 thành phần")
def svd_one_more(W, r):
    return svd_factors(W, r, extra=1)


@mutant(ch03.truncated_svd, "chia đều")
def svd_unbalanced(W, r):
    return svd_factors(W, r, unbalanced=True)


@mutant(ch03.truncated_svd, "*nhỏ nhất*")
def svd_smallest(W, r):
    return svd_factors(W, r, smallest=True)


@mutant(ch03.truncated_svd, "bị đổi chỗ")
def svd_swapped(W, r):
    A, B = svd_factors(W, r)
    return B, A


@mutant(ch03.truncated_svd, "r *hàng* đầu của Vᵀ")
def svd_columns_of_vh(W, r):
    return svd_factors(W, r, columns=True)


@mutant(ch03.truncated_svd, "cùng dtype với W")
def svd_in_double(W, r):
    return svd_factors(W.double(), r)


@mutant(ch03.counting, "m·r·n")
def count_product():
    return (lambda m, n, r: m * r * n, L.break_even_rank)


@mutant(ch03.counting, "không cộng thêm r")
def count_with_s():
    return (lambda m, n, r: r * (m + n) + r, L.break_even_rank)


@mutant(ch03.counting, "chỉ đúng với ma trận vuông")
def count_half_min():
    return (L.lowrank_params, lambda m, n: min(m, n) / 2)


@mutant(ch03.counting, "phép chia nguyên")
def count_floor_division():
    return (L.lowrank_params, lambda m, n: m * n // (m + n))


@mutant(ch03.counting, "lộn ngược")
def count_inverted():
    return (L.lowrank_params, lambda m, n: (m + n) / (m * n))


@mutant(ch03.counting, "số nguyên Python (int)")
def count_as_float():
    return (lambda m, n, r: float(r * (m + n)), L.break_even_rank)


class LowRank(nn.Module):
    """A LowRankLinear with switches for typical mistakes."""

    def __init__(self, linear, rank, copy_bias=True, double_bias=False, from_svd=True, keep_linear=False,
                 down_bias=False, edit_linear=False):
        super().__init__()
        A, B = L.truncated_svd(linear.weight.detach(), rank)
        self.down = nn.Linear(linear.in_features, rank, bias=down_bias)
        self.up = nn.Linear(rank, linear.out_features)
        self.double_bias = double_bias
        if keep_linear:
            self.linear = linear
        with torch.no_grad():
            if from_svd:
                self.down.weight.copy_(B)
                self.up.weight.copy_(A)
            if copy_bias:
                self.up.bias.copy_(linear.bias)
            if edit_linear:
                linear.weight.copy_(A @ B)

    def forward(self, x):
        y = self.up(self.down(x))
        return y + self.up.bias if self.double_bias else y


@mutant(ch03.lowrank_linear, "up.bias phải là bias gốc")
def lowrank_bias_not_copied(linear, rank):
    return LowRank(linear, rank, copy_bias=False)


@mutant(ch03.lowrank_linear, "bias bị cộng hai lần")
def lowrank_double_bias(linear, rank):
    return LowRank(linear, rank, double_bias=True)


@mutant(ch03.lowrank_linear, "copy_ B vào down.weight")
def lowrank_random_init(linear, rank):
    return LowRank(linear, rank, from_svd=False)


@mutant(ch03.lowrank_linear, "còn giữ cả lớp gốc")
def lowrank_keeps_linear(linear, rank):
    return LowRank(linear, rank, keep_linear=True)


@mutant(ch03.lowrank_linear, "(down) không có bias")
def lowrank_down_bias(linear, rank):
    return LowRank(linear, rank, down_bias=True)


@mutant(ch03.lowrank_linear, "đã sửa trọng số của lớp gốc")
def lowrank_edits_linear(linear, rank):
    return LowRank(linear, rank, edit_linear=True)


def energy_rank(s, e, square=True):
    v = s.double() ** 2 if square else s.double()
    kept = torch.cumsum(v, 0) / v.sum()
    return min(int((kept < e - 1e-12).sum()) + 1, len(s))


@mutant(ch03.rank_for_energy, "tổng các σ_i²")
def energy_by_sigma(s, e):
    return energy_rank(s, e, square=False)


@mutant(ch03.rank_for_energy, "thiếu một thành phần")
def energy_count_below(s, e):
    return energy_rank(s, e) - 1


@mutant(ch03.rank_for_energy, "thừa một thành phần")
def energy_one_more(s, e):
    return energy_rank(s, e) + 1


@mutant(ch03.rank_for_energy, "hạng không thể vượt")
def energy_less_or_equal(s, e):
    kept = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum()
    return int((kept <= e).sum()) + 1


@mutant(ch03.rank_for_energy, "số nguyên Python (int)")
def energy_as_tensor(s, e):
    kept = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum()
    return (kept < e - 1e-12).sum() + 1


@mutant(ch03.rank_for_energy, "tại chỗ (in-place)")
def energy_squares_in_place(s, e):
    s.pow_(2)
    return min(int((torch.cumsum(s, 0) / s.sum() < e - 1e-12).sum()) + 1, len(s))


def whiten(W, X, r, inverse=True, upper=False, times_s=False, keep_double=False):
    H = X.T.double() @ X.double()
    S = torch.linalg.cholesky(H, upper=upper)
    U, sv, Vh = torch.linalg.svd(W.double() @ S, full_matrices=False)
    Wr = (U[:, :r] * sv[:r]) @ Vh[:r]
    if times_s:
        Wr = Wr @ S
    elif inverse:
        Wr = torch.linalg.solve_triangular(S, Wr, upper=upper, left=False)
    return Wr if keep_double else Wr.to(W.dtype)


@mutant(ch03.whitened_truncation, "SVD thường")
def whiten_plain_svd(W, X, r):
    return torch.matmul(*L.truncated_svd(W, r))


@mutant(ch03.whitened_truncation, "quên nhân lại với S⁻¹")
def whiten_no_inverse(W, X, r):
    return whiten(W, X, r, inverse=False)


@mutant(ch03.whitened_truncation, "thay vì S⁻¹")
def whiten_times_s(W, X, r):
    return whiten(W, X, r, times_s=True)


@mutant(ch03.whitened_truncation, "Cholesky *dưới*")
def whiten_upper_factor(W, X, r):
    return whiten(W, X, r, upper=True)


@mutant(ch03.whitened_truncation, "cùng dtype với W")
def whiten_returns_double(W, X, r):
    return whiten(W, X, r, keep_double=True)


@mutant(ch03.whitened_truncation, "hạng ≤ 4")
def whiten_rank_plus_one(W, X, r):
    return whiten(W, X, r + 1)


# ----------------------------------------------------------------------------- chapter 4
def sym(x, bits, rounding=torch.round, qmax_of=lambda b: 2 ** (b - 1) - 1, signed_max=False, dequantized=False):
    qmax = qmax_of(bits)
    scale = float(x.max() if signed_max else x.abs().max()) / qmax
    q = torch.clamp(rounding(x / scale), -qmax, qmax)
    return (q * scale if dequantized else q), scale


@mutant(ch04.quantize_symmetric, "không phải 2^(b−1)")
def sym_qmax_power(x, bits):
    return sym(x, bits, qmax_of=lambda b: 2 ** (b - 1))


@mutant(ch04.quantize_symmetric, "trunc/int")
def sym_trunc(x, bits):
    return sym(x, bits, rounding=torch.trunc)


@mutant(ch04.quantize_symmetric, "torch.floor")
def sym_floor(x, bits):
    return sym(x, bits, rounding=torch.floor)


@mutant(ch04.quantize_symmetric, "không phải max x")
def sym_signed_max(x, bits):
    return sym(x, bits, signed_max=True)


@mutant(ch04.quantize_symmetric, "chưa nhân lại với scale")
def sym_dequantized(x, bits):
    return sym(x, bits, dequantized=True)


@mutant(ch04.quantize_symmetric, "số thực Python (float)")
def sym_tensor_scale(x, bits):
    q, s = sym(x, bits)
    return q, torch.tensor(s)


@mutant(ch04.quantize_symmetric, "tại chỗ (in-place)")
def sym_in_place(x, bits):
    qmax = 2 ** (bits - 1) - 1
    scale = float(x.abs().max()) / qmax
    x /= scale
    return torch.clamp(torch.round(x), -qmax, qmax), scale


def affine(lo, hi, bits, sign=1, with_qmin=True, rounding=round, levels=None, zero_type=int):
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    s = (hi - lo) / (levels or (qmax - qmin))
    z = (qmin if with_qmin else 0) - rounding(lo / s)
    return s, zero_type(sign * z if sign == 1 else rounding(lo / s) - qmin)


@mutant(ch04.affine_params, "dấu của zero_point bị ngược")
def affine_sign(lo, hi, bits):
    return affine(lo, hi, bits, sign=-1)


@mutant(ch04.affine_params, "khoảng không dấu")
def affine_without_qmin(lo, hi, bits):
    return affine(lo, hi, bits, with_qmin=False)


@mutant(ch04.affine_params, "cắt phần thập phân (int)")
def affine_trunc(lo, hi, bits):
    return affine(lo, hi, bits, rounding=int)


@mutant(ch04.affine_params, "2^b − 1 khoảng")
def affine_levels(lo, hi, bits):
    return affine(lo, hi, bits, levels=2 ** bits)


@mutant(ch04.affine_params, "số nguyên Python (int)")
def affine_float_zero(lo, hi, bits):
    return affine(lo, hi, bits, zero_type=float)


def scales(w, g, bits, strided=False, qmax=None, signed=False):
    out, cols = w.shape
    groups = w.reshape(out, g, cols // g).transpose(1, 2) if strided else w.reshape(out, cols // g, g)
    top = groups.amax(dim=-1) if signed else groups.abs().amax(dim=-1)
    return top / (qmax or 2 ** (bits - 1) - 1)


@mutant(ch04.group_scales, "per-channel")
def scales_per_channel(w, g, bits):
    return Q.quantize_tensor(w, bits).scale


@mutant(ch04.group_scales, "*liên tiếp*")
def scales_strided(w, g, bits):
    return scales(w, g, bits, strided=True)


@mutant(ch04.group_scales, "luôn dùng 7")
def scales_always_4_bits(w, g, bits):
    return scales(w, g, bits, qmax=7)


@mutant(ch04.group_scales, "quên trị tuyệt đối")
def scales_signed(w, g, bits):
    return scales(w, g, bits, signed=True)


@mutant(ch04.group_scales, "không phải 8")
def scales_qmax_power(w, g, bits):
    return scales(w, g, bits, qmax=2 ** (bits - 1))


@mutant(ch04.group_scales, "tại chỗ (in-place)")
def scales_abs_in_place(w, g, bits):
    w.abs_()
    return scales(w, g, bits)


def nibbles(q):
    return (q.to(torch.int16) & 0xF).to(torch.uint8)


@mutant(ch04.pack_int4, "bị đảo")
def pack_swapped(q):
    u = nibbles(q)
    return (u[..., 0::2] << 4) | u[..., 1::2]


@mutant(ch04.pack_int4, "nửa đầu với nửa sau")
def pack_halves(q):
    u, n = nibbles(q), q.shape[-1]
    return u[..., : n // 2] | (u[..., n // 2:] << 4)


@mutant(ch04.pack_int4, "mã bù hai 4 bit, tức (q & 0xF)")
def pack_without_mask(q):
    u = q.to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


@mutant(ch04.pack_int4, "q + 8")
def pack_offset(q):
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


@mutant(ch04.pack_int4, "torch.uint8")
def pack_int16(q):
    u = q.to(torch.int16) & 0xF
    return u[..., 0::2] | (u[..., 1::2] << 4)


@mutant(ch04.pack_int4, "chiều cuối")
def pack_rows(q):
    u = nibbles(q)
    return u[0::2] | (u[1::2] << 4)


@mutant(ch04.pack_int4, "tại chỗ (in-place)")
def pack_masks_in_place(q):
    q &= 0xF
    u = q.to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def dequantized(q, scale, g):
    out, cols = q.shape
    return (q.float().view(out, cols // g, g) * scale[..., None]).view(out, cols)


@mutant(ch04.qlinear_forward, "cả hàng")
def qlinear_row_scale(x, q, scale, bias, g):
    return F.linear(x, q.float() * scale[:, :1], bias)


@mutant(ch04.qlinear_forward, "quên cộng bias")
def qlinear_without_bias(x, q, scale, bias, g):
    return F.linear(x, dequantized(q, scale, g))


@mutant(ch04.qlinear_forward, "repeat_interleave")
def qlinear_tiled_scales(x, q, scale, bias, g):
    return F.linear(x, q.float() * scale.repeat(1, g), bias)


@mutant(ch04.qlinear_forward, "tại chỗ (in-place)")
def qlinear_unsqueezes_in_place(x, q, scale, bias, g):
    out, cols = q.shape
    scale.unsqueeze_(-1)
    return F.linear(x, (q.float().view(out, cols // g, g) * scale).view(out, cols), bias)


@mutant(ch04.qlinear_forward, "cùng dtype với x")
def qlinear_in_double(x, q, scale, bias, g):
    return F.linear(x.double(), dequantized(q, scale, g).double(), bias.double())


def kth_abs(x, p, k_of=math.ceil, signed=False, shift=0):
    a = (x if signed else x.abs()).flatten().sort().values
    k = min(max(1, k_of(p / 100 * a.numel())) + shift, a.numel())
    return float(a[k - 1])


@mutant(ch04.percentile_clip, "làm tròn p/100 · N về số gần nhất")
def percentile_round(x, p):
    return kth_abs(x, p, k_of=round)


@mutant(ch04.percentile_clip, "làm tròn p/100 · N xuống")
def percentile_floor(x, p):
    return kth_abs(x, p, k_of=int)


@mutant(ch04.percentile_clip, "torch.quantile")
def percentile_quantile(x, p):
    return float(torch.quantile(x.abs().flatten(), p / 100))


@mutant(ch04.percentile_clip, "trị tuyệt đối")
def percentile_signed(x, p):
    return kth_abs(x, p, signed=True)


@mutant(ch04.percentile_clip, "sorted[k − 1]")
def percentile_off_by_one(x, p):
    return kth_abs(x, p, shift=1)


@mutant(ch04.percentile_clip, "max|x|")
def percentile_max(x, p):
    return float(x.abs().max())


@mutant(ch04.percentile_clip, "số thực Python (float)")
def percentile_tensor(x, p):
    a = x.abs().flatten()
    return a.kthvalue(max(1, math.ceil(p / 100 * a.numel()))).values


@mutant(ch04.percentile_clip, "tại chỗ (in-place)")
def percentile_abs_in_place(x, p):
    x.abs_()
    return kth_abs(x, p)


def gptq(W, H, j, s, bits, copy=True, **kw):
    return ch04._gptq(W, H, j, s, bits, **kw) if copy else W.copy_(ch04._gptq(W, H, j, s, bits, **kw))


@mutant(ch04.gptq_step, "Hinv[j, j] trước khi lan")
def gptq_no_division(W, H, j, s, bits):
    return gptq(W, H, j, s, bits, divide=False)


@mutant(ch04.gptq_step, "tại chỗ (in-place)")
def gptq_in_place(W, H, j, s, bits):
    return gptq(W, H, j, s, bits, copy=False)


@mutant(ch04.gptq_step, "thiếu bước kẹp")
def gptq_no_clamp(W, H, j, s, bits):
    return gptq(W, H, j, s, bits, clamp=False)


@mutant(ch04.gptq_step, "*hàng* j")
def gptq_column_of_hinv(W, H, j, s, bits):
    return gptq(W, H, j, s, bits, row=False)


@mutant(ch04.gptq_step, "luôn dùng 7")
def gptq_always_4_bits(W, H, j, s, bits):
    return gptq(W, H, j, s, bits, qmax=7)


@mutant(ch04.gptq_step, "W[:, j+1:]")
def gptq_skips_column_j(W, H, j, s, bits):
    return gptq(W, H, j, s, bits, start=j + 1)


@mutant(ch04.gptq_step, "nằm trên lưới")
def gptq_error_off_grid(W, H, j, s, bits):
    return gptq(W, H, j, s, bits, on_grid=False)


# ----------------------------------------------------------------------------- chapter 5
@mutant(ch05.bits_per_weight, "bitmask")
def bits_without_bitmask(s, b, g):
    return (1 - s) * b + 16 / g if s else b + 16 / g


@mutant(ch05.bits_per_weight, "quên các thang đo")
def bits_without_scales(s, b, g):
    return C.bits_per_weight(s, b, g) - 16 / g


@mutant(ch05.bits_per_weight, "FP16")
def bits_fp32_scales(s, b, g):
    return C.bits_per_weight(s, b, g) + 16 / g


@mutant(ch05.bits_per_weight, "phần bị cắt")
def bits_kept_is_pruned(s, b, g):
    return s * b + 1 + 16 / g if s else b + 16 / g


@mutant(ch05.bits_per_weight, "min((1 − s)·b + 1, b)")
def bits_without_min(s, b, g):
    return (1 - s) * b + 1 + 16 / g if s else b + 16 / g


@mutant(ch05.bits_per_weight, "số thực Python (float)")
def bits_as_tensor(s, b, g):
    return torch.tensor(C.bits_per_weight(s, b, g))


def ptq(w, s, b, g, affine=False, per_row=False, prune=True):
    m = w * P.magnitude_mask(w, s) if prune else w
    return Q.fake_quantize(m, b, None if per_row else g, symmetric=not affine)


@mutant(ch05.prune_then_quantize, "cắt tỉa theo độ lớn")
def ptq_without_pruning(w, s, b, g):
    return ptq(w, s, b, g, prune=False)


@mutant(ch05.prune_then_quantize, "đối xứng")
def ptq_affine(w, s, b, g):
    return ptq(w, s, b, g, affine=True)


@mutant(ch05.prune_then_quantize, "một thang đo cho cả hàng")
def ptq_per_row(w, s, b, g):
    return ptq(w, s, b, g, per_row=True)


@mutant(ch05.prune_then_quantize, "nhỏ nhất")
def ptq_wrong_selection(w, s, b, g):
    return Q.fake_quantize(w * P.magnitude_mask(w.abs().flip(0), s), b, g)


@mutant(ch05.prune_then_quantize, "tại chỗ (in-place)")
def ptq_in_place(w, s, b, g):
    w *= P.magnitude_mask(w, s)
    return Q.fake_quantize(w, b, g)


@mutant(ch05.pareto_front, "mọi điểm")
def pareto_everything(pts):
    return list(range(len(pts)))


@mutant(ch05.pareto_front, "càng thấp càng tốt")
def pareto_higher_is_better(pts):
    return C.pareto_front(pts, higher_is_better=True)


@mutant(ch05.pareto_front, "sắp xếp")
def pareto_sorted_by_loss(pts):
    return sorted(C.pareto_front(pts), key=lambda i: pts[i][1])


@mutant(ch05.pareto_front, "trội hơn")
def pareto_extra_point(pts):
    return sorted(C.pareto_front(pts) + ([4] if len(pts) == 7 else []))


@mutant(ch05.pareto_front, "tại chỗ (in-place)")
def pareto_sorts_in_place(pts):
    pts.sort()
    return C.pareto_front(pts)


def ratio(fp32, fixed, n, b, forget_fixed=False, bits_as_bytes=False, inverse=False):
    stored = (0 if forget_fixed else fixed) + n * b / (1 if bits_as_bytes else 8)
    return stored / fp32 if inverse else fp32 / stored


@mutant(ch05.whole_model_ratio, "phần cố định")
def ratio_without_fixed(*a):
    return ratio(*a, forget_fixed=True)


@mutant(ch05.whole_model_ratio, "chia cho 8")
def ratio_bits_as_bytes(*a):
    return ratio(*a, bits_as_bytes=True)


@mutant(ch05.whole_model_ratio, "ngược")
def ratio_inverted(*a):
    return ratio(*a, inverse=True)


def drop(r, relative_acc=False, absolute_loss=False, flip=False):
    d = quality_drop(r)
    if relative_acc and r["metric"] == "accuracy":
        d = d / r["baseline"]
    if absolute_loss and r["metric"] == "val_loss":
        d = r["value"] - r["baseline"]
    return -d if flip else d


@mutant(ch05.quality_drop, "điểm phần trăm")
def drop_relative_accuracy(r):
    return drop(r, relative_acc=True)


@mutant(ch05.quality_drop, "tương đối")
def drop_absolute_loss(r):
    return drop(r, absolute_loss=True)


@mutant(ch05.quality_drop, "dấu")
def drop_flipped(r):
    return drop(r, flip=True)


@mutant(ch05.quality_drop, "tại chỗ (in-place)")
def drop_pops_value(r):
    base, value = r["baseline"], r.pop("value")
    return value / base - 1.0 if r["metric"] == "val_loss" else base - value


# ----------------------------------------------------------------------------- chapter 6
@mutant(ch06.bits_per_byte, "quên đổi nat sang bit")
def bpb_in_nats(nll, n_bytes):
    return nll / n_bytes


@mutant(ch06.bits_per_byte, "không phải nhân")
def bpb_times_ln2(nll, n_bytes):
    return nll * math.log(2) / n_bytes


@mutant(ch06.bits_per_byte, "không phải ln 10")
def bpb_log10(nll, n_bytes):
    return nll / math.log(10) / n_bytes


@mutant(ch06.bits_per_byte, "chưa chia cho số byte")
def bpb_total_bits(nll, n_bytes):
    return nll / math.log(2)


@mutant(ch06.bits_per_byte, "8 × số byte")
def bpb_per_bit(nll, n_bytes):
    return nll / math.log(2) / (8 * n_bytes)


@mutant(ch06.bits_per_byte, "số thực Python (float)")
def bpb_as_tensor(nll, n_bytes):
    return torch.tensor(nll) / math.log(2) / n_bytes


@mutant(ch06.kl_to_reference, "chiều ngược lại")
def kl_reversed(ref, q):
    return float((q.exp() * (q - ref)).sum(-1).mean())


@mutant(ch06.kl_to_reference, "không phải log-xác suất")
def kl_log_weights(ref, q):
    return float((ref * (ref - q)).sum(-1).mean())


@mutant(ch06.kl_to_reference, "*tổng* trên mọi token của từ vựng")
def kl_mean_over_vocab(ref, q):
    return float((ref.exp() * (ref - q)).mean())


@mutant(ch06.kl_to_reference, "không phải tổng")
def kl_sum_over_positions(ref, q):
    return float((ref.exp() * (ref - q)).sum())


@mutant(ch06.kl_to_reference, "gộp chúng lại như công thức")
def kl_per_position(ref, q):
    return (ref.exp() * (ref - q)).sum(-1)


@mutant(ch06.blocks_to_drop, "ảnh hưởng *lớn* nhất")
def drop_most_influential(influence, k):
    return sorted(influence.argsort(descending=True)[:k].tolist())


@mutant(ch06.blocks_to_drop, "sắp theo chỉ số tăng dần")
def drop_in_influence_order(influence, k):
    return influence.argsort()[:k].tolist()


@mutant(ch06.blocks_to_drop, "dùng .tolist()")
def drop_as_tensor(influence, k):
    return influence.argsort()[:k].sort().values


@mutant(ch06.blocks_to_drop, "tại chỗ (in-place)")
def drop_sorts_in_place(influence, k):
    order = influence.argsort()
    influence[:] = influence[order]
    return sorted(order[:k].tolist())


def awq(W, H, bits, group_size, n_grid, pick=min, divide=True, group=None, steps=None):
    """AWQ's search with one mistake at a time: the worst alpha (``pick=max``), no division by s, a fixed
    group size, or only some of the grid's ``steps``."""
    a = H.diagonal().double().clamp_min(1e-12).sqrt()
    found = []
    for i in range(n_grid + 1) if steps is None else steps:
        s = a ** (i / n_grid)
        q = Q.fake_quantize((W.double() * s).float(), bits, group or group_size).double()
        w_hat = (q / s if divide else q).float()
        found.append((Q.output_error(W, (q / s).float(), H), w_hat, s.float()))
    best = pick(found, key=lambda t: t[0])
    return best[1], best[2]


@mutant(ch06.awq_search, "kể cả hai đầu 0 và 1")
def awq_without_alpha_one(W, H, bits, group_size, n_grid):
    return awq(W, H, bits, group_size, n_grid, steps=range(n_grid))


@mutant(ch06.awq_search, "alpha = 0 (s = 1) luôn nằm")
def awq_without_alpha_zero(W, H, bits, group_size, n_grid):
    return awq(W, H, bits, group_size, n_grid, steps=range(1, n_grid + 1))


@mutant(ch06.awq_search, "mọi alpha")
def awq_never_scales(W, H, bits, group_size, n_grid):
    return Q.fake_quantize(W, bits, group_size), torch.ones(W.shape[1])


@mutant(ch06.awq_search, "chưa chia lại cho s")
def awq_no_unscale(W, H, bits, group_size, n_grid):
    return awq(W, H, bits, group_size, n_grid, divide=False)


@mutant(ch06.awq_search, "dùng đúng các tham số")
def awq_fixed_group(W, H, bits, group_size, n_grid):
    return awq(W, H, bits, group_size, n_grid, group=32)


@mutant(ch06.awq_search, "không thể tệ hơn")
def awq_largest_error(W, H, bits, group_size, n_grid):
    return awq(W, H, bits, group_size, n_grid, pick=max)


@mutant(ch06.awq_search, "tại chỗ (in-place)")
def awq_scales_w_in_place(W, H, bits, group_size, n_grid):
    W.mul_(2.0)
    W.div_(2.0)
    W.add_(1e-3)
    return awq(W, H, bits, group_size, n_grid)


@mutant(ch06.fold_scales, "gộp ngược chiều")
def fold_backwards(gain, weights, s):
    return gain * s, [w / s[None, :] for w in weights]


@mutant(ch06.fold_scales, "gain của RMSNorm không đổi")
def fold_weights_only(gain, weights, s):
    return gain.clone(), [w * s[None, :] for w in weights]


@mutant(ch06.fold_scales, "phải nhân cột với cùng s")
def fold_first_layer_only(gain, weights, s):
    return gain / s, [weights[0] * s[None, :]] + [w.clone() for w in weights[1:]]


@mutant(ch06.fold_scales, "bạn nhân *hàng* của W")
def fold_rows(gain, weights, s):
    return gain / s, [w * s[:, None] if w.shape[0] == s.numel() else w * s[None, :] for w in weights]


@mutant(ch06.fold_scales, "gain mới phải là gain / s")
def fold_gain_by_square(gain, weights, s):
    return gain / s**2, [w * s[None, :] for w in weights]


@mutant(ch06.fold_scales, "tại chỗ (in-place)")
def fold_in_place(gain, weights, s):
    gain.div_(s)
    for w in weights:
        w.mul_(s[None, :])
    return gain, weights


@mutant(ch06.block_influence, "1 − cos (khối không làm gì")
def influence_mean_cos(x, y):
    return float(F.cosine_similarity(x, y, dim=-1).mean())


@mutant(ch06.block_influence, "không theo chiều token")
def influence_token_axis(x, y):
    return float((1 - F.cosine_similarity(x, y, dim=1)).mean())


@mutant(ch06.block_influence, "cả tensor làm phẳng")
def influence_one_cosine(x, y):
    return float(1 - F.cosine_similarity(x.reshape(1, -1), y.reshape(1, -1), dim=-1))


@mutant(ch06.block_influence, "1 − |cos|")
def influence_abs_cos(x, y):
    return float((1 - F.cosine_similarity(x, y, dim=-1).abs()).mean())


@mutant(ch06.block_influence, "số thực Python (float)")
def influence_tensor(x, y):
    return (1 - F.cosine_similarity(x, y, dim=-1)).mean()


@mutant(ch06.block_influence, "gộp chúng lại như công thức")
def influence_per_token(x, y):
    return 1 - F.cosine_similarity(x, y, dim=-1)


# ----------------------------------------------------------------------------- chapter 7
@mutant(ch07.int4_bytes, "còn mỗi nhóm một scale")
def int4_bytes_without_scales(o, i, g):
    return o * i // 2


@mutant(ch07.int4_bytes, "4 byte, không phải 2")
def int4_bytes_one_bf16_per_group(o, i, g):
    return o * i // 2 + o * (i // g) * 2


@mutant(ch07.int4_bytes, "không phải out·in.")
def int4_bytes_one_byte_per_value(o, i, g):
    return o * i + o * (i // g) * 4


@mutant(ch07.int4_bytes, "dọc theo chiều vào")
def int4_bytes_groups_along_out(o, i, g):
    return o * i // 2 + (o // g) * i * 4


@mutant(ch07.int4_bytes, "số nguyên Python (int)")
def int4_bytes_as_float(o, i, g):
    return o * i / 2 + o * i / g * 4


@mutant(ch07.compute_bound_batch, "nghịch đảo")
def batch_inverted(b, f, bw, peak):
    return bw * f / (peak * b)


@mutant(ch07.compute_bound_batch, "bị đổi chỗ")
def batch_swapped_machine(b, f, bw, peak):
    return b * bw / (peak * f)


@mutant(ch07.compute_bound_batch, "cường độ số học")
def batch_intensity_only(b, f, bw, peak):
    return b / f


@mutant(ch07.compute_bound_batch, "số thực Python (float)")
def batch_as_tensor(b, f, bw, peak):
    return torch.tensor(b * peak / (bw * f))


def q4_0(q, d, pair=lambda u, j: u[j] | (u[j + 16] << 4), offset=8, scale=np.float16):
    u = [(v + offset) & 0xF for v in q.tolist()]
    return scale(d).tobytes() + bytes(pair(u, j) for j in range(16))


@mutant(ch07.q4_0_block, "không ghép hai số kề nhau")
def q4_0_adjacent_pairs(q, d):
    return q4_0(q, d, pair=lambda u, j: u[2 * j] | (u[2 * j + 1] << 4))


@mutant(ch07.q4_0_block, "hai nửa bị đảo")
def q4_0_halves_swapped(q, d):
    return q4_0(q, d, pair=lambda u, j: u[j + 16] | (u[j] << 4))


@mutant(ch07.q4_0_block, "cộng 8 trước khi ghép")
def q4_0_twos_complement(q, d):
    return q4_0(q, d, offset=0)


@mutant(ch07.q4_0_block, "không phải float32")
def q4_0_float32_scale(q, d):
    return q4_0(q, d, scale=np.float32)


@mutant(ch07.q4_0_block, "tại chỗ (in-place)")
def q4_0_adds_in_place(q, d):
    q += 8
    return np.float16(d).tobytes() + bytes(int(q[j]) | (int(q[j + 16]) << 4) for j in range(16))


@mutant(ch07.int4_table, "dấu của zero bị ngược")
def table_zero_sign(scale, zero):
    return torch.stack([scale.t(), (zero * scale).t()], dim=-1)


@mutant(ch07.int4_table, "chuyển vị scale và zero")
def table_not_transposed(scale, zero):
    return torch.stack([scale, -zero * scale], dim=-1)


@mutant(ch07.int4_table, "nhân zero-point với scale")
def table_zero_in_steps(scale, zero):
    return torch.stack([scale.t(), -zero.t().float()], dim=-1)


@mutant(ch07.int4_table, "tại chỗ (in-place)")
def table_scales_zero_in_place(scale, zero):
    zero.mul_(scale).neg_()
    return torch.stack([scale.t(), zero.t()], dim=-1)


@mutant(ch07.int4_table, "không liền trong bộ nhớ")
def table_transposed_view(scale, zero):  # the right numbers, as a view that aten reads as if contiguous
    return torch.stack([scale, -zero * scale], dim=-1).transpose(0, 1)


@mutant(ch07.permute_qk, "phép ngược")
def permute_inverse(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


@mutant(ch07.permute_qk, "trong từng đầu")
def permute_as_one_head(w, n_head):
    return w.reshape(1, 2, w.shape[0] // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


@mutant(ch07.permute_qk, "thứ tự hàng chưa đúng")
def permute_nothing(w, n_head):
    return w.clone()


# ----------------------------------------------------------------------------- chapter 8
@mutant(ch08.rms_norm, "LayerNorm")
def rms_layernorm(x, weight, eps):
    h = x.float()
    return weight * ((h - h.mean(-1, keepdim=True)) * torch.rsqrt(h.var(-1, keepdim=True, unbiased=False) + eps)).to(x.dtype)


@mutant(ch08.rms_norm, "eps nằm ngoài căn")
def rms_eps_outside(x, weight, eps):
    h = x.float()
    return weight * (h / (h.pow(2).mean(-1, keepdim=True).sqrt() + eps)).to(x.dtype)


@mutant(ch08.rms_norm, "tổng bình phương")
def rms_sum(x, weight, eps):
    h = x.float()
    return weight * (h * torch.rsqrt(h.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


@mutant(ch08.rms_norm, "thiếu trọng số")
def rms_no_gain(x, weight, eps):
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@mutant(ch08.rms_norm, "dtype của x")
def rms_returns_fp32(x, weight, eps):  # right numbers, but a BF16 input comes back as FP32
    h = x.float()
    return weight * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)


@mutant(ch08.apply_rope, "kề nhau")
def rope_neighbours(x, cos, sin):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)


@mutant(ch08.apply_rope, "bị ngược")
def rope_backwards(x, cos, sin):
    h = x.shape[-1] // 2
    return torch.cat([x[..., :h] * cos + x[..., h:] * sin, x[..., h:] * cos - x[..., :h] * sin], dim=-1)


@mutant(ch08.apply_rope, "đổi chỗ")
def rope_cos_sin_swapped(x, cos, sin):
    h = x.shape[-1] // 2
    return torch.cat([x[..., :h] * sin - x[..., h:] * cos, x[..., h:] * sin + x[..., :h] * cos], dim=-1)


@mutant(ch08.apply_rope, "nửa đầu")
def rope_first_half_only(x, cos, sin):
    h = x.shape[-1] // 2
    return torch.cat([x[..., :h] * cos - x[..., h:] * sin, x[..., h:]], dim=-1)


def _attend(q, k, v, pos, visible=lambda s, p: s <= p, tile=False, scale=True, axis=-1):
    rep = q.shape[1] // k.shape[1]
    k = k.repeat(1, rep, 1, 1) if tile else k.repeat_interleave(rep, dim=1)
    v = v.repeat(1, rep, 1, 1) if tile else v.repeat_interleave(rep, dim=1)
    scores = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5 if scale else 1.0)
    scores = scores.masked_fill(~visible(torch.arange(k.shape[2])[None, :], pos[:, None]), float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=axis)) @ v


@mutant(ch08.attend, "chưa che")
def attend_no_mask(q, k, v, pos):
    return _attend(q, k, v, pos, visible=lambda s, p: s >= 0)


@mutant(ch08.attend, "lệch một ô")
def attend_excludes_itself(q, k, v, pos):
    return _attend(q, k, v, pos, visible=lambda s, p: s < p)


@mutant(ch08.attend, "repeat_interleave")
def attend_tiled_heads(q, k, v, pos):
    return _attend(q, k, v, pos, tile=True)


@mutant(ch08.attend, "1/sqrt(D)")
def attend_unscaled(q, k, v, pos):
    return _attend(q, k, v, pos, scale=False)


@mutant(ch08.attend, "chiều các ô")
def attend_softmax_over_queries(q, k, v, pos):
    return _attend(q, k, v, pos, axis=-2)


def _numba(fn):
    from numba import njit

    return njit(fastmath=True)(fn)


def _naive_body(name, sign=True, swap=False, by_byte=False, scaled=True):
    def gemv(x, packed, scales):
        out, n = packed.shape[0], x.shape[0]
        y = np.zeros(out, dtype=np.float32)
        for r in range(out):
            acc = 0.0
            for i in range(n):
                shift = 4 * (1 - i % 2) if swap else 4 * (i % 2)
                nib = np.int32((packed[r, i // 2] >> shift) & 15)
                q = nib - 16 if (sign and nib > 7) else nib
                acc += q * (scales[r, (i // 2 if by_byte else i) // 32] if scaled else 1.0) * x[i]
            y[r] = acc
        return y

    gemv.__name__ = name
    return gemv


mutant(ch08.gemv_naive, "mở rộng dấu")(_numba(_naive_body("gemv_no_sign", sign=False)))
mutant(ch08.gemv_naive, "hai nửa byte bị đảo")(_numba(_naive_body("gemv_nibbles_swapped", swap=True)))
mutant(ch08.gemv_naive, "chỉ số byte")(_numba(_naive_body("gemv_group_of_byte", by_byte=True)))
mutant(ch08.gemv_naive, "thiếu scale")(_numba(_naive_body("gemv_no_scale", scaled=False)))
mutant(ch08.gemv_naive, "chưa được numba biên dịch")(_naive_body("gemv_python"))


def _q4_0_body(name, offset=8, halves_swapped=False):
    def gemv(x, packed, scales):
        out, blocks = scales.shape
        y = np.zeros(out, dtype=np.float32)
        for r in range(out):
            acc = 0.0
            for b in range(blocks):
                s = 0.0
                for j in range(16):
                    byte = np.int32(packed[r, b * 16 + j])
                    lo, hi = (byte & 15) - offset, (byte >> 4) - offset
                    if halves_swapped:
                        lo, hi = hi, lo
                    s += lo * x[b * 32 + j] + hi * x[b * 32 + 16 + j]
                acc += s * scales[r, b]
            y[r] = acc
        return y

    gemv.__name__ = name
    return gemv


mutant(ch08.gemv_q4_0, "trừ 8")(_numba(_q4_0_body("q40_no_offset", offset=0)))
mutant(ch08.gemv_q4_0, "hai nửa bị đảo")(_numba(_q4_0_body("q40_halves_swapped", halves_swapped=True)))
mutant(ch08.gemv_q4_0, "vòng lặp của bài tập 4")(_numba(_naive_body("q40_exercise_1_loop")))
mutant(ch08.gemv_q4_0, "chưa được numba biên dịch")(_q4_0_body("q40_python"))


# ----------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("check, answer, fragment", MUTANTS)
def test_mutant_is_rejected_with_its_message(check, answer, fragment):
    r = run(check, answer)
    assert r.status == "fail", r.message
    assert fragment in r.message, r.message


def test_every_exercise_has_at_least_three_mutants():
    ids = {ex for path in (ROOT / "solutions").glob("*.ipynb") for ex in exercises_of(nbformat.read(path, as_version=4))}
    counts = collections.Counter(p.values[0].exercise_id for p in MUTANTS)
    assert ids and not {i: counts[i] for i in ids if counts[i] < 3}, "exercises with fewer than 3 mutants"
