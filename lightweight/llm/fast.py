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

from .. import libref
from .. import quantize as Q
from ..train import progress_bar
from . import lowbit
from .model import compress_blockwise_

PATHS = ("fp32", "bf16", "int8-ours", "int4-ours", "int4-ours-fp32act", "int4-ours-head", "int4-ours-head8",
         "torchao-int8", "torchao-int4", "torchao-int8-dynamic", "torch.ao-int8-dynamic")


def build_path(model: nn.Module, name: str, group_size: int = 32, qtensors: dict | None = None) -> nn.Module:
    """A copy of the FP32 ``model`` made into the path ``name`` (see :data:`PATHS`); ``qtensors``
    (e.g. GPTQ results) feed our own INT4 paths."""
    if name not in PATHS:
        raise ValueError(f"unknown path {name!r}; expected one of {PATHS}")
    if name == "torch.ao-int8-dynamic":
        return libref.ao_dynamic_int8(model).eval()
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
    elif name.startswith("int4-ours"):  # the tied head stays BF16, or is untied into INT4 / INT8
        head = {"int4-ours": False, "int4-ours-head": 4, "int4-ours-head8": 8}[name]
        lowbit.swap_(m, bits=4, group_size=group_size, lm_head=head, qtensors=qtensors)
    return m


def gptq_int4(model: nn.Module, windows: torch.Tensor, group_size: int = 32, progress: bool = True) -> dict[str, Q.QTensor]:
    """Our GPTQ INT4 integers for every linear layer of the blocks: symmetric, groups of ``group_size``
    inputs, columns in decreasing ``H_jj`` order with static groups (so groups stay contiguous, as the
    int4 kernel and GGUF need), computed block by block on calibration ``windows`` ``(N, T)`` as in
    chapter 6. ``model`` is left unchanged. Returns layer name -> ``QTensor``."""
    m = compress_blockwise_(copy.deepcopy(model), windows,
                            lambda blk, run: Q.gptq_(blk, run, 4, group_size, act_order=True), progress=progress)
    return {n: lowbit.qtensor_of(mod) for n, mod in m.named_modules() if isinstance(mod, Q.QuantizedLinear)}


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


def static_generator(model: nn.Module, prompt: torch.Tensor, new_tokens: int, compile: bool = False) -> Callable[[], torch.Tensor]:
    """A callable that greedily generates ``new_tokens`` after ``prompt`` ``(batch, T)`` with our own
    loop over a preallocated KV cache (``StaticCache``), so that every decoding step has the same
    shapes. ``compile=True`` compiles the model's step with ``torch.compile`` (Inductor, which needs
    a C++ compiler; the first call compiles, about a minute on 2 cores): fused element-wise ops and no
    Python between them, the per-token overhead that eager PyTorch pays 30 blocks times 10 modules
    over. Returns the generated ids ``(batch, new_tokens)``."""
    from transformers import StaticCache

    if prompt.dim() != 2 or new_tokens < 1:
        raise ValueError(f"prompt must be token ids (batch, T) and new_tokens >= 1, got {tuple(prompt.shape)}, {new_tokens}")
    length = prompt.shape[1]
    step = torch.compile(model.forward, dynamic=False) if compile else model.forward

    @torch.inference_mode()
    def run() -> torch.Tensor:
        cache = StaticCache(config=model.config, max_cache_len=length + new_tokens)
        out = model(prompt, past_key_values=cache, cache_position=torch.arange(length), use_cache=True, logits_to_keep=1)
        ids = [out.logits[:, -1].argmax(-1, keepdim=True)]
        for i in range(new_tokens - 1):
            out = step(ids[-1], past_key_values=cache, cache_position=torch.tensor([length + i]), use_cache=True)
            ids.append(out.logits[:, -1].argmax(-1, keepdim=True))
        return torch.cat(ids, dim=1)

    return run


def compiled_generators(models: dict[str, nn.Module], prompt: torch.Tensor, new_tokens: int,
                        progress: bool = True) -> tuple[dict[str, Callable[[], torch.Tensor]], dict[str, str]]:
    """:func:`static_generator` with ``compile=True`` for each model, compiled now (its first call).
    ``torch.compile`` needs a C++ compiler and, on macOS, often lacks OpenMP: a model it cannot
    compile here lands in the second dict, name -> the reason, instead of stopping the caller."""
    compiled, failed = {}, {}
    for name, model in progress_bar(list(models.items()), progress, desc="torch.compile"):
        try:
            run = static_generator(model, prompt, new_tokens, compile=True)
            run()
            compiled[name] = run
        except Exception as e:  # noqa: BLE001 (Inductor raises many kinds of errors)
            failed[name] = f"{type(e).__name__}: {str(e)[:300]}"
    return compiled, failed


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
    """Whether ``llama-cpp-python`` is installed (``python course.py deploy``; it compiles llama.cpp)."""
    return importlib.util.find_spec("llama_cpp") is not None


INSTALL_LLAMA_CPP = ("llama-cpp-python chưa được cài: chạy `python course.py deploy` (biên dịch llama.cpp từ mã nguồn, "
                     "khoảng 5–25 phút trên 2 lõi) rồi chạy lại ô này.")


class LlamaCpp:
    """A GGUF file run by llama.cpp: greedy generation and perplexity, on ``threads`` threads."""

    def __init__(self, path, n_ctx: int = 512, threads: int | None = None, logits_all: bool = False):
        if not llama_cpp_available():
            raise ModuleNotFoundError(INSTALL_LLAMA_CPP)
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads or torch.get_num_threads(),
                         logits_all=logits_all, verbose=False)

    def close(self) -> None:
        """Free the model: llama.cpp keeps the GGUF file memory-mapped until then, and Windows cannot
        delete a mapped file."""
        self.llm.close()

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
