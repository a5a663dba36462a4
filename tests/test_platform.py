"""Every reader's platform: the one way in (course.py), files that name their encoding, the hosted CI
definition, and nbval's sanitizer on Windows, macOS and Colab paths."""

import ast
import configparser
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import course  # noqa: E402  (the top-level script, standard library only)

TEXT_CALLS = ("open", "read_text", "write_text")


def text_opens_without_encoding(source: str) -> list[int]:
    """Lines of ``open``/``read_text``/``write_text`` calls in text mode without ``encoding=``, and of
    ``subprocess`` calls with ``text=True`` but no ``encoding=`` (both use the locale's code page)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        kws = {k.arg: k.value for k in node.keywords}
        if "encoding" in kws:
            continue
        if name in TEXT_CALLS:
            args = node.args[1:2] if name == "open" and not isinstance(node.func, ast.Attribute) else node.args[:1]
            mode = kws.get("mode", args[0] if args else None)
            if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and "b" in mode.value:
                continue
            if name == "open" and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id not in ("io", "codecs") and not isinstance(mode, ast.Constant):
                continue  # tab.open(url, ...), zipfile.open(name): not a text file
            lines.append(node.lineno)
        elif name in ("run", "Popen", "check_output", "call") and isinstance(kws.get("text"), ast.Constant) \
                and kws["text"].value is True:
            lines.append(node.lineno)
    return lines


def course_sources() -> dict[str, str]:
    """Every Python source of the course (package, tests, course.py) and the code of every solution notebook."""
    files = [*ROOT.joinpath("lightweight").rglob("*.py"), *ROOT.joinpath("tests").glob("*.py"), ROOT / "course.py",
             *ROOT.joinpath("book", "_ext").glob("*.py")]
    sources = {str(f.relative_to(ROOT)): f.read_text(encoding="utf-8") for f in files}
    for nb_path in sorted(ROOT.joinpath("solutions").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
        code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
        sources[str(nb_path.relative_to(ROOT))] = "\n".join(
            "\n".join(line for line in cell.splitlines() if not line.lstrip().startswith(("%", "!"))) for cell in code)
    return sources


def test_every_text_file_the_course_opens_names_its_encoding():
    bad = {name: lines for name, src in course_sources().items() if (lines := text_opens_without_encoding(src))}
    assert not bad, f"text files opened without encoding= (Windows would use its code page): {bad}"


def test_the_encoding_finder_finds_what_it_should():
    src = ("open('a')\nopen('a', 'rb')\nopen('a', encoding='utf-8')\np.read_text()\np.write_text('x', encoding='utf-8')\n"
           "subprocess.run(c, text=True)\nsubprocess.run(c, text=True, encoding='utf-8')\ntab.open(url, width=3)\n"
           "p.open('w')\n(d / 'f').open()\n")
    assert text_opens_without_encoding(src) == [1, 4, 6, 9, 10]


@pytest.mark.skipif(not sys.flags.warn_default_encoding, reason="only under python -X warn_default_encoding")
def test_an_open_without_encoding_fails_the_tests(tmp_path):
    (tmp_path / "f.txt").write_text("x", encoding="utf-8")
    with pytest.raises(EncodingWarning):
        text_open = getattr(tmp_path / "f.txt", "open")  # hidden from the source check above, on purpose
        text_open().close()


def test_the_package_commands_survive_a_console_that_cannot_show_vietnamese(tmp_path):
    js = tmp_path / "rows.json"
    js.write_text(json.dumps({"machine": "máy thử", "rows": []}), encoding="utf-8")
    env = {**course.os.environ, "PYTHONIOENCODING": "cp1252", "PYTHONUTF8": "0"}
    done = subprocess.run([sys.executable, "-m", "lightweight.bench", "--from-json", str(js)], capture_output=True,
                          env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr.decode("cp1252", errors="replace")
    shown = "Đo trên máy: máy thử".encode("cp1252", errors="replace").decode("cp1252")
    assert shown == "?o trên máy: máy th?" and shown in done.stdout.decode("cp1252"), "what cp1252 lacks is replaced"


@pytest.mark.parametrize("version, system, machine, release, ok", [
    ((3, 11), "Linux", "x86_64", "", True), ((3, 14), "Windows", "AMD64", "", True),
    ((3, 13), "Darwin", "arm64", "14.5", True), ((3, 14), "Darwin", "arm64", "15.1", False),
    ((3, 12), "Darwin", "x86_64", "14.5", False), ((3, 12), "Darwin", "arm64", "13.6", False),
    ((3, 10), "Linux", "x86_64", "", False), ((3, 15), "Windows", "AMD64", "", False)])
def test_supported_platforms_are_said_plainly(version, system, machine, release, ok):
    problem = course.platform_problem(version, system, machine, release)
    assert (problem == "") == ok, problem
    if not ok:
        assert "Python" in problem or "Apple Silicon" in problem


def test_llama_cpp_is_built_for_the_cpu(tmp_path):
    assert "-DGGML_METAL=OFF" in course.llama_cpp_cmake_args("Darwin", tmp_path / "absent")
    assert "METAL" not in course.llama_cpp_cmake_args("Linux", tmp_path / "absent")
    amx = tmp_path / "cpuinfo"
    amx.write_text("flags\t: avx512f amx_tile amx_int8\n", encoding="utf-8")
    assert "-mno-amx-tile" in course.llama_cpp_cmake_args("Linux", amx)


def test_unit_tests_use_the_cores_and_notebooks_run_alone(monkeypatch):
    assert course.xdist_workers(1) == []
    assert course.xdist_workers(2) == ["-n", "2"] and course.xdist_workers(64) == ["-n", "4"]
    calls = []
    monkeypatch.setattr(course, "setup", lambda: Path("py"))
    monkeypatch.setattr(course, "run", lambda cmd, env=None: calls.append([str(c) for c in cmd]))
    monkeypatch.setattr(course.os, "cpu_count", lambda: 2)
    course.main(["test"])
    first, second = calls
    assert first[5:] == ["tests", "-n", "2"], first
    assert course.solution_notebooks() and second[5:] == course.solution_notebooks(), second  # no -n: one at a time
    calls.clear()
    course.main(["test", "tests/test_quantize.py", "-x"])
    assert calls == [["py", "-X", "warn_default_encoding", "-m", "pytest", "tests/test_quantize.py", "-x"]]


def test_the_venv_python_is_where_each_os_puts_it():
    expected = "Scripts/python.exe" if course.os.name == "nt" else "bin/python"
    assert course.venv_python().as_posix().endswith(".venv/" + expected)


def test_makefile_targets_only_call_course_py():
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipes = [line.strip() for line in text.splitlines() if line.startswith("\t")]
    assert recipes and all("course.py" in r for r in recipes), recipes
    targets = set(re.findall(r"^([a-z-]+):", text, flags=re.M))
    assert targets <= set(course.COMMANDS), targets - set(course.COMMANDS)


def workflow() -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / "course.yml").read_text(encoding="utf-8"))


def test_hosted_ci_runs_every_platform_through_course_py():
    wf = workflow()
    assert {"push", "pull_request"} <= set(wf[True])  # PyYAML reads the key `on` as True
    test = wf["jobs"]["test"]
    oses = test["strategy"]["matrix"]["os"]
    assert any(o.startswith("windows") for o in oses) and any(o.startswith("ubuntu") for o in oses)
    assert "macos-14" in oses or "macos-latest" in oses  # Apple Silicon runners
    runs = [s["run"] for job in wf["jobs"].values() for s in job["steps"] if "run" in s]
    assert runs
    for line in runs:
        words = line.split()
        assert words[:2] == ["python", "course.py"] and words[2] in course.COMMANDS, line
        for path in words[3:]:
            assert (ROOT / path).exists(), f"{line}: {path} does not exist"


def test_hosted_ci_publishes_the_book_from_main_only():
    jobs = workflow()["jobs"]
    assert "refs/heads/main" in jobs["book"]["if"] and "push" in jobs["book"]["if"]
    assert any(s.get("uses", "").startswith("actions/upload-pages-artifact") and s["with"]["path"] == "_build/html"
               for s in jobs["book"]["steps"])
    assert jobs["pages"]["needs"] == "book" and jobs["pages"]["permissions"] == {"pages": "write", "id-token": "write"}
    assert any(s.get("uses", "").startswith("actions/deploy-pages") for s in jobs["pages"]["steps"])


def sanitizers() -> list[tuple[re.Pattern, str]]:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "tests" / "sanitize.cfg", encoding="utf-8")
    return [(re.compile(cfg[s]["regex"]), cfg[s]["replace"]) for s in cfg.sections()]


@pytest.mark.parametrize("text, expected", [
    ("/home/an/.venv/lib/python3.12/site-packages/torch/x.py:3", "SITE-PACKAGES/torch/x.py:3"),
    ("/usr/local/lib/python3.12/dist-packages/torch/x.py:3", "SITE-PACKAGES/torch/x.py:3"),
    (r"C:\Users\An\khoa\.venv\Lib\site-packages\torch\x.py:3", r"SITE-PACKAGES/torch\x.py:3"),
    ("/Users/an/khoa/.venv/lib/python3.12/site-packages/torch/x.py:3", "SITE-PACKAGES/torch/x.py:3"),
    ("/tmp/ipykernel_1234/567.py:2: Warning", "IPYKERNEL-CELL:2: Warning"),
    ("/var/folders/x1/abc/T/ipykernel_1234/567.py:2: Warning", "IPYKERNEL-CELL:2: Warning"),
    (r"C:\Users\An\AppData\Local\Temp\ipykernel_1234\567.py:2: Warning", "IPYKERNEL-CELL:2: Warning"),
])
def test_the_sanitizer_hides_each_platforms_paths(text, expected):
    for pattern, replace in sanitizers():
        text = pattern.sub(replace, text)
    assert text == expected


def test_ci_runs_the_readme_commands_strictly_and_chapter_4_portably():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "python course.py test" in readme and "python course.py book" in readme
    assert "PYTHONIOENCODING=cp1252 PYTHONUTF8=0 python3 course.py test\n" in ci
    portable = next(line for line in ci.splitlines() if "course.py test-portable" in line)
    assert "solutions/04_quantization.ipynb" in portable
    for word in portable.split(">")[0].split()[3:]:
        assert (ROOT / word).exists(), word
    assert "python3 course.py book" in ci and "python3 course.py test-browser" in ci


def test_colab_requirements_leave_colabs_own_stack_alone():
    pins = lambda name: dict(line.split("==") for line in (ROOT / name).read_text(encoding="utf-8").splitlines()  # noqa: E731
                             if "==" in line and not line.startswith("#"))
    colab_lines = [line.split("#")[0].strip() for line in
                   (ROOT / "requirements-colab.txt").read_text(encoding="utf-8").splitlines()]
    names = {re.split(r"[=<>]", line)[0].lower() for line in colab_lines if line}
    assert not names & {"torch", "torchvision", "numpy", "ipykernel", "jupyterlab", "nbclient", "ipywidgets"}
    main = pins("requirements.txt")
    for name, version in pins("requirements-colab.txt").items():
        assert main.get(name) == version, f"{name}: Colab pins {version}, requirements.txt {main.get(name)}"
