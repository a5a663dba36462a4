"""The check framework, right answers (the solutions' and other valid ways), crash reports, the result log.

Wrong answers are in test_mutants.py."""

import ast
import json
import math
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F

from lightweight.course import checks
from lightweight import combine as C
from lightweight import distill as D
from lightweight import lowrank as L
from lightweight import prune as P
from lightweight import quantize as Q
from lightweight.advise import quality_drop
from lightweight.course.checks import ch00, ch01, ch02, ch03, ch04, ch05, ch06
from lightweight.course.grade import exercises_of

ROOT = Path(__file__).resolve().parent.parent


def run(check, *fns):
    """Run a check and return the result it recorded."""
    assert check(*fns) is None
    return checks.RESULTS[-1]


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
    assert demo.exercise_id == "demo"


def test_each_result_is_appended_to_the_log_at_once(tmp_path, monkeypatch):
    log = tmp_path / "checks.jsonl"
    monkeypatch.setenv(checks.LOG_ENV, str(log))
    run(demo, lambda x: 2 * x)
    assert json.loads(log.read_text(encoding="utf-8")) == {"exercise": "demo", "status": "pass", "message": "Bài mẫu: đúng rồi!"}
    run(demo, lambda x: 1 / 0)
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [r["status"] for r in lines] == ["pass", "error"]


def shapes_mismatch(x, w):
    y = x * 2
    return y @ w  # the line that raises


def test_a_crash_names_the_line_the_exception_and_the_shapes():
    @checks.exercise("demo.matmul", "Nhân ma trận")
    def matmul(fn):
        fn(torch.ones(3, 4), torch.ones(5, 2))

    r = run(matmul, shapes_mismatch)
    assert r.status == "error"
    line = shapes_mismatch.__code__.co_firstlineno + 2
    assert f"ở dòng {line} của `shapes_mismatch`: `return y @ w  # the line that raises`" in r.message, r.message
    assert "y (3, 4) float32; w (5, 2) float32" in r.message and "RuntimeError" in r.message
    assert "print(a.shape, b.shape)" in r.message  # the matmul hint


@pytest.mark.parametrize("fn, hint", [
    (lambda x: x + torch.ones(3), "broadcast"),
    (lambda x: undefined_name + x, "chưa được định nghĩa"),  # noqa: F821
    (lambda x: x.T.view(-1), ".reshape(...)"),
    (lambda x: x.topk(9), "topk/kthvalue"),
    (lambda x: {"a": 1}["b"], "khóa 'b'"),
])
def test_common_crashes_get_a_hint(fn, hint):
    @checks.exercise("demo.crash", "Lỗi")
    def crash(f):
        f(torch.ones(2, 4))

    r = run(crash, fn)
    assert r.status == "error" and hint in r.message and "ở dòng" in r.message, r.message


def test_type_helpers_reject_what_the_text_does_not_allow():
    with pytest.raises(checks.CheckFailed, match="float"):
        checks.as_float(torch.tensor(1.0), "x")
    with pytest.raises(checks.CheckFailed, match="int"):
        checks.as_int(3.0, "x")
    with pytest.raises(checks.CheckFailed, match="bool"):
        checks.as_bool(1, "x")
    with pytest.raises(checks.CheckFailed, match="một phần tử"):
        checks.as_scalar_tensor(torch.ones(2), "x")
    assert checks.as_float(3, "x") == 3.0 and checks.as_int(3, "x") == 3


def test_call_detects_in_place_edits():
    x = torch.ones(3)
    with pytest.raises(checks.CheckFailed, match="tại chỗ"):
        checks.call(lambda t: t.mul_(2), x, names=("x",))
    assert torch.equal(x, torch.ones(3))
    assert checks.call(lambda t: t * 2, x, names=("x",)).sum() == 6


def test_recognise_names_only_exact_mistakes():
    checks.recognise([1, 2], {"a": [1, 3]}, lambda a, b: a == b)  # one case differs: no diagnosis
    with pytest.raises(checks.CheckFailed, match="^a Hoặc: b$"):
        checks.recognise([1, 2], {"a": [1, 2], "b": [1, 2], "c": [0, 2]}, lambda a, b: a == b)
    checks.recognise([1, 2], {"a": [1, 2]}, lambda a, b: a == b, want=[1, 2])  # indistinguishable from right: skipped


# ----------------------------------------------------------------------------- right answers pass
def solution_cells(name: str) -> list[tuple[str, str]]:
    """(exercise id, source) of the imports of the code cells before the first exercise (the machine line, then the
    set-up cell), then of each exercise cell and its check cell."""
    nb = nbformat.read(ROOT / "solutions" / name, as_version=4)
    first = next(i for i, c in enumerate(nb.cells) if c.metadata.get("exercise"))
    setup = [c.source for c in nb.cells[:first] if c.cell_type == "code"]
    imports = "\n".join(ast.get_source_segment(src, n) for src in setup for n in ast.parse(src).body
                        if isinstance(n, (ast.Import, ast.ImportFrom)))
    cells = [("", imports)]
    for i, cell in enumerate(nb.cells):
        ex = cell.metadata.get("exercise")
        if ex:
            short = ex["id"].split(".", 1)[1]
            check = next(c for c in nb.cells[i + 1:] if c.cell_type == "code" and f"check.{short}(" in c.source)
            cells += [(ex["id"], cell.source), (ex["id"], check.source)]
    return cells


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "solutions").glob("*.ipynb")))
def test_the_solutions_exercises_pass_their_checks(name):
    namespace: dict = {}
    start = len(checks.RESULTS)
    for _, source in solution_cells(name):
        exec(compile(source, f"<{name}>", "exec"), namespace)
    results = checks.RESULTS[start:]
    assert {r.exercise for r in results} == set(exercises_of(nbformat.read(ROOT / "solutions" / name, as_version=4)))
    assert all(r.passed for r in results), [r.message for r in results if not r.passed]


def _draws_of(exercise: str, namespace: dict) -> None:
    """What the checks of the saved outputs drew from the global RNG; the notebook cells after a check rely on it."""
    from lightweight.models import GPTConfig, TinyGPT

    if exercise == "ch00.gpt_params":
        for v, t, n, c in [(65, 128, 6, 128), (80, 64, 2, 64), (50, 256, 4, 192)]:
            TinyGPT(GPTConfig(vocab_size=v, block_size=t, n_layer=n, n_head=4, n_embd=c))
    elif exercise == "ch01.distill_step":
        torch.manual_seed(0)
        torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5)), torch.nn.Linear(8, 5)
    elif exercise == "ch03.lowrank_linear":
        torch.manual_seed(0)
        namespace["LowRankLinear"](torch.nn.Linear(24, 16), 6)
    elif exercise == "ch04.qlinear_forward":
        torch.nn.Linear(64, 16)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "solutions").glob("*.ipynb")))
def test_checks_draw_from_the_global_rng_only_what_they_always_drew(name):
    """The saved outputs of the cells after a check depend on the global random state the check leaves."""
    namespace: dict = {}
    cells = solution_cells(name)
    exec(compile(cells[0][1], f"<{name}>", "exec"), namespace)
    for exercise, source in cells[1:]:
        is_check = "check." in source and not source.lstrip().startswith("def ")
        if not is_check:
            exec(compile(source, f"<{name}>", "exec"), namespace)
            continue
        torch.manual_seed(123)
        _draws_of(exercise, namespace)
        expected = torch.get_rng_state()
        torch.manual_seed(123)
        exec(compile(source, f"<{name}>", "exec"), namespace)
        assert torch.equal(torch.get_rng_state(), expected), exercise


BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8, "int4": 4}


def test_other_valid_answers_pass():
    """Right answers written differently from the solutions (a check must not demand one way of writing them)."""

    def magnitude_by_threshold(w, s):
        k = round(s * w.numel())
        if k == 0:
            return torch.ones_like(w, dtype=torch.bool)
        return w.abs() > w.abs().flatten().kthvalue(k).values

    def nm_by_loops(w, n=2, m=4):
        mask = torch.zeros_like(w, dtype=torch.bool)
        for r in range(w.shape[0]):
            for c in range(0, w.shape[1], m):
                mask[r, c + w[r, c:c + m].abs().topk(n).indices] = True
        return mask

    def svd_of_double(W, r):
        U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
        return (U[:, :r] * S[:r].sqrt()).float(), (S[:r].sqrt()[:, None] * Vh[:r]).float()

    def sym_int8(x, bits):
        qmax = 2 ** (bits - 1) - 1
        scale = x.abs().max().item() / qmax
        return torch.clamp(torch.round(x / scale), -qmax, qmax).to(torch.int8), scale

    def pack_by_arithmetic(q):
        u = torch.where(q < 0, q.to(torch.int16) + 16, q.to(torch.int16))
        return (u[..., 0::2] + 16 * u[..., 1::2]).to(torch.uint8)

    def percentile_sorted(x, p):
        a = x.abs().flatten().sort().values
        return a[max(1, math.ceil(p / 100 * a.numel())) - 1].item()

    def qforward_repeat(x, q, scale, bias, g):
        return x @ (q.float() * scale.repeat_interleave(g, dim=1)).T + bias

    def awq_unnormalised(W, H, bits, group_size, n_grid):
        a, found = H.diagonal().sqrt(), []
        for i in range(n_grid + 1):
            s = (a ** (i / n_grid)).float()
            w_hat = Q.fake_quantize(W * s, bits, group_size) / s
            found.append((Q.output_error(W, w_hat, H), w_hat, s))
        best = min(found, key=lambda t: t[0])
        return best[1], best[2]

    def influence_by_hand(x, y):
        unit = lambda t: t / t.norm(dim=-1, keepdim=True)  # noqa: E731
        return (1 - (unit(x) * unit(y)).sum(-1)).mean().item()

    answers = [
        (ch00.memory_gb, lambda n, f: n * BITS[f] / 8e9), (ch00.fits, lambda n, f, ram: n * BITS[f] / 8e9 / ram <= 0.7),
        (ch00.bits_per_char, lambda loss: loss * math.log2(math.e)),
        (ch01.softmax_t, lambda z, T: torch.exp(z / T - (z / T).logsumexp(-1, keepdim=True))),
        (ch01.kd_loss, D.kd_loss), (ch01.reverse_kl, D.reverse_kl),
        (ch01.choose_setting, lambda r: sorted(r.items(), key=lambda kv: kv[1]["val"])[-1][0]),
        (ch02.magnitude_mask, magnitude_by_threshold), (ch02.nm_mask, nm_by_loops), (ch02.nm_mask, P.nm_mask),
        (ch02.keep_channels, P.l1_keep_channels), (ch02.wanda_mask, P.wanda_mask),
        (ch02.global_masks, P.global_magnitude_masks), (ch02.cubic_sparsity, P.cubic_sparsity),
        (ch03.truncated_svd, svd_of_double), (ch03.truncated_svd, L.truncated_svd), (ch03.rank_for_energy, L.rank_for_energy),
        (ch04.quantize_symmetric, sym_int8), (ch04.pack_int4, pack_by_arithmetic), (ch04.pack_int4, Q.pack_int4),
        (ch04.percentile_clip, percentile_sorted), (ch04.percentile_clip, Q.percentile_clip),
        (ch04.qlinear_forward, qforward_repeat),
        (ch04.group_scales, lambda w, g, b: Q.quantize_tensor(w, b, g).scale),
        (ch05.bits_per_weight, C.bits_per_weight), (ch05.pareto_front, C.pareto_front), (ch05.quality_drop, quality_drop),
        (ch05.prune_then_quantize, lambda w, s, b, g: Q.fake_quantize(w * P.magnitude_mask(w, s), b, g)),
        (ch06.bits_per_byte, lambda nll, n: nll * math.log2(math.e) / n), (ch06.awq_search, awq_unnormalised),
        (ch06.block_influence, influence_by_hand),
        (ch06.fold_scales, lambda g, ws, s: (g * s.reciprocal(), [w @ torch.diag(s) for w in ws])),
    ]
    for check, fn in answers:
        r = run(check, fn)
        assert r.passed, (check.__name__, r.message)
    assert run(ch03.counting, L.lowrank_params, L.break_even_rank).passed
    assert run(ch03.lowrank_linear, L.LowRankLinear.from_linear).passed


def test_checks_do_not_give_a_diagnosis_they_did_not_recognise():
    """An unrecognised wrong answer gets what was expected and what came back, not a guessed cause."""
    r = run(ch02.magnitude_mask, lambda w, s: P.magnitude_mask(w, s) if w.dim() > 2 else torch.ones_like(w, dtype=torch.bool))
    assert r.status == "fail" and "phải cắt đúng round(0.3 · 63) = 19 trọng số, bạn cắt 0" in r.message, r.message
    r = run(ch04.affine_params, lambda lo, hi, b: ((hi - lo) / (2 ** b - 1), 3))
    assert r.status == "fail" and "mong đợi -64, nhận 3" in r.message and "dấu" not in r.message, r.message
    r = run(ch02.wanda_mask, lambda w, n, s: P.row_mask(w.abs() * n * torch.linspace(1, 2, w.shape[1]), s))
    assert r.status == "fail" and "chưa phải" in r.message and "[None, :]" not in r.message, r.message


def test_ch00_gpt_formula_matches_the_model():
    from lightweight.measure import count_parameters
    from lightweight.models import GPTConfig, TinyGPT

    v, t, n, c = 84, 128, 6, 128
    assert count_parameters(TinyGPT(GPTConfig(vocab_size=v, block_size=t, n_layer=n, n_head=4, n_embd=c))) == \
        2 * v * c + t * c + n * (12 * c * c + 13 * c) + 2 * c


def test_kd_loss_check_wants_a_differentiable_tensor():
    r = run(ch01.kd_loss, lambda s, t, y, T, a: D.kd_loss(s, t, y, T, a).detach())
    assert r.status == "fail" and "gradient" in r.message
    r = run(ch01.token_kd, lambda s, t, T: float(D.kd_loss(s.flatten(0, 1), t.flatten(0, 1), None, T, 0.0).detach()))
    assert r.status == "fail" and ".backward()" in r.message


def test_softmax_check_uses_the_text_formula():
    assert run(ch01.softmax_t, lambda z, T: F.softmax(z / T, dim=-1)).passed
