# Real-guest end-to-end suite (tests/e2e/run.py), included by the top
# Makefile.  `make check-e2e` needs the patched QEMU, the test guest and
# Debian's stock qemu-system-x86 7.2 as migration peer; E2E_TESTS=... runs
# only the tests whose names contain one of the given substrings.

E2E_TESTS ?=

# Debian's stock QEMU 7.2 in build/peers/stock-7.2 (and the runtime
# libraries listed in base/test-deps.txt).  The script does nothing but a
# quick check when all of it is there already.
stock-peer:
	scripts/fetch-stock-qemu.sh

check-e2e: build/bin/qemu-system-x86_64 guest stock-peer
	python3 tests/e2e/run.py $(E2E_TESTS)

.PHONY: stock-peer check-e2e
