"""lightweight: the helper package of the course "Làm nhẹ mô hình AI", laid out as the course is.

The techniques (chapters 1–5), one module each:

- ``distill``   knowledge distillation: KD loss, students, distilling classifiers, LMs and MiniLM
- ``prune``     pruning: magnitude, schedules, sparse storage, 2:4, structured, Wanda, SparseGPT
- ``lowrank``   low-rank factorization: SVD, whitened (truncation-aware) SVD, rank allocation
- ``quantize``  quantization: RTN, INT4 packing, QuantizedLinear, W8A8, SmoothQuant, GPTQ, AWQ, FP8
- ``combine``   techniques in sequence, Pareto fronts; ``advise`` answers from the benchmark's rows

Their shared tools:

- ``data``        digits (scikit-learn), Shakespeare characters and lines, fixed splits, seeded batches
- ``models``      DigitsCNN, DigitsMLP, TinyGPT
- ``train``       training and evaluation loops, seeding, progress bars
- ``measure``     parameters, bytes, sparsity, latency and speed ratios, quality metrics
- ``calibration`` hooks that record what enters each Linear on calibration data
- ``minilm``      the verified all-MiniLM-L6-v2 and its fidelity metrics
- ``teachers``    the pretrained teachers shipped as safetensors (``pretrain`` remakes them)
- ``libref``      the library references: torchao, and torch.ao's dynamic INT8
- ``machine``     the one description of the machine (CPU, PyTorch ISA, quantized engine, threads)
- ``plots``       shared plot helpers

Three subpackages:

- ``llm``     the real LLM (SmolLM2-135M, chapters 6–7): model and cache, evaluation, low-bit
              modules, fast paths, GGUF export, roofline
- ``bench``   ``python -m lightweight.bench``: the row format (``core``), the command (``cli``),
              one module per chapter
- ``course``  the course's tooling: exercise ``checks``, the ``labs`` generator, the ``grade``r
"""

import logging

# Importing torchao (transformers does it when it loads a model) logs deprecation lines with a
# timestamp and a process id from torch.utils._pytree: keep them out of notebook outputs.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

__version__ = "0.1.0"
