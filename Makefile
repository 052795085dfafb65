# Two commands are all the set-up there is: `make test` and `make demo` create .venv on first use.
PY := .venv/bin/python
TORCHRUN := .venv/bin/torchrun
SYN := data/synthetic
# One thread per process: 2 processes on 2 cores, no oversubscription.
RUN := OMP_NUM_THREADS=1 $(TORCHRUN) --standalone --nproc_per_node 2 train_t5_stagcn.py
# Config overrides for both demo stages, e.g. make demo DEMO_SET="OPTIMIZER.MAX_EPOCH=1"
DEMO_SET ?=

.PHONY: test demo clean-demo bench bx

.venv/.installed: requirements.txt
	test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -r requirements.txt
	touch $@

test: .venv/.installed
	$(PY) -m pytest -q tests

$(SYN)/train.pkl: dataloaders/synthetic.py | .venv/.installed
	$(PY) -m dataloaders.synthetic --out $(SYN)

# Offline demo: pretrain (2 processes) → finetune with the standard motion (branch 1) → scores next to
# an untrained model and caption baselines. Re-running resumes (finished runs return at once);
# `make clean-demo` starts over.
demo: .venv/.installed $(SYN)/train.pkl
	$(RUN) --cfg_file results/demo_pretrain/config.yaml $(if $(DEMO_SET),--set $(DEMO_SET))
	$(RUN) --cfg_file results/demo_finetune/config.yaml $(if $(DEMO_SET),--set $(DEMO_SET))
	$(PY) evaluate.py --exp results/demo_finetune --baselines

clean-demo:
	rm -rf results/demo_pretrain/*/ results/demo_pretrain/*.log results/demo_pretrain/*.json results/demo_pretrain/config_resolved.yaml
	rm -rf results/demo_finetune/*/ results/demo_finetune/*.log results/demo_finetune/*.json results/demo_finetune/config_resolved.yaml

bench: .venv/.installed
	$(PY) bench/run.py

# Real boxing data (../shared/data/bx). Without BX_TEST: train on the person-disjoint split, score its
# validation clips next to the baselines. With BX_TEST=path/to/test.pkl: train on the whole BX training
# file (results/bx_finetune_full) and score on that labelled file.
BX := ../shared/data/bx
BX_TEST ?=
BX_FULL := LOGDIR=results/bx_finetune_full DATA.TRAIN=$(BX)/BX_train.pkl DATA.TEST=$(abspath $(BX_TEST))

data/splits/bx_person_train.pkl: dataloaders/splits.py | .venv/.installed
	$(PY) -m dataloaders.splits --data $(BX)/BX_train.pkl --out data/splits --name bx

bx: .venv/.installed data/splits/bx_person_train.pkl
ifeq ($(BX_TEST),)
	$(RUN) --cfg_file results/bx_finetune/config.yaml
	$(PY) evaluate.py --exp results/bx_finetune --baselines
else
	$(RUN) --cfg_file results/bx_finetune/config.yaml --set $(BX_FULL)
	$(PY) evaluate.py --exp results/bx_finetune --set $(BX_FULL) --baselines
endif
