import json
import math
import os

import pytest
import torch

from lightweight.bench import cli, core


def test_row_validation():
    r = core.row("quantization", "int4-gptq-g128", "minilm", "cosine", 1.0, 0.98123, 0.16, 0.93,
                  needs="calibration", bits=4, group_size=128)
    assert r == {"chapter": "quantization", "method": "int4-gptq-g128", "model": "minilm", "metric": "cosine",
                 "baseline": 1.0, "value": 0.9812, "size_ratio": 0.16, "speed_ratio": 0.93,
                 "needs": "calibration", "setting": {"bits": 4, "group_size": 128}}
    assert core.row("pruning", "structured-l1", "torchvision-resnet18", "accuracy", 1, 1, None, 2.0,
                     needs="training")["size_ratio"] is None
    for kwargs, match in [
        (dict(chapter="x"), "chapter"), (dict(method="foo-bar"), "family"), (dict(model="gpt5"), "model"),
        (dict(metric="bleu"), "metric"), (dict(size_ratio=0), "size_ratio"), (dict(colour=1), "setting"),
        (dict(needs="gpu"), "needs"),
    ]:
        args = dict(chapter="baseline", method="fp32", model="minilm", metric="cosine", baseline=1.0, value=1.0,
                    size_ratio=1.0, speed_ratio=1.0, needs="none")
        args.update(kwargs)
        with pytest.raises(ValueError, match=match):
            core.row(**args)


def test_unknown_chapter_is_refused():
    with pytest.raises(ValueError, match="unknown chapter"):
        cli.run(["speed"], core.BenchContext())


def test_baseline_benchmark_command_writes_rows(tmp_path):
    import subprocess
    import sys

    js, md = tmp_path / "rows.json", tmp_path / "rows.md"
    cmd = [sys.executable, "-m", "lightweight.bench", "--only", "baseline", "--repeats", "2",
           "--json", str(js), "--markdown", str(md)]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "TQDM_DISABLE": "1"})
    data = json.loads(js.read_text(encoding="utf-8"))
    rows = {(r["method"], r["model"], r["metric"], r["setting"].get("batch")): r for r in data["rows"]}
    assert rows[("fp32", "digits-cnn", "accuracy", None)]["value"] >= 97.0
    assert rows[("fp32", "tinygpt", "val_loss", None)]["value"] <= 1.75
    int8 = rows[("int8-ao-dynamic", "minilm", "cosine", 1)]
    assert 0.9 < int8["value"] < 1.0 and 0.25 < int8["size_ratio"] < 0.27 and int8["speed_ratio"] > 0
    assert {r["setting"].get("batch") for r in data["rows"] if r["method"] == "int8-ao-dynamic"} == {1, 32}
    text = md.read_text(encoding="utf-8")
    assert text.startswith(f"Đo trên máy: {data['machine']}\n")
    assert sum(line.startswith("| 0 | `") for line in text.splitlines()) == len(data["rows"])


def test_every_technique_chapter_registers_its_rows():
    registry = cli.BENCHMARKS
    assert {"baseline", "distillation", "pruning", "lowrank", "quantization"} <= set(registry)


def test_markdown_table_is_in_vietnamese():
    rows = [core.row("combine", "int4-gptq-g128", "tinygpt", "val_loss", 1.4982, 1.5075, 0.1389, 0.58,
                      needs="calibration", bits=4, group_size=128, part="all"),
            core.row("pruning", "magnitude-oneshot", "minilm", "top10", 1.0, 0.493, 0.5312, None, needs="none")]
    lines = core.to_markdown(rows, "x86_64, 2 luồng, Linux").splitlines()
    assert lines[0] == "Đo trên máy: x86_64, 2 luồng, Linux"
    assert lines[2] == ("| chương | cấu hình | mô hình | thước đo | gốc | giá trị | tỉ lệ kích thước | tỉ lệ tốc độ "
                        "| cần | thiết lập |")
    assert lines[4] == ("| 5 | `int4-gptq-g128` | TinyGPT | loss kiểm định | 1,4982 | 1,5075 | 0,1389 | 0,58 "
                        "| dữ liệu hiệu chỉnh | `bits=4`, `group_size=128`, `part=all` |")
    assert lines[5] == "| 2 | `magnitude-oneshot` | MiniLM | top-10 | 1 | 0,493 | 0,5312 | — | không gì |  |"
    for english in ("calibration", "training", "none", "chapter", "method", "speed ratio", "measured on"):
        assert english not in "\n".join(lines)


def test_table_from_saved_rows_runs_nothing(tmp_path):
    rows = [core.row("baseline", "fp32", "digits-cnn", "accuracy", 98.3333, 98.3333, 1.0, 1.0, needs="none", part="all")]
    js, md = tmp_path / "rows.json", tmp_path / "rows.md"
    js.write_text(json.dumps({"machine": "a saved machine line", "rows": rows}), encoding="utf-8")
    assert cli.main(["--from-json", str(js), "--markdown", str(md)]) == 0
    assert md.read_text(encoding="utf-8") == core.to_markdown(rows, "a saved machine line")
    with pytest.raises(SystemExit):
        cli.main(["--from-json", str(js), "--only", "baseline"])


def _llm_rows_and_windows():
    """Synthetic chapter-6 results: FP32, GPTQ (3 seeds) and AWQ, 16 windows per domain."""
    import random

    from lightweight.bench import llm as B
    from lightweight.llm.evaluation import paired_ratio

    rng = random.Random(0)
    tokens = 511
    base = {d: [rng.uniform(1500, 2200) for _ in range(16)] for d in ("shakespeare", "sotu")}
    shift = {"fp32-reference": 0.0, "int4-gptq-g64": 0.10, "int4-gptq-g64-seed1": 0.11, "int4-gptq-g64-seed2": 0.09,
             "int4-awq-g64": 0.10}
    nll = {m: {d: [v + s * tokens + (rng.gauss(0, 3) if m != "fp32-reference" else 0) for v in vs]
               for d, vs in base.items()} for m, s in shift.items()}
    windows = {"windows": 16, "tokens_per_window": tokens, "machine": "test", "nll": nll}
    rows = []
    for m in shift:
        for d in base:
            ppl = math.exp(sum(nll[m][d]) / (16 * tokens))
            ref = math.exp(sum(nll["fp32-reference"][d]) / (16 * tokens))
            ci = paired_ratio(nll[m][d], nll["fp32-reference"][d], tokens)
            setting = dict(part="all", minutes=0.0, domain=d, ratio_low=round(ci.low, 4), ratio_high=round(ci.high, 4))
            rows.append(core.row("llm", m, "smollm2-135m", "ppl", ref, ppl, 0.3, None, needs="none", **setting))
            rows.append(core.row("llm", m, "smollm2-135m", "kl", 0.0, 0.1, 0.3, None, needs="none",
                                 part="all", minutes=0.0, domain=d))
    return B, rows, windows


def test_llm_tables_show_intervals_and_say_only_what_they_allow():
    B, rows, windows = _llm_rows_and_windows()
    table = B.llm_table(rows, "test machine")
    assert "KTC 95%" in table and "`int4-gptq-g64` | " in table
    gptq_line = next(line for line in table.splitlines() if line.startswith("| `int4-gptq-g64` |"))
    assert "[+" in gptq_line and "%;" in gptq_line  # change from FP32 and its interval, decimal comma kept apart
    comparisons = B.comparisons_table(rows, windows)
    line = next(line for line in comparisons.splitlines() if "GPTQ so với AWQ, INT4" in line)
    assert "không phân biệt được" in line  # the same shift: the interval must contain 1
    lo, hi, n = B.seed_spread(rows, "int4-gptq-g64", "sotu")
    assert n == 3 and 1.08 < lo < hi < 1.13
    assert B.compare(windows, "int4-gptq-g64", "fp32-reference", "sotu").low > 1.09
    with pytest.raises(KeyError, match="--only int3-gptq-g64"):
        B.compare(windows, "int3-gptq-g64", "fp32-reference", "sotu")


def test_share_removed_is_the_share_of_the_baselines_log_increase():
    from lightweight.bench.llm import share_removed

    g = torch.Generator().manual_seed(0)
    ref = (400 + 50 * torch.rand(32, generator=g)).tolist()
    rtn = [r + 40 + torch.randn(1, generator=g).item() for r in ref]  # +40 nats per window
    half = [r + 20 + torch.randn(1, generator=g).item() for r in ref]  # +20: half of it
    windows = {"nll": {"fp32-reference": {"sotu": ref}, "rtn": {"sotu": rtn}, "half": {"sotu": half}}}
    ci = share_removed(windows, "half", "rtn", "sotu")
    assert 0.45 < ci.low < ci.value < ci.high < 0.55 and abs(ci.value - 0.5) < 0.03
    assert share_removed(windows, "rtn", "rtn", "sotu").value == 0.0
    with pytest.raises(ValueError, match="no increase"):
        share_removed(windows, "rtn", "fp32-reference", "sotu")
    with pytest.raises(KeyError, match="--only awq"):
        share_removed(windows, "awq", "rtn", "sotu")
