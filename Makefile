# The two commands: `make demo` and `make test`. Each sets itself up first (scripts/setup.sh).
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:/usr/sbin:$(PATH)

.PHONY: setup test demo clean

setup:
	@bash scripts/setup.sh

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/fengqiao demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build var .pytest_cache .hypothesis
