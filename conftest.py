"""Loaded for every test run, including ``pytest solutions/NN.ipynb`` alone: progress bars off
(notebook kernels inherit the variable) and the Hugging Face hub offline."""

import os

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
