# Benchmarks of the virtio-mem dynamic-memslots series (bench/README.md).
# Included by the top Makefile.
#
#   make bench        the full comparison (stock 7.2, patched off/on,
#                     upstream 10.0 off/on; unpatched 7.2 of the same build
#                     in items 3, 5b and 7b) -> bench/results/<date>-<host>.md,
#                     .json and PNG charts; ~25-30 minutes
#   make bench-quick  CI check (< 3 minutes): the 1 TiB idle memory saving
#                     must hold; fails (exit 1) otherwise, skips loudly
#                     without a usable /dev/kvm
#
# BENCH_ARGS passes options to bench/run.py (e.g. BENCH_ARGS='--runs 7',
# BENCH_ARGS='--only migration,idle-cost --runs 1' for the migration and
# idle QEMU cost items only, or BENCH_ARGS='--extra-binary PATH
# --extra-label NAME' to compare one more patched build, with on).

BENCH_PY := python3

# The peers come from scripts that do nothing when their prefix is complete;
# they run one after the other (both use the private apt state).
bench: $(QEMU) guest
	scripts/install-deps.sh base/bench-deps.txt
	scripts/fetch-stock-qemu.sh
	scripts/fetch-upstream-qemu.sh
	scripts/build-base-qemu.sh
	$(BENCH_PY) bench/run.py $(BENCH_ARGS)

# Only the patched binary and upstream 10.0 take part in the quick check.
bench-quick: $(QEMU)
	scripts/fetch-upstream-qemu.sh
	$(BENCH_PY) bench/run.py --quick $(BENCH_ARGS)

.PHONY: bench bench-quick
