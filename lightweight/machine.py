"""What machine a notebook's saved outputs (or a benchmark's rows) were measured on: the one
description used by every solution notebook's first cell and by the benchmark's machine line.

Floating-point results differ in their last digits between CPUs, instruction sets, BLAS builds
and thread counts, so every solution notebook prints this line near its top: a reader whose
machine differs knows why their own digits may differ (the notebooks assert their claims with
margins, not digits).
"""

import platform
import subprocess

import torch


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS, else ``platform``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, encoding="utf-8", timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            name = ""
        if name:
            return name
    return platform.processor() or platform.machine()


def quantized_engine() -> str:
    """PyTorch's quantized engine for torch.ao's INT8 kernels: ``fbgemm`` or ``x86`` on x86 CPUs,
    ``qnnpack`` on ARM (which ignores ``reduce_range``)."""
    return torch.backends.quantized.engine


def describe() -> str:
    """One line: CPU model, the vector ISA PyTorch's kernels use, PyTorch's quantized engine,
    threads, OS, Python and torch."""
    isa = torch.backends.cpu.get_cpu_capability()
    return (f"{cpu_model()} ({platform.machine()}, PyTorch ISA {isa}, quantized engine {quantized_engine()}), "
            f"{torch.get_num_threads()} threads, {platform.system()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def print_machine() -> None:
    """Print :func:`describe` with a Vietnamese note on what it means for the saved outputs."""
    print(f"Máy chạy notebook này (machine): {describe()}")
    print("Kết quả số thực trên máy bạn có thể khác ở các chữ số cuối; notebook kiểm tra "
          "các nhận định bằng assert có biên độ, không bằng chữ số.")
