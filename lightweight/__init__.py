"""lightweight: the helper package of the course "Làm nhẹ mô hình AI".

Modules, one concern each:

- ``data``      digits (scikit-learn) and Shakespeare characters, fixed splits, seeded batches
- ``models``    DigitsCNN, DigitsMLP, TinyGPT
- ``train``     training and evaluation loops, seeding
- ``measure``   parameters, bytes, sparsity, latency and speed ratios, quality metrics
- ``minilm``    the verified all-MiniLM-L6-v2 and its fidelity metrics
- ``teachers``  the pretrained teachers shipped as safetensors (``pretrain`` remakes them)
- ``calibration`` hooks that record what enters each Linear on calibration data
- ``prune``     pruning: magnitude, schedules, sparse storage, 2:4, structured, Wanda, SparseGPT
- ``quantize``  quantization: RTN, INT4 packing, QuantizedLinear, W8A8, SmoothQuant, GPTQ, FP8, fbgemm
- ``reference`` library references the course compares with (torch.ao dynamic INT8)
- ``roofline``  measured bandwidth and matmul peak, bytes per token, tokens/s bounds of decoding
- ``lowbit``    our INT8/INT4 weights run by aten's CPU low-bit kernels (``swap_`` for Llama models)
- ``libref``    torchao's weight-only and dynamic INT8 configurations, with a conversion check
- ``fast``      the fast paths of a Llama model, timed alike; llama.cpp runner (optional)
- ``gguf_export`` GGUF files (Q8_0, Q4_0, F16, F32) from our own integers, read back with gguf
- ``plots``     shared plot helpers
- ``checks``    exercise checks with Vietnamese feedback (one module per chapter)
- ``labs``      generates labs/ from solutions/
- ``grade``     ``python -m lightweight.grade``: grades submitted labs
- ``bench``     ``python -m lightweight.bench`` (rows registered by ``bench_<chapter>`` modules)
"""

import logging

# Importing torchao (transformers does it when it loads a model) logs deprecation lines with a
# timestamp and a process id from torch.utils._pytree: keep them out of notebook outputs.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

__version__ = "0.1.0"
