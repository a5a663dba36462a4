"""The course's benchmark, ``python -m lightweight.bench``: one row per measured configuration.

- ``core``  the row format, the book's tables, the saved results file
- ``cli``   the command: which chapter runs which benchmark
- ``baseline``, ``distillation``, ``pruning``, ``lowrank``, ``quantization``, ``combine``: chapters 0–5
- ``llm`` (``python -m lightweight.bench.llm``) and ``fast`` (``python -m lightweight.bench.fast``):
  chapters 6 and 7 on SmolLM2-135M, each with its own files as well; ``decoder``
  (``python -m lightweight.bench.decoder``): chapter 8's kernel steps and lean decoder
"""
