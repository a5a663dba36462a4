"""Training and evaluation loops with seeding and tqdm progress bars.

Progress bars follow tqdm's switch: ``TQDM_DISABLE=1`` turns them off (the test suite does).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import CharCorpus


def clipped_step(opt: torch.optim.Optimizer, params, loss: torch.Tensor, max_norm: float = 1.0) -> float:
    """One optimizer step on ``loss`` with gradients clipped to ``max_norm`` (global L2 norm); returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
    return loss.item()


def progress_bar(iterable, progress: bool = True, **kwargs):
    """A tqdm bar over ``iterable``; ``progress=False`` hides it, and so does ``TQDM_DISABLE=1``
    (checked here because tqdm's notebook widget does not read that variable)."""
    hidden = not progress or os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")
    return tqdm(iterable, disable=hidden, **kwargs)


def set_seed(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch; return a ``torch.Generator`` seeded the same way."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _check_xy(x: torch.Tensor, y: torch.Tensor) -> None:
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if y.dtype != torch.long:
        raise TypeError(f"labels must be int64 (torch.long), got {y.dtype}")


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` on ``x`` ``(N, ...)``, ``y`` ``(N,)`` with Adam; return the mean loss per epoch.

    ``loss_fn(logits, y, idx)`` replaces cross-entropy when given; ``idx`` ``(B,)`` are the
    batch's row numbers in ``x`` (distillation uses them to look up the teacher's logits).
    """
    _check_xy(x, y)
    if epochs <= 0 or batch_size <= 0 or lr <= 0:
        raise ValueError("epochs, batch_size and lr must be positive")
    gen = set_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    model.train()
    for _ in progress_bar(range(epochs), progress, desc="epochs", leave=False):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = perm[start : start + batch_size]
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx]) if loss_fn is None else loss_fn(logits, y[idx], idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        history.append(total / len(x))
    model.eval()
    return history


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits ``(N, n_classes)`` of ``model`` on ``x`` in eval mode."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def lr_schedule(step: int, max_steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``lr / 10`` at ``max_steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_lm(
    model: nn.Module,
    corpus: CharCorpus,
    steps: int,
    batch_size: int = 32,
    lr: float = 2e-3,
    warmup: int = 50,
    weight_decay: float = 0.1,
    seed: int = 0,
    eval_every: int = 0,
    progress: bool = True,
) -> list[tuple[int, float]]:
    """Train a TinyGPT-like model on random windows of the corpus with AdamW and a cosine schedule.

    Returns ``[(step, train_loss), ...]``; every ``eval_every`` steps (when > 0) the bar shows the
    validation loss of :func:`evaluate_lm`.
    """
    if steps <= 0 or batch_size <= 0 or lr <= 0:
        raise ValueError("steps, batch_size and lr must be positive")
    gen = set_seed(seed)
    block = model.cfg.block_size
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.99),
    )
    history = []
    bar = progress_bar(range(steps), progress, desc="steps")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_schedule(step, steps, lr, warmup)
        model.train()
        x, y = corpus.get_batch("train", batch_size, block, gen)
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        history.append((step, clipped_step(opt, model.parameters(), loss)))
        if eval_every and (step + 1) % eval_every == 0:
            bar.set_postfix(train=f"{loss.item():.3f}", val=f"{evaluate_lm(model, corpus, n_batches=8):.3f}")
    model.eval()
    return history


@torch.no_grad()
def evaluate_lm(
    model: nn.Module, corpus: CharCorpus, split: str = "val", n_batches: int = 20, batch_size: int = 32, seed: int = 1234
) -> float:
    """Mean cross-entropy (nats per character) on ``n_batches`` fixed, seeded windows of ``split``."""
    if n_batches <= 0:
        raise ValueError(f"n_batches must be positive, got {n_batches}")
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(n_batches):
        x, y = corpus.get_batch(split, batch_size, model.cfg.block_size, gen)
        losses.append(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item())
    return float(np.mean(losses))
