# The README's commands. Each does its own set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/datasets
NAME ?= mnist
EPOCHS ?= 10
DEVICE ?= auto

.PHONY: main lint test test-slow browser postgres hey venv benchmarks gpu-check compare-architectures docs clean

$(BIN)/activate: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,docs,test]'
	$(BIN)/pip install --quiet -e examples/breast_cancer -e examples/image_folder -e examples/nanogpt_chars
	touch $(BIN)/activate

venv: $(BIN)/activate

# init + train + test of the MNIST classifier on real MNIST.
# A second run resumes the experiment instead of failing on init.
main: venv
	$(BIN)/python -m mnist_classifier --experiment-name $(NAME) info > /dev/null 2>&1 || \
	  $(BIN)/python -m mnist_classifier --experiment-name $(NAME) --data-path $(DATA) init
	$(BIN)/python -m mnist_classifier --experiment-name $(NAME) --data-path $(DATA) train --max-epochs $(EPOCHS) --device $(DEVICE)
	$(BIN)/python -m mnist_classifier --experiment-name $(NAME) --data-path $(DATA) test --epoch $(EPOCHS) --device $(DEVICE)

# ruff's lint rules and formatting, and mypy's type checks, of torchexp (pyproject.toml sets them).
lint: venv
	$(BIN)/ruff check torchexp
	$(BIN)/ruff format --check torchexp
	$(BIN)/mypy

# The page test drives Debian's Chromium: installed here when missing and we are root,
# otherwise the test says why it skips (and fails under TORCHEXP_REQUIRE_BROWSER=1, as in CI).
test: venv lint browser postgres
	$(BIN)/python -m pytest -q

# The tests marked slow (torchrun's --max-restarts recovery, the 12-kill resume): CI runs
# them after the default suite, one at a time (-n 0): a restart's Gloo connections need
# the cores to themselves.
test-slow: venv
	$(BIN)/python -m pytest -q -m slow -n 0

browser:
	@if ! { command -v chromium && command -v chromedriver; } > /dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	  echo "installing chromium and chromium-driver from Debian's packages for the browser test"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver > /dev/null || \
	  echo "could not install chromium: the browser test will be skipped"; \
	fi

# The tests of a search and an MLflow server on PostgreSQL start a throwaway server with
# PostgreSQL 15's initdb and pg_ctl: installed here from Debian's packages when missing.
postgres:
	@if ! [ -x /usr/lib/postgresql/15/bin/initdb ] && [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	  echo "installing postgresql-15 from Debian's packages for the PostgreSQL tests"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 > /dev/null || \
	  echo "could not install postgresql-15: the PostgreSQL tests will fail"; \
	fi

# hey (Debian's package), the compiled HTTP load generator of benchmarks/serve.py.
hey:
	@if ! command -v hey > /dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	  echo "installing hey from Debian's packages for benchmarks/serve.py"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends hey > /dev/null || \
	  echo "could not install hey: benchmarks/serve.py will say so"; \
	fi

benchmarks: venv hey
	$(BIN)/pip install --quiet -e '.[benchmarks]'
	$(BIN)/python benchmarks/startup.py
	$(BIN)/python benchmarks/checkpoint.py --data-path $(DATA)
	$(BIN)/python benchmarks/throughput.py --data-path $(DATA)
	$(BIN)/python benchmarks/time_to_accuracy.py --data-path $(DATA)
	$(BIN)/python benchmarks/default_epoch.py --data-path $(DATA)
	$(BIN)/python benchmarks/compare.py --data-path $(DATA)
	$(BIN)/python benchmarks/serve.py --data-path $(DATA)
	$(BIN)/python benchmarks/serve_schema.py
	$(BIN)/python benchmarks/checkpoint_safety.py --data-path $(DATA)
	$(BIN)/python benchmarks/distributed.py --data-path $(DATA)
	$(BIN)/python benchmarks/sample_seeds.py
	$(BIN)/python benchmarks/page_faults.py
	$(BIN)/python benchmarks/image_folder.py --data-path $(DATA)

# mlp, cnn and cnn_bn on real MNIST (configs/architectures.json): a grid search whose
# trials are experiments/architectures/trial-NNNN, each trained to its last epoch and
# tested, then one row per architecture. A second run reprints it without training again.
compare-architectures: venv
	$(BIN)/python -m mnist_classifier --experiment-name architectures --data-path $(DATA) search \
	  --space configs/architectures.json --sampler grid --pruner none --trials 3 --device $(DEVICE)
	for trial in $$(cd experiments/architectures && ls -d trial-*); do \
	  $(BIN)/python -m mnist_classifier --experiments-path experiments/architectures --experiment-name $$trial \
	    --data-path $(DATA) --quiet test --device $(DEVICE) || exit 1; \
	done
	$(BIN)/python -m mnist_classifier --experiments-path experiments/architectures compare

# Every CUDA path end to end on real MNIST, in one table; says so and exits 0 without CUDA.
gpu-check: venv
	$(BIN)/python benchmarks/gpu_check.py --data-path $(DATA)

# The documentation site (mkdocs.yml, docs/) into build/site. --strict turns every warning
# (a broken link or anchor, a page left out, an API reference that no longer resolves) into a
# failure. NO_MKDOCS_2_WARNING silences Material's banner about MkDocs 2.0.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

clean:
	rm -rf $(VENV) *.egg-info
