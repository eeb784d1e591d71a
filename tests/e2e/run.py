#!/usr/bin/env python3
"""The real-guest end-to-end suite (tests/e2e).  Usage:

    python3 tests/e2e/run.py [SUBSTRING...]

runs every test (or those whose name contains one of the substrings), prints
a PASS/FAIL/SKIP line per test and ends with 'N passed, N failed, N skipped'.
Exit status 1 if any test failed.  Environment: QEMU_BINARY (patched QEMU,
default build/bin/qemu-system-x86_64), STOCK_QEMU (Debian's stock 7.2,
default build/peers/stock-7.2/usr/bin/qemu-system-x86_64, see
scripts/fetch-stock-qemu.sh), E2E_RESET_ROUNDS (test 3, default 20),
E2E_CPU_VENDOR (test 7's CPU vendor on the TCG and the KVM side, default
the host's), VMGUEST_KEEP=1 keeps each VM's logs.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import e2elib  # noqa: E402
import test_memory  # noqa: E402,F401  pylint: disable=unused-import  # registers tests
import test_migration  # noqa: E402,F401  pylint: disable=unused-import
import test_kvm  # noqa: E402,F401  pylint: disable=unused-import
import test_smc  # noqa: E402,F401  pylint: disable=unused-import
import test_vhost  # noqa: E402,F401  pylint: disable=unused-import
import test_unplug  # noqa: E402,F401  pylint: disable=unused-import
import test_stall  # noqa: E402,F401  pylint: disable=unused-import

if __name__ == '__main__':
    sys.exit(e2elib.run_tests(sys.argv[1:]))
