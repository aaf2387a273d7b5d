# Two commands for a fresh machine (see README): `make toy` runs the toy reproduction, `make test` the tests.
# Both create the virtual environment .venv on first use (~2 min: torch and torchvision come from local disk).
PYTHON ?= python3
VENV ?= .venv
SIM := $(VENV)/bin/sim
ASSETS := results/assets
RUNS := results/runs
TOY_RUNS := sim_gmm sid_gmm di_gmm sim_digits sid_digits di_digits sim_digits_cond

.PHONY: toy test assets venv clean-results
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -n 2 -q

assets: $(ASSETS)/teacher_gmm.pt $(ASSETS)/teacher_digits.pt $(ASSETS)/teacher_digits_cond.pt $(ASSETS)/digits_cnn.pt
$(ASSETS)/teacher_gmm.pt: | $(VENV)/.installed
	$(SIM) teacher --testbed gmm --out $@ --no-progress
$(ASSETS)/teacher_digits.pt: | $(VENV)/.installed
	$(SIM) teacher --testbed digits --out $@ --no-progress
$(ASSETS)/teacher_digits_cond.pt: | $(VENV)/.installed
	$(SIM) teacher --testbed digits --conditional --out $@ --no-progress
$(ASSETS)/digits_cnn.pt: | $(VENV)/.installed
	$(SIM) classifier --out $@

toy: assets
	@for run in $(TOY_RUNS); do \
	  $(SIM) distill --config configs/toy/$$run.yaml --run-dir $(RUNS)/$$run --set train.progress=false || exit $$?; \
	done
	$(SIM) summarize $(addprefix $(RUNS)/,$(TOY_RUNS))

clean-results:
	rm -rf results
