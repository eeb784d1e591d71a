# Robustness tests (tests/robust; docs/robustness.md shows them).
#
#   make check-robust   the short parts, part of 'make check' (about a minute):
#                       seeded request fuzzer run (20000 requests) and the
#                       regression tests next to it, the bad-configuration
#                       table (tests/robust/configs.tsv), vhost-user interplay
#   make fuzz-nightly   the request fuzzer with 1,000,000 requests (~40 min)
#   make check-asan     ASan+UBSan build in build/qemu/build-asan, then the
#                       virtio-mem qtest, a short fuzzer run, the vhost-user
#                       test, the configuration table and a real-guest
#                       plug/unplug cycle on it (slow, not in CI)
#   make robust-doc     rewrite the table in docs/robustness.md from the TSV
#
# Knobs: ROBUST_QEMU (binary under test), ROBUST_SEED, ROBUST_SHORT_REQUESTS,
# ROBUST_NIGHTLY_SEED, ROBUST_NIGHTLY_REQUESTS; the fuzzer's own FUZZ_*
# variables are described in tests/robust/fuzz/virtio-mem-fuzz.c.

ROBUST_DIR := tests/robust
ROBUST_OUT := build/robust
ROBUST_QEMU ?= $(TOP)/build/bin/qemu-system-x86_64
ROBUST_B := $(TOP)/build/qemu/build
ROBUST_S := $(TOP)/build/qemu
ROBUST_FUZZ := $(ROBUST_OUT)/virtio-mem-fuzz
ROBUST_SEED ?= 1
ROBUST_SHORT_REQUESTS ?= 20000
ROBUST_NIGHTLY_REQUESTS ?= 1000000

# The fuzzer is a qtest built against the tree's libqtest and libqos (with the
# series' virtio-mem driver): same flags as tests/qtest, outside the tree.
ROBUST_CFLAGS := -m64 -mcx16 -std=gnu11 -O2 -g -Wall -Werror \
	-Wstrict-prototypes -Wmissing-prototypes -Wtype-limits -Wformat-security \
	-fno-strict-aliasing -fno-common -fwrapv -fPIE -pthread \
	-D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -D_LARGEFILE_SOURCE \
	-I$(ROBUST_B)/tests/qtest -I$(ROBUST_S)/tests/qtest -I$(ROBUST_B) \
	-I$(ROBUST_B)/qapi -I$(ROBUST_B)/trace \
	$(shell pkg-config --cflags glib-2.0) \
	-isystem $(ROBUST_S)/linux-headers -isystem $(ROBUST_B)/linux-headers \
	-iquote $(ROBUST_B) -iquote $(ROBUST_S) -iquote $(ROBUST_S)/include \
	-iquote $(ROBUST_S)/tcg/i386
ROBUST_LIBS := -pie -Wl,--whole-archive -Wl,--start-group \
	$(ROBUST_B)/libevent-loop-base.a $(ROBUST_B)/libqom.fa \
	$(ROBUST_B)/tests/qtest/libqos/libqos.fa -Wl,--no-whole-archive \
	$(ROBUST_B)/libqemuutil.a -pthread \
	$(shell pkg-config --libs gthread-2.0 glib-2.0 pixman-1) -lm -Wl,--end-group

# libqos and libqemuutil come from the tree's qtest build (virtio-mem-test).
ROBUST_VHOST := $(ROBUST_OUT)/vhost-user-memslots
$(ROBUST_OUT)/virtio-mem-fuzz: $(ROBUST_DIR)/fuzz/virtio-mem-fuzz.c
$(ROBUST_OUT)/vhost-user-memslots: $(ROBUST_DIR)/vhost/vhost-user-memslots.c
$(ROBUST_FUZZ) $(ROBUST_VHOST): $(QEMU) FORCE
	@mkdir -p $(ROBUST_OUT)
	ninja -C $(BDIR) tests/qtest/virtio-mem-test
	@if [ ! -e $@ ] || [ $(filter %.c,$^) -nt $@ ] || \
	    [ $(ROBUST_B)/tests/qtest/libqos/libqos.fa -nt $@ ] || \
	    [ $(ROBUST_B)/libqemuutil.a -nt $@ ]; then \
	    echo "CC $@"; \
	    cc $(ROBUST_CFLAGS) -o $@.o -c $(filter %.c,$^) && \
	    cc -m64 -o $@ $@.o $(ROBUST_LIBS); \
	fi

robust-fuzz: $(ROBUST_FUZZ)

.PHONY: robust-fuzz

# The request fuzzer's nightly run: a different seed every night unless
# ROBUST_NIGHTLY_SEED is given (it is printed); about 30 minutes.
ROBUST_NIGHTLY_SEED ?= $(shell date +%Y%m%d)
fuzz-nightly: $(ROBUST_FUZZ)
	set -o pipefail; QTEST_QEMU_BINARY=$(ROBUST_QEMU) \
	FUZZ_SEED=$(ROBUST_NIGHTLY_SEED) FUZZ_REQUESTS=$(ROBUST_NIGHTLY_REQUESTS) \
	FUZZ_SEQ_LEN=5000 FUZZ_CHECK_EVERY=100 FUZZ_ONLY=1 $(ROBUST_FUZZ) 2>&1 \
	    | grep --line-buffered -v '^# starting QEMU' \
	    | tee $(ROBUST_OUT)/fuzz-nightly.log

ROBUST_VUB := $(ROBUST_OUT)/vhost-user-blk-32 $(ROBUST_OUT)/vhost-user-blk-64 \
	$(ROBUST_OUT)/vhost-user-blk-509 $(ROBUST_OUT)/vhost-user-blk-1024

# The short parts, for 'make check' (tests/run.sh runs this target).
check-robust: $(ROBUST_FUZZ) $(ROBUST_VHOST) $(ROBUST_VUB)
	ROBUST_SEED=$(ROBUST_SEED) ROBUST_SHORT_REQUESTS=$(ROBUST_SHORT_REQUESTS) \
	$(ROBUST_DIR)/run.sh $(ROBUST_QEMU) $(ROBUST_FUZZ) $(ROBUST_VHOST) \
	    $(ROBUST_VUB) $(ROBUST_OUT)

# Regenerate the table in docs/robustness.md from tests/robust/configs.tsv.
robust-doc:
	python3 $(ROBUST_DIR)/configs.py --update-doc docs/robustness.md

.PHONY: fuzz-nightly check-robust robust-doc

# vhost-user test backends: the tree's contrib vhost-user-blk with the tree's
# libvhost-user, built outside the tree with the backend's debug log on (it
# prints every region it is given) and with VHOST_USER_MAX_RAM_SLOTS at 32
# (7.2's value), 64 (the vhost kernel module's default, for vhost-net's
# decision path), 509 (a backend that can coexist with dynamic memslots) or
# 1024 (more than QEMU's cap of 512).
ROBUST_VUB_SRC := $(ROBUST_S)/subprojects/libvhost-user
$(ROBUST_OUT)/vhost-user-blk-%: $(ROBUST_VUB_SRC)/libvhost-user.c $(ROBUST_S)/contrib/vhost-user-blk/vhost-user-blk.c | $(QEMU)
	@mkdir -p $@.d/include
	cp $(ROBUST_VUB_SRC)/libvhost-user*.[ch] $@.d/
	cp -L $(ROBUST_VUB_SRC)/include/*.h $@.d/include/
	sed -i -e 's/^#define VHOST_USER_MAX_RAM_SLOTS [0-9]*$$/#define VHOST_USER_MAX_RAM_SLOTS $*/' $@.d/libvhost-user.h
	sed -i -e 's/^#define LIBVHOST_USER_DEBUG 0$$/#define LIBVHOST_USER_DEBUG 1/' $@.d/libvhost-user.c
	grep -q 'VHOST_USER_MAX_RAM_SLOTS $*$$' $@.d/libvhost-user.h
	grep -q 'LIBVHOST_USER_DEBUG 1$$' $@.d/libvhost-user.c
	cc -I$@.d $(filter-out -Werror -Wmissing-prototypes,$(ROBUST_CFLAGS)) -o $@ \
	    $@.d/libvhost-user.c $@.d/libvhost-user-glib.c \
	    $(ROBUST_S)/contrib/vhost-user-blk/vhost-user-blk.c \
	    $(ROBUST_B)/libqemuutil.a $(shell pkg-config --libs glib-2.0 gthread-2.0) -lm

robust-vhost-backends: $(ROBUST_VUB)
.PHONY: robust-vhost-backends

# ASan + UBSan (slow: a full QEMU build; not in CI). Needs the guest.
check-asan: $(ROBUST_FUZZ) $(ROBUST_VHOST) $(ROBUST_VUB) guest
	$(ROBUST_DIR)/asan.sh $(ROBUST_FUZZ) $(ROBUST_VHOST) $(ROBUST_VUB) \
	    $(ROBUST_OUT)

.PHONY: check-asan
