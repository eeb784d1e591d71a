# tests/libvirt: libvirt end-to-end test of dynamic-memslots (included by the
# top Makefile).  A private libvirtd from Debian's packages (bookworm's 9.0,
# apt-get installed from base/libvirt-deps.txt; bookworm-backports' 11.x,
# unpacked into build/peers/libvirt-bpo by scripts/fetch-libvirt-backports.sh)
# runs a TCG domain on build/bin/qemu-system-x86_64; see tests/libvirt/run.py.
# Ends with "N passed, N failed, N skipped"; exit status 1 if a leg failed.
# A leg that cannot run here (not root, no overlayfs, archive unreachable) is
# a skip with its reason.  LIBVIRT_TEST_ARGS: e.g. --leg bookworm, --keep.
check-libvirt: build/bin/qemu-system-x86_64 guest
	python3 tests/libvirt/run.py $(LIBVIRT_TEST_ARGS)

.PHONY: check-libvirt
