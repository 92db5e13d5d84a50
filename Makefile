# novalign: two commands for a fresh machine.
#   make demo   - the main job: the whole recipe (novalign run recipes/demo.yaml) on a tiny model, CPU, <= 20 min
#   make test   - the test suite
#   make quickstart - a tiny model + SFT on bundled data in ~2 minutes (the starting point of the stage quick starts)
# Both create .venv and install everything first. torch is pinned explicitly so that pip takes the CPU
# wheel on this machine instead of resolving a multi-GB CUDA build; on a GPU box set TORCH='torch'.

VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo quickstart test clean bench system-deps

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/novalign run recipes/demo.yaml
	@echo "report: runs/demo/report.md (summary.json and charts beside it)"

quickstart: install
	$(VENV)/bin/novalign init-model runs/demo-base --hidden-size 128 --num-layers 4 --intermediate-size 384
	$(VENV)/bin/novalign sft --config recipes/tiny_sft.yaml
	@echo "--- before SFT (random-init base) ---"
	$(VENV)/bin/novalign generate runs/demo-base --input novalign/assets/demo_sft_eval.jsonl --output runs/demo-sft/replies_base.jsonl | tail -n 1
	@echo "--- after SFT ---"
	$(VENV)/bin/novalign generate runs/demo-sft/model --input novalign/assets/demo_sft_eval.jsonl --output runs/demo-sft/replies_sft.jsonl

# the annotation app's tests need a real browser and a real PostgreSQL server (Debian packages); installed only
# when missing, so a second run (or a machine that has them) does nothing here
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; fi
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql; fi

test: install system-deps
	$(VENV)/bin/python -m pytest tests

bench: install
	$(VENV)/bin/python bench/packing.py

clean:
	rm -rf $(VENV) runs
