# The two commands of the README: `make run` and `make test`.  Both create
# .venv/ on first use and reuse it afterwards; each installs only what it needs:
#   make run        the runtime: ROS 2 from PyPI, MediaPipe, ONNX Runtime, scikit-image's
#                   photo for the demo, this package in editable mode
#   make train-env  the runtime and the training extra (torch, onnx, TensorBoard, matplotlib)
#   make test       the runtime, the training extra and the test tools
#   make venv       the same as make test, without running the tests
# All three also build ROS4HRI's hri_msgs (not on PyPI) from msg/hri_msgs into .venv.
VENV    := .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip --quiet
RUNTIME := $(VENV)/.installed-runtime
TRAIN   := $(VENV)/.installed-train
TESTS   := $(VENV)/.installed-test
INTERFACES := $(VENV)/.installed-interfaces

TORCH           := torch==2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu

.PHONY: venv train-env run test

venv: $(TESTS) $(INTERFACES)
train-env: $(TRAIN) $(INTERFACES)

$(RUNTIME): setup.py
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e '.[ros,demo]'
	$(PY) -m pip check
	touch $@

# torch is pinned.  PyPI's Linux x86_64 wheel is the CUDA build, with several
# GB of nvidia-* wheels; without an NVIDIA GPU (no nvidia-smi) the CPU build
# comes from PyTorch's CPU index instead.  Where that index cannot be reached
# (a network with only a PyPI mirror), pip's configured sources decide, and
# the line printed says so.
$(TRAIN): $(RUNTIME)
	@if command -v nvidia-smi >/dev/null; then \
		echo "torch: NVIDIA GPU found, $(TORCH) from PyPI (CUDA build)"; \
		$(PIP) install $(TORCH); \
	elif $(PY) -c 'import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1], method="HEAD"), timeout=10)' \
			$(TORCH_CPU_INDEX)/torch/ 2>/dev/null; then \
		echo "torch: no NVIDIA GPU, $(TORCH) from $(TORCH_CPU_INDEX) (CPU build)"; \
		$(PIP) install --index-url $(TORCH_CPU_INDEX) $(TORCH); \
	else \
		echo "torch: no NVIDIA GPU and $(TORCH_CPU_INDEX) not reachable: $(TORCH) from pip's configured sources"; \
		$(PIP) install $(TORCH); \
	fi
	$(PIP) install -e '.[ros,demo,train]'
	$(PY) -m pip check
	touch $@

$(TESTS): $(TRAIN)
	$(PIP) install -e '.[ros,demo,train,test]'
	$(PY) -m pip check
	touch $@

# ROS4HRI's hri_msgs is not on PyPI: built from msg/hri_msgs into .venv.
$(INTERFACES): $(RUNTIME) scripts/build_interfaces.py $(wildcard msg/hri_msgs/* msg/hri_msgs/msg/*)
	$(PIP) install -e '.[interfaces]'
	$(PY) scripts/build_interfaces.py
	touch $@

run: $(RUNTIME) $(INTERFACES)
	$(PY) -m wscfer_ros.demo $(ARGS)

test: $(TESTS) $(INTERFACES)
	$(PY) -m pytest $(PYTEST_ARGS)
