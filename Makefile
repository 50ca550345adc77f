# The README's two commands. Each needs only python3 (3.11+) on the machine.
PYTHON ?= python3

.PHONY: run test test-multihost lint manage world-encoder world-base

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

# The committed world base model's recipe: 6,000 steps from scratch, then 5,000 more from those weights at a
# quarter of the rate (about 2.3 hours on two idle cores): make world-base BASE_OUT=/tmp/base. The second stage's
# train_info.json holds the first's under "earlier".
BASE_OUT ?= runs/world-base
world-base:
	.venv/bin/python -m training.ml.world pretrain --out $(BASE_OUT)/1-scratch --seed 0 --steps 6000
	.venv/bin/python -m training.ml.world pretrain --init $(BASE_OUT)/1-scratch --out $(BASE_OUT)/2-continued \
		--seed 1 --steps 5000 --lr 5e-4

# The committed world encoder's recipe, stage by stage (each continues the one before; about 105 minutes
# on two idle cores, one thread each stage but the last): make world-encoder OUT=/tmp/encoder. Every
# stage's command is in the result's train_info.json, nested, as in the committed encoder's.
OUT ?= runs/world-encoder
COMPOSE := --warmup-steps 30 --lr 2e-4 --batch-size 32 --ranked-pairs 16 --grounding-examples 16 \
	--relation-weight 0.5 --threads 1
world-encoder:
	.venv/bin/python -m training.ml.world encoder --out $(OUT)/1-itm --steps 4000
	.venv/bin/python -m training.ml.world encoder --init $(OUT)/1-itm --out $(OUT)/2-grounding --steps 4000 $(COMPOSE)
	.venv/bin/python -m training.ml.world encoder --init $(OUT)/2-grounding --out $(OUT)/3-attention --steps 2000 \
		$(COMPOSE) --location-weight 1 --position-weight 1 --attention-weight 1
	.venv/bin/python -m training.ml.world encoder --init $(OUT)/3-attention --out $(OUT)/4-relations --steps 2000 \
		$(COMPOSE) --location-weight 1 --position-weight 1 --attention-weight 1 --relation-pair-share 0.5
	.venv/bin/python -m training.ml.world encoder --init $(OUT)/4-relations --out $(OUT)/5-graded --steps 1000 \
		$(COMPOSE) --location-weight 1 --position-weight 1 --attention-weight 1 --relation-pair-share 0.5 \
		--graded-pairs 24 --threads 2
