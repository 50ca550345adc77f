# The README's two commands. Each needs only python3 (3.11+) on the machine.
PYTHON ?= python3

.PHONY: run test lint manage

run:
	$(PYTHON) scripts/studio.py run

test:
	$(PYTHON) scripts/studio.py test $(ARGS)

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
