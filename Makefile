# anomaly-vlm — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Test processes (pytest-xdist); each runs torch on one thread, so 2 fills a two-core machine.
TEST_WORKERS ?= 2
# The slow suite holds real ViT-L architectures (GBs each): one worker unless asked for more.
TEST_ALL_WORKERS ?= 1

.DEFAULT_GOAL := help
.PHONY: help install demo test test-all lint format docs bench bench-metrics bench-winclip bench-cache bench-export bench-precision bench-official bench-serve parity-venv \
	parity-winclip parity-aprillab parity-anomalyclip parity-adaclip parity-musc parity-promptad parity-aaclip parity-anomalydino \
	parity-faprompt parity-bayespfl weights official-checkpoints tables cache-info cache-clean clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_%-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}'

# Re-installs only when pyproject.toml changes; a second `make install` is a no-op. On a terminal pip shows
# what it collects and its download progress; where the output goes to a log (CI) it stays quiet.
PIP_PROGRESS = $(shell test -t 2 || echo --quiet)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	@echo "Installing anomaly_vlm and its pinned dependencies into $(VENV): PyTorch with its CUDA libraries is" \
		"several GB, so a first install takes a few minutes; later make targets skip this step."
	$(PY) -m pip install $(PIP_PROGRESS) -e ".[dev,export,docs,serve]"
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with pinned dependencies

# The run folder is $(OUTPUTS)/demo (replaced by each run); its detectors/<category>/ are what
# `python -m anomaly_vlm.serve detector=$(OUTPUTS)/demo/detectors/disc` serves.
demo: $(STAMP)  ## offline demo: tiny CLIP on the synthetic dataset, overlays and detectors in outputs/demo
	WANDB_MODE=offline HF_HUB_OFFLINE=1 $(PY) train.py experiment=demo save_detector=true overwrite=true \
		hydra.run.dir=$(OUTPUTS)/demo

test: $(STAMP)  ## fast test suite (the CI command)
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-all: $(STAMP)  ## every test, including slow real-architecture tests
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -q -n $(TEST_ALL_WORKERS) -m "not gpu and not network and not slurm" $(PYTEST_ARGS)

# ----- cluster path: sweeps through hydra/launcher=slurm on a throw-away local SLURM -------------------
# Root only: installs slurm-wlm and munge with apt-get when missing, starts munged/slurmctld/slurmd on
# 127.0.0.1 with state in a temporary folder, and stops them at the end (tests/slurm/conftest.py).
.PHONY: test-slurm
test-slurm: $(STAMP)  ## SLURM launcher sweeps on a throw-away single-node cluster (root; installs slurm-wlm, munge)
	@$(PY) -c "import hydra_plugins.hydra_submitit_launcher" 2>/dev/null || $(PY) -m pip install --quiet -e ".[dev,slurm]"
	HF_HUB_OFFLINE=1 WANDB_MODE=disabled $(PY) -m pytest -q -rs -m slurm tests/slurm $(PYTEST_ARGS)

docs: $(STAMP)  ## the documentation site into site/ (strict: a broken link, anchor or missing page fails)
	HF_HUB_OFFLINE=1 NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

lint: $(STAMP)  ## ruff
	$(PY) -m ruff check .

format: $(STAMP)  ## ruff format + import sort
	$(PY) -m ruff check --fix --select I .
	$(PY) -m ruff format .

# Parity harnesses and benchmarks: `python -m bench.parity <method>` and `python -m bench.perf <benchmark>`
# (bench/parity/, bench/perf/), run from the repository root. JSON=<file> also writes the report as JSON.
# PARITY_ARGS passes options to a harness (`python -m bench.parity <method> --help` lists them).
JSON ?=
PARITY_ARGS ?=
JSON_ARG = $(if $(JSON),--json "$(JSON)")
PARITY = HF_HUB_OFFLINE=1 $(PY) -m bench.parity
PERF = HF_HUB_OFFLINE=1 $(PY) -m bench.perf

bench: bench-metrics bench-winclip  ## all benchmarks

bench-metrics: $(STAMP)  ## metrics at MVTec scale
	$(PERF) metrics $(JSON_ARG)

# anomalib's WinCLIP (the peer implementation) in a side environment: its [clip] extra with
# open_clip_torch 2.24.0 (anomalib's window path gives identical windows with open_clip >= 2.26.1).
PARITY_VENV ?= .venv-parity
PARITY_PY := $(PARITY_VENV)/bin/python
PARITY_STAMP := $(PARITY_VENV)/.installed

$(PARITY_STAMP):
	@test -x $(PARITY_PY) || $(PYTHON) -m venv $(PARITY_VENV) || python3 -m venv $(PARITY_VENV)
	$(PARITY_PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PARITY_PY) -m pip install --quiet "anomalib[clip]==2.7.0" "open_clip_torch==2.24.0"
	@touch $(PARITY_STAMP)

parity-venv: $(PARITY_STAMP)  ## side env with anomalib[clip] + open_clip 2.24 (for parity/bench)

parity-winclip: $(STAMP) $(PARITY_STAMP)  ## WinCLIP vs anomalib: max |delta| of scores and maps, 0- and 2-shot
	PARITY_PYTHON=$(abspath $(PARITY_PY)) $(PARITY) winclip $(JSON_ARG) $(PARITY_ARGS)

# The official APRIL-GAN / AnomalyCLIP code, imported from a checkout given at run time (never vendored):
# same random weights (a narrow ViT-L-14-336 with 24 blocks, at 518 px) and inputs on both sides.
# Their few extra imports (tabulate, thop) are the `parity` extra: pip install -e ".[parity]".
APRILGAN_DIR ?=
ANOMALYCLIP_DIR ?=

parity-aprillab: $(STAMP)  ## APRIL-GAN vs its official code: make parity-aprillab APRILGAN_DIR=<checkout>
	$(PARITY) aprillab --official "$(APRILGAN_DIR)" $(JSON_ARG) $(PARITY_ARGS)

parity-anomalyclip: $(STAMP)  ## AnomalyCLIP vs its official code: make parity-anomalyclip ANOMALYCLIP_DIR=<checkout>
	$(PARITY) anomalyclip --official "$(ANOMALYCLIP_DIR)" $(JSON_ARG) $(PARITY_ARGS)

# The official AdaCLIP code, imported from a checkout given at run time (never vendored): same random weights
# (a narrow ViT-L-14-336, plain GELU, 24 blocks, at 518 px) and parameters on both sides. PARITY_ARGS passes
# options, e.g. --no-fp16-rounding.
ADACLIP_DIR ?=
parity-adaclip: $(STAMP)  ## AdaCLIP vs its official code: make parity-adaclip ADACLIP_DIR=<checkout>
	$(PARITY) adaclip --official "$(ADACLIP_DIR)" $(JSON_ARG) $(PARITY_ARGS)

# The official AA-CLIP code, imported from a checkout given at run time (never vendored): the same random
# full-size ViT-L-14-336 (its adapters hard-code ViT-L's widths) at 518 px on both sides, loaded through the
# official loader. Heavy on a CPU (about 10 GB of memory). PARITY_ARGS passes options, e.g. --batch 16 or --corrected.
AACLIP_DIR ?=
parity-aaclip: $(STAMP)  ## AA-CLIP vs its official code: make parity-aaclip AACLIP_DIR=<checkout>
	$(PARITY) aaclip --official "$(AACLIP_DIR)" $(JSON_ARG) $(PARITY_ARGS)

# The official FAPrompt code, imported from a checkout given at run time (never vendored): the same random
# ViT-L-14-336-shaped weights (narrow vision tower; text tower and embedding 768 wide, as its prompt learner
# hard-codes) at 518 px on both sides, loaded through the official AnomalyCLIP_lib.load.
FAPROMPT_DIR ?=
parity-faprompt: $(STAMP)  ## FAPrompt vs its official code: make parity-faprompt FAPROMPT_DIR=<checkout>
	$(PARITY) faprompt --official "$(FAPROMPT_DIR)" $(JSON_ARG) $(PARITY_ARGS)

# The official Bayes-PFL code, imported from a checkout given at run time (never vendored): the same random
# ViT-L-14-336-shaped weights at 518 px on both sides, read by the official Load_CLIP, the official sampling
# noise injected. About 11 minutes on the shared CPU; PARITY_ARGS="--width 1024 --text-width 768" is full size.
BAYESPFL_DIR ?=
parity-bayespfl: $(STAMP)  ## Bayes-PFL vs its official code: make parity-bayespfl BAYESPFL_DIR=<checkout>
	$(PARITY) bayespfl --official "$(BAYESPFL_DIR)" $(JSON_ARG) $(PARITY_ARGS)

bench-winclip: $(STAMP) $(PARITY_STAMP)  ## WinCLIP forward time vs anomalib's (same weights and inputs), 0- and 4-shot
	PARITY_PYTHON=$(abspath $(PARITY_PY)) $(PERF) winclip $(JSON_ARG)

# MuSc's official release, imported from a checkout at run time (never vendored): MUSC_DIR=<clone of xrli-U/MuSc>.
MUSC_DIR ?=
parity-musc: $(STAMP)  ## MuSc vs its release (MUSC_DIR=...): max |delta| of per-layer maps, maps, scores
	$(PARITY) musc --official "$(MUSC_DIR)" $(JSON_ARG) $(PARITY_ARGS)

# AnomalyDINO's official code and the DINOv2 reference code (the source of its torch.hub load), both imported
# from checkouts at run time (never vendored): the same random DINOv2 weights on both sides, no network.
# PARITY_ARGS="--image-size 448 --shots 2" runs the published resolution (slow on a CPU).
ANOMALYDINO_DIR ?=
DINOV2_DIR ?=
parity-anomalydino: $(STAMP)  ## AnomalyDINO vs its official code: ANOMALYDINO_DIR=<checkout> DINOV2_DIR=<checkout>
	$(PARITY) anomalydino --official "$(ANOMALYDINO_DIR)" --dinov2 "$(DINOV2_DIR)" $(JSON_ARG) $(PARITY_ARGS)

# The official PromptAD code is imported from PROMPTAD_DIR at run time (git clone https://github.com/FuNz-0/PromptAD).
PROMPTAD_DIR ?=
PARITY_PRECISION ?= fp32
parity-promptad: $(STAMP)  ## PromptAD vs its official code: features, loss, gradients, scores, maps (PROMPTAD_DIR=...)
	$(PARITY) promptad --official "$(PROMPTAD_DIR)" --precision $(PARITY_PRECISION) $(JSON_ARG) $(PARITY_ARGS)

BENCH_CACHE_ARGS ?=
bench-cache: $(STAMP)  ## feature cache: 12-job WinCLIP sweep and APRIL-GAN ViT-L training, with vs without
	$(PERF) cache $(JSON_ARG) $(BENCH_CACHE_ARGS)

# Random-weight detectors (tiny CLIP and ViT-B-16-plus-240; add l14 for ViT-L-14-336): export, parity, times.
BENCH_EXPORT_ARGS ?=
bench-export: $(STAMP)  ## export: onnxruntime, OpenVINO (fp32/bf16/int8), PyTorch bf16 vs PyTorch fp32: time, parity (BENCH_EXPORT_ARGS=...)
	$(PERF) export $(JSON_ARG) $(BENCH_EXPORT_ARGS)

# Every method on its published architecture (random weights, published input size) in fp32 and each low
# backbone.precision in one run: time, maps and AUROC against fp32, trained-parameter drift. About
# 40 min on an idle 2-core CPU with AMX (--images 4 shortens it);
# BENCH_PRECISION_ARGS=--quick checks the harness on the tiny CLIP.
# Ours against the official code on the same random weights, inputs and precision, fp32 and amp-bf16 in one
# run: each method whose checkout is given (APRILGAN_DIR, ANOMALYCLIP_DIR, MUSC_DIR, PROMPTAD_DIR,
# ADACLIP_DIR; the others are skipped), and WinCLIP against anomalib when the parity venv exists; each
# method in its own interpreter. About 26 min for all six on an idle 2-core CPU.
# BENCH_OFFICIAL_ARGS=--quick checks the harness (narrow widths, one round); --precision fp32 for one mode.
BENCH_OFFICIAL_ARGS ?=
OFFICIAL_DIRS = $(if $(APRILGAN_DIR),--official-aprillab "$(APRILGAN_DIR)") \
	$(if $(ANOMALYCLIP_DIR),--official-anomalyclip "$(ANOMALYCLIP_DIR)") \
	$(if $(MUSC_DIR),--official-musc "$(MUSC_DIR)") \
	$(if $(PROMPTAD_DIR),--official-promptad "$(PROMPTAD_DIR)") \
	$(if $(ADACLIP_DIR),--official-adaclip "$(ADACLIP_DIR)") \
	$(if $(wildcard $(PARITY_PY)),--anomalib-python "$(abspath $(PARITY_PY))")
bench-official: $(STAMP)  ## ours vs official code: time, peak memory (APRILGAN_DIR= ANOMALYCLIP_DIR= MUSC_DIR= PROMPTAD_DIR= ADACLIP_DIR=)
	$(PERF) official $(OFFICIAL_DIRS) $(JSON_ARG) $(BENCH_OFFICIAL_ARGS)

BENCH_PRECISION_ARGS ?=
bench-precision: $(STAMP)  ## every method in fp32 vs amp-bf16/bf16 (GPU: also fp16): time, maps, AUROC (BENCH_PRECISION_ARGS=...)
	$(PERF) precision $(JSON_ARG) $(BENCH_PRECISION_ARGS)

# AnomalyDINO's nearest-neighbour search at MVTec scale: faiss-cpu (method.knn=faiss) against torch matrix
# products, same distances checked. Run it on an idle machine; BENCH_KNN_ARGS=--quick only checks that it runs.
BENCH_KNN_ARGS ?=
bench-knn: $(STAMP)  ## AnomalyDINO kNN: faiss-cpu vs torch per-image time at MVTec scale (BENCH_KNN_ARGS=...)
	$(PERF) knn $(JSON_ARG) $(BENCH_KNN_ARGS)

# The inspection service under load (tiny CLIP and ViT-B-16-plus-240, random weights): 1/4/16/64 clients with
# batching on and off, then a 5-minute soak; about 25 minutes on an idle machine. BENCH_SERVE_ARGS=--quick: 1 min.
BENCH_SERVE_ARGS ?=
bench-serve: $(STAMP)  ## inspection service: req/s, p50/p95/p99 vs clients, batching on/off, soak (BENCH_SERVE_ARGS=...)
	$(PERF) serve $(JSON_ARG) $(BENCH_SERVE_ARGS)

weights: $(STAMP)  ## download the weights of every backbone config (needs network)
	$(PY) -m anomaly_vlm.backbones.download

official-checkpoints: $(STAMP)  ## the authors' released weights of the trained methods into weights/official (needs network)
	$(PY) -m anomaly_vlm.tasks.official_checkpoints

# ----- experiments: tables and reproductions -------------------------------------------------------------
OUTPUTS ?= $(or $(ANOMALY_VLM_OUTPUTS),outputs)
RESULTS ?=
OUT ?= reports
SEEDS ?= 0,1,2
ifdef DATA_ROOT
export DATA_ROOT
endif

tables: $(STAMP)  ## tables + plots: make tables RESULTS="<sweep folder>..." OUT=reports (default: latest sweeps)
	$(PY) -m anomaly_vlm.reporting.tables --outputs $(OUTPUTS) --out $(OUT) $(if $(RESULTS),--results $(RESULTS))

# reproduce-<method>-<dataset>: experiment <method>_<dataset>; zero-shot (seed of the experiment file), then
# the paper's few-shot settings over SEEDS reference draws (reference_seed: training, where a method trains,
# keeps the published seed and is shared by the draws), then the table with the published numbers.
# A preflight checks datasets and weights first, so a missing DATA_ROOT or weight stops in seconds.
REPRODUCIBLE := winclip-mvtec winclip-visa aprillab-mvtec aprillab-visa anomalyclip-mvtec anomalyclip-visa \
	adaclip-mvtec adaclip-visa musc-mvtec musc-visa promptad-mvtec promptad-visa aaclip-mvtec aaclip-visa \
	faprompt-mvtec faprompt-visa bayespfl-mvtec bayespfl-visa
FEWSHOT_winclip := 1,2,4
FEWSHOT_aprillab := 1,2,4
FEWSHOT_anomalyclip :=
FEWSHOT_adaclip :=
FEWSHOT_aaclip :=
FEWSHOT_faprompt :=
FEWSHOT_bayespfl :=
FEWSHOT_musc :=
FEWSHOT_promptad := 1,2,4
# AnomalyDINO: the paper's shots over SEEDS reference draws (its batched zero-shot mode is another setting:
# shots=0 method.preprocess=masking_only backbone.image_size=672, see conf/experiment/anomalydino_mvtec.yaml).
REPRODUCIBLE += anomalydino-mvtec anomalydino-visa
FEWSHOT_anomalydino := 1,2,4,8,16
# Methods that learn from the shots have no zero-shot row; nor has AnomalyDINO's few-shot table.
FEWSHOT_ONLY := promptad anomalydino
REPRODUCE_ARGS ?=
# CKPT=official tests the authors' released weights instead of training (make official-checkpoints first): the
# file trained on the other dataset (python -m anomaly_vlm.tasks.official_checkpoints --path <method> <data>).
# CKPT=<file> tests that file. The rows join the same table, labelled "authors' weights" for a release file.
CKPT ?=
RELEASE_PATH = $(PY) -m anomaly_vlm.tasks.official_checkpoints --path $(word 1,$(subst -, ,$*)) $(word 2,$(subst -, ,$*))
CKPT_ARG = $(if $(filter official,$(CKPT)),ckpt_path=$$($(RELEASE_PATH)),$(if $(CKPT),ckpt_path=$(CKPT)))

reproduce-%: $(STAMP)  ## reproduce a published table: reproduce-{winclip,aprillab,anomalyclip,adaclip,musc,promptad,aaclip,anomalydino,faprompt,bayespfl}-{mvtec,visa} (CKPT=official: the authors' weights)
	@case " $(REPRODUCIBLE) " in *" $* "*) ;; *) echo "unknown table '$*'; choose one of: $(REPRODUCIBLE)"; exit 2;; esac
	$(if $(filter official,$(CKPT)),$(RELEASE_PATH) > /dev/null)
	$(PY) -m anomaly_vlm.tasks.preflight experiment=$(subst -,_,$*) $(CKPT_ARG) $(REPRODUCE_ARGS)
	$(if $(filter $(word 1,$(subst -, ,$*)),$(FEWSHOT_ONLY)),,$(PY) train.py -m experiment=$(subst -,_,$*) shots=0 \
		sweep_name=reproduce-$* $(CKPT_ARG) $(REPRODUCE_ARGS))
	$(if $(FEWSHOT_$(word 1,$(subst -, ,$*))),$(PY) train.py -m experiment=$(subst -,_,$*) \
		shots=$(FEWSHOT_$(word 1,$(subst -, ,$*))) reference_seed=$(SEEDS) sweep_name=reproduce-$* $(CKPT_ARG) \
		$(REPRODUCE_ARGS))
	$(PY) -m anomaly_vlm.reporting.tables --results $(OUTPUTS)/train/multiruns/reproduce-$* --out $(OUT)/reproduce-$*

# reproduce-<method>-zeroshot-suite: the method's zero-shot table on every benchmark (AnomalyCLIP, Table 1):
# trained once on the MVTec AD test split and tested on each dataset of experiment <method>_zeroshot_suite (one
# job per dataset, one shared training run), plus MVTec AD itself trained on VisA (experiment <method>_mvtec).
# Both preflights check every dataset of the suite before any job starts.
SUITES := anomalyclip aprillab aaclip faprompt bayespfl

reproduce-%-zeroshot-suite: $(STAMP)  ## zero-shot table on every benchmark: reproduce-{anomalyclip,aprillab,aaclip,faprompt,bayespfl}-zeroshot-suite
	@case " $(SUITES) " in *" $* "*) ;; *) echo "unknown suite '$*'; choose one of: $(SUITES)"; exit 2;; esac
	$(PY) -m anomaly_vlm.tasks.preflight experiment=$*_zeroshot_suite $(REPRODUCE_ARGS)
	$(PY) -m anomaly_vlm.tasks.preflight experiment=$*_mvtec $(REPRODUCE_ARGS)
	$(PY) train.py -m experiment=$*_zeroshot_suite shots=0 sweep_name=reproduce-$*-zeroshot-suite $(REPRODUCE_ARGS)
	$(PY) train.py -m experiment=$*_mvtec shots=0 reference_seed=0 sweep_name=reproduce-$*-zeroshot-suite \
		$(REPRODUCE_ARGS)
	$(PY) -m anomaly_vlm.reporting.tables --results $(OUTPUTS)/train/multiruns/reproduce-$*-zeroshot-suite \
		--out $(OUT)/reproduce-$*-zeroshot-suite

# ----- the paper's analyses ---------------------------------------------------------------------------------
# Each target runs its sweeps into outputs/train/multiruns/analysis-<scale>-<part>/ (resumable: a rerun skips
# finished jobs), then writes tables and figures to $(ANALYSIS_OUT)/<scale>/<analysis>/. SCALE=tiny runs offline
# on a CPU in minutes (tiny random CLIP, synthetic data); the default is the published setting (DATA_ROOT,
# weights). LAUNCHER=joblib|slurm picks the Hydra launcher; ANALYSIS_ARGS adds overrides to every sweep.
SCALE ?= published
ANALYSIS_OUT ?= reports/analysis
LAUNCHER ?=
ANALYSIS_ARGS ?=
ANALYSES := layers shots resolution efficiency prompts crossdomain limitations alignment
ANALYSIS_CMD = $(PY) -m anomaly_vlm.analysis \
	--scale $(SCALE) --out $(ANALYSIS_OUT) --outputs $(OUTPUTS) \
	--args "$(if $(LAUNCHER),hydra/launcher=$(LAUNCHER)) $(ANALYSIS_ARGS)"
.PHONY: analysis $(addprefix analysis-,$(ANALYSES))

analysis-layers: $(STAMP)  ## image/pixel metrics vs tap block, one line per method (SCALE=tiny offline)
	$(ANALYSIS_CMD) layers

analysis-shots: $(STAMP)  ## 0/1/2/4/8 shots over reference draws, spread bands, published points
	$(ANALYSIS_CMD) shots

analysis-resolution: $(STAMP)  ## input sizes -> accuracy and latency per method
	$(ANALYSIS_CMD) resolution

analysis-efficiency: $(STAMP)  ## accuracy vs latency, FLOPs, params, peak memory; Pareto front
	$(ANALYSIS_CMD) efficiency

analysis-prompts: $(STAMP)  ## prompt ablations generated by prompts.ablation, grouped bars per method
	$(ANALYSIS_CMD) prompts

analysis-crossdomain: $(STAMP)  ## trained methods: train on each domain, test on each -> heatmaps
	$(ANALYSIS_CMD) crossdomain

analysis-limitations: $(STAMP)  ## per defect type and size, categories, corruptions, failure gallery (saved maps)
	$(ANALYSIS_CMD) limitations

analysis-alignment: $(STAMP)  ## alignment strategies (none/windows/V-V/linear/prompts) x metrics, gain attribution
	$(ANALYSIS_CMD) alignment

analysis: $(STAMP)  ## every analysis + one self-contained HTML report with the method-selection table
	$(ANALYSIS_CMD) --report all

FEATURE_CACHE ?=
cache-info: $(STAMP)  ## disk use of the feature cache per backbone/method (FEATURE_CACHE=<dir> for another folder)
	$(PY) -m anomaly_vlm.cache info $(if $(FEATURE_CACHE),--dir $(FEATURE_CACHE))

cache-clean: $(STAMP)  ## delete the cached features (under ANOMALY_VLM_CACHE, or FEATURE_CACHE=<dir>)
	$(PY) -m anomaly_vlm.cache clean $(if $(FEATURE_CACHE),--dir $(FEATURE_CACHE))

clean:  ## remove outputs (not the venv)
	rm -rf outputs multirun wandb reports
