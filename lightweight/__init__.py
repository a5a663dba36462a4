"""lightweight: the helper package of the course "Làm nhẹ mô hình AI".

Modules, one concern each:

- ``data``      digits (scikit-learn) and Shakespeare characters, fixed splits, seeded batches
- ``models``    DigitsCNN, DigitsMLP, TinyGPT
- ``train``     training and evaluation loops, seeding
- ``measure``   parameters, bytes, sparsity, latency and speed ratios, quality metrics
- ``minilm``    the verified all-MiniLM-L6-v2 and its fidelity metrics
- ``teachers``  the pretrained teachers shipped as safetensors (``pretrain`` remakes them)
- ``plots``     shared plot helpers
- ``checks``    exercise checks with Vietnamese feedback
- ``labs``      generates labs/ from solutions/
- ``bench``     ``python -m lightweight.bench``
"""

__version__ = "0.1.0"
