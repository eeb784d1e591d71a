#!/usr/bin/env python3
"""The cost suite (tests/cost, README.md there).  Usage:

    python3 tests/cost/run.py [SUBSTRING...]

runs every test (or those whose name contains one of the substrings), prints
a PASS/FAIL/SKIP line per test and the measured figures, and ends with
'N passed, N failed, N skipped'.  Exit status 1 if any test failed.
Environment: QEMU_BINARY (default build/bin/qemu-system-x86_64),
COST_FILE_DIR (directory for memory-backend-file; default /var/tmp or /tmp,
whichever keeps holes), COST_STOP_AT_MIB (growth at which a run is stopped,
default 1024).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=wrong-import-position,unused-import
import costlib  # noqa: E402
import test_stream  # noqa: E402,F401  registers tests
import test_memory  # noqa: E402,F401
import test_snapshot  # noqa: E402,F401
import test_postcopy  # noqa: E402,F401
import test_qemu  # noqa: E402,F401
import test_colo  # noqa: E402,F401
import test_prealloc  # noqa: E402,F401

if __name__ == '__main__':
    sys.exit(costlib.run_tests(sys.argv[1:]))
