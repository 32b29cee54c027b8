# The two commands of the README: `make run` and `make test`.  Both create
# .venv/ on first use (ROS 2, MediaPipe and ONNX Runtime from PyPI, this
# package in editable mode) and reuse it afterwards.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv run test bench

venv: $(STAMP)

# torch is pinned first: 2.13.0 is the CPU build on this machine's disk, any
# other release would pull several GB of CUDA wheels.
$(STAMP): setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[ros,train,test]'
	$(PY) -m pip check
	touch $@

run: $(STAMP)
	$(VENV)/bin/python -m wscfer_ros.demo $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
