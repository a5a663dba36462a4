"""Shared fixtures and the order of the tests (the environment is set by the root conftest.py)."""

import pytest

# Files holding a test that runs for more than half a minute on a slow 2-core machine, longest first (the
# grader runs a whole notebook, the student book is built, GGUF files go through llama.cpp, a benchmark runs).
LONG_FIRST = ("test_grade.py", "test_student_book.py", "test_llama_cpp.py", "test_bench.py")


def pytest_collection_modifyitems(items):
    """The long files first: with several workers (python course.py test), they start at once and the
    short tests fill the gaps, instead of one worker finishing a long test alone at the end."""
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))


@pytest.fixture(scope="session")
def minilm():
    from lightweight.minilm import load_minilm

    return load_minilm()
