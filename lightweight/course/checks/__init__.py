"""Exercise checks that answer a student in Vietnamese instead of with a traceback.

A chapter's checks live in ``lightweight/course/checks/chNN.py``. Each check is a function that tests
the student's code with the helpers below and is wrapped by :func:`exercise`:

    @exercise("ch00.memory", "Bộ nhớ của trọng số")
    def memory(fn): ...

Calling it prints one line — ✅ success, ❌ what is wrong and what to try, ⏳ not attempted, or
💥 the student's code crashed (with the line that raised and a hint) — and records a
:class:`CheckResult` in :data:`RESULTS`. When the environment variable :data:`LOG_ENV` names a
file, the result is also appended to it at once as one JSON line, so that a grader keeps every
result even if a later cell hangs or kills the kernel. The check returns nothing, so that a
notebook cell ending with a check shows only that line.

Helpers: :func:`call` runs the student's function on copies of its inputs and fails if it
modified them; :func:`as_float`, :func:`as_int`, :func:`as_bool`, :func:`as_tensor`,
:func:`as_scalar_tensor` enforce the return type the exercise text specifies; :func:`recognise`
gives a diagnosis only when the answers match one known mistake in every tested case;
:func:`isolated_rng` keeps a check's random draws out of the notebook's global RNG. Crash reports
are built in :mod:`lightweight.course.checks.crash`.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .crash import crash_message

STATUSES = ("pass", "fail", "not attempted", "error")
LOG_ENV = "LIGHTWEIGHT_CHECK_LOG"


class CheckFailed(Exception):
    """Raised inside a check with a message (in Vietnamese) for the student."""


@dataclass(frozen=True)
class CheckResult:
    exercise: str
    status: str  # one of STATUSES
    message: str

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def __bool__(self) -> bool:
        return self.passed


RESULTS: list[CheckResult] = []


# ----------------------------------------------------------------------------- basic expectations
def expect(condition: bool, message: str) -> None:
    """Fail the check with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(message)


def expect_close(actual: object, expected: float, what: str, rel: float = 1e-6, abs_: float = 0.0, hint: str = "") -> None:
    """Fail unless ``actual`` is a real number within ``rel``/``abs_`` of ``expected``."""
    if isinstance(actual, bool) or not isinstance(actual, (int, float)) and not hasattr(actual, "__float__"):
        raise CheckFailed(f"{what}: cần một con số, nhưng hàm trả về {type(actual).__name__} ({actual!r}).")
    value = float(actual)
    if not math.isclose(value, expected, rel_tol=rel, abs_tol=abs_):
        raise CheckFailed(f"{what}: mong đợi {expected:.6g}, nhận được {value:.6g}." + (f" Gợi ý: {hint}" if hint else ""))


def close(a: float, b: float, rel: float = 1e-6, abs_: float = 1e-12) -> bool:
    """``math.isclose`` for two real numbers."""
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def same_tensor(a: torch.Tensor, b: torch.Tensor, atol: float = 0.0) -> bool:
    """Same shape and values (exactly when ``atol == 0``; dtypes may differ)."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        return False
    if atol == 0:
        return torch.equal(a.to(b.dtype) if a.dtype != b.dtype else a, b)
    return torch.allclose(a.detach().double(), b.detach().double(), rtol=0.0, atol=atol)


# ----------------------------------------------------------------------------- return types
def _kind(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"một tensor {tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
    return f"{type(x).__name__} ({x!r})" if isinstance(x, (int, float, bool, str)) else type(x).__name__


def as_float(got: object, what: str) -> float:
    """A Python real number (``int`` or ``float``, not ``bool``, not a tensor)."""
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        if isinstance(got, torch.Tensor) and got.numel() > 1:
            hint = (f" Tensor này có {got.numel()} phần tử, còn đề bài cần một con số: gộp chúng lại như công thức "
                    "(thường là .mean() hay .sum()), rồi mới đổi bằng float(...).")
        elif isinstance(got, torch.Tensor) or hasattr(got, "item"):
            hint = " Đổi bằng float(...) hoặc .item()."
        else:
            hint = ""
        raise CheckFailed(f"{what} phải là một số thực Python (float), nhận {_kind(got)}.{hint}")
    return float(got)


def as_int(got: object, what: str) -> int:
    """A Python ``int`` (not ``bool``, not a float, not a tensor)."""
    if isinstance(got, bool) or not isinstance(got, int):
        hint = " Đổi bằng int(...)." if isinstance(got, (float, torch.Tensor)) or hasattr(got, "item") else ""
        raise CheckFailed(f"{what} phải là một số nguyên Python (int), nhận {_kind(got)}.{hint}")
    return got


def as_bool(got: object, what: str) -> bool:
    """A Python ``bool``."""
    if not isinstance(got, bool):
        raise CheckFailed(f"{what} phải là bool của Python (True/False), nhận {_kind(got)}; bọc kết quả trong bool(...).")
    return got


def as_tensor(got: object, what: str, shape: Sequence[int] | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tensor, with the given shape and dtype when they are given."""
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"{what} phải là một tensor, nhận {_kind(got)}.")
    if shape is not None and tuple(got.shape) != tuple(shape):
        raise CheckFailed(f"{what}: cần hình dạng (shape) {tuple(shape)}, nhận {tuple(got.shape)}.")
    if dtype is not None and got.dtype != dtype:
        raise CheckFailed(f"{what}: cần dtype {dtype}, nhận {got.dtype}.")
    return got


def as_scalar_tensor(got: object, what: str) -> torch.Tensor:
    """A one-element tensor (a loss that can still be back-propagated)."""
    if not isinstance(got, torch.Tensor):
        hint = " Đừng gọi .item() hay float(): trả về chính tensor để còn gọi .backward()." if isinstance(got, (int, float)) else ""
        raise CheckFailed(f"{what} phải là một tensor một phần tử, nhận {_kind(got)}.{hint}")
    if got.numel() != 1:
        raise CheckFailed(f"{what} phải là một tensor một phần tử (một số), nhận hình dạng {tuple(got.shape)}: "
                          "hãy lấy trung bình (.mean()) hoặc tổng như đề bài.")
    return got


# ----------------------------------------------------------------------------- inputs left unchanged
def _copy(x: object) -> object:
    if isinstance(x, torch.Tensor):
        return x.detach().clone().requires_grad_(x.requires_grad)
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_copy(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_copy(v) for v in x)
    return x


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.detach(), b.detach())
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def call(fn: Callable[..., object], *args: object, names: Sequence[str]) -> object:
    """``fn(*copies of args)``; fail if ``fn`` modified one of them (a caller does not expect that)."""
    copies = [_copy(a) for a in args]
    got = fn(*copies)
    for name, before, after in zip(names, args, copies):
        if not _same(before, after):
            raise CheckFailed(f"hàm của bạn đã sửa đầu vào `{name}` tại chỗ (in-place), nên người gọi mất dữ liệu gốc. "
                              "Hãy làm trên một bản sao (.clone(), dict mới, list mới) và dùng phép toán không có dấu _ "
                              "(abs() thay vì abs_(), x = x / s thay vì x /= s).")
    return got


def isolated_rng():
    """A context in which drawing random numbers (or re-seeding) leaves the global torch RNG as it was.

    A check uses it for the cases it adds, so that the notebook cells after a check see the random
    state they always saw."""
    return torch.random.fork_rng(devices=[])


# ----------------------------------------------------------------------------- diagnoses
def recognise(got: Sequence[object], mistakes: dict[str, Sequence[object]], same: Callable[[object, object], bool],
              want: Sequence[object] | None = None) -> None:
    """Fail with the first message whose mistaken answers match ``got`` in every tested case.

    ``mistakes`` maps a diagnosis to the answers that exact mistake gives, case by case; a diagnosis
    is given only when all cases match, never on a guess; when several match, all are named. With ``want`` (the right answers), a
    mistake that gives the right answers in every case is skipped (these cases cannot tell it)."""
    matched = []
    for message, values in mistakes.items():
        if len(values) != len(got):
            continue
        if want is not None and all(same(v, w) for v, w in zip(values, want)):
            continue
        if all(same(g, v) for g, v in zip(got, values)):
            matched.append(message)
    if matched:  # two mistakes can give the same answers on these cases: name both
        raise CheckFailed(" Hoặc: ".join(matched))


def recognise_one(got: object, want: object, mistakes: dict[str, object], same: Callable[[object, object], bool]) -> None:
    """:func:`recognise` for one case: a mistake is named when ``got`` is exactly its answer and that answer is wrong here."""
    recognise([got], {m: [v] for m, v in mistakes.items()}, same, [want])


# ----------------------------------------------------------------------------- the decorator
def _log(result: CheckResult) -> None:
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(result), ensure_ascii=False) + "\n")


_ICONS = {"pass": "✅", "fail": "❌", "not attempted": "⏳", "error": "💥"}


def exercise(exercise_id: str, title: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Turn a check body into a student-facing check that prints one line and records a result."""

    def wrap(body: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(body)
        def run(*args, **kwargs) -> None:
            try:
                body(*args, **kwargs)
                result = CheckResult(exercise_id, "pass", f"{title}: đúng rồi!")
            except NotImplementedError:
                result = CheckResult(exercise_id, "not attempted", f"{title}: bạn chưa làm bài này — hãy thay `raise NotImplementedError()` bằng lời giải của bạn.")
            except CheckFailed as e:
                result = CheckResult(exercise_id, "fail", f"{title}: chưa đúng. {e}")
            except Exception as e:  # the student's code crashed: report it without a traceback
                result = CheckResult(exercise_id, "error", f"{title}: {crash_message(e)}")
            RESULTS.append(result)
            _log(result)
            print(f"{_ICONS[result.status]} [{exercise_id}] {result.message}")

        run.exercise_id = exercise_id
        return run

    return wrap
