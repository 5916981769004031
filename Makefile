# The two commands a user needs: `make run` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
CONFIG ?= mirror.yaml
# Real registry and clients the end-to-end tests drive (installed only when run as root).
APT_PACKAGES = docker-registry skopeo podman containerd runc docker.io uidmap \
               busybox-static chromium nginx-light wrk curl iproute2 \
               prometheus apache2-utils \
               debootstrap systemd

.PHONY: run test venv lint typecheck system-deps bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/mirror serve -c $(CONFIG)

system-deps:
	@if [ "$$(id -u)" = 0 ]; then ./scripts/install-system-deps.sh $(APT_PACKAGES); \
	else echo "not root: skipping apt-get install of $(APT_PACKAGES)"; fi

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check mirror tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports  # the layer map in pyproject.toml

test: $(VENV)/.installed system-deps lint
	$(VENV)/bin/pytest -q -ra $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
