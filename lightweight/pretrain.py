"""Train the course's teachers once and save them under ``lightweight/assets/``.

    python -m lightweight.pretrain [--only digits-cnn tinygpt minilm-student tinygpt-text]

The digits CNN takes seconds; the TinyGPT (3,000 steps) about 15 minutes on a 2-core CPU; the
3-layer MiniLM student of chapter 1 (distilled from all-MiniLM-L6-v2, 8,000 steps) about 30 minutes;
the 300,000 characters written by the TinyGPT teacher for chapter 1 a few minutes.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from .console import safe_console
from .data import char_corpus, load_digits, shakespeare_lines
from .measure import accuracy
from .models import DigitsCNN, GPTConfig, TinyGPT
from .teachers import TEACHERS, load_minilm_student, save_minilm_student, save_teacher
from .train import evaluate_lm, predict, set_seed, train_classifier, train_lm

TINYGPT_CONFIG = dict(block_size=128, n_layer=6, n_head=4, n_embd=128)
TINYGPT_STEPS = 3000
STUDENT_STEPS = 8000
STUDENT_LINES = 20000
WRITTEN_CHARS = 300_000


def pretrain_digits_cnn(seed: int = 0) -> dict[str, float]:
    """Train the digits CNN teacher on the train split; return its val and test accuracy (%)."""
    d = load_digits()
    set_seed(seed)
    model = DigitsCNN()
    train_classifier(model, d.x_train, d.y_train, epochs=60, lr=2e-3, seed=seed)
    stats = {s: accuracy(predict(model, d.split(s)[0]), d.split(s)[1]) for s in ("val", "test")}
    save_teacher("digits-cnn", model, {"val_accuracy": f"{stats['val']:.2f}", "test_accuracy": f"{stats['test']:.2f}"})
    return stats


def pretrain_tinygpt(steps: int = TINYGPT_STEPS, seed: int = 0) -> dict[str, float]:
    """Train the TinyGPT teacher on the Shakespeare train split; return its validation loss."""
    corpus = char_corpus()
    set_seed(seed)
    cfg = GPTConfig(vocab_size=corpus.vocab_size, **TINYGPT_CONFIG)
    model = TinyGPT(cfg)
    train_lm(model, corpus, steps=steps, batch_size=32, lr=2e-3, warmup=100, seed=seed, eval_every=100)
    val = evaluate_lm(model, corpus)
    save_teacher(
        "tinygpt", model,
        {"config": json.dumps(cfg.to_dict()), "chars": json.dumps(corpus.chars), "steps": str(steps),
         "val_loss": f"{val:.4f}"},
    )
    return {"val_loss": val}


def pretrain_minilm_student(steps: int = STUDENT_STEPS, seed: int = 0) -> dict[str, float]:
    """Distil all-MiniLM-L6-v2 into a 3-layer student (teacher layers 0, 2, 4) on Shakespeare training
    lines (never the held-out ones); save its encoder layers; return its held-out fidelity."""
    from .distill import STUDENT_LAYERS, distill_minilm, minilm_student
    from .minilm import fidelity, load_minilm

    teacher = load_minilm()
    student = minilm_student(teacher, STUDENT_LAYERS)
    lines = shakespeare_lines("calibration", STUDENT_LINES, seed=1)
    run = distill_minilm(student, teacher, lines, steps, seed=seed)
    meta = {"layers": json.dumps(list(STUDENT_LAYERS)), "steps": str(steps), "lines": str(len(lines)),
            "minutes": f"{run['seconds'] / 60:.1f}"}
    save_minilm_student(student, meta)
    fid = fidelity(teacher, load_minilm_student(teacher))  # as shipped: INT8 weight matrices
    save_minilm_student(student, {**meta, "cosine": f"{fid.cosine:.4f}", "top10": f"{fid.top10:.4f}"})
    return {"cosine": fid.cosine, "top10": fid.top10, "minutes": run["seconds"] / 60}


def write_teacher_text(n_chars: int = WRITTEN_CHARS, seed: int = 0) -> dict[str, float]:
    """Sequence-level distillation data for chapter 1: ``n_chars`` characters written by the TinyGPT
    teacher (continuations of 32-character prompts from the training text, temperature 1)."""
    from .distill import teacher_corpus
    from .teachers import load_tinygpt, save_teacher_text

    corpus = char_corpus()
    written = teacher_corpus(load_tinygpt(), corpus, n_chars=n_chars, prompt_len=32, batch=64, seed=seed)
    save_teacher_text(corpus.decode(written.split("train")))
    return {"chars": float(n_chars)}


def main(argv: list[str] | None = None) -> None:
    safe_console()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(TEACHERS), default=sorted(TEACHERS))
    parser.add_argument("--steps", type=int, default=TINYGPT_STEPS, help="TinyGPT training steps")
    args = parser.parse_args(argv)
    for name in args.only:
        start = time.perf_counter()
        if name == "digits-cnn":
            stats = pretrain_digits_cnn()
        elif name == "tinygpt":
            stats = pretrain_tinygpt(steps=args.steps)
        elif name == "minilm-student":
            stats = pretrain_minilm_student()
        else:
            stats = write_teacher_text()
        minutes = (time.perf_counter() - start) / 60
        print(f"{name}: {json.dumps({k: round(v, 4) for k, v in stats.items()})} in {minutes:.1f} min")


if __name__ == "__main__":
    main()
