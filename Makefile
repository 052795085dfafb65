# Two commands are all the set-up there is: `make test` and `make demo` create .venv on first use.
PY := .venv/bin/python
TORCHRUN := .venv/bin/torchrun
SYN := data/synthetic
# One thread per process: 2 processes on 2 cores, no oversubscription.
RUN := OMP_NUM_THREADS=1 $(TORCHRUN) --standalone --nproc_per_node 2 train_t5_stagcn.py
# Config overrides for both demo stages, e.g. make demo DEMO_SET="OPTIMIZER.MAX_EPOCH=1"
DEMO_SET ?=

.PHONY: test test-fast lint demo clean-demo bench bx bx-experiments bx-cv bx-cv-seen bx-cv-blind

.venv/.installed: requirements.txt
	test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -r requirements.txt
	touch $@

test: .venv/.installed
	$(PY) -m pytest -q tests

# The edit-test loop: every test not marked slow (no subprocess training runs, torchrun or Java scoring).
test-fast: .venv/.installed
	$(PY) -m pytest -q -m "not slow" tests

# Lint only (settings in pyproject.toml); no formatter.
lint: .venv/.installed
	$(PY) -m ruff check .

$(SYN)/train.pkl: dataloaders/synthetic.py | .venv/.installed
	$(PY) -m dataloaders.synthetic --out $(SYN)

# Offline demo: pretrain (2 processes) → finetune with the standard motion (branch 1) → scores next to
# an untrained model and caption baselines, then the motion control (the same clips with swapped motions).
# Re-running resumes (finished runs return at once); `make clean-demo` starts over.
demo: .venv/.installed $(SYN)/train.pkl
	$(RUN) --cfg_file results/demo_pretrain/config.yaml $(if $(DEMO_SET),--set $(DEMO_SET))
	$(RUN) --cfg_file results/demo_finetune/config.yaml $(if $(DEMO_SET),--set $(DEMO_SET))
	$(PY) evaluate.py --exp results/demo_finetune --baselines
	$(PY) evaluate.py --exp results/demo_finetune --checkpoint latest --motion-control

clean-demo:
	rm -rf results/demo_pretrain/*/ results/demo_pretrain/*.log results/demo_pretrain/*.json results/demo_pretrain/config_resolved.yaml
	rm -rf results/demo_finetune/*/ results/demo_finetune/*.log results/demo_finetune/*.json results/demo_finetune/config_resolved.yaml

bench: .venv/.installed
	$(PY) bench/run.py

# Real boxing data (../shared/data/bx). Without BX_TEST: train BX_CFG on the random validation split (persons
# seen in training, as RETRIEVAL.EXCLUDE CLIP assumes), score its validation clips next to the baselines and
# the motion control. With BX_TEST=path/to/test.pkl [BX_TRAIN=path/to/train.pkl]: tools/bx_test.py finds
# whether the test persons are seen in BX_TRAIN or new, trains the setting recommended for that situation
# (BX_CFG / BX_EPOCHS given on the command line override it) and scores the test file once, with the
# baselines and the motion control.
BX := ../shared/data/bx
BX_TEST ?=
BX_TRAIN ?= $(BX)/BX_train.pkl
BX_CFG ?= results/bx_finetune
BX_EPOCHS ?=
given = $(filter command line environment,$(origin $(1)))

data/splits/bx_person_train.pkl: dataloaders/splits.py | .venv/.installed
	$(PY) -m dataloaders.splits --data $(BX)/BX_train.pkl --out data/splits --name bx

bx: .venv/.installed data/splits/bx_person_train.pkl
ifeq ($(BX_TEST),)
	OMP_NUM_THREADS=2 $(PY) train_t5_stagcn.py --cfg_file $(BX_CFG)/config.yaml
	$(PY) evaluate.py --exp $(BX_CFG) --baselines
	$(PY) evaluate.py --exp $(BX_CFG) --checkpoint best --motion-control
else
	$(PY) tools/bx_test.py --test $(BX_TEST) --train $(BX_TRAIN) $(if $(call given,BX_CFG),--cfg $(BX_CFG)) \
		$(if $(BX_EPOCHS),--epochs $(BX_EPOCHS))
endif

# Cross-validation grouped by person: BX_FOLDS person-disjoint folds of the BX training file (10 persons → 2
# per fold), BX_CFG trained on each for a fixed number of epochs (BX_EPOCHS when given on the command line,
# else the config's OPTIMIZER.MAX_EPOCH), BX_JOBS at a time, into results/bx_cv/<config>[_BX_TAG]; then one
# table: the model, its motion swaps and every baseline per fold, mean ± std. BX_SET="KEY=VALUE ..." is
# passed to every fold. Re-running skips finished folds.
BX_FOLDS ?= 5
BX_SET ?=
BX_TAG ?=
bx-cv: .venv/.installed
	$(PY) -m dataloaders.splits --data $(BX)/BX_train.pkl --out data/splits --name bx --folds $(BX_FOLDS)
	$(PY) tools/bx_cv.py $(BX_CFG) --folds $(BX_FOLDS) --jobs $(BX_JOBS) \
		$(if $(BX_EPOCHS),--epochs $(BX_EPOCHS)) \
		$(if $(BX_TAG),--tag $(BX_TAG)) $(if $(BX_SET),--set $(BX_SET))

# The same with persons seen in training (the question of a test file whose persons are all in BX_train):
# each person's clips of a technique dealt over BX_FOLDS folds (data/splits/bx_seen_cv*), retrieval never
# finds the clip itself, into results/bx_cv/<config>_seen[_BX_TAG]. Its strongest baseline is the motion-free
# random clip of the same person and technique.
bx-cv-seen: .venv/.installed
	$(PY) -m dataloaders.splits --data $(BX)/BX_train.pkl --out data/splits --name bx_seen --folds $(BX_FOLDS) \
		--fold-by clip
	$(PY) tools/bx_cv.py $(BX_CFG) --folds $(BX_FOLDS) --jobs $(BX_JOBS) --name bx_seen --exclude CLIP \
		$(if $(BX_EPOCHS),--epochs $(BX_EPOCHS)) \
		--tag seen$(if $(BX_TAG),_$(BX_TAG)) $(if $(BX_SET),--set $(BX_SET))

# The same cross-validation with the motion taken out (tools/blind_data.py: every clip a still pose of its
# technique's standard): what BX_CFG scores from the language prior and the technique alone, into
# results/bx_cv/<config>_blind[_BX_TAG]. Only the model's rows of its table mean anything.
bx-cv-blind: .venv/.installed
	$(PY) -m dataloaders.splits --data $(BX)/BX_train.pkl --out data/splits --name bx --folds $(BX_FOLDS)
	$(PY) tools/blind_data.py data/splits/bx_cv*_train.pkl data/splits/bx_cv*_val.pkl \
		data/splits_blind --standard $(BX)/BX_standard.pkl
	$(PY) tools/bx_cv.py $(BX_CFG) --folds $(BX_FOLDS) --jobs $(BX_JOBS) --splits data/splits_blind \
		$(if $(BX_EPOCHS),--epochs $(BX_EPOCHS)) \
		--tag blind$(if $(BX_TAG),_$(BX_TAG)) $(if $(BX_SET),--set $(BX_SET))

# The README's BX table (tools/bx_grid.py says which runs): BX_JOBS single-process runs at a time into
# results/bx_runs/<experiment>/<split>_s<seed>/ (a re-run resumes or skips finished runs), then one table of
# mean ± std next to the baselines.
BX_JOBS ?= 2

bx-experiments: .venv/.installed data/splits/bx_person_train.pkl $(SYN)/train.pkl
	OMP_NUM_THREADS=2 $(PY) train_t5_stagcn.py --cfg_file results/bx_pretrain_synthetic/config.yaml
	$(PY) tools/bx_grid.py --jobs $(BX_JOBS)
