# Two commands for a fresh machine (see README): `make toy` runs the toy reproduction, `make test` the tests.
# Both create the virtual environment .venv on first use (~2 min: torch and torchvision come from local disk).
PYTHON ?= python3
VENV ?= .venv
SIM := $(VENV)/bin/sim
ASSETS := results/assets
RUNS := results/runs
TOY_RUNS := sim_gmm sid_gmm di_gmm sim_digits sid_digits di_digits sim_digits_cond

.PHONY: toy toy-single-runs test assets venv clean-results
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --no-compile -e '.[dev]'
	$(VENV)/bin/python -m compileall -qq -j 0 $(VENV)/lib || true  # pip's compile step on every core; as pip, files
	# written for other Python versions (torch's py312 test helpers) are skipped
	touch $@

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile -q

# The toy assets are built by the DAG's asset rule (configs/scales/toy.yaml), so both paths share them.
ASSET_FILES := $(addprefix $(ASSETS)/,teacher_gmm.pt teacher_digits.pt teacher_digits_cond.pt classifier.pt)
assets: $(VENV)/.installed
	$(VENV)/bin/snakemake $(ASSET_FILES) --cores 2 --quiet progress

toy: $(VENV)/.installed
	$(VENV)/bin/snakemake all_tables --cores 2 --quiet progress

toy-single-runs: assets
	@for run in $(TOY_RUNS); do \
	  $(SIM) distill --config configs/toy/$$run.yaml --run-dir $(RUNS)/$$run --set train.progress=false || exit $$?; \
	done
	$(SIM) summarize $(addprefix $(RUNS)/,$(TOY_RUNS))

clean-results:
	rm -rf results
