"""llama.cpp's own 4-bit quantizers, run from Python, with an importance matrix computed by PyTorch.

:func:`quantize_gguf` calls ``llama_model_quantize`` (llama-cpp-python's ctypes binding; what the
``llama-quantize`` tool runs) on an F32 GGUF file. What llama.cpp does there (src/llama-quant.cpp,
ggml/src/ggml-quants.c):

- The importance matrix ("imatrix") of a weight ``(out, in)`` is one number per *input* column: the
  mean of ``x_j²`` over every token that entered the matmul. ``llama-imatrix`` (tools/imatrix/imatrix.cpp)
  stores the sums ``Σ x_j²`` and the token count; ``llama-quantize`` (tools/quantize/quantize.cpp) hands
  the quantizer ``sum / count``. :func:`importance_matrix` computes that mean from PyTorch. The query/key
  row permutation of the GGUF export moves output rows only, so it does not touch the imatrix. Only
  ratios matter: every weighted fit compares ratios of weighted sums, so an imatrix scaled by a power
  of two gives the same bytes.
- Q4_0 without imatrix is ``quantize_row_q4_0_ref`` (``d = max / -8``, round to nearest: our
  ``gguf_export.quantize_q4_0``). With one, each weight gets the importance
  ``imatrix_j · sqrt(σ² + w_j²)`` (``σ²``: the row's mean ``w²``) and ``make_qx_quants`` tries 19 scales
  around ``max / -8``, keeping the integers with the least weighted squared error and their
  least-squares scale. IQ4_NL (16 non-uniform levels ``kvalues_iq4nl``, blocks of 32) and IQ4_XS
  (the same levels; super-blocks of 256 with a 6-bit scale per 32) always search, weighting by ``w²``
  without imatrix and by ``imatrix_j · sqrt(σ² + w_j²)`` with one. Q8_0 and the float types ignore it.
- Q4_K: super-blocks of 256 weights, 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit min
  (``w = d·sc·q − dmin·m``, ``d`` and ``dmin`` FP16 per super-block): the "scale + min per 32 weights"
  shape of Q4_1, in which SmolLM2's source file is stored. Q4_K can therefore nearly reproduce those
  weights, a head start that says little about Q4_K on a model trained in BF16: the trap.
- A ``*_M`` file mixes types: Q4_K_M puts Q6_K on ``attn_v`` and ``ffn_down`` of the first and last
  eighth of the layers and every third one between; Q4_0 *with* an imatrix puts ``ffn_down`` of the first
  ``n_layer / 8`` layers in Q4_1, IQ4_NL/IQ4_XS *without* one put them in Q5_K. A tensor whose input width
  is not a multiple of its type's block (256 for K-quants and IQ4_XS) falls back: IQ4_XS → IQ4_NL,
  Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0. SmolLM2's width 576 is not a multiple of 256, so only its
  ``ffn_down`` (width 1536) keeps K or XS blocks: measure files with :func:`tensor_types` and
  :func:`bits_per_weight`, never assume them.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..calibration import observe_linear_inputs
from ..train import progress_bar
from .fast import INSTALL_LLAMA_CPP, llama_cpp_available
from .gguf_export import _gguf, gguf_name
from .model import block_linears

FTYPES = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
          "iq4_nl": "LLAMA_FTYPE_MOSTLY_IQ4_NL", "iq4_xs": "LLAMA_FTYPE_MOSTLY_IQ4_XS"}


# ----------------------------------------------------------------------------- the importance matrix
class _SquareSums:
    """Per input column, ``Σ x²`` over the rows seen ``(in,)`` (float64) and the count of rows."""

    def __init__(self, linear: nn.Linear):
        self.sums = torch.zeros(linear.in_features, dtype=torch.float64)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        self.sums += (x * x).sum(dim=0)
        self.n += x.shape[0]


def importance_matrix(model: nn.Module, windows: torch.Tensor, batch_size: int = 4,
                      progress: bool = True) -> dict[str, torch.Tensor]:
    """The imatrix ``llama-imatrix`` would store for a Llama ``model``, from calibration ``windows`` ``(N, T)``.

    For every ``nn.Linear`` of the transformer blocks, the mean of ``x_j²`` over the ``N · T`` tokens
    of each input column ``j``: a float32 tensor ``(in_features,)``, keyed by the GGUF tensor name
    (``blk.0.attn_q.weight``). Only the blocks run (``model.model``), not the output layer."""
    if windows.dim() != 2 or windows.numel() == 0:
        raise ValueError(f"windows must be (N, T) token ids with N, T >= 1, got shape {tuple(windows.shape)}")
    names = block_linears(model)

    def run() -> None:
        for i in progress_bar(range(0, len(windows), batch_size), progress, desc="imatrix", leave=False):
            model.model(windows[i: i + batch_size])

    stats = observe_linear_inputs(model, run, _SquareSums, names)
    return {gguf_name(n + ".weight"): (s.sums / s.n).float() for n, s in stats.items()}


# ----------------------------------------------------------------------------- quantizing with llama.cpp
def _imatrix_entries(imatrix: dict[str, torch.Tensor], widths: dict[str, int], llama_cpp) -> tuple[ctypes.Array, list]:
    """The ``llama_model_imatrix_data`` array llama.cpp reads (ended by an entry whose name is NULL), and
    the float32 buffers it points into, which must stay alive during the call."""
    if not imatrix:
        raise ValueError("imatrix is empty: pass None to quantize without one")
    entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()  # zeroed: the last is the end mark
    buffers = []
    for entry, (name, values) in zip(entries, imatrix.items()):
        if name not in widths:
            raise ValueError(f"imatrix names {name!r}, which is no tensor of the GGUF file")
        data = np.ascontiguousarray(torch.as_tensor(values).detach().cpu().numpy(), dtype=np.float32)
        if data.shape != (widths[name],):
            raise ValueError(f"imatrix[{name!r}] has shape {data.shape}, but the tensor's input width is {widths[name]}")
        if not np.isfinite(data).all():
            raise ValueError(f"imatrix[{name!r}] has non-finite values")
        buffers.append(data)
        entry.name, entry.data, entry.size = name.encode(), data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), data.size
    return entries, buffers


@contextmanager
def _llama_log(llama_cpp) -> Iterator[list[str]]:
    """Collect llama.cpp's log (one line per tensor when quantizing) instead of printing it; the previous
    log callback is restored at the end. (llama-cpp-python's own logger cannot be used to silence it: it
    maps ggml's log levels off by one, so at level ERROR it hides llama.cpp's errors and shows its warnings.)"""
    previous, user_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(previous), ctypes.byref(user_data))
    chunks: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, data: ctypes.c_void_p) -> None:
        chunks.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(collect, None)
    try:
        yield chunks
    finally:
        llama_cpp.llama_log_set(previous, user_data)


def quantize_gguf(source: str | os.PathLike, dest: str | os.PathLike, fmt: str,
                  imatrix: dict[str, torch.Tensor] | None = None, token_embedding_type: str | None = "q8_0",
                  threads: int | None = None) -> Path:
    """Quantize an F32 (or F16) GGUF file ``source`` into ``dest`` with llama.cpp's own quantizer.

    ``fmt``: ``q4_0``, ``q4_1``, ``q4_k_m``, ``iq4_nl`` or ``iq4_xs`` (llama.cpp's file types, with their
    per-tensor mixtures and fallbacks: see the module's docstring). ``imatrix``: GGUF tensor name ->
    ``(in_features,)`` importances, e.g. :func:`importance_matrix`. ``token_embedding_type``: the ggml type
    of the embedding table (default ``q8_0``, as our own Q4_0 export; ``None``: llama.cpp's choice).
    ``threads``: default ``torch.get_num_threads()``. Written to a temporary file, then renamed."""
    if fmt not in FTYPES:
        raise ValueError(f"fmt must be one of {tuple(FTYPES)}, got {fmt!r}")
    if not llama_cpp_available():
        raise ModuleNotFoundError(INSTALL_LLAMA_CPP)
    import llama_cpp

    source, dest = Path(source), Path(dest)
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist")
    gguf = _gguf()
    widths = {t.name: int(t.shape[0]) for t in gguf.GGUFReader(str(source)).tensors}  # shape[0]: the input width
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[fmt])
    params.nthread = threads or torch.get_num_threads()
    if token_embedding_type is not None:
        params.token_embedding_type = int(gguf.GGMLQuantizationType[token_embedding_type.upper()])
    buffers = None
    if imatrix is not None:
        params.imatrix, buffers = _imatrix_entries(imatrix, widths, llama_cpp)
    tmp = dest.with_name(dest.name + ".tmp")
    with _llama_log(llama_cpp) as log:
        status = llama_cpp.llama_model_quantize(os.fsencode(source), os.fsencode(tmp), ctypes.byref(params))
    del buffers  # llama.cpp has copied the imatrix by now
    if status != 0:
        tmp.unlink(missing_ok=True)
        reason = "".join(log).strip().rpartition("failed to quantize: ")[2].splitlines()[-1:]
        raise RuntimeError(f"llama.cpp failed to quantize {source} to {fmt} (status {status}: {''.join(reason)}); "
                           "the source must be an F32 or F16 GGUF file, e.g. export_gguf(model, path, 'f32', source=verify_gguf())")
    os.replace(tmp, dest)
    return dest


# ----------------------------------------------------------------------------- reading the result
def tensor_types(path: str | os.PathLike) -> dict[str, str]:
    """GGUF tensor name -> ggml type name (``Q4_K``, ``Q6_K``, ``F32``...) of every tensor of the file."""
    return {t.name: t.tensor_type.name for t in _gguf().GGUFReader(str(path)).tensors}


def bits_per_weight(path: str | os.PathLike, which: str = "blocks") -> float:
    """Stored bits per weight of a GGUF file: bytes × 8 / weights, over the 2-D ``blk.*`` matrices
    (``which="blocks"``) or over every tensor (``"all"``: embedding table and norms too).

    ggml's blocks (``GGML_QUANT_SIZES``): Q4_0 4.5 (FP16 scale + 32 nibbles), Q4_1 5.0 (and an FP16
    min), IQ4_NL 4.5, IQ4_XS 4.25, Q4_K 4.5, Q5_0 5.5, Q5_K 5.5, Q6_K 6.5625, Q8_0 8.5. A mixed file
    (Q4_K_M, fallbacks) lands in between: measured here, not assumed."""
    if which not in ("blocks", "all"):
        raise ValueError(f"which must be 'blocks' or 'all', got {which!r}")
    tensors = [t for t in _gguf().GGUFReader(str(path)).tensors
               if which == "all" or (t.name.startswith("blk.") and len(t.shape) == 2)]
    if not tensors:
        raise ValueError(f"{path} has no {which} tensors")
    return sum(int(t.n_bytes) for t in tensors) * 8 / sum(int(t.n_elements) for t in tensors)
