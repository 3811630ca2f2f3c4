# Two commands for a fresh machine:
#   make demo   set up the device side and screen the sample folder with the shipped model
#   make test   set up both sides and run the whole test suite (Python 3 + the Python 3.6 edge subset)
PYTHON ?= python3
PY36 ?= $(shell (pyenv root 2>/dev/null || echo $$HOME/.pyenv))/versions/3.6.15/bin/python3
VENV_EDGE := .venv-edge
VENV := .venv
VENV36 := .venv36
PIP_FLAGS := --disable-pip-version-check -q

.PHONY: demo test test-py3 test-py36 clean

$(VENV_EDGE)/.done: requirements/edge.txt setup.py
	$(PYTHON) -m venv $(VENV_EDGE)
	$(VENV_EDGE)/bin/pip install $(PIP_FLAGS) -c requirements/edge.txt -e '.[edge]'
	touch $@

demo: $(VENV_EDGE)/.done
	$(VENV_EDGE)/bin/retina-edge run samples/fundus --results results-demo.csv

# tensorrt-stubs: type stubs of TensorRT 10.x that check the TensorRT fakes; --no-deps, as they require tensorrt
$(VENV)/.done: requirements/train.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -c requirements/train.txt -e '.[train,test,plots,nvml]'
	$(VENV)/bin/pip install $(PIP_FLAGS) --no-deps -c requirements/train.txt tensorrt-stubs || \
		echo "tensorrt-stubs not installed (needs Python >= 3.10): the 10.x fake check will be skipped"
	touch $@

$(VENV36)/.done: requirements/edge-py36.txt
	@if [ ! -x "$(PY36)" ]; then echo "Python 3.6.15 not found at $(PY36) (pyenv install 3.6.15, or PY36=...)"; exit 1; fi
	$(PY36) -m venv $(VENV36)
	$(VENV36)/bin/pip install $(PIP_FLAGS) --upgrade pip==21.3.1
	$(VENV36)/bin/pip install $(PIP_FLAGS) -r requirements/edge-py36.txt
	touch $@

# The end-to-end test also screens with the Python 3.6 stack when .venv36 exists, so build it first.
test-py3: $(VENV)/.done $(VENV36)/.done
	RETINA_EDGE_PY36=$(CURDIR)/$(VENV36)/bin/python $(VENV)/bin/python -m pytest tests -q

test-py36: $(VENV36)/.done
	$(VENV36)/bin/python -m pytest tests/unit -q -m "not torch"

test: test-py3 test-py36

clean:
	rm -rf $(VENV_EDGE) $(VENV) $(VENV36) .cache
