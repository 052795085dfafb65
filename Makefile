# Two commands are all the set-up there is: `make test` and `make demo` create .venv on first use.
PY := .venv/bin/python
TORCHRUN := .venv/bin/torchrun
SYN := data/synthetic

.PHONY: test demo bench bx clean-demo

.venv/.installed: requirements.txt
	test -d .venv || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -r requirements.txt
	touch $@

test: .venv/.installed
	$(PY) -m pytest -q tests

$(SYN)/train.pkl: .venv/.installed
	$(PY) -m dataloaders.synthetic --out $(SYN)
