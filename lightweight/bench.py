"""The course's benchmark: one row per measured configuration.

    python -m lightweight.bench [--only CHAPTER ...] [--all] [--json PATH] [--markdown PATH] [--repeats N]
    python -m lightweight.bench --from-json PATH --markdown PATH   # the table of saved rows, nothing run

Chapters register a function with :func:`register`; it receives a :class:`BenchContext` and
returns rows built with :func:`row`. ``speed_ratio`` is FP32 time / compressed time, medians
measured in the same run (> 1 is faster); ``size_ratio`` is compressed bytes / FP32 bytes of the
same weights (``setting["part"]`` says which).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .train import progress_bar
CHAPTERS = ("baseline", "distillation", "pruning", "lowrank", "quantization", "combine", "llm", "fast")
MODELS = ("digits-cnn", "tinygpt", "minilm", "smollm2-135m")
METRICS = ("accuracy", "val_loss", "cosine", "top10", "ppl", "bpb", "kl")
FAMILIES = ("fp32", "int8", "int4", "fp8", "magnitude", "wanda", "sparsegpt", "structured",
            "svd", "asvd", "kd", "scratch", "combo", "int3", "text", "bf16", "fp16")
SETTING_KEYS = {"bits", "group_size", "sparsity", "rank", "param_ratio", "temperature", "alpha", "part", "batch",
                "train_size", "minutes",
                "domain", "calibration", "blocks", "steps", "runtime", "bound_tokens_per_s", "same_runtime_speed_ratio"}
NEEDS = ("none", "calibration", "training")  # what producing the compressed model takes besides the model

# How the book's table (in Vietnamese) names chapters, models, metrics and needs.
CHAPTER_NUMBERS = {name: i for i, name in enumerate(CHAPTERS)}
MODELS_VI = {"digits-cnn": "CNN chữ số", "tinygpt": "TinyGPT", "minilm": "MiniLM", "smollm2-135m": "SmolLM2-135M"}
METRICS_VI = {"accuracy": "độ chính xác (%)", "val_loss": "loss kiểm định", "cosine": "cosine", "top10": "top-10",
              "ppl": "perplexity", "bpb": "bit trên byte", "kl": "KL (nat/token)"}
NEEDS_VI = {"none": "không gì", "calibration": "dữ liệu hiệu chỉnh", "training": "huấn luyện lại"}


@dataclass(frozen=True)
class BenchContext:
    """Knobs shared by every benchmark: timing repeats."""

    repeats: int = 15


REGISTRY: dict[str, Callable[[BenchContext], list[dict]]] = {}


def register(chapter: str) -> Callable[[Callable[[BenchContext], list[dict]]], Callable[[BenchContext], list[dict]]]:
    """Decorator: register a chapter's benchmark function."""
    if chapter not in CHAPTERS:
        raise ValueError(f"unknown chapter {chapter!r}; expected one of {CHAPTERS}")

    def deco(fn: Callable[[BenchContext], list[dict]]) -> Callable[[BenchContext], list[dict]]:
        REGISTRY[chapter] = fn
        return fn

    return deco


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
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
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


def machine() -> str:
    """A one-line description of the machine the rows were measured on."""
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} luồng, "
            f"{platform.system()}, Python {platform.python_version()}, torch {torch.__version__}")


RESULTS_PATH = Path(__file__).resolve().parents[1] / "book" / "bench" / "results.json"  # written by `make bench`


def load_results(path: Path | str | None = None) -> tuple[str, list[dict]]:
    """``(machine, rows)`` of a results file written with ``--json`` (default: the one the book shows)."""
    path = Path(path) if path is not None else RESULTS_PATH
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: run `make bench` (python -m lightweight.bench --all --json {path})")
    data = json.loads(path.read_text(encoding="utf-8"))
    return data["machine"], data["rows"]


def run(chapters: list[str], ctx: BenchContext) -> list[dict]:
    """Run the benchmarks of ``chapters`` (registered ones only) with a progress bar."""
    registry = _registry()
    missing = [c for c in chapters if c not in CHAPTERS]
    if missing:
        raise ValueError(f"unknown chapters {missing}; expected some of {CHAPTERS}")
    rows: list[dict] = []
    for chapter in progress_bar([c for c in chapters if c in registry], desc="benchmarks"):
        rows += registry[chapter](ctx)
    return rows


def to_markdown(rows: list[dict], measured_on: str | None = None) -> str:
    """The table the book shows, in Vietnamese, under the machine it was measured on (default: this
    one). Chapters are numbered, numbers have a decimal comma; method and setting keep their keys."""
    fmt = lambda v: "—" if v is None else f"{v:g}".replace(".", ",")  # noqa: E731
    lines = [f"Đo trên máy: {measured_on or machine()}", "",
             "| chương | cấu hình | mô hình | thước đo | gốc | giá trị | tỉ lệ kích thước | tỉ lệ tốc độ | cần | thiết lập |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        setting = ", ".join(f"`{k}={v}`" for k, v in r["setting"].items())
        lines.append(f"| {CHAPTER_NUMBERS[r['chapter']]} | `{r['method']}` | {MODELS_VI.get(r['model'], r['model'])} | "
                     f"{METRICS_VI[r['metric']]} | {fmt(r['baseline'])} | {fmt(r['value'])} | {fmt(r['size_ratio'])} | "
                     f"{fmt(r['speed_ratio'])} | {NEEDS_VI[r['needs']]} | {setting} |")
    return "\n".join(lines) + "\n"


def _registry() -> dict[str, Callable[[BenchContext], list[dict]]]:
    """The chapters' benchmarks. They register into the module ``lightweight.bench``, which is not
    this module object when it runs as ``python -m lightweight.bench`` (then it is ``__main__``)."""
    from . import bench_baseline, bench_combine, bench_distillation, bench_fast, bench_llm, bench_lowrank, bench_pruning, bench_quantization  # noqa: F401  (each registers its chapter)
    from .bench import REGISTRY as registry

    return registry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the course's benchmarks.")
    parser.add_argument("--only", nargs="+", choices=CHAPTERS, help="chapters to run (default: all registered)")
    parser.add_argument("--all", action="store_true", help="run every registered chapter")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the rows as a Markdown table here")
    parser.add_argument("--repeats", type=int, default=15, help="timing repeats per measurement (median)")
    parser.add_argument("--from-json", type=Path, metavar="PATH",
                        help="run nothing: write the Markdown table of the rows saved in this --json file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.from_json:
        if args.only or args.all or args.json:
            parser.error("--from-json runs nothing: it cannot be combined with --only, --all or --json")
        measured_on, rows = load_results(args.from_json)
        table = to_markdown(rows, measured_on)
        if args.markdown:
            args.markdown.write_text(table, encoding="utf-8")
        print(table)
        return 0
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    chapters = list(CHAPTERS) if args.all or not args.only else args.only
    rows = run(chapters, BenchContext(repeats=args.repeats))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1, ensure_ascii=False) + "\n")
    if args.markdown:
        args.markdown.write_text(to_markdown(rows), encoding="utf-8")
    print(to_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
