# The two commands: `make demo` and `make test`. Each sets itself up first (scripts/setup.sh).
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:/usr/sbin:$(PATH)

.PHONY: setup test soak demo clean

setup:
	@bash scripts/setup.sh

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The HIL fault suite's long versions (50 power cuts, county down 2 min, 20 Wi-Fi flap cycles).
soak: setup
	FQ_SOAK=1 $(VENV)/bin/python -m pytest hil_tests/test_faults.py $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/fengqiao demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build var .pytest_cache .hypothesis
