# Every target calls course.py, the course's one implementation of its commands; on Windows, macOS
# and Linux alike a reader types `python course.py test` and `python course.py book` (README).
PYTHON ?= python3

.PHONY: test book lab labs solutions pretrain bench bench-table deploy test-portable test-browser book-student clean

test:
	$(PYTHON) course.py test

book:
	$(PYTHON) course.py book

lab:
	$(PYTHON) course.py lab

labs:
	$(PYTHON) course.py labs

solutions:
	$(PYTHON) course.py solutions

pretrain:
	$(PYTHON) course.py pretrain

bench:
	$(PYTHON) course.py bench

bench-table:
	$(PYTHON) course.py bench-table

deploy:
	$(PYTHON) course.py deploy

# PORTABLE_NOTEBOOKS narrows the run to the notebooks named (default: every solution notebook).
test-portable:
	$(PYTHON) course.py test-portable $(PORTABLE_NOTEBOOKS)

test-browser:
	$(PYTHON) course.py test-browser

book-student:
	$(PYTHON) course.py book-student

clean:
	$(PYTHON) course.py clean
