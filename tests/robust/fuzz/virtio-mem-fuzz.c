/*
 * Request fuzzer for virtio-mem-pci with dynamic memslots
 *
 * Copyright (c) 2026 Seed 3edbaa16 maintainers
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

/*
 * A qtest that plays a hostile guest driver. It sends random sequences of
 * plug, unplug, unplug-all and state requests with random and adversarial
 * addresses and block counts (unaligned, overlapping, outside the usable
 * region or the device, huge, wrapping around, zero), interleaved with
 * requested-size changes (valid and invalid), system resets and
 * device-level resets (virtio status 0, driver set up again).
 *
 * The test keeps a model of the device (plugged blocks, usable region,
 * requested size) written from the virtio-mem specification and QEMU 7.2's
 * documented behaviour, and checks:
 *  - after every request: the response type (and the state of a STATE
 *    request) is what the model predicts, and the plugged size in the device
 *    configuration and the device's QOM "size" property equal the model's;
 *  - every FUZZ_CHECK_EVERY requests and at the end of every sequence: the
 *    whole bitmap (one STATE request per run of equal blocks of the model
 *    proves every block), the usable and requested sizes, and the memslot
 *    aliases mapped in guest memory (HMP "info mtree"): exactly the memslots
 *    holding a plugged block, each at the right offset and size, with the
 *    memslot geometry of the design; with dynamic-memslots=off the backend
 *    stays mapped whole and no alias exists.
 *
 * It is built against the libqos virtio-mem driver of the series
 * (tests/qtest/libqos/virtio-mem.c) and runs under the qtest accelerator.
 *
 * Environment:
 *   QTEST_QEMU_BINARY  QEMU to test (required)
 *   FUZZ_SEED          RNG seed (default 1)
 *   FUZZ_REQUESTS      number of requests in total (default 20000)
 *   FUZZ_SEQ_LEN       requests per sequence, one VM per sequence (5000)
 *   FUZZ_CHECK_EVERY   full check interval in requests (default 200)
 *   FUZZ_CONFIGS       comma-separated config names to use (default all)
 *   FUZZ_QOM_EVERY     QOM "size" check interval (default 1: every request)
 *   FUZZ_ONLY          set: run only the fuzzer, not the regression tests
 *   FUZZ_ACCEL         "kvm": paused KVM VMs (small configurations only:
 *                      KVM allocates its metadata for every mapped memslot);
 *                      each sequence also checks that KVM's free memslot
 *                      count is the same before and after (two hot-plugged
 *                      probe devices see the same number)
 *
 * A failure prints the seed, the sequence, its configuration and the last
 * requests; the same seed and settings replay the same run.
 */

#include "qemu/osdep.h"
#include "qemu/units.h"
#include "qemu/host-utils.h"
#include "libqtest.h"
#include "qapi/qmp/qdict.h"
#include "qapi/qmp/qnum.h"
#include "libqos/libqos-malloc.h"
#include "libqos/malloc-pc.h"
#include "libqos/pci-pc.h"
#include "libqos/virtio-mem.h"

#define VMEM_DEVFN QPCI_DEVFN(4, 0)
#define USABLE_EXTENT (256 * MiB)
#define MIN_MEMSLOT_SIZE GiB
#define MEMSLOT_SOFT_LIMIT 256
#define MAX_NB_BLOCKS 65535

typedef struct FuzzConfig {
    const char *name;
    uint64_t ram;
    uint64_t maxmem;
    uint64_t size;
    uint64_t block_size;        /* 0: the backend's default */
    bool dynamic;
    const char *backend;        /* NULL: memory-backend-ram,reserve=off */
    const char *dev_opts;       /* more virtio-mem-pci options, or NULL */
} FuzzConfig;

static const FuzzConfig configs[] = {
    /* 8 memslots of 1 GiB */
    { "8G", GiB, 9 * GiB, 8 * GiB, 0, true },
    /* 4 memslots, the last one of 512 MiB */
    { "3.5G", GiB, GiB + 3584 * MiB, 3584 * MiB, 0, true },
    /* big blocks: 8 blocks per memslot */
    { "4G-bs128M", GiB, 5 * GiB, 4 * GiB, 128 * MiB, true },
    /* block size = memslot size */
    { "3G-bs1G", GiB, 4 * GiB, 3 * GiB, GiB, true },
    /* 256 memslots of 2 GiB */
    { "512G", GiB, 513 * GiB, 512 * GiB, 0, true },
    /* not filling device memory: 256 * 2G / 16G = 32 -> 2 memslots */
    { "2G-of-16G", GiB, 17 * GiB, 2 * GiB, 0, true },
    /* below the minimum memslot size: one memslot covering it all */
    { "512M", GiB, 5 * GiB, 512 * MiB, 0, true },
    /* the unpatched layout */
    { "4G-off", GiB, 5 * GiB, 4 * GiB, 0, false },
    /* shared memory (discarded with fallocate), 2 memslots */
    { "2G-memfd", GiB, 3 * GiB, 2 * GiB, 0, true,
      "memory-backend-memfd,share=on", NULL },
    /* preallocation on plug (small: plugged memory is really allocated) */
    { "512M-prealloc", GiB, 1536 * MiB, 512 * MiB, 0, true, NULL,
      ",prealloc=on" },
};

enum {
    OP_PLUG,
    OP_UNPLUG,
    OP_STATE,
    OP_UNPLUG_ALL,
    OP_REQUESTED_SIZE,
    OP_SYSTEM_RESET,
    OP_DEVICE_RESET,
    OP_MAX,
};

static const char *const op_names[OP_MAX] = {
    "plug", "unplug", "state", "unplug-all", "requested-size",
    "system-reset", "device-reset",
};

static const char *const resp_names[] = {
    "ACK", "NACK", "BUSY", "ERROR",
};

typedef struct Model {
    const FuzzConfig *cfg;
    uint64_t addr;
    uint64_t block_size;
    uint64_t region_size;
    uint64_t nb_blocks;
    uint64_t usable;
    uint64_t requested;
    uint64_t plugged;           /* bytes */
    uint8_t *bitmap;            /* one byte per block */
    uint64_t memslot_size;
    unsigned nb_memslots;
    uint64_t maxmem;            /* as given to QEMU */
} Model;

typedef struct Fuzz {
    GRand *rand;
    bool kvm;
    char *trace_log;
    uint64_t kvm_probes;
    unsigned kvm_max, kvm_free;
    QTestState *qts;
    QGuestAllocator alloc;
    QPCIBus *bus;
    QVirtioMem *vmem;
    Model m;
    unsigned seq;
    uint64_t seq_req;
    /* the last requests, for failure reports */
    char *history[64];
    unsigned hist_pos;
    /* counters */
    uint64_t requests;
    uint64_t ops[OP_MAX];
    uint64_t resp[OP_MAX][4];
    uint64_t full_checks;
    uint64_t mtree_checks;
    uint64_t bitmap_checks;
    uint64_t state_queries;
    uint64_t invalid_sizes;
} Fuzz;

static Fuzz fz;

static void hist(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

static void hist(const char *fmt, ...)
{
    va_list ap;
    unsigned i = fz.hist_pos++ % ARRAY_SIZE(fz.history);

    g_free(fz.history[i]);
    va_start(ap, fmt);
    fz.history[i] = g_strdup_vprintf(fmt, ap);
    va_end(ap);
}

static void G_GNUC_PRINTF(1, 2) G_GNUC_NORETURN fail(const char *fmt, ...)
{
    va_list ap;
    unsigned i, n = MIN(fz.hist_pos, ARRAY_SIZE(fz.history));
    g_autofree char *msg = NULL;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    fprintf(stderr, "FUZZ FAILURE: %s\n", msg);
    fprintf(stderr, "  sequence %u (config %s), request %" PRIu64
            " of the sequence, %" PRIu64 " in total\n",
            fz.seq, fz.m.cfg ? fz.m.cfg->name : "?", fz.seq_req,
            fz.requests);
    fprintf(stderr, "  model: addr 0x%" PRIx64 " block size 0x%" PRIx64
            " region 0x%" PRIx64 " usable 0x%" PRIx64 " requested 0x%"
            PRIx64 " plugged 0x%" PRIx64 " memslots %u x 0x%" PRIx64 "\n",
            fz.m.addr, fz.m.block_size, fz.m.region_size, fz.m.usable,
            fz.m.requested, fz.m.plugged, fz.m.nb_memslots,
            fz.m.memslot_size);
    fprintf(stderr, "  last %u operations (oldest first):\n", n);
    for (i = fz.hist_pos - n; i < fz.hist_pos; i++) {
        fprintf(stderr, "    %s\n", fz.history[i % ARRAY_SIZE(fz.history)]);
    }
    fflush(stderr);
    abort();
}

/* The memslot budget of the design for a single device, no KVM, no vhost */
static void model_memslots(Model *m)
{
    const FuzzConfig *c = m->cfg;
    const uint64_t space = m->maxmem - c->ram;
    uint64_t limit = MEMSLOT_SOFT_LIMIT, s;

    if (!c->dynamic) {
        m->nb_memslots = 0;
        m->memslot_size = 0;
        return;
    }
    if (c->size != space) {
        limit = MAX(limit * c->size / space, 1);
    }
    s = QEMU_ALIGN_UP(c->size / limit, m->block_size);
    s = MAX(s, MAX(m->block_size, MIN_MEMSLOT_SIZE));
    m->nb_memslots = DIV_ROUND_UP(c->size, s);
    m->memslot_size = m->nb_memslots == 1 ? c->size : s;
}

static uint64_t model_usable_for(const Model *m, uint64_t requested)
{
    uint64_t size;

    if (!requested) {
        return 0;
    }
    size = MIN(m->region_size, requested + USABLE_EXTENT);
    return QEMU_ALIGN_UP(size, m->block_size);
}

static void model_unplug_all(Model *m)
{
    memset(m->bitmap, 0, m->nb_blocks);
    m->plugged = 0;
    m->usable = model_usable_for(m, m->requested);
}

/* VIRTIO_MEM_STATE_* of a range of blocks */
static uint16_t model_state(const Model *m, uint64_t first, uint64_t n)
{
    uint64_t i, plugged = 0;

    for (i = first; i < first + n; i++) {
        plugged += m->bitmap[i];
    }
    if (plugged == n) {
        return VIRTIO_MEM_STATE_PLUGGED;
    }
    return plugged ? VIRTIO_MEM_STATE_MIXED : VIRTIO_MEM_STATE_UNPLUGGED;
}

/* Is [gpa, gpa + nb * bs) a valid range in the usable region? */
static bool model_valid(const Model *m, uint64_t gpa, uint16_t nb)
{
    const unsigned __int128 end = (unsigned __int128)gpa +
                                  (unsigned __int128)nb * m->block_size;

    if (gpa % m->block_size || !nb) {
        return false;
    }
    return gpa >= m->addr && end <= (unsigned __int128)m->addr + m->usable;
}

/* Expected response of a plug (plug=true) or unplug request; applies it */
static uint16_t model_change(Model *m, uint64_t gpa, uint16_t nb, bool plug)
{
    const uint64_t size = (uint64_t)nb * m->block_size;
    uint64_t first, i;

    if (!model_valid(m, gpa, nb)) {
        return VIRTIO_MEM_RESP_ERROR;
    }
    if (plug && m->plugged + size > m->requested) {
        return VIRTIO_MEM_RESP_NACK;
    }
    first = (gpa - m->addr) / m->block_size;
    if (model_state(m, first, nb) != (plug ? VIRTIO_MEM_STATE_UNPLUGGED
                                           : VIRTIO_MEM_STATE_PLUGGED)) {
        return VIRTIO_MEM_RESP_ERROR;
    }
    for (i = first; i < first + nb; i++) {
        m->bitmap[i] = plug;
    }
    m->plugged = plug ? m->plugged + size : m->plugged - size;
    return VIRTIO_MEM_RESP_ACK;
}

/* Device access */

static uint64_t qom_get_uint(const char *property)
{
    QDict *resp = qtest_qmp(fz.qts, "{'execute': 'qom-get', 'arguments':"
                            " {'path': '/machine/peripheral/vmem0',"
                            " 'property': %s}}", property);
    uint64_t v;

    if (!qdict_haskey(resp, "return")) {
        fail("qom-get %s failed", property);
    }
    v = qnum_get_uint(qobject_to(QNum, qdict_get(resp, "return")));
    qobject_unref(resp);
    return v;
}

#define CFG(field) offsetof(struct virtio_mem_config, field)

static uint64_t cfg_readq(size_t off)
{
    return qvirtio_config_readq(fz.vmem->vdev, off);
}

/* Full check of the bitmap: one STATE request per run of equal blocks */
static void check_bitmap(void)
{
    const Model *m = &fz.m;
    const uint64_t usable_blocks = m->usable / m->block_size;
    uint64_t i = 0, j;

    /* Blocks beyond the usable region are never plugged */
    for (j = usable_blocks; j < m->nb_blocks; j++) {
        if (m->bitmap[j]) {
            fail("model: block %" PRIu64 " plugged beyond the usable region",
                 j);
        }
    }
    while (i < usable_blocks) {
        const uint8_t v = m->bitmap[i];
        uint16_t state = UINT16_MAX, resp;

        for (j = i; j < usable_blocks && j - i < MAX_NB_BLOCKS &&
             m->bitmap[j] == v; j++) {
            /* the run */
        }
        resp = qvirtio_mem_state(fz.vmem, m->addr + i * m->block_size,
                                 j - i, &state);
        fz.state_queries++;
        if (resp != VIRTIO_MEM_RESP_ACK ||
            state != (v ? VIRTIO_MEM_STATE_PLUGGED
                        : VIRTIO_MEM_STATE_UNPLUGGED)) {
            fail("bitmap check: blocks %" PRIu64 "-%" PRIu64
                 " should be %s: response %u, state %u", i, j - 1,
                 v ? "plugged" : "unplugged", resp, state);
        }
        i = j;
    }
    fz.bitmap_checks++;
}

/* Does memslot idx hold a plugged block in the model? */
static bool model_memslot_plugged(const Model *m, unsigned idx)
{
    const uint64_t per = m->memslot_size / m->block_size;
    uint64_t i;

    for (i = idx * per; i < MIN((idx + 1) * per, m->nb_blocks); i++) {
        if (m->bitmap[i]) {
            return true;
        }
    }
    return false;
}

/*
 * The memslot aliases of "mem0" in address space "memory" (HMP info mtree):
 * exactly the memslots that hold a plugged block, each inside the
 * "virtio-mem" container, with the right geometry.
 */
static void check_mtree(void)
{
    const Model *m = &fz.m;
    g_autofree char *out = qtest_hmp(fz.qts, "info mtree");
    g_auto(GStrv) lines = g_strsplit(out, "\n", -1);
    g_autofree bool *seen = g_new0(bool, MAX(m->nb_memslots, 1));
    bool in_memory = false, header = false;
    unsigned container_level = 0, backend_maps = 0, containers = 0;
    unsigned i, idx;

    for (i = 0; lines[i]; i++) {
        const char *line = g_strchomp(lines[i]), *p = line, *rest;
        uint64_t start, last, astart, alast;
        unsigned level;
        char type[64];
        int n = 0;

        if (g_str_has_prefix(line, "address-space: ")) {
            if (!header) {
                in_memory = false;
            }
            header = true;
            if (g_str_equal(line + strlen("address-space: "), "memory")) {
                in_memory = true;
            }
            continue;
        }
        header = false;
        if (!in_memory) {
            continue;
        }
        if (!*line) {
            break;
        }
        while (*p == ' ') {
            p++;
        }
        level = (p - line) / 2;
        if (sscanf(p, "%" SCNx64 "-%" SCNx64 " (prio %*d, %63[^)]): %n",
                   &start, &last, type, &n) != 3 || !n) {
            fail("cannot parse 'info mtree' line '%s'", line);
        }
        rest = p + n;
        if (g_str_equal(rest, "virtio-mem")) {
            /* other devices' containers (KVM probes) do not matter */
            if (start != m->addr) {
                continue;
            }
            containers++;
            container_level = level;
            if (last != m->addr + m->region_size - 1) {
                fail("container at 0x%" PRIx64 "-0x%" PRIx64, start, last);
            }
            continue;
        }
        if (g_str_equal(rest, "mem0")) {
            /* the backend mapped directly: the unpatched layout */
            backend_maps++;
            if (start != m->addr || last != m->addr + m->region_size - 1) {
                fail("mem0 mapped at 0x%" PRIx64 "-0x%" PRIx64, start, last);
            }
            continue;
        }
        if (!g_str_has_prefix(rest, "alias memslot-") ||
            !strstr(rest, " @mem0 ")) {
            continue;
        }
        if (sscanf(rest, "alias memslot-%u @mem0 %" SCNx64 "-%" SCNx64,
                   &idx, &astart, &alast) != 3) {
            fail("unexpected alias line '%s'", line);
        }
        if (!m->cfg->dynamic || idx >= m->nb_memslots) {
            fail("alias memslot-%u should not exist: '%s'", idx, line);
        }
        if (!containers || level != container_level + 1) {
            fail("alias memslot-%u not inside the container", idx);
        }
        if (seen[idx]) {
            fail("memslot-%u mapped twice", idx);
        }
        seen[idx] = true;
        if (strcmp(type, "ram")) {
            fail("memslot-%u has type %s", idx, type);
        }
        {
            const uint64_t off = (uint64_t)idx * m->memslot_size;
            const uint64_t size = MIN(m->memslot_size, m->region_size - off);

            if (astart != off || alast != off + size - 1 ||
                start != m->addr + off || last != m->addr + off + size - 1) {
                fail("memslot-%u geometry: '%s'", idx, line);
            }
        }
    }

    if (m->cfg->dynamic) {
        if (containers != 1 || backend_maps) {
            fail("%u virtio-mem containers, backend mapped %u times",
                 containers, backend_maps);
        }
        for (idx = 0; idx < m->nb_memslots; idx++) {
            if (seen[idx] != model_memslot_plugged(m, idx)) {
                fail("memslot-%u is %s", idx,
                     seen[idx] ? "mapped but holds no plugged block"
                               : "not mapped but holds a plugged block");
            }
        }
    } else if (containers || backend_maps != 1) {
        fail("dynamic-memslots=off: %u containers, backend mapped %u times",
             containers, backend_maps);
    }
    fz.mtree_checks++;
}

static void check_sizes(bool qom)
{
    const Model *m = &fz.m;
    uint64_t v;

    v = cfg_readq(CFG(plugged_size));
    if (v != m->plugged) {
        fail("config plugged_size 0x%" PRIx64 ", model 0x%" PRIx64,
             v, m->plugged);
    }
    if (qom) {
        v = qom_get_uint("size");
        if (v != m->plugged) {
            fail("QOM size 0x%" PRIx64 ", model 0x%" PRIx64, v, m->plugged);
        }
    }
}

static void check_full(void)
{
    const Model *m = &fz.m;
    uint64_t v;

    check_sizes(true);
    v = cfg_readq(CFG(usable_region_size));
    if (v != m->usable) {
        fail("usable_region_size 0x%" PRIx64 ", model 0x%" PRIx64,
             v, m->usable);
    }
    v = cfg_readq(CFG(requested_size));
    if (v != m->requested) {
        fail("config requested_size 0x%" PRIx64 ", model 0x%" PRIx64,
             v, m->requested);
    }
    v = qom_get_uint("requested-size");
    if (v != m->requested) {
        fail("QOM requested-size 0x%" PRIx64 ", model 0x%" PRIx64,
             v, m->requested);
    }
    check_bitmap();
    check_mtree();
    fz.full_checks++;
}

/* Random numbers */

static uint64_t rnd(uint64_t n)            /* [0, n) */
{
    uint64_t hi, lo;

    if (n <= 1) {
        return 0;
    }
    if (n <= G_MAXINT32) {
        return g_rand_int_range(fz.rand, 0, n);
    }
    hi = g_rand_int(fz.rand);
    lo = g_rand_int(fz.rand);
    return ((hi << 32) | lo) % n;
}

static uint64_t rnd64(void)
{
    return ((uint64_t)g_rand_int(fz.rand) << 32) | g_rand_int(fz.rand);
}

static bool chance(unsigned percent)
{
    return rnd(100) < percent;
}

/* A random block index near a plugged block of the model, if any */
static uint64_t random_plugged_block(void)
{
    const Model *m = &fz.m;
    uint64_t start = rnd(m->nb_blocks), i;

    for (i = 0; i < m->nb_blocks; i++) {
        uint64_t b = (start + i) % m->nb_blocks;

        if (m->bitmap[b]) {
            return b;
        }
    }
    return start;
}

static uint64_t random_address(void)
{
    const Model *m = &fz.m;
    const uint64_t bs = m->block_size;
    const uint64_t usable_blocks = m->usable / bs;
    uint64_t b;

    switch (rnd(20)) {
    case 0 ... 6:   /* anywhere in the usable region, or a bit beyond */
        return m->addr + rnd(usable_blocks + 4) * bs;
    case 7 ... 9:   /* on or around a plugged block: overlaps */
        b = random_plugged_block();
        return m->addr + (b - MIN(b, rnd(4))) * bs;
    case 10 ... 11: /* around a memslot boundary */
        if (m->memslot_size) {
            b = (rnd(m->nb_memslots) + 1) * (m->memslot_size / bs);
            return m->addr + (b - MIN(b, rnd(4))) * bs + rnd(3) * bs;
        }
        return m->addr + rnd(m->nb_blocks) * bs;
    case 12:        /* unaligned */
        return m->addr + rnd(usable_blocks + 1) * bs +
               (chance(50) ? 1 + rnd(bs - 1) : 4 * KiB);
    case 13:        /* below the device */
        return m->addr - (1 + rnd(8)) * bs;
    case 14:        /* at or past the end of the usable region / device */
        return m->addr + (chance(50) ? m->usable : m->region_size) +
               rnd(3) * bs;
    case 15:        /* ending at the end of the usable region */
        return m->addr + m->usable - MIN(m->usable, (1 + rnd(16)) * bs);
    case 16:        /* huge, wrapping around */
        return UINT64_MAX - rnd(4) * bs - (chance(50) ? bs - 1 : 0);
    case 17:        /* zero and other small values */
        return rnd(4) * bs;
    case 18:        /* fully random */
        return rnd64();
    default:        /* the start of the device */
        return m->addr;
    }
}

static uint16_t random_nb_blocks(uint64_t gpa)
{
    const Model *m = &fz.m;
    const uint64_t bs = m->block_size;

    switch (rnd(20)) {
    case 0 ... 1:
        return 0;
    case 2 ... 9:
        return 1 + rnd(8);
    case 10 ... 13:
        return 1 + rnd(MIN(2 * MAX(m->memslot_size, GiB) / bs,
                           MAX_NB_BLOCKS));
    case 14 ... 15: /* exactly up to the end of the usable region */
        if (gpa >= m->addr && gpa < m->addr + m->usable) {
            return MIN((m->addr + m->usable - gpa) / bs, MAX_NB_BLOCKS);
        }
        return 1;
    case 16 ... 17:
        return rnd(MAX_NB_BLOCKS + 1);
    case 18:        /* one too many */
        if (gpa >= m->addr && gpa < m->addr + m->usable) {
            return MIN((m->addr + m->usable - gpa) / bs + 1, MAX_NB_BLOCKS);
        }
        return MAX_NB_BLOCKS;
    default:
        return MAX_NB_BLOCKS;
    }
}

/* Operations */

/*
 * A range that the request can act on: inside a run of blocks in the
 * opposite state (unplugged for plug, plugged for unplug) of the usable
 * region. Returns false if there is none near a random start.
 */
static bool random_valid_range(bool plug, uint64_t *gpa, uint16_t *nb)
{
    const Model *m = &fz.m;
    const uint64_t usable_blocks = m->usable / m->block_size;
    uint64_t b, start, end, max;

    if (!usable_blocks) {
        return false;
    }
    b = plug ? rnd(usable_blocks) : random_plugged_block();
    if (b >= usable_blocks || m->bitmap[b] == plug) {
        return false;
    }
    for (start = b; start > 0 && m->bitmap[start - 1] != plug; start--) {
        /* the run's start */
    }
    for (end = b + 1; end < usable_blocks && m->bitmap[end] != plug; end++) {
        /* the run's end */
    }
    start += rnd(b - start + 1);
    max = MIN(end - start, MAX_NB_BLOCKS);
    *gpa = m->addr + start * m->block_size;
    *nb = chance(70) ? 1 + rnd(MIN(max, 16)) : 1 + rnd(max);
    return true;
}

static void do_range_request(unsigned op)
{
    Model *m = &fz.m;
    uint64_t gpa;
    uint16_t nb;
    uint16_t expected, resp, state = UINT16_MAX, expected_state = 0;

    if (op == OP_STATE || !chance(50) ||
        !random_valid_range(op == OP_PLUG, &gpa, &nb)) {
        gpa = random_address();
        nb = random_nb_blocks(gpa);
    }
    switch (op) {
    case OP_PLUG:
    case OP_UNPLUG:
        hist("%s 0x%" PRIx64 " x %u", op_names[op], gpa, nb);
        expected = model_change(m, gpa, nb, op == OP_PLUG);
        resp = op == OP_PLUG ? qvirtio_mem_plug(fz.vmem, gpa, nb)
                             : qvirtio_mem_unplug(fz.vmem, gpa, nb);
        break;
    default:
        hist("state 0x%" PRIx64 " x %u", gpa, nb);
        expected = model_valid(m, gpa, nb) ? VIRTIO_MEM_RESP_ACK
                                           : VIRTIO_MEM_RESP_ERROR;
        if (expected == VIRTIO_MEM_RESP_ACK) {
            expected_state = model_state(m, (gpa - m->addr) / m->block_size,
                                         nb);
        }
        resp = qvirtio_mem_state(fz.vmem, gpa, nb, &state);
        break;
    }
    if (resp != expected) {
        fail("%s 0x%" PRIx64 " x %u: response %u (%s), expected %u (%s)",
             op_names[op], gpa, nb, resp,
             resp < ARRAY_SIZE(resp_names) ? resp_names[resp] : "?",
             expected, resp_names[expected]);
    }
    if (op == OP_STATE && resp == VIRTIO_MEM_RESP_ACK &&
        state != expected_state) {
        fail("state 0x%" PRIx64 " x %u: state %u, expected %u", gpa, nb,
             state, expected_state);
    }
    fz.resp[op][resp]++;
}

static void do_unplug_all(void)
{
    uint16_t resp;

    hist("unplug-all");
    model_unplug_all(&fz.m);
    resp = qvirtio_mem_unplug_all(fz.vmem);
    if (resp != VIRTIO_MEM_RESP_ACK) {
        fail("unplug-all: response %u", resp);
    }
    fz.resp[OP_UNPLUG_ALL][resp]++;
}

static void do_requested_size(void)
{
    Model *m = &fz.m;
    const uint64_t bs = m->block_size;
    uint64_t v;
    bool valid = true;
    QDict *resp;

    switch (rnd(10)) {
    case 0:
        v = 0;
        break;
    case 1:
        v = m->region_size;
        break;
    case 2:         /* a little more than what is plugged */
        v = MIN(m->region_size, m->plugged + rnd(64) * bs);
        break;
    case 3:         /* less than what is plugged */
        v = m->plugged - MIN(m->plugged, rnd(64) * bs);
        break;
    case 4:         /* not a multiple of the block size */
        v = rnd(m->region_size / bs) * bs + 1 + rnd(bs - 1);
        valid = false;
        break;
    case 5:         /* larger than the backend */
        v = chance(50) ? m->region_size + bs : UINT64_MAX - (bs - 1);
        valid = false;
        break;
    default:
        v = rnd(m->region_size / bs + 1) * bs;
        break;
    }
    hist("requested-size 0x%" PRIx64 "%s", v, valid ? "" : " (invalid)");
    resp = qtest_qmp(fz.qts, "{'execute': 'qom-set', 'arguments':"
                     " {'path': '/machine/peripheral/vmem0',"
                     " 'property': 'requested-size', 'value': %" PRIu64 "}}",
                     v);
    if (qdict_haskey(resp, "error") == valid) {
        fail("qom-set requested-size 0x%" PRIx64 ": %s", v,
             valid ? "failed" : "succeeded");
    }
    qobject_unref(resp);
    if (!valid) {
        fz.invalid_sizes++;
        return;
    }
    if (v != m->requested) {
        /* the usable region grows at once and shrinks only on unplug-all */
        m->usable = MAX(m->usable, model_usable_for(m, v));
        m->requested = v;
    }
}

static void do_system_reset(void)
{
    hist("system-reset");
    qtest_qmp_assert_success(fz.qts, "{'execute': 'system_reset'}");
    qtest_qmp_eventwait(fz.qts, "RESET");
    model_unplug_all(&fz.m);
    qvirtio_mem_restart(fz.vmem);
}

static void do_device_reset(void)
{
    /* virtio reset and set-up: the plugged memory stays as it is */
    hist("device-reset");
    qvirtio_mem_restart(fz.vmem);
}

static unsigned random_op(void)
{
    const unsigned r = rnd(1000);

    if (r < 350) {
        return OP_PLUG;
    } else if (r < 650) {
        return OP_UNPLUG;
    } else if (r < 925) {
        return OP_STATE;
    } else if (r < 931) {
        return OP_UNPLUG_ALL;
    } else if (r < 994) {
        return OP_REQUESTED_SIZE;
    } else if (r < 997) {
        return OP_SYSTEM_RESET;
    }
    return OP_DEVICE_RESET;
}

/*
 * Under KVM: hot-plug a 1 GiB dynamic-memslots device ("probe<n>") and
 * return the free KVM memslots that memory-device core saw for it (trace
 * memory_device_memslot_limit). Probes map nothing.
 */
static uint64_t kvm_probe(unsigned n)
{
    g_autofree char *text = NULL;
    g_autofree char *id = g_strdup_printf("probe%u", n);
    g_autofree char *want = g_strdup_printf("memory_device_memslot_limit "
                                            "id=%s ", id);
    const char *p;
    unsigned max, free_slots;

    qtest_qmp_assert_success(fz.qts, "{'execute': 'object-add', 'arguments':"
                             " {'qom-type': 'memory-backend-ram', 'id': %s,"
                             " 'size': 1073741824, 'reserve': false}}", id);
    qtest_qmp_assert_success(fz.qts, "{'execute': 'device_add', 'arguments':"
                             " {'driver': 'virtio-mem-pci', 'id': %s,"
                             " 'memdev': %s, 'bus': %s,"
                             " 'unplugged-inaccessible': 'on',"
                             " 'dynamic-memslots': true}}", id, id,
                             n == 1 ? "rp1" : "rp2");
    if (!g_file_get_contents(fz.trace_log, &text, NULL, NULL) ||
        !(p = strstr(text, want)) ||
        sscanf(p + strlen(want), "max=%u free=%u", &max, &free_slots) != 2) {
        fail("no '%s' trace in %s", want, fz.trace_log);
    }
    hist("kvm probe %u: max %u free %u", n, max, free_slots);
    fz.kvm_max = max;
    fz.kvm_free = free_slots;
    fz.kvm_probes++;
    return free_slots;
}

/* One sequence: a VM with a random configuration and seq_len requests */
static void run_sequence(const FuzzConfig *cfg, uint64_t seq_len,
                         uint64_t check_every, uint64_t qom_every)
{
    Model *m = &fz.m;
    g_autofree char *bs_opt = NULL;
    g_autofree char *kvm_args = NULL;
    uint64_t initial, kvm_free = 0;

    memset(m, 0, sizeof(*m));
    m->cfg = cfg;
    /* under KVM, room for two 1 GiB probe devices */
    m->maxmem = cfg->maxmem + (fz.kvm ? 2 * GiB : 0);
    fz.seq_req = 0;
    /* a random initial requested size, block aligned at any block size */
    initial = QEMU_ALIGN_DOWN(rnd(cfg->size / GiB + 1) * GiB, GiB);
    initial = MIN(initial, cfg->size);
    bs_opt = cfg->block_size ? g_strdup_printf(",block-size=%" PRIu64,
                                               cfg->block_size)
                             : g_strdup("");
    hist("start config %s, requested-size 0x%" PRIx64, cfg->name, initial);
    kvm_args = fz.kvm ?
        g_strdup_printf("-accel kvm -cpu qemu64,host-phys-bits=on -S "
                        "-device pcie-root-port,id=rp1,chassis=1,addr=05.0 "
                        "-device pcie-root-port,id=rp2,chassis=2,addr=06.0 "
                        "-D %s -trace memory_device_memslot_limit",
                        fz.trace_log) :
        g_strdup("-cpu qemu64,phys-bits=44");
    if (fz.kvm) {
        unlink(fz.trace_log);
    }
    fz.qts = qtest_initf("-machine q35,smm=off -nodefaults %s "
                         "-m %" PRIu64 "M,maxmem=%" PRIu64 "M "
                         "-object %s,id=mem0,size=%" PRIu64 " "
                         "-device virtio-mem-pci,id=vmem0,memdev=mem0,"
                         "addr=04.0,requested-size=%" PRIu64 "%s,"
                         "unplugged-inaccessible=on%s%s",
                         kvm_args,
                         cfg->ram / MiB, m->maxmem / MiB,
                         cfg->backend ? cfg->backend
                                      : "memory-backend-ram,reserve=off",
                         cfg->size, initial, bs_opt,
                         cfg->dynamic ? ",dynamic-memslots=on" : "",
                         cfg->dev_opts ? cfg->dev_opts : "");
    pc_alloc_init(&fz.alloc, fz.qts, ALLOC_NO_FLAGS);
    fz.bus = qpci_new_pc(fz.qts, &fz.alloc);
    fz.vmem = qvirtio_mem_pci_init(fz.qts, fz.bus, &fz.alloc, VMEM_DEVFN);

    m->addr = cfg_readq(CFG(addr));
    m->block_size = cfg_readq(CFG(block_size));
    m->region_size = cfg_readq(CFG(region_size));
    if (!m->block_size || m->region_size != cfg->size ||
        (cfg->block_size && m->block_size != cfg->block_size) ||
        m->addr % m->block_size) {
        fail("unexpected device configuration: addr 0x%" PRIx64
             " block size 0x%" PRIx64 " region size 0x%" PRIx64,
             m->addr, m->block_size, m->region_size);
    }
    m->nb_blocks = m->region_size / m->block_size;
    m->bitmap = g_malloc0(m->nb_blocks);
    m->requested = initial;
    m->usable = model_usable_for(m, initial);
    model_memslots(m);
    check_full();
    if (fz.kvm) {
        kvm_free = kvm_probe(1);
    }

    for (fz.seq_req = 1; fz.seq_req <= seq_len; fz.seq_req++) {
        const unsigned op = random_op();

        fz.ops[op]++;
        switch (op) {
        case OP_PLUG:
        case OP_UNPLUG:
        case OP_STATE:
            do_range_request(op);
            break;
        case OP_UNPLUG_ALL:
            do_unplug_all();
            break;
        case OP_REQUESTED_SIZE:
            do_requested_size();
            break;
        case OP_SYSTEM_RESET:
            do_system_reset();
            break;
        default:
            do_device_reset();
            break;
        }
        fz.requests++;
        check_sizes(qom_every && fz.requests % qom_every == 0);
        if (check_every && fz.seq_req % check_every == 0) {
            check_full();
        }
    }
    check_full();
    if (fz.kvm) {
        uint64_t now;

        /* with everything unmapped again, KVM uses as many memslots */
        do_unplug_all();
        check_full();
        now = kvm_probe(2);
        if (now != kvm_free) {
            fail("KVM memslot accounting: %" PRIu64 " free at the start,"
                 " %" PRIu64 " after the sequence", kvm_free, now);
        }
    }

    qvirtio_mem_free(fz.vmem);
    qpci_free_pc(fz.bus);
    alloc_destroy(&fz.alloc);
    qtest_quit(fz.qts);
    g_free(m->bitmap);
    m->bitmap = NULL;
}

static uint64_t env_u64(const char *name, uint64_t def)
{
    const char *v = g_getenv(name);

    return v && *v ? g_ascii_strtoull(v, NULL, 0) : def;
}

static void test_fuzz(void)
{
    const uint64_t seed = env_u64("FUZZ_SEED", 1);
    const uint64_t total = env_u64("FUZZ_REQUESTS", 20000);
    const uint64_t seq_len = MAX(env_u64("FUZZ_SEQ_LEN", 5000), 1);
    const uint64_t check_every = env_u64("FUZZ_CHECK_EVERY", 200);
    const uint64_t qom_every = env_u64("FUZZ_QOM_EVERY", 1);
    const char *only = g_getenv("FUZZ_CONFIGS");
    g_autoptr(GPtrArray) use = g_ptr_array_new();
    const gint64 t0 = g_get_monotonic_time();
    double secs;
    unsigned i, op;

    for (i = 0; i < ARRAY_SIZE(configs); i++) {
        g_auto(GStrv) names = only && *only ? g_strsplit(only, ",", -1)
                                            : NULL;

        if (!names || g_strv_contains((const char * const *)names,
                                      configs[i].name)) {
            g_ptr_array_add(use, (gpointer)&configs[i]);
        }
    }
    g_assert_cmpuint(use->len, >, 0);

    fz.kvm = g_str_equal(g_getenv("FUZZ_ACCEL") ?: "qtest", "kvm");
    if (fz.kvm) {
        fz.trace_log = g_strdup_printf("%s/virtio-mem-fuzz-%d.trace",
                                       g_get_tmp_dir(), getpid());
    }
    fz.rand = g_rand_new_with_seed(seed);
    printf("# seed %" PRIu64 ", %" PRIu64 " requests, sequences of %" PRIu64
           ", full check every %" PRIu64 ", QOM size every %" PRIu64 "\n",
           seed, total, seq_len, check_every, qom_every);
    for (fz.seq = 0; fz.requests < total; fz.seq++) {
        const FuzzConfig *cfg = g_ptr_array_index(use, fz.seq % use->len);
        const gint64 ts = g_get_monotonic_time();
        const uint64_t before = fz.requests;

        run_sequence(cfg, MIN(seq_len, total - fz.requests), check_every,
                     qom_every);
        printf("# sequence %u: config %s, %" PRIu64 " requests, %.0f/s\n",
               fz.seq, cfg->name, fz.requests - before,
               (fz.requests - before) /
               ((g_get_monotonic_time() - ts) / 1e6));
        fflush(stdout);
    }
    secs = (g_get_monotonic_time() - t0) / 1e6;

    printf("# %" PRIu64 " requests in %u sequences, %.1f s, %.0f requests/s\n",
           fz.requests, fz.seq, secs, fz.requests / secs);
    for (op = 0; op < OP_MAX; op++) {
        if (op <= OP_UNPLUG_ALL) {
            printf("#   %-15s %9" PRIu64 "  ACK %" PRIu64 " NACK %" PRIu64
                   " BUSY %" PRIu64 " ERROR %" PRIu64 "\n", op_names[op],
                   fz.ops[op], fz.resp[op][0], fz.resp[op][1],
                   fz.resp[op][2], fz.resp[op][3]);
        } else {
            printf("#   %-15s %9" PRIu64 "\n", op_names[op], fz.ops[op]);
        }
    }
    printf("#   invalid requested sizes refused: %" PRIu64 "\n",
           fz.invalid_sizes);
    printf("#   full checks %" PRIu64 " (info mtree %" PRIu64 ", bitmap %"
           PRIu64 " with %" PRIu64 " STATE requests)\n", fz.full_checks,
           fz.mtree_checks, fz.bitmap_checks, fz.state_queries);
    if (fz.kvm) {
        printf("#   KVM: %" PRIu64 " free-memslot probes, all consistent"
               " (last: %u of %u free)\n", fz.kvm_probes, fz.kvm_free,
               fz.kvm_max);
        unlink(fz.trace_log);
    }
    printf("FUZZ-RESULT requests=%" PRIu64 " sequences=%u seconds=%.1f "
           "rate=%.0f seed=%" PRIu64 "\n", fz.requests, fz.seq, secs,
           fz.requests / secs, seed);
    g_rand_free(fz.rand);
}

/*
 * Unplug-all while a migration is running: with nothing plugged there is
 * nothing to do, so the device acknowledges it (as upstream QEMU does) and
 * a system reset shrinks the usable region; with plugged memory the device
 * is busy and nothing changes.
 */
static void test_unplug_all_while_migrating(void)
{
    QTestState *qts;
    QGuestAllocator alloc;
    QPCIBus *bus;
    QVirtioMem *vmem;
    uint64_t addr, usable;

    qts = qtest_init("-machine q35,smm=off -nodefaults "
                     "-cpu qemu64,phys-bits=44 -m 1G,maxmem=5G "
                     "-object memory-backend-ram,id=mem0,size=4G,reserve=off "
                     "-device virtio-mem-pci,id=vmem0,memdev=mem0,addr=04.0,"
                     "requested-size=1G,unplugged-inaccessible=on,"
                     "dynamic-memslots=on");
    pc_alloc_init(&alloc, qts, ALLOC_NO_FLAGS);
    bus = qpci_new_pc(qts, &alloc);
    vmem = qvirtio_mem_pci_init(qts, bus, &alloc, VMEM_DEVFN);
    addr = qvirtio_config_readq(vmem->vdev, CFG(addr));

    /* an outgoing migration that stays active: 1 KiB/s */
    qtest_qmp_assert_success(qts, "{'execute': 'migrate-set-parameters',"
                             " 'arguments': {'max-bandwidth': 1024}}");
    qtest_qmp_assert_success(qts, "{'execute': 'migrate', 'arguments':"
                             " {'uri': 'exec:cat >/dev/null'}}");

    /* plugging is refused while migrating */
    g_assert_cmpuint(qvirtio_mem_plug(vmem, addr, 1), ==,
                     VIRTIO_MEM_RESP_BUSY);
    /* nothing plugged: nothing to do, ACK */
    g_assert_cmpuint(qvirtio_mem_unplug_all(vmem), ==, VIRTIO_MEM_RESP_ACK);

    /* a reset with nothing plugged shrinks the usable region */
    qtest_qmp_assert_success(qts, "{'execute': 'qom-set', 'arguments':"
                             " {'path': '/machine/peripheral/vmem0',"
                             " 'property': 'requested-size', 'value': 0}}");
    usable = qvirtio_config_readq(vmem->vdev, CFG(usable_region_size));
    g_assert_cmphex(usable, !=, 0);
    qtest_qmp_assert_success(qts, "{'execute': 'system_reset'}");
    qtest_qmp_eventwait(qts, "RESET");
    qvirtio_mem_restart(vmem);
    usable = qvirtio_config_readq(vmem->vdev, CFG(usable_region_size));
    g_assert_cmphex(usable, ==, 0);

    /* with plugged memory, unplug-all is busy while migrating */
    qtest_qmp_assert_success(qts, "{'execute': 'migrate_cancel'}");
    qtest_qmp_assert_success(qts, "{'execute': 'qom-set', 'arguments':"
                             " {'path': '/machine/peripheral/vmem0',"
                             " 'property': 'requested-size',"
                             " 'value': 1073741824}}");
    for (;;) {
        QDict *r = qtest_qmp(qts, "{'execute': 'query-migrate'}");
        bool idle = !g_str_equal(qdict_get_str(qdict_get_qdict(r, "return"),
                                               "status"), "cancelling");

        qobject_unref(r);
        if (idle) {
            break;
        }
        g_usleep(10000);
    }
    g_assert_cmpuint(qvirtio_mem_plug(vmem, addr, 1), ==,
                     VIRTIO_MEM_RESP_ACK);
    qtest_qmp_assert_success(qts, "{'execute': 'migrate', 'arguments':"
                             " {'uri': 'exec:cat >/dev/null'}}");
    g_assert_cmpuint(qvirtio_mem_unplug_all(vmem), ==, VIRTIO_MEM_RESP_BUSY);
    g_assert_cmphex(qvirtio_config_readq(vmem->vdev, CFG(plugged_size)), ==,
                    qvirtio_config_readq(vmem->vdev, CFG(block_size)));
    qtest_qmp_assert_success(qts, "{'execute': 'migrate_cancel'}");

    qvirtio_mem_free(vmem);
    qpci_free_pc(bus);
    alloc_destroy(&alloc);
    qtest_quit(qts);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    qtest_add_func("/virtio-mem/fuzz/requests", test_fuzz);
    if (!g_getenv("FUZZ_ONLY")) {
        qtest_add_func("/virtio-mem/robust/unplug-all-while-migrating",
                       test_unplug_all_while_migrating);
    }
    return g_test_run();
}
