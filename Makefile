# RemoteCLIP for QGIS. `make help` lists the targets.
PY      := .venv/bin/python
DATA    ?= $(abspath ../shared/data)
export REMOTECLIP_DATA ?= $(DATA)
export QT_QPA_PLATFORM ?= offscreen

.PHONY: help setup setup-runtime test test-all lint package bench screenshot label lock clean

help:
	@echo "make setup       install QGIS (Debian), .venv and all pinned Python groups (idempotent)"
	@echo "make test        lint + the test suite inside real QGIS 3.22 (host), 3.40 and 3.44 (chroots)"
	@echo "make test-all    the same plus slow tests (ViT-L-14 export, large rasters): what CI runs"
	@echo "make label       the main job: label the Kampala orthomosaic's tiles with the demo model"
	@echo "make package     dist/remoteclip_qgis-<version>.zip for QGIS's Install from ZIP"
	@echo "make bench       benchmarks (bench/bench_*.py), results in bench-results/, then all targets in one table"
	@echo "make screenshot  screenshots: label, count, search, urban, classify; the accuracy workflow; the dock (xvfb)"

setup:
	scripts/setup.sh

setup-runtime:
	scripts/setup.sh runtime dev

test:
	scripts/test.sh

test-all:
	scripts/test.sh -m "slow or not slow"

lint:
	$(PY) -m ruff check .
	$(PY) -m flake8 --select=QGS remoteclip_qgis

package:
	$(PY) scripts/package.py

label: setup
	@mkdir -p results
	$(PY) -m core label $(DATA)/orthomosaic/kampala_oam_z20_mosaic_1536x1024.tif \
	    --preset land-cover --tile-size 256 -o results/kampala_labels.gpkg --overwrite

bench:
	@mkdir -p bench-results
	@start=$$(date +%s); for b in bench/bench_*.py; do echo "== $$b"; s=$$(date +%s); \
	  $(PY) $$b || exit 1; echo "== $$b: $$(( $$(date +%s) - s )) s"; done; \
	  $(PY) bench/summary.py --seconds $$(( $$(date +%s) - start ))

screenshot:
	QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1600x1600x24" $(PY) scripts/screenshot.py docs/screenshot.png

lock:
	$(PY) -m pip list --path .venv/lib/python3.11/site-packages --format=freeze \
	  | grep -v -E "^(pip|setuptools|remoteclip-qgis)==" > requirements/lock.body
	( head -2 requirements/lock.txt; cat requirements/lock.body ) > requirements/lock.new
	mv requirements/lock.new requirements/lock.txt; rm requirements/lock.body

clean:
	rm -rf dist build .pytest_cache bench-results
