"""The fast paths of a Llama model on a CPU, built and timed the same way: PyTorch FP32 and BF16, our
own INT8/INT4 weights through aten's low-bit kernels, torchao, ``torch.ao`` dynamic INT8, and a
GGUF file through llama.cpp (``llama-cpp-python``, optional).

Tokens per second are medians over rounds that visit every path in turn (interleaved, so that a
burst of load on a shared machine hits all paths alike); ratios come from the same rounds.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import libref, lowbit, reference
from .train import progress_bar

PATHS = ("fp32", "bf16", "int8-ours", "int4-ours", "int4-ours-fp32act", "int4-ours-head",
         "torchao-int8", "torchao-int4", "torchao-int8-dynamic", "torch.ao-int8-dynamic")
DESCRIPTIONS = {
    "fp32": "PyTorch FP32",
    "bf16": "PyTorch BF16",
    "int8-ours": "INT8 của ta, aten _weight_int8pack_mm, kích hoạt BF16",
    "int4-ours": "INT4 g32 của ta, aten _weight_int4pack_mm_for_cpu, kích hoạt BF16",
    "int4-ours-fp32act": "INT4 g32 của ta, cùng nhân tính toán, kích hoạt FP32",
    "int4-ours-head": "INT4 g32 của ta, cả lm_head (tháo buộc)",
    "torchao-int8": "torchao Int8WeightOnlyConfig",
    "torchao-int4": "torchao PrototypeInt4WeightOnlyConfig g32",
    "torchao-int8-dynamic": "torchao Int8DynamicActivationInt8WeightConfig",
    "torch.ao-int8-dynamic": "torch.ao quantize_dynamic (fbgemm)",
}


def build_path(model: nn.Module, name: str, group_size: int = 32, qtensors: dict | None = None) -> nn.Module:
    """A copy of the FP32 ``model`` made into the path ``name`` (see :data:`PATHS`); ``qtensors``
    (e.g. GPTQ results) feed our own INT4 paths."""
    if name not in PATHS:
        raise ValueError(f"unknown path {name!r}; expected one of {PATHS}")
    if name == "torch.ao-int8-dynamic":
        return reference.ao_dynamic_int8(model).eval()
    m = copy.deepcopy(model).eval()
    if name == "fp32":
        return m
    if name in ("torchao-int8", "torchao-int8-dynamic"):
        libref.torchao_(m, "int8-weight-only" if name == "torchao-int8" else "int8-dynamic")
        return m
    if name == "int4-ours-fp32act":
        lowbit.swap_(m, bits=4, group_size=group_size, act_dtype=torch.float32, qtensors=qtensors)
        return m
    m = m.to(torch.bfloat16)
    if name == "torchao-int4":
        libref.torchao_(m, "int4-weight-only", group_size=group_size)
    elif name == "int8-ours":
        lowbit.swap_(m, bits=8)
    elif name in ("int4-ours", "int4-ours-head"):
        lowbit.swap_(m, bits=4, group_size=group_size, lm_head=name == "int4-ours-head", qtensors=qtensors)
    return m


def generator(model: nn.Module, prompt: torch.Tensor, new_tokens: int, pad_token_id: int = 0) -> Callable[[], None]:
    """A callable that greedily generates exactly ``new_tokens`` after ``prompt`` ``(batch, T)``."""
    if prompt.dim() != 2:
        raise ValueError(f"prompt must be token ids (batch, T), got shape {tuple(prompt.shape)}")
    mask = torch.ones_like(prompt)

    @torch.inference_mode()
    def run() -> None:
        model.generate(prompt, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=pad_token_id)

    return run


def interleaved_rates(runs: dict[str, Callable[[], None]], tokens_per_run: int, rounds: int = 5,
                      warmup: int = 1, progress: bool = True) -> dict[str, float]:
    """Median tokens per second of each callable (each makes ``tokens_per_run`` tokens), over
    ``rounds`` rounds that run every callable once, in turn."""
    if rounds < 1 or tokens_per_run < 1:
        raise ValueError("rounds and tokens_per_run must be >= 1")
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in progress_bar(range(rounds), progress, desc="timing rounds"):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {k: tokens_per_run / statistics.median(v) for k, v in times.items()}


# ----------------------------------------------------------------------------- llama.cpp (optional)
def llama_cpp_available() -> bool:
    """Whether ``llama-cpp-python`` is installed (``make deploy``; it compiles llama.cpp)."""
    return importlib.util.find_spec("llama_cpp") is not None


INSTALL_LLAMA_CPP = ("llama-cpp-python chưa được cài: chạy `make deploy` (biên dịch llama.cpp từ mã nguồn, "
                     "khoảng 5–25 phút trên 2 lõi) rồi chạy lại ô này.")


class LlamaCpp:
    """A GGUF file run by llama.cpp: greedy generation and perplexity, on ``threads`` threads."""

    def __init__(self, path, n_ctx: int = 512, threads: int | None = None, logits_all: bool = False):
        if not llama_cpp_available():
            raise ModuleNotFoundError(INSTALL_LLAMA_CPP)
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads or torch.get_num_threads(),
                         logits_all=logits_all, verbose=False)

    def generator(self, prompt: list[int], new_tokens: int) -> Callable[[], None]:
        """A callable that greedily generates exactly ``new_tokens`` after ``prompt`` (token ids)."""
        def run() -> None:
            self.llm.reset()
            for i, _ in enumerate(self.llm.generate(prompt, top_k=1, temp=0.0, reset=True)):
                if i + 1 == new_tokens:
                    break

        return run

    def perplexity(self, windows: torch.Tensor) -> float:
        """Perplexity over windows ``(B, T)`` of token ids (position t predicts t + 1); needs ``logits_all``."""
        nll, n = 0.0, 0
        for w in windows.tolist():
            self.llm.reset()
            self.llm.eval(w)
            logits = torch.from_numpy(self.llm.scores[: len(w) - 1].copy()).float()
            nll -= float(F.log_softmax(logits, -1).gather(-1, torch.tensor(w[1:])[:, None]).sum())
            n += len(w) - 1
        return math.exp(nll / n)
