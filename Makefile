# The README's two commands. Each needs only python3 (3.11+) on the machine.
PYTHON ?= python3

.PHONY: run test test-multihost lint manage

run:
	$(PYTHON) scripts/studio.py run

# The multi-host tests (web and workers as separate hosts: whole rounds, 83 s on a quiet machine and ten
# minutes at load 7) run on their own, so that the everyday suite stays near a quarter of an hour under
# load; .ci/run runs both.
test:
	$(PYTHON) scripts/studio.py test -m "not multihost" $(ARGS)

test-multihost:
	$(PYTHON) scripts/studio.py test -m multihost tests/multihost $(ARGS)

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
