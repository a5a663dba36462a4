"""``python -m lightweight.bench``: run the chapters' benchmarks and write their rows.

    python -m lightweight.bench [--only CHAPTER ...] [--all] [--json PATH] [--markdown PATH] [--repeats N]
    python -m lightweight.bench --from-json PATH --markdown PATH   # the table of saved rows, nothing run

:data:`BENCHMARKS` names each chapter's function; the chapter modules import only
:mod:`lightweight.bench.core`, never this module, so the package has no import circle.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

from ..console import safe_console
from ..machine import describe
from ..train import progress_bar
from . import baseline, combine, decoder, distillation, fast, llm, lowrank, pruning, quantization
from .core import CHAPTERS, BenchContext, load_results, to_markdown

BENCHMARKS: dict[str, Callable[[BenchContext], list[dict]]] = {
    "baseline": baseline.baseline_rows, "distillation": distillation.distillation_rows,
    "pruning": pruning.pruning_rows, "lowrank": lowrank.lowrank_rows,
    "quantization": quantization.quantization_rows, "combine": combine.combine_rows,
    "llm": llm.llm_rows, "fast": fast.fast_bench, "decoder": decoder.decoder_bench,
}
assert tuple(BENCHMARKS) == CHAPTERS, "every chapter of core.CHAPTERS has one benchmark, in order"


def run(chapters: list[str], ctx: BenchContext) -> list[dict]:
    """Run the benchmarks of ``chapters`` with a progress bar."""
    missing = [c for c in chapters if c not in BENCHMARKS]
    if missing:
        raise ValueError(f"unknown chapters {missing}; expected some of {CHAPTERS}")
    rows: list[dict] = []
    for chapter in progress_bar(chapters, desc="benchmarks"):
        rows += BENCHMARKS[chapter](ctx)
    return rows


def main(argv: list[str] | None = None) -> int:
    safe_console()
    parser = argparse.ArgumentParser(description="Run the course's benchmarks.")
    parser.add_argument("--only", nargs="+", choices=CHAPTERS, help="chapters to run (default: all)")
    parser.add_argument("--all", action="store_true", help="run every chapter")
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
        args.json.write_text(json.dumps({"machine": describe(), "rows": rows}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(to_markdown(rows), encoding="utf-8")
    print(to_markdown(rows))
    return 0
