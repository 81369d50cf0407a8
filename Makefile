# Set-up and everyday commands. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/digits.py
WORKDIR ?= runs/digits
PYTEST_WORKERS ?= 2
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: install test demo train sample eval eval-fid ablate bench lint clean tokenizer eval-caption eval-text bench-peer compare bench-sampling

install: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# The test suite (CPU). Runs in parallel over $(PYTEST_WORKERS) processes.
test: install
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile -q

# The main job on the embedded default: trains configs/digits.py, writes runs/digits.
demo: install
	$(PY) main.py --config=configs/digits.py --workdir=runs/digits

# ARGS: more main.py flags, e.g. ARGS=--config.sampling.autoguidance=1.
train: install
	$(PY) main.py --config=$(CONFIG) --workdir=$(WORKDIR) $(ARGS)

sample: install
	$(PY) main.py --config=$(CONFIG) --workdir=$(WORKDIR) --mode=sample $(ARGS)

eval: install
	$(PY) main.py --config=$(CONFIG) --workdir=$(WORKDIR) --mode=eval $(ARGS)

# Sample metrics only (FID, IS, precision/recall of config.eval.num_samples samples).
eval-fid: install
	$(PY) main.py --config=$(CONFIG) --workdir=$(WORKDIR) --mode=eval --config.eval.num_batches=0 $(ARGS)

# The paper's ablations on digits, CPU only (48 min on a busy 2-core machine; resumes after a
# stop): writes docs/ablations.md.
ablate: install
	$(PY) tools/ablate.py --workdir=runs/ablate --output=docs/ablations.md

# Captioning (README "Image captioning"). Train a SentencePiece model on a config's training
# captions, written to its tokenizer.path (the embedded shapes config trains its own at start-up).
tokenizer: CONFIG = configs/coco_captioning.py
tokenizer: install
	$(PY) main.py --config=$(CONFIG) --workdir=$(WORKDIR) --mode=tokenizer

# Score a captioner's latest checkpoint: BLEU-4, CIDEr, ROUGE-L, exact match, steps x td sweep.
eval-caption: CONFIG = configs/shapes_captioning.py
eval-caption: WORKDIR = runs/shapes_caption
eval-caption: install
	$(PY) main.py --config=$(CONFIG) --workdir=$(WORKDIR) --mode=eval

# Score a text model's latest checkpoint: generative perplexity, n-gram distances, distinct-4,
# rep-4 beside held-out text and a unigram sampler; Bit Diffusion's steps x td sweep.
eval-text: CONFIG = configs/text.py
eval-text: WORKDIR = runs/text
eval-text: install
	$(PY) main.py --config=$(CONFIG) --workdir=$(WORKDIR) --mode=eval

# Bit Diffusion, GGM and the autoregressive baseline trained for the same wall-clock time on this
# machine and scored in one table (tools/compare.py): runs/compare_$(TASK)/compare.md.
TASK ?= text
MINUTES ?= 30
compare: install
	$(PY) tools/compare.py --task=$(TASK) --minutes=$(MINUTES) $(ARGS)

bench: install
	@$(PY) benchmarks/bench.py

# Sampling time per sample against network calls: GGM at 64..512 calls, Bit Diffusion's DDIM at
# 10..250 steps, the text and digits configs' networks (benchmarks/sampling_cost.py; ARGS=...).
bench-sampling: install
	@$(PY) benchmarks/sampling_cost.py $(ARGS)

# The PyTorch port (PyPI `bit-diffusion`, lucidrains) beside ours, and our own U-Net transcribed
# to PyTorch (eager and torch.compile, checked first to be the same network): bench_peer.py.
# ARGS=--check-same-network runs only that check.
# Its own venv: CPU torch 2.13.0 (the local wheel) and the port without its torchvision
# dependency (PyPI's torchvision does not import beside CPU torch; the port's model needs none).
PEER_VENV := .venv-peer
PEER_STAMP := $(PEER_VENV)/.installed

$(PEER_STAMP):
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet torch==2.13.0 einops ema-pytorch accelerate \
	  tqdm pillow
	$(PEER_VENV)/bin/python -m pip install --quiet --no-deps bit-diffusion==0.1.4
	touch $(PEER_STAMP)

bench-peer: install $(PEER_STAMP)
	@$(PY) benchmarks/bench_peer.py --peer-python=$(PEER_VENV)/bin/python $(ARGS)

lint: install
	$(VENV)/bin/ruff check bit_diffusion configs tests benchmarks tools main.py

clean:
	rm -rf $(VENV) $(PEER_VENV) .pytest_cache
