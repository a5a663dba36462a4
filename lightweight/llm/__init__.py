"""The real-LLM chapters (6, 7 and 8) on SmolLM2-135M.

- ``model``       the verified GGUF converted once to an FP32 cache; blocks, calibration, block-by-block compression
- ``evaluation``  held-out text of two domains, perplexity, bits per byte, KL to the reference, prompts
- ``lowbit``      our INT8/INT4 weights run by aten's CPU low-bit kernels (``swap_`` for Llama models)
- ``fast``        the fast paths of a Llama model, one decode loop, pp and tg timed apart; the llama.cpp runner (optional)
- ``gguf_export`` GGUF files (F32, F16, Q8_0, Q4_0) from our own integers, read back with ``gguf``
- ``roofline``    measured bandwidth and matmul peaks, bytes per token, tokens/s bounds of decoding
- ``decoder``     a lean Llama decoder (RMSNorm, RoPE, grouped-query attention over a preallocated cache)
- ``kernel``      chapter 8's INT4 GEMV in numba, step by step, and the layers that run it
- ``lean``        the lean decoder's paths (FP32, BF16, aten INT4, numba INT4) and where a step's time goes
"""
