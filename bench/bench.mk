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
#   make bench-deb-hotpath
#                     item 7b (TCG hot path) with the series' own Debian
#                     package (make deb, Debian's compiler flags and
#                     configuration) as patched off / on and the same
#                     package build without the series (make deb-unpatched)
#                     as unpatched 7.2, beside stock 7.2, 12 runs ->
#                     bench/results/<date>-deb-hotpath.*; the two package
#                     builds take ~20 minutes each the first time, the run ~12
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

# The packages are built like stock 7.2 (Debian's rules and flags), so that
# they differ from each other by the series alone; the lean build of
# build/bin differs from stock by itself.
DEB_QEMU := build/peers/deb-7.2/usr/bin/qemu-system-x86_64
DEB_BASE_QEMU := build/peers/deb-base-7.2/usr/bin/qemu-system-x86_64
bench-deb-hotpath: guest deb deb-unpatched
	scripts/install-deps.sh base/bench-deps.txt
	scripts/fetch-stock-qemu.sh
	scripts/unpack-deb.sh
	scripts/unpack-deb.sh unpatched
	BENCH_PATCHED_QEMU=$(DEB_QEMU) BENCH_BASE_QEMU=$(DEB_BASE_QEMU) \
	    $(BENCH_PY) bench/run.py --only tcg-hotpath --name deb-hotpath \
	    --configs stock,base,off,on --runs 12 $(BENCH_ARGS)

.PHONY: bench bench-quick bench-deb-hotpath
