"""The benchmark's rows and tables: what every chapter module of :mod:`lightweight.bench` builds on.

A chapter's module (``baseline``, ``distillation``, …, ``fast``) has one function that takes a
:class:`BenchContext` and returns rows built with :func:`row`; :mod:`lightweight.bench.cli` runs
them. ``speed_ratio`` is FP32 time / compressed time, medians measured in the same run (> 1 is
faster); ``size_ratio`` is compressed bytes / FP32 bytes of the same weights (``setting["part"]``
says which).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..machine import describe

CHAPTERS = ("baseline", "distillation", "pruning", "lowrank", "quantization", "combine", "llm", "fast", "decoder")
MODELS = ("digits-cnn", "tinygpt", "minilm", "smollm2-135m")
METRICS = ("accuracy", "val_loss", "cosine", "top10", "ppl", "bpb", "kl")
SPEED_METRICS = ("pp", "tg", "gbs")  # tokens/s of prompt processing and generation (chapters 7, 8); a kernel's GB/s (8)
FAMILIES = ("fp32", "int8", "int4", "fp8", "magnitude", "wanda", "sparsegpt", "structured",
            "svd", "asvd", "kd", "scratch", "combo", "int3", "text", "bf16", "fp16")
SETTING_KEYS = {"bits", "group_size", "sparsity", "rank", "param_ratio", "temperature", "alpha", "part", "batch",
                "train_size", "minutes",
                "domain", "calibration", "blocks", "steps", "runtime", "bound_tokens_per_s", "same_runtime_speed_ratio",
                "seed", "ratio_low", "ratio_high",
                # chapter 7's timing rows: threads used, tokens of context before the timed ones, tokens timed
                # (prompt or new), spread of tokens/s over the rounds, measured bandwidth and bytes read per step
                "threads", "context", "tokens", "rounds", "tokens_per_s_low", "tokens_per_s_high", "bandwidth_gbs",
                "weight_bytes", "kv_bytes_per_token",
                # chapter 6's GGUF rows: llama.cpp's file type and the bits per weight of the block weights
                "format", "bits_per_weight"}
NEEDS = ("none", "calibration", "training")  # what producing the compressed model takes besides the model

# How the book's table (in Vietnamese) names chapters, models, metrics and needs.
CHAPTER_NUMBERS = {name: i for i, name in enumerate(CHAPTERS)}
MODELS_VI = {"digits-cnn": "CNN chữ số", "tinygpt": "TinyGPT", "minilm": "MiniLM", "smollm2-135m": "SmolLM2-135M"}
METRICS_VI = {"accuracy": "độ chính xác (%)", "val_loss": "loss kiểm định", "cosine": "cosine", "top10": "top-10",
              "ppl": "perplexity", "bpb": "bit trên byte", "kl": "KL (nat/token)",
              "pp": "xử lý lời nhắc (token/s)", "tg": "sinh văn bản (token/s)", "gbs": "GB/s của ma trận (lô 1)"}
NEEDS_VI = {"none": "không gì", "calibration": "dữ liệu hiệu chỉnh", "training": "huấn luyện lại"}


@dataclass(frozen=True)
class BenchContext:
    """Knobs shared by every benchmark: timing repeats."""

    repeats: int = 15


def row(
    chapter: str, method: str, model: str, metric: str, baseline: float, value: float,
    size_ratio: float | None, speed_ratio: float | None, *, needs: str, **setting: object,
) -> dict:
    """One validated result row. ``needs``: what making the compressed model takes besides the model
    itself: ``"none"``, ``"calibration"`` data (a few hundred unlabeled inputs) or ``"training"``."""
    if chapter not in CHAPTERS:
        raise ValueError(f"unknown chapter {chapter!r}")
    if method.split("-")[0] not in FAMILIES:
        raise ValueError(f"method {method!r} must start with a family: {FAMILIES}")
    if model not in MODELS and not model.startswith("torchvision-") and not model.startswith("mlp-"):
        raise ValueError(f"unknown model {model!r}; expected one of {MODELS} or a timing-only model")
    if metric not in METRICS + SPEED_METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS + SPEED_METRICS}")
    if needs not in NEEDS:
        raise ValueError(f"needs must be one of {NEEDS}, got {needs!r}")
    unknown = set(setting) - SETTING_KEYS
    if unknown:
        raise ValueError(f"unknown setting keys {sorted(unknown)}; expected some of {sorted(SETTING_KEYS)}")
    for name, ratio in (("size_ratio", size_ratio), ("speed_ratio", speed_ratio)):
        if ratio is not None and not ratio > 0:
            raise ValueError(f"{name} must be positive or None, got {ratio}")
    r = lambda v: None if v is None else round(float(v), 4)  # noqa: E731
    return {"chapter": chapter, "method": method, "model": model, "metric": metric,
            "baseline": r(baseline), "value": r(value), "size_ratio": r(size_ratio),
            "speed_ratio": r(speed_ratio), "needs": needs, "setting": setting}


RESULTS_PATH = Path(__file__).resolve().parents[2] / "book" / "bench" / "results.json"  # written by `make bench`


def load_results(path: Path | str | None = None) -> tuple[str, list[dict]]:
    """``(machine, rows)`` of a results file written with ``--json`` (default: the one the book shows)."""
    path = Path(path) if path is not None else RESULTS_PATH
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `make bench` (python -m lightweight.bench --all --json {path})")
    data = json.loads(path.read_text(encoding="utf-8"))
    return data["machine"], data["rows"]


def to_markdown(rows: list[dict], measured_on: str | None = None) -> str:
    """The table the book shows, in Vietnamese, under the machine it was measured on (default: this
    one). Chapters are numbered, numbers have a decimal comma; method and setting keep their keys."""
    fmt = lambda v: "—" if v is None else f"{v:g}".replace(".", ",")  # noqa: E731
    lines = [f"Đo trên máy: {measured_on or describe()}", "",
             "| chương | cấu hình | mô hình | thước đo | gốc | giá trị | tỉ lệ kích thước | tỉ lệ tốc độ | cần | thiết lập |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        setting = ", ".join(f"`{k}={v}`" for k, v in r["setting"].items())
        lines.append(f"| {CHAPTER_NUMBERS[r['chapter']]} | `{r['method']}` | {MODELS_VI.get(r['model'], r['model'])} | "
                     f"{METRICS_VI[r['metric']]} | {fmt(r['baseline'])} | {fmt(r['value'])} | {fmt(r['size_ratio'])} | "
                     f"{fmt(r['speed_ratio'])} | {NEEDS_VI[r['needs']]} | {setting} |")
    return "\n".join(lines) + "\n"


def sync_results(rows: list[dict], measured_on: str, path: Path = RESULTS_PATH, chapter: str = "llm") -> None:
    """Put ``rows`` in place of the ``chapter`` rows of the course's results file (the one chapter 5's
    advisor reads), where that chapter's rows were (at the end if it had none), and rewrite its Markdown
    table, so both files always hold the same measurements in the chapters' order."""
    if not path.exists():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    at = next((i for i, r in enumerate(data["rows"]) if r["chapter"] == chapter), len(data["rows"]))
    rest = [r for r in data["rows"] if r["chapter"] != chapter]
    data["rows"] = rest[:at] + rows + rest[at:]
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(to_markdown(data["rows"], data["machine"]), encoding="utf-8")
    if measured_on != data["machine"]:
        print(f"note: {path.name} was measured on {data['machine']}; its {chapter} rows on {measured_on}")
