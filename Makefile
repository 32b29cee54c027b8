# The two commands of the README: `make run` and `make test`.  Both create
# .venv/ on first use (ROS 2, MediaPipe and ONNX Runtime from PyPI, this
# package in editable mode) and reuse it afterwards.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
INTERFACES := $(VENV)/.interfaces

.PHONY: venv run test bench

venv: $(INTERFACES)

# torch is pinned first: 2.13.0 is the CPU build on this machine's disk, any
# other release would pull several GB of CUDA wheels.
$(STAMP): setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[ros,train,test]'
	$(PY) -m pip check
	touch $@

# ROS4HRI's hri_msgs is not on PyPI: built from msg/hri_msgs into .venv.
$(INTERFACES): $(STAMP) scripts/build_interfaces.py $(wildcard msg/hri_msgs/* msg/hri_msgs/msg/*)
	$(PY) -m pip install --quiet -e '.[interfaces]'
	$(PY) scripts/build_interfaces.py
	touch $@

run: $(INTERFACES)
	$(VENV)/bin/python -m wscfer_ros.demo $(ARGS)

test: $(INTERFACES)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
