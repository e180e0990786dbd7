# The README's two commands: `make run` (set up + main job on the embedded default) and
# `make test` (set up + lint + tests). Both are idempotent.
CONFIG ?= configs/default.yaml
# section.field=value overrides for `make run`, e.g. OVERRIDES='learning_curve={}'
OVERRIDES ?=

.PHONY: setup run test smoke bench publish rehearse-paper notebooks

setup:
	@bash scripts/setup.sh

run: setup
	.venv/bin/sae-med run $(CONFIG) $(OVERRIDES)

smoke: setup
	.venv/bin/sae-med run configs/smoke.yaml

# two pytest workers (pytest-xdist), one torch thread each, a test module per worker at a
# time (its module fixtures built once), the longest modules first (tests/conftest.py
# SLOW_FIRST, kept in that order by --no-loadscope-reorder); targeted runs
# (.venv/bin/pytest FILE) stay serial
test: setup
	.venv/bin/ruff check .
	.venv/bin/pytest -q -n 2 --dist loadscope --no-loadscope-reorder

# Paired notebooks/NN_*.ipynb (jupytext --to ipynb) and the sae-med Jupyter kernel, for
# running a notebook with plain papermill or Jupyter; rerun after editing a notebook's .py.
notebooks:
	.venv/bin/python -m sae_med.report.rerun

bench: setup
	.venv/bin/python benchmarks/bench_cache.py

# The paper's config (configs/paper_gemma2_2b.yaml) rehearsed offline: a tiny random
# Gemma-2, local files in the hub datasets' schemas, a Gemma Scope baseline; the test, then
# the same through `sae-med run` (notebooks and book included) into runs/rehearse_paper
rehearse-paper: setup
	.venv/bin/pytest -q tests/e2e/test_rehearsal.py
	.venv/bin/python scripts/rehearse_paper.py

# Put a built book on GitHub Pages: make publish REMOTE=git@github.com:you/sae-med.git
# (BOOK: the folder `sae-med book` built into, or one book's html folder)
BOOK ?= _build
publish:
	.venv/bin/sae-med publish $(BOOK) --remote $(REMOTE)
