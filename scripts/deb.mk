# Debian packages from the series (README "Debian packages"). Not part of
# make check: the package build takes too long for CI. Neither target uses
# the developer tree build/qemu or build/bin.
deb:
	scripts/build-deb.sh

check-deb: deb
	scripts/check-deb.sh

# The same packages without the series (build/deb-unpatched): the baseline
# of bench-deb-hotpath.
deb-unpatched:
	DEB_UNPATCHED=1 scripts/build-deb.sh

.PHONY: deb check-deb deb-unpatched
