# make run   - set up (Debian packages, .venv) and run the daemon on conf/ctxmon.toml
# make test  - set up and run the test suite
# Both are idempotent: packages are installed only when missing, the venv is rebuilt
# only when pyproject.toml changes.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
CONFIG ?= conf/ctxmon.toml
PYTEST_ARGS ?=

# What the bindings build against, and the real peers the tests run: rrdcached,
# Prometheus (and promtool), Alertmanager, headless Chromium, openssl for TLS.
APT_PACKAGES := gcc pkg-config python3-dev python3-venv librrd-dev rrdtool rrdcached \
	prometheus prometheus-alertmanager chromium openssl

.PHONY: run test stat setup deps clean

run: setup
	$(VENV)/bin/ctxmon run -c $(CONFIG)

stat: setup
	$(VENV)/bin/ctxmon stat

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

setup: deps $(VENV)/.installed

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  ./.ci/apt-install $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) var
