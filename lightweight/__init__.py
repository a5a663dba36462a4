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
