"""Exercise checks that answer a student in Vietnamese instead of with a traceback.

A chapter's checks live in ``lightweight/checks/chNN.py``. Each check is a function that tests
the student's code with :func:`expect` / :func:`expect_close` and is wrapped by :func:`exercise`:

    @exercise("ch00.memory", "Bộ nhớ của trọng số")
    def memory(fn): ...

Calling it prints one line — ✅ success, ❌ what is wrong and what to try, ⏳ not attempted, or
💥 the student's code crashed — and records a :class:`CheckResult` in :data:`RESULTS` for graders.
It returns nothing, so that a notebook cell ending with a check shows only that line.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

STATUSES = ("pass", "fail", "not attempted", "error")


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


_ICONS = {"pass": "✅", "fail": "❌", "not attempted": "⏳", "error": "💥"}


def exercise(exercise_id: str, title: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Turn a check body into a student-facing check that prints one line and returns a result."""

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
                result = CheckResult(exercise_id, "error", f"{title}: hàm của bạn gây lỗi {type(e).__name__}: {e}")
            RESULTS.append(result)
            print(f"{_ICONS[result.status]} [{exercise_id}] {result.message}")

        return run

    return wrap
