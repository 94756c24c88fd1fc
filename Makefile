# lungscreen: every target that needs the environment depends on `install`.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LS := $(BIN)/lungscreen

# demo / pipeline settings (override on the command line: make pipeline FULL=1)
DEMO_DATA ?= sample_data/demo
DEMO_OUT ?= outputs/demo
TRAIN_DATA ?= sample_data/train
EVAL_DATA ?= sample_data/eval
# EVAL_OUT: e.g. `make evaluate EVAL_DATA=sample_data/val EVAL_OUT=outputs/val` to choose settings on validation
EVAL_OUT ?= outputs/eval
VAL_DATA ?= sample_data/validation
VAL_OUT ?= outputs/validation
RUN_DIR ?= runs/train
# real chest CT with synthetic nodules inserted (../shared/data): one set chooses settings, one is reported
# real public files (README, Optional real data): point SHARED_DATA at your own copy
SHARED_DATA ?= ../shared/data
REAL_CT ?= $(SHARED_DATA)/ct/totalseg_chest_ct_crop_1p5mm.nii.gz
VAL_REAL_SEEDS ?= 201 202 203 204 205 206
EVAL_REAL_SEEDS ?= 101 102 103 104 105 106
REAL_SEEDS ?= $(EVAL_REAL_SEEDS)
REAL_DATA ?= sample_data/eval_real
REAL_OUT ?= outputs/eval_real
# real LIDC-IDRI nodules (../shared/data/lidc_vois): the bank, and the validation split inserted into whole scans
LIDC_VOIS ?= $(SHARED_DATA)/lidc_vois
REAL_BANK ?= sample_data/lidc_bank.npz
REAL_NODULE_SEEDS ?= 301 302 303 304 305 306 307 308
REAL_NODULE_PHANTOMS ?= 0000 0001 0002 0003
REAL_NODULE_N ?= 4
REAL_NODULE_DATA ?= $(VAL_DATA)_real_nodules
REAL_NODULE_OUT ?= $(VAL_OUT)_real_nodules
# the reported real-nodule figure: validation-split nodules of patients in none of the scans above
REAL_NODULE_TEST_SEEDS ?= 401 402 403 404 405 406 407 408
REAL_NODULE_TEST_DATA ?= sample_data/test_real_nodules
REAL_NODULE_TEST_OUT ?= outputs/test_real_nodules
# follow-up pairs with known truth (issue 22): phantom pairs and pairs made from REAL_CT (FOLLOWUP_DATA)_real
FOLLOWUP_DATA ?= sample_data/followup
FOLLOWUP_OUT ?= outputs/followup
FULL ?= 0
ifeq ($(FULL),1)
  TRAIN_N ?= 120
  EVAL_N ?= 20
  EVAL_SIZE ?= full
  TRAIN_SIZE ?= full
  PROFILE ?= gpu
else
  TRAIN_N ?= 12
  EVAL_N ?= 4
  EVAL_SIZE ?= small
  TRAIN_SIZE ?= small
  PROFILE ?= cpu
endif
TRAIN_SEED ?= 1000
WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
EVAL_SEED ?= 9000
IN ?= $(DEMO_DATA)/images
OUT ?= $(DEMO_OUT)

.PHONY: install demo test test-slow lint format sample-data train screen evaluate validate validate-real real-nodule-data validate-real-nodules evaluate-real-nodules evaluate-real followup-data validate-followup bench pipeline clean help

help:
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

install: $(STAMP) ## create .venv and install lungscreen (CPU torch pinned by constraints-cpu.txt)

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints-cpu.txt -e ".[dev]"
	touch $(STAMP)

demo: install ## generate 3 sample scans and screen them end to end; prints the report path
	$(LS) sample-data $(DEMO_DATA) --n 3 --seed 7 --size small --preview
	$(LS) screen $(DEMO_DATA)/images $(DEMO_OUT) --device cpu

test: install ## lint with ruff, then the fast test suite
	$(BIN)/ruff check pipelines tests
	$(BIN)/ruff format --check pipelines tests
	$(BIN)/python -m pytest -q

test-slow: install ## the slow tests (realism, training to quality, long runs)
	$(BIN)/python -m pytest -q -m slow

lint: install ## ruff + mypy on pipelines/
	$(BIN)/ruff check pipelines tests
	$(BIN)/ruff format --check pipelines tests
	$(BIN)/mypy pipelines

format: install
	$(BIN)/ruff check --fix pipelines tests
	$(BIN)/ruff format pipelines tests

sample-data: install ## training and evaluation sets (TRAIN_N / EVAL_N scans)
	$(LS) sample-data $(TRAIN_DATA) --n $(TRAIN_N) --seed $(TRAIN_SEED) --size $(TRAIN_SIZE) --workers $(WORKERS)
	$(LS) sample-data $(EVAL_DATA) --n $(EVAL_N) --seed $(EVAL_SEED) --size $(EVAL_SIZE) --workers $(WORKERS)

train: install ## train the nodule UNet and the false-positive classifier on TRAIN_DATA
	test -f $(TRAIN_DATA)/datalist.json || $(LS) sample-data $(TRAIN_DATA) --n $(TRAIN_N) --seed $(TRAIN_SEED) --size $(TRAIN_SIZE) --workers $(WORKERS)
	$(LS) train --dataset $(TRAIN_DATA) --out $(RUN_DIR) --profile $(PROFILE) --seed 0

screen: install ## screen IN=folder OUT=folder
	$(LS) screen $(IN) $(OUT)

evaluate: install ## screen EVAL_DATA and compute LUNA16 FROC/CPM and segmentation metrics
	test -f $(EVAL_DATA)/datalist.json || $(LS) sample-data $(EVAL_DATA) --n $(EVAL_N) --seed $(EVAL_SEED) --size $(EVAL_SIZE) --workers $(WORKERS)
	$(LS) screen $(EVAL_DATA)/images $(EVAL_OUT) --device auto --no-report $(SCREEN_ARGS)
	$(LS) evaluate --annotations $(EVAL_DATA)/annotations.csv --predictions $(EVAL_OUT)/submission.csv \
	  --seriesuids $(EVAL_DATA)/seriesuids.csv --cases $(EVAL_DATA)/cases.csv \
	  --pred-dir $(EVAL_OUT)/cases --ref-dir $(EVAL_DATA) --out $(EVAL_OUT)/metrics

validate: install ## evaluate on the validation set that chooses settings (never on EVAL_DATA): 10 full phantoms of seed 7000 + the held-out splits of sample_data/train_full
	test -f sample_data/val/datalist.json || $(LS) sample-data sample_data/val --n 10 --seed 7000 --size full --workers $(WORKERS)
	test -f sample_data/train_full/datalist.json || $(LS) sample-data sample_data/train_full --n 16 --seed 1000 --size full --workers $(WORKERS)
	$(LS) held-out-set $(VAL_DATA) sample_data/val:all sample_data/train_full:validation,test
	$(MAKE) evaluate EVAL_DATA=$(VAL_DATA) EVAL_OUT=$(VAL_OUT)
	@if test -f $(REAL_CT); then $(MAKE) validate-real; else echo "validate: $(REAL_CT) not found, real-CT validation skipped"; fi

validate-real: install ## validation on real CT: nodules inserted into the chest CT of ../shared/data with seeds 201-206 (guards against fitting the phantom generator)
	$(MAKE) evaluate-real REAL_SEEDS="$(VAL_REAL_SEEDS)" REAL_DATA=$(VAL_DATA)_real REAL_OUT=$(VAL_OUT)_real

real-nodule-data: install ## the real-nodule validation scans: the bank's validation split inserted into the real chest CT (REAL_NODULE_SEEDS) and 4 validation phantoms
	test -f $(REAL_BANK) || $(LS) nodule-bank $(LIDC_VOIS) $(REAL_BANK)
	@test -f $(REAL_CT) || { echo "real-nodule-data: $(REAL_CT) not found (set SHARED_DATA or REAL_CT: README, Optional real data)"; exit 1; }
	for s in $(REAL_NODULE_SEEDS); do test -f sample_data/real_nodules/ct_s$$s/datalist.json || $(LS) insert-nodules $(REAL_CT) sample_data/real_nodules/ct_s$$s --bank $(REAL_BANK) --split validation --n $(REAL_NODULE_N) --seed $$s || exit 1; done
	test -f sample_data/val/datalist.json || $(LS) sample-data sample_data/val --n 10 --seed 7000 --size full --workers $(WORKERS)
	for c in $(REAL_NODULE_PHANTOMS); do test -f sample_data/real_nodules/ph_$$c/datalist.json || $(LS) insert-nodules sample_data/val/images/phantom_s7000_$$c.nii.gz sample_data/real_nodules/ph_$$c --bank $(REAL_BANK) --split validation --n $(REAL_NODULE_N) --seed 1$$c --lungs sample_data/val/lungs/phantom_s7000_$$c.nii.gz --labels sample_data/val/labels/phantom_s7000_$$c.nii.gz || exit 1; done

validate-real-nodules: real-nodule-data ## real LIDC-IDRI nodules of the bank's validation split (patients never trained on) in the real chest CT and 4 validation phantoms; FROC/CPM, and sensitivity and false nodules per scan at the reporting threshold by size, texture and host (the real CT apart from the phantoms)
	$(LS) held-out-set $(REAL_NODULE_DATA) $(foreach s,$(REAL_NODULE_SEEDS),sample_data/real_nodules/ct_s$(s):training) $(foreach c,$(REAL_NODULE_PHANTOMS),sample_data/real_nodules/ph_$(c):training)
	$(MAKE) evaluate EVAL_DATA=$(REAL_NODULE_DATA) EVAL_OUT=$(REAL_NODULE_OUT)
	$(BIN)/python -m pipelines.realnodules.validation $(REAL_NODULE_DATA) $(REAL_NODULE_OUT)

evaluate-real-nodules: real-nodule-data ## the reported real-nodule figure: validation-split nodules of patients in none of validate-real-nodules' scans (--exclude-patients), in the real chest CT (REAL_NODULE_TEST_SEEDS)
	for s in $(REAL_NODULE_TEST_SEEDS); do test -f sample_data/real_nodules/test_ct_s$$s/datalist.json || $(LS) insert-nodules $(REAL_CT) sample_data/real_nodules/test_ct_s$$s --bank $(REAL_BANK) --split validation --n $(REAL_NODULE_N) --seed $$s --exclude-patients $(foreach s,$(REAL_NODULE_SEEDS),sample_data/real_nodules/ct_s$(s)/real_nodules.csv) $(foreach c,$(REAL_NODULE_PHANTOMS),sample_data/real_nodules/ph_$(c)/real_nodules.csv) || exit 1; done
	$(LS) held-out-set $(REAL_NODULE_TEST_DATA) $(foreach s,$(REAL_NODULE_TEST_SEEDS),sample_data/real_nodules/test_ct_s$(s):training)
	$(MAKE) evaluate EVAL_DATA=$(REAL_NODULE_TEST_DATA) EVAL_OUT=$(REAL_NODULE_TEST_OUT)
	$(BIN)/python -m pipelines.realnodules.validation $(REAL_NODULE_TEST_DATA) $(REAL_NODULE_TEST_OUT)

evaluate-real: install ## the reported real-CT figure: nodules inserted into the chest CT of ../shared/data with seeds 101-106 (lung Dice there is against our own lung mask)
	@test -f $(REAL_CT) || { echo "evaluate-real: $(REAL_CT) not found (set SHARED_DATA or REAL_CT: README, Optional real data)"; exit 1; }
	for s in $(REAL_SEEDS); do test -f sample_data/inserted/s$$s/datalist.json || $(LS) insert-nodules $(REAL_CT) sample_data/inserted/s$$s --n 3 --seed $$s || exit 1; done
	$(LS) held-out-set $(REAL_DATA) $(foreach s,$(REAL_SEEDS),sample_data/inserted/s$(s):training)
	$(MAKE) evaluate EVAL_DATA=$(REAL_DATA) EVAL_OUT=$(REAL_OUT)

# succeeds when the pair set in $1 was written by this version of the pair generator (else it is made again)
PAIRS_CURRENT = $(BIN)/python -m pipelines.followup.pairs --is-current

followup-data: install ## follow-up pairs with known truth: 20 small phantom pairs (seed 7700) and 6 pairs made from REAL_CT
	$(PAIRS_CURRENT) $(FOLLOWUP_DATA) || $(LS) followup-pairs $(FOLLOWUP_DATA) --n 20 --seed 7700 --size small
	@if test -f $(REAL_CT); then $(PAIRS_CURRENT) $(FOLLOWUP_DATA)_real || $(LS) followup-pairs $(FOLLOWUP_DATA)_real --n 6 --seed 7700 --host $(REAL_CT); else echo "followup-data: $(REAL_CT) not found, real-CT pairs skipped"; fi

validate-followup: followup-data ## screen the follow-up pairs with --pairs and measure matching, volume change, new and growing nodules against their truth
	$(LS) screen --pairs $(FOLLOWUP_DATA)/pairs.csv $(FOLLOWUP_OUT) --device auto $(SCREEN_ARGS)
	$(BIN)/python -m pipelines.followup.evaluate $(FOLLOWUP_DATA) $(FOLLOWUP_OUT) --json $(FOLLOWUP_OUT)/followup_eval.json --md $(FOLLOWUP_OUT)/followup_eval.md --title "Phantom pairs (small, seed 7700)"
	@if test -f $(FOLLOWUP_DATA)_real/truth.csv; then \
	  $(LS) screen --pairs $(FOLLOWUP_DATA)_real/pairs.csv $(FOLLOWUP_OUT)_real --device auto $(SCREEN_ARGS) && \
	  $(BIN)/python -m pipelines.followup.evaluate $(FOLLOWUP_DATA)_real $(FOLLOWUP_OUT)_real --json $(FOLLOWUP_OUT)_real/followup_eval.json --md $(FOLLOWUP_OUT)_real/followup_eval.md --title "Real-CT pairs (seed 7700)"; fi

bench: install ## stage timings and the plain-MONAI baseline, same run; writes benchmarks/results/
	$(LS) bench --out benchmarks/results

pipeline: install ## sample data -> training -> screening -> evaluation (FULL=1 for full settings)
	$(MAKE) sample-data train
	$(MAKE) evaluate SCREEN_ARGS="--weights $(RUN_DIR)/models/model.pt --classifier-weights $(RUN_DIR)/models/classifier.pt --overwrite"

clean: ## remove generated data, outputs and caches (keeps .venv)
	rm -rf sample_data/demo sample_data/train sample_data/eval sample_data/inserted outputs runs .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
