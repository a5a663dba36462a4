"""The course's one way in, the same on Windows, macOS and Linux (standard library only).

    python course.py test      create .venv, install the pinned requirements, run the unit tests
                               and re-run every solution notebook with nbval
    python course.py book      build the HTML book (warnings are errors) and print where it is

Other commands: lab, labs, solutions, pretrain, bench, bench-table, deploy, test-portable,
test-browser, book-student, clean (``python course.py --help``). On Windows use ``py course.py …``
if ``python`` is not on the PATH.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".installed"
REQUIREMENTS = ("requirements.txt", "requirements-nodeps.txt", "pyproject.toml")
PYTHONS = ((3, 11), (3, 14))  # the oldest and newest Python with wheels of every pin (macOS: 3.13)
# The second CPU configuration of test-portable: PyTorch's non-vectorised kernels, MKL and oneDNN
# limited to AVX2, one thread (CONTRIBUTING.md, "How notebooks are verified").
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def platform_problem(version: tuple[int, int] = sys.version_info[:2], system: str = platform.system(),
                     machine: str = platform.machine(), mac_release: str = platform.mac_ver()[0]) -> str:
    """Why the pinned packages cannot install here (English, then Vietnamese), or ``""``."""
    newest = (3, 13) if system == "Darwin" else PYTHONS[1]
    shown = lambda v: f"{v[0]}.{v[1]}"  # noqa: E731
    if not PYTHONS[0] <= version <= newest:
        return (f"Python {shown(version)} is not supported: use Python {shown(PYTHONS[0])} to {shown(newest)} "
                f"(the pinned torch 2.14.1 has no wheel for other versions). / Cần Python {shown(PYTHONS[0])} đến "
                f"{shown(newest)}: torch 2.14.1 không có bản cài cho phiên bản khác.")
    if system == "Darwin":
        major = int((mac_release or "0").split(".")[0])
        if machine != "arm64" or major < 14:
            return ("macOS needs Apple Silicon (arm64) and macOS 14 or newer: torch 2.14.1 has no wheel for Intel Macs "
                    "or older macOS. Use Google Colab instead (README). / Máy Mac cần chip Apple Silicon và macOS 14 "
                    "trở lên; nếu không, hãy dùng Google Colab (xem README).")
    return ""


def venv_python() -> Path:
    """The interpreter of ``.venv`` (``Scripts\\python.exe`` on Windows, ``bin/python`` elsewhere)."""
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def requirements_digest() -> str:
    """SHA-256 over the files that decide what is installed: a change to any of them reinstalls."""
    h = hashlib.sha256()
    for name in REQUIREMENTS:
        h.update(name.encode("utf-8") + b"\0" + (ROOT / name).read_bytes())
    return h.hexdigest()


def run(cmd: list[str | Path], env: dict[str, str] | None = None) -> None:
    """Run a command from the repository root; stop with its exit status if it fails."""
    print("+", " ".join(str(c) for c in cmd), flush=True)
    code = subprocess.call([str(c) for c in cmd], cwd=ROOT, env={**os.environ, **(env or {})})
    if code:
        sys.exit(code)


def setup() -> Path:
    """Create ``.venv`` and install the pinned requirements (in the order they need) once; returns its python."""
    problem = platform_problem()
    if problem:
        sys.exit(problem)
    py = venv_python()
    digest = requirements_digest()
    if py.exists() and STAMP.exists() and STAMP.read_text(encoding="utf-8").strip() == digest:
        return py
    if not py.exists():
        run([sys.executable, "-m", "venv", VENV])
    run([py, "-m", "pip", "install", "-r", "requirements.txt"])
    run([py, "-m", "pip", "install", "--no-deps", "-r", "requirements-nodeps.txt"])
    run([py, "-m", "pip", "install", "--no-deps", "-e", "."])
    STAMP.write_text(digest + "\n", encoding="utf-8")
    return py


def test_env() -> dict[str, str]:
    return {"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}


def pytest_cmd(py: Path) -> list[str | Path]:
    """pytest under ``-X warn_default_encoding``: an ``open()`` without ``encoding=`` in the course's
    modules or tests is an error (pyproject.toml scopes it); notebook kernels are not affected."""
    return [py, "-X", "warn_default_encoding", "-m", "pytest"]


def xdist_workers(cores: int | None = None) -> list[str]:
    """pytest-xdist options for the unit tests: one worker per core (default: this machine's), at
    most 4 (each may hold a 540 MB SmolLM2); none on one core. They time nothing, and many are
    bound by Python or by waiting on a kernel, so they share the cores well."""
    n = min(cores or os.cpu_count() or 1, 4)
    return ["-n", str(n)] if n > 1 else []


def cmd_test(args: argparse.Namespace) -> None:
    """With arguments: pytest with them. Without: the unit tests side by side on the cores, then the
    solution notebooks one at a time (their speed claims need the machine to themselves, and a
    notebook beside the unit tests took longer than the two one after the other on 2 cores)."""
    py = setup()
    if args.pytest_args:
        run([*pytest_cmd(py), *args.pytest_args], env=test_env())
        return
    run([*pytest_cmd(py), "tests", *xdist_workers()], env=test_env())
    run([*pytest_cmd(py), *solution_notebooks()], env=test_env())


def solution_notebooks() -> list[str]:
    return [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "solutions").glob("*.ipynb"))]


def cmd_test_portable(args: argparse.Namespace) -> None:
    notebooks = args.notebooks or solution_notebooks()
    run([*pytest_cmd(setup()), *notebooks, "-n", "2", "--dist", "loadfile"], env={**test_env(), **PORTABLE_ENV})


def cmd_test_browser(args: argparse.Namespace) -> None:
    run([setup(), "-m", "pytest", "tests/test_browser.py"], env={"BOOK_BROWSER_TEST": "1"})


def build_book(py: Path, *extra: str) -> None:
    # jupyter-book 1 has no `python -m` entry point: call its command-line function in .venv's python
    run([py, "-c", "import sys; from jupyter_book.cli.main import main; sys.argv[0] = 'jupyter-book'; main()",
         "build", ".", "--warningiserror", "--keep-going", *extra])


def cmd_book(args: argparse.Namespace) -> None:
    py = setup()
    shutil.rmtree(ROOT / "_build" / "html", ignore_errors=True)
    build_book(py)
    print(f"Book: {ROOT / '_build' / 'html' / 'index.html'}")


def cmd_book_student(args: argparse.Namespace) -> None:
    """The student edition: no solution notebooks, no {solution} blocks (see _config_student.yml)."""
    py = setup()
    shutil.rmtree(ROOT / "_build" / "student", ignore_errors=True)
    build_book(py, "--config", "_config_student.yml", "--toc", "_toc_student.yml", "--path-output", "_build/student")
    print(f"Student book: {ROOT / '_build' / 'student' / '_build' / 'html' / 'index.html'}")


def cmd_lab(args: argparse.Namespace) -> None:
    run([setup(), "-m", "jupyterlab", "labs/"])


def cmd_labs(args: argparse.Namespace) -> None:
    run([setup(), "-m", "lightweight.course.labs"])


def cmd_solutions(args: argparse.Namespace) -> None:
    """Re-execute the solution notebooks in place (their saved outputs are what the book shows and
    what nbval checks), then regenerate labs/ from them."""
    py = setup()
    run([py, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace", *solution_notebooks()],
        env=test_env())
    run([py, "-m", "lightweight.course.labs"])


def cmd_pretrain(args: argparse.Namespace) -> None:
    run([setup(), "-m", "lightweight.pretrain"])


def cmd_bench(args: argparse.Namespace) -> None:
    run([setup(), "-m", "lightweight.bench", "--all", "--json", "book/bench/results.json",
         "--markdown", "book/bench/results.md"])


def cmd_bench_table(args: argparse.Namespace) -> None:
    """The book's benchmark table rewritten from the saved results.json (nothing is measured again)."""
    run([setup(), "-m", "lightweight.bench", "--from-json", "book/bench/results.json",
         "--markdown", "book/bench/results.md"])


def llama_cpp_cmake_args(system: str = platform.system(), cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """CMake options for a CPU-only llama.cpp: no multimodal library; Metal off on macOS (chapter 7
    measures the CPU); ggml's AMX kernels off where the CPU has AMX (they stopped the process with an
    illegal instruction on such a Xeon)."""
    opts = ["-DLLAVA_BUILD=OFF"]
    if system == "Darwin":
        opts.append("-DGGML_METAL=OFF")
    if cpuinfo.exists() and "amx_tile" in cpuinfo.read_text(encoding="utf-8", errors="replace"):
        opts += [f'-DCMAKE_C_FLAGS="{NO_AMX}"', f'-DCMAKE_CXX_FLAGS="{NO_AMX}"']
    extra = os.environ.get("CMAKE_ARGS", "")
    return " ".join(opts + ([extra] if extra else []))


def cmd_deploy(args: argparse.Namespace) -> None:
    """Optional: llama-cpp-python for chapter 7, compiled from source for this CPU on every core.
    --no-cache-dir: a wheel built with other flags is never reused."""
    py = setup()
    if os.name == "nt":
        print("llama-cpp-python has no Windows wheel: building it needs Visual Studio Build Tools (C++) and CMake. "
              "Chapter 7 runs without it. / Trên Windows cần Visual Studio Build Tools và CMake; chương 7 vẫn chạy "
              "khi không có llama.cpp.", flush=True)
    env = {"CMAKE_ARGS": llama_cpp_cmake_args(), "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}
    run([py, "-m", "pip", "install", "--no-cache-dir", "-r", "requirements-deploy.txt"], env=env)


def cmd_clean(args: argparse.Namespace) -> None:
    shutil.rmtree(ROOT / "_build", ignore_errors=True)


COMMANDS = {
    "test": (cmd_test, "unit tests, labs-in-sync test and every solution notebook re-run by nbval"),
    "book": (cmd_book, "build the HTML book (warnings are errors)"),
    "lab": (cmd_lab, "open the student notebooks in JupyterLab"),
    "labs": (cmd_labs, "regenerate labs/ from solutions/"),
    "solutions": (cmd_solutions, "re-execute the solution notebooks in place, then regenerate labs/"),
    "pretrain": (cmd_pretrain, "retrain the teachers shipped in lightweight/assets/ (about 40 minutes)"),
    "bench": (cmd_bench, "run every benchmark and rewrite book/bench/results.json and results.md"),
    "bench-table": (cmd_bench_table, "rewrite book/bench/results.md from results.json"),
    "deploy": (cmd_deploy, "optional: compile llama-cpp-python for chapter 7"),
    "test-portable": (cmd_test_portable, "the solution notebooks under a second CPU configuration"),
    "test-browser": (cmd_test_browser, "read every page of the built book in headless Chromium"),
    "book-student": (cmd_book_student, "the student edition of the book (no solutions)"),
    "clean": (cmd_clean, "remove _build/"),
}


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a cp1252 console cannot show every Vietnamese letter
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    parser = argparse.ArgumentParser(prog="course.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(fn=fn)
        if name == "test":
            p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed to pytest (e.g. tests/test_quantize.py -x)")
        if name == "test-portable":
            p.add_argument("notebooks", nargs="*", help="solution notebooks to run (default: all)")
    args = parser.parse_args(argv)
    args.fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
