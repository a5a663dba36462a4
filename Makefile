# Two commands take a fresh clone to a built book and a passing test suite:
#   make book   build the HTML book (warnings are errors) and print where index.html is
#   make test   unit tests, labs-in-sync test, and every solution notebook re-run by nbval
# After `make book`, `make test-browser` reads every page of the built book in headless Chromium.
# Both create .venv and install requirements into it the first time.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: book book-student test test-portable test-browser lab solutions labs pretrain bench bench-table clean deploy

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --no-deps -e .
	touch $(STAMP)

book: $(STAMP)
	rm -rf _build/html
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo "Book: $(CURDIR)/_build/html/index.html"

test: $(STAMP)
	TQDM_DISABLE=1 $(BIN)/python -m pytest

# The solution notebooks once more under another CPU configuration, to show that their checks hold
# on a machine other than the one that saved their outputs (CONTRIBUTING.md): PyTorch's
# non-vectorised kernels, MKL and oneDNN limited to AVX2, one thread per notebook, two notebooks
# at a time. PORTABLE_NOTEBOOKS narrows it (CI runs the quantization chapters, see .ci/run).
PORTABLE := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# Chapter 7 is left out: with non-vectorised kernels its int4 timing cells run past nbval's 900 s limit.
PORTABLE_NOTEBOOKS ?= $(filter-out solutions/07_fast.ipynb,$(sort $(wildcard solutions/*.ipynb)))
test-portable: $(STAMP)
	$(PORTABLE) TQDM_DISABLE=1 $(BIN)/python -m pytest $(PORTABLE_NOTEBOOKS) -n 2 --dist loadfile

# The built book in headless Chromium (Debian's `chromium`): console errors, formulas, images,
# internal links, requests off the machine, phones at 400 px; screenshots in _build/screenshots.
test-browser: $(STAMP)
	BOOK_BROWSER_TEST=1 $(BIN)/python -m pytest tests/test_browser.py

lab: $(STAMP)
	$(BIN)/jupyter lab labs/

# Re-execute the solution notebooks in place (their saved outputs are what the book shows and
# what nbval checks), then regenerate labs/ from them.
solutions: $(STAMP)
	TQDM_DISABLE=1 $(BIN)/jupyter nbconvert --to notebook --execute --inplace solutions/*.ipynb
	$(BIN)/python -m lightweight.course.labs

labs: $(STAMP)
	$(BIN)/python -m lightweight.course.labs

pretrain: $(STAMP)
	$(BIN)/python -m lightweight.pretrain

bench: $(STAMP)
	$(BIN)/python -m lightweight.bench --all --json book/bench/results.json --markdown book/bench/results.md

# The book's benchmark table rewritten from the saved results.json (nothing is measured again).
bench-table: $(STAMP)
	$(BIN)/python -m lightweight.bench --from-json book/bench/results.json --markdown book/bench/results.md

clean:
	rm -rf _build

# The student edition: no solution notebooks, no {solution} blocks (see _config_student.yml).
book-student: $(STAMP)
	rm -rf _build/student
	$(BIN)/jupyter-book build . --config _config_student.yml --toc _toc_student.yml --path-output _build/student --warningiserror --keep-going
	@echo "Student book: $(CURDIR)/_build/student/_build/html/index.html"

# Optional: llama-cpp-python for chapter 7 (compiles llama.cpp from source for this CPU, on every
# core; the multimodal library is not built). Chapter 7's notebook works without it; with it, its
# llama.cpp cells, tests/test_llama_cpp.py and the llama.cpp bench rows run too. On a CPU with AMX
# (recent Xeons) ggml's AMX kernels stopped the process with an illegal instruction, so they are
# left out there. --no-cache-dir: a wheel built with other flags is never reused.
NO_AMX := $(if $(shell grep -qs amx_tile /proc/cpuinfo && echo yes),-DCMAKE_C_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" -DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16")
deploy: $(STAMP)
	CMAKE_ARGS='-DLLAVA_BUILD=OFF $(NO_AMX) $(CMAKE_ARGS)' CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(BIN)/pip install --no-cache-dir -r requirements-deploy.txt
