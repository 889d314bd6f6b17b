# make run   - set up (Debian packages, .venv) and run the daemon on conf/ctxmon.toml
# make test  - set up and run the test suite
# make bench - CPU per poll next to collectd on the same cgroups (root; ~20 min)
# make demo  - write a demo history (24 servers, 3 hosts, 30 days) to var/demo and plan it
# Both are idempotent: packages are installed only when missing, the venv is rebuilt
# only when pyproject.toml, setup.py or the C reader of /proc changes.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
CONFIG ?= conf/ctxmon.toml
PYTEST_ARGS ?=

# What the rrdtool bindings build against, and rrdtool itself.
RUN_PACKAGES := gcc pkg-config python3-dev python3-venv librrd-dev rrdtool
# The real peers the tests run (never as system services): rrdcached, Prometheus
# (and promtool), Alertmanager, headless Chromium, openssl for TLS certificates.
TEST_PACKAGES := rrdcached prometheus prometheus-alertmanager chromium openssl
# Traffic accounting: real nftables in a private namespace (tests); iperf3 for
# benchmarks/nft_bench.py.
TEST_PACKAGES += nftables iperf3
# htpasswd (apache2-utils): the tests check long passwords against what it hashes.
TEST_PACKAGES += apache2-utils

.PHONY: run test stat setup deps test-deps bench clean demo

run: setup
	$(VENV)/bin/ctxmon run -c $(CONFIG)

stat: setup
	$(VENV)/bin/ctxmon stat

# A demo history (the talk's 24 servers on 3 hosts, 30 days) and its plan.
demo: setup
	$(VENV)/bin/ctxmon demo-history var/demo
	$(VENV)/bin/ctxmon plan --history vs1=var/demo/vs1 --history vs2=var/demo/vs2 \
		--history vs3=var/demo/vs3 --html var/demo/plan

test: setup test-deps $(VENV)/.installed-test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

setup: deps $(VENV)/.installed

deps:
	@./.ci/apt-install --missing $(RUN_PACKAGES)

test-deps:
	@./.ci/apt-install --missing $(TEST_PACKAGES)

# `make run` installs what ctxmon runs on; `make test` adds the test tools. Each step
# says what it installs (pip itself stays quiet).
PROJECT_LIST = $(PYTHON) -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(", ".join(p["optional-dependencies"][sys.argv[1]] if len(sys.argv) > 1 else p["dependencies"]))'

$(VENV)/.installed: pyproject.toml setup.py collector/_procscan.c
	@test -x $(VENV)/bin/python || { echo "setup: creating the virtualenv $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "setup: upgrading pip in $(VENV)"
	@$(VENV)/bin/python -m pip install -q --upgrade pip
	@echo "setup: installing ctxmon (editable) into $(VENV) with: $$($(PROJECT_LIST))"
	@$(VENV)/bin/python -m pip install -q -e .
	@rm -f $(VENV)/.installed-test
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	@echo "setup: installing the test tools into $(VENV): $$($(PROJECT_LIST) test)"
	@$(VENV)/bin/python -m pip install -q -e '.[test]'
	@touch $@

# The benchmark's baseline (collectd with its cgroups and rrdtool plugins) and the
# rrdcached both tools write through in its second half.
BENCH_PACKAGES := collectd-core rrdcached
BENCH_ARGS ?=

bench: setup
	@./.ci/apt-install --missing $(BENCH_PACKAGES)
	$(VENV)/bin/python benchmarks/collectd_bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var build collector/_procscan.*.so
