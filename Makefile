# The ICS lab on this machine (Debian 12, root): Asterisk 22 in a chroot,
# Redis, the FastAGI and AMI services. docker/stack.sh does the work.
#
#   make test      provision, then the whole suite in parallel (each xdist worker
#                  starts its own stack in its own network namespace), on a single Redis
#                  and, side by side, on a Redis Cluster (make test-single /
#                  test-redis-cluster: one of them)
#   make demo      up, one collect call between two softphones, down
#   make up / down / status / provision / venv / bench
#   make up-cluster / down-cluster / status-cluster   Kamailio in front of two call nodes
#                  (README, Cluster); make farm: its bench (bench/farm/farm.py)

SHELL := /bin/bash
STACK := bash docker/stack.sh
PY := .venv/bin/python
STACK_ENV := $(or $(ICS_STACK_DIR),$(CURDIR)/.stack)/stack.env
WITH_ENV := set -a; . "$(STACK_ENV)"; set +a;
# pytest-xdist workers for make test, each with its own network namespace and
# stack (tests/support/netns.py). Measured on the 2-core lab machine (whole
# suite, wall): 1 process 820 s, 3 workers 291 s, 4: 257 s, 6: 203 s, 8: 156 s, with
# under half a core busy (the tests wait on prompts). 6 leaves the CPU to
# others sharing the machine and timing windows room. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 6

.PHONY: venv provision up down status reload demo test test-single test-redis-cluster bench capacity up-cluster down-cluster status-cluster farm threeway

# make capacity: our platform against Asterisk alone (bench/capacity/capacity.py), N calls
# per run, each bridged SECONDS; not in make bench (about 16 min with these defaults)
N ?= 50,100,150,200,250
SECONDS ?= 60
RECORDING ?= on
SETUPS ?= ours,plain
REPEAT ?= 1

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

up-cluster:
	$(STACK) up-cluster

down-cluster:
	$(STACK) down-cluster

status-cluster:
	$(STACK) status-cluster

# make farm: calls through Kamailio to one call node, then two (bench/farm/farm.py, SIPp);
# not in make bench (about 2 min with these defaults)
FARM_CALLS ?= 300
FARM_RATE ?= 20
FARM_HOLD ?= 5

farm: provision
	$(PY) bench/farm/farm.py --calls $(FARM_CALLS) --rate $(FARM_RATE) --hold $(FARM_HOLD)

PYTEST := $(PY) -m pytest -q --durations=10 -n $(TEST_WORKERS) --dist worksteal tests
CLUSTER_OUT := .stack/log/test-redis-cluster.out

# both Redis topologies at once (the suite mostly waits on calls): the Redis Cluster run's output
# goes to $(CLUSTER_OUT), shown whole if it failed
test: provision
	@mkdir -p .stack/log; rc=0; \
	ICS_REDIS_CLUSTER=1 $(PYTEST) > $(CLUSTER_OUT) 2>&1 & cluster=$$!; \
	env -u ICS_REDIS_CLUSTER $(PYTEST) || rc=$$?; \
	if wait $$cluster; then echo "== the same suite on the Redis Cluster lab: $$(tail -n 1 $(CLUSTER_OUT))"; \
	else rc=1; echo "== the same suite on the Redis Cluster lab FAILED:"; cat $(CLUSTER_OUT); fi; \
	exit $$rc

test-single: provision
	env -u ICS_REDIS_CLUSTER $(PYTEST)

# the suite on a 3-master, 3-replica Redis Cluster (docker/redis-cluster.sh): each worker's
# unit-test session and stack start one on loopback (tests/e2e/test_redis_failover.py runs only here)
test-redis-cluster: provision
	ICS_REDIS_CLUSTER=1 $(PYTEST)

demo: up
	@$(WITH_ENV) rc=0; $(PY) -m tests.support.demo || rc=$$?; $(STACK) down; exit $$rc

bench: up
	@$(WITH_ENV) rc=0; for f in bench/*.py; do [ -e "$$f" ] || continue; \
	    echo "== $$f"; $(PY) "$$f" || rc=$$?; done; $(STACK) down; exit $$rc

# the bench measures where calls degrade, so the stack it starts admits up to what the shipped RTP
# range carries (admission control would refuse ours past capacity.max_calls, default 100)
capacity: export ICS_CAPACITY_MAX_CALLS ?= 500
capacity: up
	@$(WITH_ENV) rc=0; $(PY) bench/capacity/capacity.py --n $(N) --seconds $(SECONDS) \
	    --recording $(RECORDING) --setups $(SETUPS) --repeat $(REPEAT) || rc=$$?; $(STACK) down; exit $$rc

# make threeway: the three-way detector's error rates. First the labelled corpus through the
# detector and rules alone (bench/threeway/bench.py), then through the real path at CALLS calls at
# once (bench/threeway/live.py: the capacity bench's far end plays each clip as the called line);
# not in make bench (about 30 min with these defaults)
CALLS ?= 100
ATTEMPTS ?= 300
BENIGN_MINUTES ?= 1000
BENIGN_S ?= 300
threeway: export ICS_CAPACITY_MAX_CALLS ?= 500
threeway: up
	@$(WITH_ENV) rc=0; $(PY) -m bench.threeway.bench --attempts 350 --benign-minutes 1000 || rc=$$?; \
	    $(PY) -m bench.threeway.live --calls $(CALLS) --attempts $(ATTEMPTS) \
	    --benign-minutes $(BENIGN_MINUTES) --benign-s $(BENIGN_S) || rc=$$?; $(STACK) down; exit $$rc
