# Cost suite (tests/cost/README.md), included by the top Makefile and run
# by 'make check' (tests/run.sh): migration stream, host memory,
# dump-guest-memory, background snapshot and postcopy of a VM whose
# virtio-mem device is idle or unplugged, dynamic-memslots=on against off in
# the same run.  Paused TCG VMs, no guest; under a minute.
# COST_TESTS=... runs only the tests whose names contain one of the given
# substrings.

COST_TESTS ?=

check-cost: build/bin/qemu-system-x86_64
	python3 tests/cost/run.py $(COST_TESTS)

.PHONY: check-cost
