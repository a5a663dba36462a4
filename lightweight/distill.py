"""Knowledge distillation: a small student learns from a large teacher's outputs.

- Soft labels: :func:`softmax_t`, the teacher's softmax at temperature ``T``.
- The KD loss (Hinton et al. 2015): ``alpha·CE(student, labels) + (1 - alpha)·T²·KL(teacher_T ‖ student_T)``,
  :func:`kd_loss`; used for digits (:func:`distill_classifier`) and, token by token, for TinyGPT
  (:func:`distill_lm`). :func:`reverse_kl` is the mode-seeking direction MiniLLM uses.
- Sequence-level distillation: the student trains on text the teacher wrote (:func:`teacher_corpus`).
- A real transformer: a 3-layer MiniLM made of every other teacher layer (:func:`minilm_student`),
  trained to reproduce the teacher's hidden states and embeddings (:func:`distill_minilm`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import CharCorpus
from .train import clipped_step, lr_schedule, progress_bar, set_seed, train_classifier


# ----------------------------------------------------------------------------- soft labels and the loss
def _check_temperature(T: float) -> None:
    if not T > 0:
        raise ValueError(f"temperature T must be > 0, got {T}")


def softmax_t(logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """Softmax of ``logits (..., K)`` at temperature ``T``: ``exp(z_i / T) / sum_j exp(z_j / T)``."""
    _check_temperature(T)
    return F.softmax(logits / T, dim=-1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
            T: float = 4.0, alpha: float = 0.5) -> torch.Tensor:
    """``alpha·CE(student, labels) + (1 - alpha)·T²·KL(softmax(t/T) ‖ softmax(s/T))``, averaged over rows.

    ``student_logits``, ``teacher_logits``: ``(N, K)``; ``labels``: ``(N,)`` class indices (may be
    ``None`` when ``alpha == 0``). ``T²`` keeps the soft term's gradients the same size as the
    hard term's when ``T`` changes (they shrink as ``1/T²``)."""
    _check_temperature(T)
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits differ in shape: {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)} (same batch and same number of classes needed)")
    if student_logits.dim() != 2:
        raise ValueError(f"logits must be (N, K), got {tuple(student_logits.shape)}; flatten sequences first")
    soft = F.kl_div(F.log_softmax(student_logits / T, -1), F.log_softmax(teacher_logits.detach() / T, -1),
                    reduction="batchmean", log_target=True) * T * T
    if alpha == 0:
        return soft
    if labels is None or labels.shape != student_logits.shape[:1]:
        raise ValueError(f"labels must be (N,) = ({len(student_logits)},) class indices when alpha > 0")
    return alpha * F.cross_entropy(student_logits, labels) + (1 - alpha) * soft


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """``KL(student_T ‖ teacher_T)`` averaged over rows ``(N, K)``: mode-seeking, as in MiniLLM."""
    _check_temperature(T)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits differ in shape: {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    log_s = F.log_softmax(student_logits.flatten(0, -2) / T, -1)
    log_t = F.log_softmax(teacher_logits.detach().flatten(0, -2) / T, -1)
    return (log_s.exp() * (log_s - log_t)).sum(-1).mean() * T * T


# ----------------------------------------------------------------------------- digits
def distill_classifier(student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int,
                       T: float = 4.0, alpha: float = 0.5, seed: int = 0, progress: bool = True, **kwargs) -> list[float]:
    """Train ``student`` on ``(x, y)`` with :func:`kd_loss` against the frozen ``teacher``'s logits.
    Same loop, batches and seed as :func:`lightweight.train.train_classifier`. Returns its history."""
    _check_temperature(T)
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    teacher.eval()
    with torch.no_grad():
        t_logits = teacher(x)
    return train_classifier(student, x, y, epochs=epochs, seed=seed, progress=progress,
                            loss_fn=lambda logits, yb, idx: kd_loss(logits, t_logits[idx], yb, T, alpha), **kwargs)


# ----------------------------------------------------------------------------- language models
def distill_lm(student: nn.Module, teacher: nn.Module, corpus: CharCorpus, steps: int, T: float = 1.0,
               alpha: float = 0.0, batch_size: int = 32, lr: float = 2e-3, warmup: int = 50, seed: int = 0,
               reverse: bool = False, progress: bool = True) -> list[tuple[int, float]]:
    """Token-level KD for character LMs: at every position, the student's next-character distribution
    learns the teacher's (forward KL by default, reverse KL with ``reverse=True``), mixed with the
    text's own next character by ``alpha``. Same batches and schedule as ``train_lm``."""
    if steps <= 0 or batch_size <= 0 or lr <= 0:
        raise ValueError("steps, batch_size and lr must be positive")
    if student.cfg.vocab_size != teacher.cfg.vocab_size:
        raise ValueError(f"student and teacher vocabularies differ: {student.cfg.vocab_size} vs {teacher.cfg.vocab_size}")
    gen = set_seed(seed)
    block = min(student.cfg.block_size, teacher.cfg.block_size)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.1)
    teacher.eval()
    history = []
    for step in progress_bar(range(steps), progress, desc="distillation steps"):
        for g in opt.param_groups:
            g["lr"] = lr_schedule(step, steps, lr, warmup)
        student.train()
        x, y = corpus.get_batch("train", batch_size, block, gen)
        with torch.no_grad():
            t_logits = teacher(x).flatten(0, 1)
        s_logits = student(x).flatten(0, 1)
        if reverse:
            loss = reverse_kl(s_logits, t_logits, T)
            if alpha > 0:
                loss = alpha * F.cross_entropy(s_logits, y.flatten()) + (1 - alpha) * loss
        else:
            loss = kd_loss(s_logits, t_logits, y.flatten(), T, alpha)
        history.append((step, clipped_step(opt, student.parameters(), loss)))
    student.eval()
    return history


@torch.no_grad()
def teacher_corpus(teacher: nn.Module, corpus: CharCorpus, n_chars: int, prompt_len: int = 32,
                   temperature: float = 1.0, batch: int = 16, seed: int = 0, progress: bool = True) -> CharCorpus:
    """Sequence-level distillation data: a new corpus of ``n_chars`` characters written by ``teacher``,
    each sample continuing a ``prompt_len`` prompt from the training text (same vocabulary)."""
    if n_chars <= 0 or prompt_len <= 0 or batch <= 0:
        raise ValueError("n_chars, prompt_len and batch must be positive")
    _check_temperature(temperature)
    gen = torch.Generator().manual_seed(seed)
    new = teacher.cfg.block_size - prompt_len
    chunks = []
    if new <= 0:
        raise ValueError(f"prompt_len must be below the teacher's block size {teacher.cfg.block_size}")
    rounds = -(-n_chars // (batch * new))
    for _ in progress_bar(range(rounds), progress, desc="teacher writing"):
        prompts, _ = corpus.get_batch("train", batch, prompt_len, gen)
        out = teacher.generate(prompts, new, temperature=temperature, generator=gen)[:, prompt_len:]
        chunks.append(out.flatten())
    return corpus.with_train_data(torch.cat(chunks)[:n_chars])


# ----------------------------------------------------------------------------- MiniLM
STUDENT_LAYERS = (0, 2, 4)


def minilm_student(teacher: nn.Module, layers: Sequence[int] = STUDENT_LAYERS) -> nn.Module:
    """A copy of a SentenceTransformer keeping only the encoder layers ``layers`` (DistilBERT's
    initialisation: take every other layer of the teacher)."""
    bert = teacher[0].model
    n = bert.config.num_hidden_layers
    if not layers or len(set(layers)) != len(layers) or not all(0 <= i < n for i in layers):
        raise ValueError(f"layers must be distinct indices in [0, {n - 1}], got {list(layers)}")
    student = copy.deepcopy(teacher)
    sb = student[0].model
    sb.encoder.layer = nn.ModuleList([sb.encoder.layer[i] for i in layers])
    sb.config.num_hidden_layers = len(layers)
    return student.eval()


def _mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def distill_minilm(student: nn.Module, teacher: nn.Module, lines: list[str], steps: int,
                   layer_map: Sequence[int] | None = None, batch_size: int = 32, lr: float = 2e-4, warmup: int = 100,
                   seed: int = 0, progress: bool = True, on_step: Callable[[int], None] | None = None) -> dict:
    """Train a MiniLM student's encoder layers (embeddings frozen) to reproduce the teacher.

    Loss per batch: the MSE between each student layer's hidden states ``(B, L, 384)`` and the
    teacher's at ``layer_map`` (default: student layer ``j`` -> teacher layer ``2j + 1``), plus
    ``1 - cosine`` of the mean-pooled embeddings. Returns ``{"loss": [...], "seconds": s}``."""
    if steps <= 0 or batch_size <= 0 or lr <= 0 or not lines:
        raise ValueError("steps, batch_size, lr must be positive and lines non-empty")
    sb, tb, tok = student[0].model, teacher[0].model, teacher[0].tokenizer
    n_s, n_t = sb.config.num_hidden_layers, tb.config.num_hidden_layers
    layer_map = list(layer_map) if layer_map is not None else [min(2 * j + 1, n_t - 1) for j in range(n_s)]
    if len(layer_map) != n_s or not all(0 <= i < n_t for i in layer_map):
        raise ValueError(f"layer_map needs {n_s} teacher layer indices in [0, {n_t - 1}], got {layer_map}")
    for p in sb.embeddings.parameters():
        p.requires_grad_(False)
    params = [p for p in sb.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    gen = set_seed(seed)
    tb.eval()
    losses, start = [], time.perf_counter()
    for step in progress_bar(range(steps), progress, desc="distillation steps"):
        for g in opt.param_groups:
            g["lr"] = lr_schedule(step, steps, lr, warmup)
        idx = torch.randint(len(lines), (batch_size,), generator=gen).tolist()
        enc = tok([lines[i] for i in idx], padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            t_h = tb(**enc, output_hidden_states=True).hidden_states
        sb.train()
        s_h = sb(**enc, output_hidden_states=True).hidden_states
        mask = enc["attention_mask"].unsqueeze(-1).float()
        hidden = sum(((s_h[j + 1] - t_h[i + 1]) ** 2 * mask).sum() / (mask.sum() * s_h[0].shape[-1])
                     for j, i in enumerate(layer_map)) / n_s
        pooled = 1 - F.cosine_similarity(_mean_pool(s_h[-1], enc["attention_mask"]),
                                         _mean_pool(t_h[-1], enc["attention_mask"])).mean()
        loss = hidden + pooled
        losses.append(clipped_step(opt, params, loss))
        if on_step is not None:
            on_step(step)
    sb.eval()
    return {"loss": losses, "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------- Hugging Face causal LMs
def llm_student(teacher: nn.Module, keep: Sequence[int]) -> nn.Module:
    """A copy of a Llama-style causal LM ``teacher`` with only the blocks ``keep`` (in order), as in
    DistilBERT's initialisation from every other teacher layer. The teacher is left untouched."""
    from .prune import drop_blocks_

    n = len(teacher.model.layers)
    keep = list(keep)
    if not keep or sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= n:
        raise ValueError(f"keep must be increasing block indices in [0, {n}), got {keep}")
    student = drop_blocks_(copy.deepcopy(teacher), [i for i in range(n) if i not in keep])
    return student.requires_grad_(True)


def train_causal_lm(student: nn.Module, windows: torch.Tensor, steps: int, teacher: nn.Module | None = None,
                    T: float = 1.0, batch_size: int = 4, lr: float = 1e-4, warmup: int = 10, seed: int = 0,
                    progress: bool = True) -> list[tuple[int, float]]:
    """Train a Hugging Face causal LM on token ``windows`` ``(N, T)`` (seeded batches, AdamW, warm-up
    and cosine decay). With a ``teacher``: token-level KD, ``T²·KL(p_teacher,T ‖ p_student,T)`` at every
    position; without: the text's next token (cross-entropy). Returns ``[(step, loss)]``."""
    if steps <= 0 or batch_size <= 0 or lr <= 0:
        raise ValueError("steps, batch_size and lr must be positive")
    if windows.dim() != 2 or windows.dtype != torch.long:
        raise ValueError(f"windows must be a (N, T) int64 tensor, got {tuple(windows.shape)} {windows.dtype}")
    gen = set_seed(seed)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    if teacher is not None:
        teacher.eval()
    history = []
    for step in progress_bar(range(steps), progress, desc="LM training steps"):
        for g in opt.param_groups:
            g["lr"] = lr_schedule(step, steps, lr, warmup)
        student.train()
        x = windows[torch.randint(len(windows), (batch_size,), generator=gen)]
        s_logits = student(x).logits[:, :-1].flatten(0, 1)
        if teacher is None:
            loss = F.cross_entropy(s_logits, x[:, 1:].flatten())
        else:
            with torch.no_grad():
                t_logits = teacher(x).logits[:, :-1].flatten(0, 1)
            loss = kd_loss(s_logits, t_logits, None, T, alpha=0.0)
        history.append((step, clipped_step(opt, student.parameters(), loss)))
    student.eval()
    return history
