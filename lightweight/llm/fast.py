"""The fast paths of a Llama model on a CPU, built and timed the same way: PyTorch FP32 and BF16, our
own INT8/INT4 weights through aten's low-bit kernels, torchao, ``torch.ao`` dynamic INT8, and a
GGUF file through llama.cpp (``llama-cpp-python``, optional).

Timing follows llama.cpp's ``llama-bench``: prompt processing (``pp``: one forward over a prompt of
``P`` tokens, ``P / seconds``) and text generation (``tg``: ``n`` new tokens after a context of ``C``
tokens whose prefill is not timed, ``n / seconds``) are measured and reported separately. Every
PyTorch path, eager or compiled, runs the same greedy loop over a preallocated KV cache
(:class:`StaticLoop`); transformers' ``generate`` is timed only as its own row
(:class:`GenerateTimer`, "what users run"). Tokens per second are medians, with their min and max,
over rounds that visit every path in turn (interleaved, so that a burst of load on a shared machine
hits all paths alike); ratios come from the same rounds.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import libref
from .. import quantize as Q
from ..train import progress_bar
from . import lowbit
from .evaluation import check_context, domain_text
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


def gptq_int4_cached(model: nn.Module, tokenizer, n_windows: int = 16, group_size: int = 32,
                     progress: bool = True) -> dict[str, Q.QTensor]:
    """:func:`gptq_int4` on ``n_windows`` calibration windows (chapter 6's), computed once and then read
    from a safetensors file beside the model's cache (``smollm2-135m-gptq/``): chapters 7 and 8 use
    the same integers, and a second run of a notebook does not wait a minute for them. The file's name
    holds the settings and the source model's SHA-256, so other settings or another model compute anew."""
    from safetensors.torch import load_file, save_file

    from .evaluation import calibration_windows
    from .model import GGUF_SHA256, cache_dir

    path = cache_dir().parent / "smollm2-135m-gptq" / f"gptq-int4-g{group_size}-w{n_windows}-{GGUF_SHA256[:12]}.safetensors"
    if path.exists():
        t = load_file(str(path))
        names = sorted({k.rsplit(".", 1)[0] for k in t})
        return {n: Q.QTensor(t[f"{n}.q"], t[f"{n}.scale"], t[f"{n}.zero"], 4, group_size) for n in names}
    qts = gptq_int4(model, calibration_windows(tokenizer, n_windows), group_size, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(suffix=".tmp", dir=path.parent)  # one per process: two may compute at once
    os.close(fd)
    tmp = Path(name)
    try:
        save_file({f"{n}.{f}": getattr(qt, f).contiguous() for n, qt in qts.items() for f in ("q", "scale", "zero")}, str(tmp))
        tmp.replace(path)  # whole or absent, even if the run is interrupted
    except OSError:
        if not path.exists():  # Windows refuses to replace a file another process has open: keep that one
            raise
    finally:
        tmp.unlink(missing_ok=True)
    return qts


def generator(model: nn.Module, prompt: torch.Tensor, new_tokens: int, pad_token_id: int = 0) -> Callable[[], None]:
    """A callable that greedily generates exactly ``new_tokens`` after ``prompt`` ``(batch, T)`` with
    transformers' ``generate``. Timing it times the prompt and the new tokens together; chapter 7 times
    them apart (:func:`time_pp_tg`, :class:`GenerateTimer`)."""
    if prompt.dim() != 2:
        raise ValueError(f"prompt must be token ids (batch, T), got shape {tuple(prompt.shape)}")
    mask = torch.ones_like(prompt)

    @torch.inference_mode()
    def run() -> None:
        model.generate(prompt, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=pad_token_id)

    return run


def static_generator(model: nn.Module, prompt: torch.Tensor, new_tokens: int, compile: bool = False) -> Callable[[], torch.Tensor]:
    """A callable that greedily generates ``new_tokens`` after ``prompt`` ``(batch, T)`` with
    :class:`StaticLoop` (our own loop over a preallocated KV cache, so that every decoding step has
    the same shapes), in a fresh cache at each call. ``compile=True`` compiles the loop's one-token
    step with ``torch.compile`` (Inductor, which needs a C++ compiler; the first call compiles, about a
    minute on 2 cores): fused element-wise ops and no Python between them, the per-token overhead that
    eager PyTorch pays 30 blocks times 10 modules over. Returns the generated ids ``(batch, new_tokens)``."""
    if prompt.dim() != 2 or new_tokens < 1:
        raise ValueError(f"prompt must be token ids (batch, T) and new_tokens >= 1, got {tuple(prompt.shape)}, {new_tokens}")
    loop = StaticLoop(model, compile=compile)
    return lambda: loop.generate(prompt, new_tokens)


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
    ``rounds`` rounds that run every callable once, in turn: whole calls, prompt included (see
    :func:`time_pp_tg` for prompt processing and generation apart)."""
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


# ----------------------------------------------------------------------------- one loop, pp and tg
def _rewind(cache, position: int) -> None:
    """Make a static cache write its next token at ``position``: the slots after it keep stale keys
    and values, which attention masks (a slot is seen only from the positions after it)."""
    extra = int(cache.get_seq_length()) - position
    if extra < 0:
        raise ValueError(f"the cache holds {int(cache.get_seq_length())} tokens; cannot continue at position {position}")
    if extra:
        cache.crop(-extra)


class StaticLoop:
    """Greedy decoding over a preallocated KV cache (transformers' ``StaticCache``): the one loop that
    every PyTorch path is timed with, eager (``compile=False``) or compiled (``compile=True``: the
    one-token step goes through ``torch.compile``; the prompt's forward stays eager, as each prompt
    length would be another compilation). Eager and compiled timings therefore differ only by the
    compiler.

    A cache of ``length`` slots holds keys and values ``(batch, kv_heads, length, head_dim)`` per layer,
    in the dtype of the model's activations. :meth:`prefill` writes a prompt at positions
    ``0 .. P-1``; :meth:`decode` feeds one token at a time from position ``start``. Every step attends
    over all ``length`` slots (the later ones masked), so a step reads the whole cache.
    """

    def __init__(self, model: nn.Module, compile: bool = False):
        self.model = model.eval()
        self.compiled = compile
        self.step = torch.compile(model.forward, dynamic=False) if compile else model.forward

    def new_cache(self, length: int):
        """An empty static cache of ``length`` slots (allocated at its first write)."""
        from transformers import StaticCache

        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        check_context(self.model, length)
        return StaticCache(config=self.model.config, max_cache_len=length)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, cache) -> torch.Tensor:
        """One forward over ``ids`` ``(batch, P)`` into positions ``0 .. P-1`` of ``cache`` (eager; logits
        of the last position only). Returns the greedy next token ``(batch, 1)``."""
        if ids.dim() != 2 or ids.shape[1] > cache.get_max_length():
            raise ValueError(f"ids must be (batch, P) with P <= {cache.get_max_length()}, got {tuple(ids.shape)}")
        _rewind(cache, 0)
        out = self.model(ids, cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].argmax(-1, keepdim=True)

    @torch.inference_mode()
    def decode(self, token: torch.Tensor, cache, start: int, n: int) -> torch.Tensor:
        """``n`` one-token steps: feed ``token`` ``(batch, 1)`` at position ``start``, then each greedy
        output at the next position. Returns the ``n`` generated ids ``(batch, n)``; positions
        ``start .. start + n - 1`` of ``cache`` are written (it must hold positions ``0 .. start - 1``)."""
        if n < 1 or start + n > cache.get_max_length():
            raise ValueError(f"{n} steps from position {start} do not fit a cache of {cache.get_max_length()} slots")
        _rewind(cache, start)
        ids = []
        for _ in range(n):
            out = self.step(token, cache=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            ids.append(token)
        return torch.cat(ids, dim=1)

    def generate(self, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """``new_tokens`` greedy ids ``(batch, new_tokens)`` after ``prompt`` ``(batch, P)``, in a new cache:
        one prefill, then ``new_tokens - 1`` steps (the same tokens as ``generate(do_sample=False)``)."""
        if prompt.dim() != 2 or new_tokens < 1:
            raise ValueError(f"prompt must be token ids (batch, T) and new_tokens >= 1, got {tuple(prompt.shape)}, {new_tokens}")
        length = prompt.shape[1]
        cache = self.new_cache(length + new_tokens)
        first = self.prefill(prompt, cache)
        if new_tokens == 1:
            return first
        return torch.cat([first, self.decode(first, cache, length, new_tokens - 1)], dim=1)


@contextmanager
def threads(n: int | None) -> Iterator[int]:
    """Run the body on ``n`` intra-op threads (``torch.set_num_threads``; ``None`` keeps the current
    count), and restore the count it had, even on an error. Yields the count in use. llama.cpp paths
    (:class:`LlamaCpp`) follow it too: they take ``torch.get_num_threads()`` at each timed call.
    ``torch.compile``'s fused kernels keep the thread count they were compiled with: time a compiled
    path only under the count it was compiled under."""
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def context_tokens(tokenizer, length: int, domain: str = "shakespeare") -> torch.Tensor:
    """The first ``length`` tokens ``(1, length)`` of ``domain``'s held-out text (chapter 6's split):
    real text, the same on every run (no seed needed), for contexts of the timing sweep. Timing does
    not depend on which tokens they are; real text keeps the greedy continuations readable."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    text = domain_text(domain, "heldout")
    ids = tokenizer(text[: 8 * length + 64], add_special_tokens=False).input_ids[:length]
    if len(ids) < length:
        raise ValueError(f"the held-out {domain!r} text gave only {len(ids)} tokens, fewer than {length}")
    return torch.tensor([ids])


@dataclass(frozen=True)
class Spread:
    """Median, min and max of repeated measurements (here tokens per second), and how many."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            raise ValueError("need at least one value")
        return cls(statistics.median(values), min(values), max(values), len(values))


@dataclass(frozen=True)
class PpTg:
    """One path's prompt-processing and generation speeds (tokens/s; ``pp`` is ``None`` for a path that
    does not time prompts), and what they were measured on: ``prompt_tokens`` per sequence, ``context``
    tokens before the ``new_tokens`` generated ones, ``batch`` sequences, ``threads``."""

    pp: Spread | None
    tg: Spread
    prompt_tokens: int
    context: int
    new_tokens: int
    batch: int
    threads: int


class LoopTimer:
    """pp and tg of one model through :class:`StaticLoop`, eager or compiled. A compiled timer does
    not time prompts (its prefill is the eager one); ``time_prompt=False`` also skips them for a path
    whose prefill is too slow to repeat (a scalar kernel). Each timing reuses the same caches,
    rewound; the first call at a new shape allocates them (and compiles), so time it as warm-up."""

    def __init__(self, model: nn.Module, compile: bool = False, time_prompt: bool | None = None):
        self.loop = StaticLoop(model, compile=compile)
        self.times_prompt = (not compile) if time_prompt is None else time_prompt
        self.runtime = "pytorch-compile" if compile else "pytorch"
        self._pp: tuple | None = None
        self._tg: tuple | None = None

    def prompt_seconds(self, ids: torch.Tensor) -> float:
        """Seconds of one forward over ``ids`` ``(batch, P)`` into an empty cache of ``P`` slots."""
        if self._pp is None or self._pp[0] != tuple(ids.shape):
            self._pp = (tuple(ids.shape), self.loop.new_cache(ids.shape[1]))
        cache = self._pp[1]
        start = time.perf_counter()
        self.loop.prefill(ids, cache)
        return time.perf_counter() - start

    def prepare(self, context: torch.Tensor, new_tokens: int) -> None:
        """Prefill ``context`` ``(batch, C)`` into a cache of ``C + new_tokens`` slots (not timed)."""
        cache = self.loop.new_cache(context.shape[1] + new_tokens)
        first = self.loop.prefill(context, cache)
        self._tg = (cache, first, context.shape[1], new_tokens)

    def generation_seconds(self) -> float:
        """Seconds to generate ``new_tokens`` after the prepared context: ``new_tokens`` one-token steps
        from position ``C`` (the same tokens every time)."""
        if self._tg is None:
            raise RuntimeError("call prepare(context, new_tokens) first")
        cache, first, length, n = self._tg
        _rewind(cache, length)  # outside the clock
        start = time.perf_counter()
        self.loop.decode(first, cache, length, n)
        return time.perf_counter() - start

    def cache_bytes_per_token(self) -> int:
        """Bytes that one token of context adds to the prepared cache, counted from its tensors
        (keys and values of every layer, per sequence): what a step reads per token of context."""
        if self._tg is None:
            raise RuntimeError("call prepare(context, new_tokens) first")
        cache, _, _, _ = self._tg
        total = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
        first = cache.layers[0].keys
        return total // (first.shape[0] * first.shape[2])

    def release(self) -> None:
        """Drop the caches (memory: ``C`` tokens of context cost ``C`` times :meth:`cache_bytes_per_token`)."""
        self._pp = self._tg = None


class _Stamps:
    """A transformers streamer that records when each ``put`` arrives: first the prompt (before the
    prefill), then each new token as soon as it is chosen."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class GenerateTimer:
    """pp and tg of transformers' ``generate`` (dynamic cache, greedy): the loop most users run, timed
    from inside by a streamer's timestamps. pp: from the prompt's arrival to the first new token;
    tg: from the first new token to the last of ``new_tokens`` more (each ``generate`` call also
    prefills, outside the timed span). Batch 1 only (streamers take one sequence)."""

    runtime = "pytorch-generate"
    times_prompt = True

    def __init__(self, model: nn.Module, pad_token_id: int = 0):
        self.model, self.pad_token_id = model.eval(), pad_token_id
        self._ctx: tuple | None = None

    @torch.inference_mode()
    def _stamps(self, ids: torch.Tensor, new_tokens: int) -> list[float]:
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise ValueError(f"GenerateTimer times one sequence (1, T), got {tuple(ids.shape)}")
        stamps = _Stamps()
        self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                            min_new_tokens=new_tokens, do_sample=False, pad_token_id=self.pad_token_id, streamer=stamps)
        if len(stamps.times) != new_tokens + 1:
            raise RuntimeError(f"expected {new_tokens + 1} streamer calls, got {len(stamps.times)}")
        return stamps.times

    def prompt_seconds(self, ids: torch.Tensor) -> float:
        t = self._stamps(ids, 1)
        return t[1] - t[0]

    def prepare(self, context: torch.Tensor, new_tokens: int) -> None:
        check_context(self.model, context.shape[1] + new_tokens + 1)
        self._ctx = (context, new_tokens)

    def generation_seconds(self) -> float:
        if self._ctx is None:
            raise RuntimeError("call prepare(context, new_tokens) first")
        context, n = self._ctx
        t = self._stamps(context, n + 1)
        return t[-1] - t[1]

    def release(self) -> None:
        self._ctx = None


def compiled_timers(models: dict[str, nn.Module], context: torch.Tensor, new_tokens: int,
                    progress: bool = True) -> tuple[dict[str, LoopTimer], dict[str, str]]:
    """A compiled :class:`LoopTimer` for each model, compiled now: prepared on ``context`` and run once
    (the first step at this cache length compiles; the same length later reuses it). A model that
    ``torch.compile`` cannot compile here (no C++ compiler, no OpenMP on macOS, ...) lands in the
    second dict, name -> the reason, instead of stopping the caller."""
    timers, failed = {}, {}
    for name, model in progress_bar(list(models.items()), progress, desc="torch.compile"):
        timer = LoopTimer(model, compile=True)
        try:
            timer.prepare(context, new_tokens)
            timer.generation_seconds()
            timers[name] = timer
        except Exception as e:  # noqa: BLE001 (Inductor raises many kinds of errors)
            failed[name] = f"{type(e).__name__}: {str(e)[:300]}"
    return timers, failed


def time_pp_tg(timers: dict, context: torch.Tensor, new_tokens: int, rounds: int = 5, warmup: int = 1,
               prompt: torch.Tensor | None = None, progress: bool = True) -> dict[str, PpTg]:
    """Prompt processing and generation speeds of every timer (:class:`LoopTimer`,
    :class:`GenerateTimer`, :class:`LlamaCpp`), llama-bench style.

    ``context`` ``(batch, C)``: each timer prefills it once, untimed, then each round times
    ``new_tokens`` generated after it (tg = ``batch · new_tokens / seconds``) and one forward over
    ``prompt`` ``(batch, P)`` (default: the context itself; pp = ``batch · P / seconds``). Rounds visit
    every timer in turn, starting one timer later each round (drift and order effects hit all
    alike); ``warmup`` untimed rounds first (allocations, compilation). Returns name -> :class:`PpTg`
    with medians, min and max over ``rounds``, at the current thread count."""
    if rounds < 1 or warmup < 0 or new_tokens < 1:
        raise ValueError(f"need rounds >= 1, warmup >= 0 and new_tokens >= 1, got {rounds}, {warmup}, {new_tokens}")
    if context.dim() != 2:
        raise ValueError(f"context must be token ids (batch, C), got shape {tuple(context.shape)}")
    prompt = context if prompt is None else prompt
    for timer in timers.values():
        timer.prepare(context, new_tokens)
    names = list(timers)
    for _ in range(warmup):
        for name in names:
            if timers[name].times_prompt:
                timers[name].prompt_seconds(prompt)
            timers[name].generation_seconds()
    pp: dict[str, list[float]] = {n: [] for n in names}
    tg: dict[str, list[float]] = {n: [] for n in names}
    for r in progress_bar(range(rounds), progress, desc=f"pp/tg, context {context.shape[1]}"):
        for name in names[r % len(names):] + names[: r % len(names)]:
            timer = timers[name]
            if timer.times_prompt:
                pp[name].append(prompt.numel() / timer.prompt_seconds(prompt))
            tg[name].append(context.shape[0] * new_tokens / timer.generation_seconds())
    return {n: PpTg(Spread.of(pp[n]) if pp[n] else None, Spread.of(tg[n]), prompt.shape[1], context.shape[1],
                    new_tokens, context.shape[0], torch.get_num_threads()) for n in names}


CONTEXTS = (64, 512, 2048)  # the sweep's contexts: SmolLM2 is configured for 8,192 positions


def context_sweep(timers: dict, tokens: torch.Tensor, contexts: tuple[int, ...] = CONTEXTS, new_tokens: int = 32,
                  rounds: int = 3, warmup: int = 1, progress: bool = True) -> dict[int, dict[str, PpTg]]:
    """:func:`time_pp_tg` at each context length ``C`` of ``contexts``: the context is the first ``C``
    of ``tokens`` ``(batch, T)`` (e.g. :func:`context_tokens`), and pp is timed over that same
    context. Caches are released after each length. Returns ``{C: {name: PpTg}}``."""
    if tokens.dim() != 2 or max(contexts) > tokens.shape[1]:
        raise ValueError(f"tokens {tuple(tokens.shape)} must be (batch, T) with T >= {max(contexts)}")
    out = {}
    for length in progress_bar(list(contexts), progress, desc="context sweep"):
        out[length] = time_pp_tg(timers, tokens[:, :length], new_tokens, rounds, warmup, progress=False)
        for timer in timers.values():
            timer.release()
    return out


# ----------------------------------------------------------------------------- llama.cpp (optional)
def llama_cpp_available() -> bool:
    """Whether ``llama-cpp-python`` is installed (``python course.py deploy``; it compiles llama.cpp)."""
    return importlib.util.find_spec("llama_cpp") is not None


INSTALL_LLAMA_CPP = ("llama-cpp-python chưa được cài: chạy `python course.py deploy` (biên dịch llama.cpp từ mã nguồn, "
                     "khoảng 5–25 phút trên 2 lõi) rồi chạy lại ô này.")


class LlamaCpp:
    """A GGUF file run by llama.cpp: greedy generation, perplexity, and pp/tg timing like
    :class:`LoopTimer` (``n_ctx`` must hold the context plus the new tokens), on ``threads`` threads
    (default: ``torch.get_num_threads()``; the timing methods take the current count at each call, so
    :func:`threads` applies to them)."""

    runtime = "llama.cpp"
    times_prompt = True

    def __init__(self, path, n_ctx: int = 512, threads: int | None = None, logits_all: bool = False):
        if not llama_cpp_available():
            raise ModuleNotFoundError(INSTALL_LLAMA_CPP)
        from llama_cpp import Llama

        n = threads or torch.get_num_threads()
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=n, n_threads_batch=n,
                         logits_all=logits_all, verbose=False)
        self._threads = n
        self._state: tuple[int, ...] | None = None  # the tokens in llama.cpp's cache, when known
        self._ctx: tuple | None = None

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

    def window_nll(self, windows: torch.Tensor) -> list[float]:
        """Nats of each window ``(B, T)`` of token ids (position t predicts t + 1), summed over its
        ``T - 1`` predictions, as :class:`~lightweight.llm.evaluation.Score` keeps them (so
        :func:`~lightweight.llm.evaluation.paired_ratio` compares them with PyTorch's); needs ``logits_all``."""
        out = []
        for w in windows.tolist():
            self.llm.reset()
            self.llm.eval(w)
            logits = torch.from_numpy(self.llm.scores[: len(w) - 1].copy()).float()
            out.append(-float(F.log_softmax(logits, -1).gather(-1, torch.tensor(w[1:])[:, None]).double().sum()))
        self._state = None
        return out

    def perplexity(self, windows: torch.Tensor) -> float:
        """Perplexity over windows ``(B, T)`` of token ids (position t predicts t + 1); needs ``logits_all``."""
        return math.exp(sum(self.window_nll(windows)) / (windows.shape[0] * (windows.shape[1] - 1)))

    # pp / tg timing (the protocol of LoopTimer), batch 1
    def _follow_threads(self) -> None:
        n = torch.get_num_threads()
        if n != self._threads:
            self.llm._ctx.set_n_threads(n, n)
            self._threads = n

    def _greedy(self) -> int:
        import numpy as np

        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(self.llm.n_vocab(),))
        return int(logits.argmax())

    @staticmethod
    def _one(ids: torch.Tensor) -> list[int]:
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise ValueError(f"llama.cpp is timed on one sequence (1, T), got {tuple(ids.shape)}")
        return ids[0].tolist()

    def prompt_seconds(self, ids: torch.Tensor) -> float:
        """Seconds of one ``eval`` of the prompt ``(1, P)`` into an emptied cache, and its greedy token."""
        tokens = self._one(ids)
        self._follow_threads()
        self.llm.reset()
        start = time.perf_counter()
        self.llm.eval(tokens)
        self._greedy()
        seconds = time.perf_counter() - start
        self._state = tuple(tokens)
        return seconds

    def prepare(self, context: torch.Tensor, new_tokens: int) -> None:
        """Remember the context ``(1, C)``; it is evaluated (untimed) before the first generation."""
        tokens = self._one(context)
        if len(tokens) + new_tokens > self.llm.n_ctx():
            raise ValueError(f"{len(tokens)} + {new_tokens} tokens do not fit n_ctx={self.llm.n_ctx()}")
        self._ctx = (tokens, new_tokens, None)

    def generation_seconds(self) -> float:
        """Seconds of ``new_tokens`` one-token ``eval`` calls, each followed by its argmax, after the
        prepared context (prefilled untimed when the cache does not hold it; llama.cpp drops the
        positions after ``n_tokens`` at each ``eval``, so rewinding is setting ``n_tokens``)."""
        if self._ctx is None:
            raise RuntimeError("call prepare(context, new_tokens) first")
        tokens, n, first = self._ctx
        self._follow_threads()
        if self._state != tuple(tokens) or first is None:
            self.llm.reset()
            self.llm.eval(tokens)
            first = self._greedy()
            self._state, self._ctx = tuple(tokens), (tokens, n, first)
        self.llm.n_tokens = len(tokens)
        token = first
        start = time.perf_counter()
        for _ in range(n):
            self.llm.eval([token])
            token = self._greedy()
        seconds = time.perf_counter() - start
        return seconds  # positions 0 .. C-1 still hold the context: the next call rewinds to C

    def release(self) -> None:
        self._ctx = None
