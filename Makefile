# Debian 12's QEMU 7.2 with the virtio-mem dynamic-memslots series.
# See README.md. Everything is built under build/ (never committed).

SHELL := /bin/bash
TOP := $(CURDIR)
TREE := build/qemu
BDIR := $(TREE)/build
QEMU := build/bin/qemu-system-x86_64
STAMP := build/stamp
PATCHES := $(wildcard patches/*.patch) patches/series
PATH := /usr/bin:$(PATH)
export PATH

all: $(QEMU)

$(STAMP):
	@mkdir -p $@

# Debian packages needed to build and test (root installs them; others are told what to install).
$(STAMP)/deps: base/build-deps.txt scripts/install-deps.sh | $(STAMP)
	scripts/install-deps.sh
	@touch $@

deps: $(STAMP)/deps

# The base source package, downloaded once and verified against base/qemu.sha256.
$(STAMP)/fetch: base/version base/qemu.sha256 scripts/fetch-base.sh $(STAMP)/deps | $(STAMP)
	scripts/fetch-base.sh
	@touch $@

fetch: $(STAMP)/fetch

# build/qemu: base commit (tag 'base') plus patches/series as commits.
$(STAMP)/tree: $(STAMP)/fetch $(PATCHES) scripts/make-tree.sh | $(STAMP)
	scripts/make-tree.sh
	@touch $@

tree: $(STAMP)/tree
	@echo "QEMU tree with the series applied: $(TREE) ($$(git -C $(TREE) rev-list --count base..HEAD) commits on top of tag 'base')"

$(BDIR)/build.ninja: scripts/configure-qemu.sh | $(STAMP)/tree
	scripts/configure-qemu.sh

# ninja decides what to rebuild; with nothing changed it does no work.
# The vhost-user backends built with the series' libvhost-user come along:
# build/bin/qemu-storage-daemon and build/bin/virtiofsd.
BACKENDS := storage-daemon/qemu-storage-daemon tools/virtiofsd/virtiofsd
$(QEMU): $(STAMP)/tree $(BDIR)/build.ninja FORCE
	ninja -C $(BDIR) qemu-system-x86_64 $(BACKENDS)
	@mkdir -p build/bin
	@for f in qemu-system-x86_64 $(BACKENDS); do \
	    b=build/bin/$$(basename $$f); \
	    cmp -s $(BDIR)/$$f $$b || { cp $(BDIR)/$$f $$b.tmp && mv $$b.tmp $$b && echo "built $$b"; }; \
	done

# Developer workflow.
export:
	scripts/export-patches.sh

check-patches: $(STAMP)/fetch
	scripts/check-patches.sh

# Build every prefix of the series (not in CI: one build per patch).
check-prefixes: $(STAMP)/fetch
	scripts/check-prefixes.sh

# Issue 17's tests on the series as it had landed before it, and now.
check-landed: $(QEMU) guest
	scripts/check-landed.sh

guest: $(STAMP)/deps
	scripts/build-guest.sh

demo: $(QEMU) guest
	python3 scripts/demo.py

check: $(QEMU) guest
	tests/run.sh

.PHONY: all deps fetch tree export check-patches check-prefixes check-landed guest \
	demo check FORCE
FORCE:

# Suites and benchmarks bring their own targets.
-include tests/e2e/e2e.mk
-include bench/bench.mk
-include tests/robust/robust.mk
-include tests/libvirt/libvirt.mk
-include scripts/deb.mk
-include tests/cost/cost.mk
