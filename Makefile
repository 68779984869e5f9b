# The ICS lab on this machine (Debian 12, root): Asterisk 22 in a chroot,
# Redis, the FastAGI and AMI services. docker/stack.sh does the work.
#
#   make test      provision, then the whole suite (e2e tests start the stack
#                  themselves and stop it again if they started it)
#   make demo      up, one collect call between two softphones, down
#   make up / down / status / provision / venv / bench

SHELL := /bin/bash
STACK := bash docker/stack.sh
PY := .venv/bin/python
STACK_ENV := $(or $(ICS_STACK_DIR),$(CURDIR)/.stack)/stack.env
WITH_ENV := set -a; . "$(STACK_ENV)"; set +a;

.PHONY: venv provision up down status reload demo test bench

venv:
	$(STACK) venv

provision:
	$(STACK) provision

up:
	$(STACK) up

down:
	$(STACK) down

status:
	$(STACK) status

reload:
	$(STACK) reload

test: provision
	$(PY) -m pytest -q --durations=10 tests

demo: up
	@$(WITH_ENV) rc=0; $(PY) -m tests.support.demo || rc=$$?; $(STACK) down; exit $$rc

bench: up
	@$(WITH_ENV) rc=0; for f in bench/*.py; do [ -e "$$f" ] || continue; \
	    echo "== $$f"; $(PY) "$$f" || rc=$$?; done; $(STACK) down; exit $$rc
