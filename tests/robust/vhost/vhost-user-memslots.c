/*
 * vhost-user and virtio-mem dynamic memslots: the memslot rules
 *
 * Copyright (c) 2026 Seed 3edbaa16 maintainers
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

/*
 * Runs the tree's contrib vhost-user-blk backend, built (tests/robust/
 * robust.mk) with the tree's libvhost-user and its debug log on, with 32
 * memslots (7.2's libvhost-user), 64 (what the vhost kernel module accepts
 * by default, standing in for vhost-net, which cannot be loaded here) and
 * 509. The test plays the
 * guest over qtest: it starts the vhost-user-blk device (DRIVER_OK, so the
 * backend gets the memory table) and plugs virtio-mem blocks with the
 * series' libqos virtio-mem driver.
 *
 *  - backend-first: a backend with fewer than 509 memslots that exists
 *    before the virtio-mem device keeps that device at one memslot, with a
 *    warning that names the device, the backend, its limit and the remedy;
 *  - order: with 32, 64 and 509 memslots, and with a memslot-size chosen by
 *    the user, the device gets the same number of memslots (and the same
 *    warning, or none) whether the backend's -device comes first or last;
 *  - backend-after-hotplug: a backend hot-plugged later is accepted if the
 *    memslots memory devices reserved fit, else refused with the numbers,
 *    and the VM keeps running after the refusal;
 *  - capable-backend: with a 509-memslot backend the device gets several
 *    memslots, and each mapped alias reaches the backend as a region of its
 *    own: mapping a neighbour adds one region, removing and re-adding
 *    nothing; unmapping one removes only that one;
 *  - unplug-one-of-two: the used-memslot count of the vhost-user kind stays
 *    right when one of two vhost-user devices is unplugged (upstream fixed a
 *    bug in 10.1 where it was reset): exactly as many fd-backed DIMMs fit
 *    afterwards as before;
 *  - plug-after-memory: a vhost-user device plugged after more fd-backed
 *    memory slots are used than it supports is refused with the numbers;
 *    memory without an fd is not counted against vhost-user.
 *
 *  - qsd-top-of-1t: the project's qemu-storage-daemon maps the top memslot
 *    of a 1 TiB device alone, from its offset in the memfd.
 *
 * Environment: QTEST_QEMU_BINARY, VHOST_USER_BLK_32, VHOST_USER_BLK_64,
 * VHOST_USER_BLK_509, VHOST_USER_BLK_1024 (backend binaries; with the last
 * one, also check that vhost-user is capped at 512 memslots), QSD_BINARY
 * (the project's qemu-storage-daemon, for qsd-top-of-1t).
 */

#include "qemu/osdep.h"
#include "qemu/units.h"
#include "libqtest.h"
#include "qapi/qmp/qdict.h"
#include "qapi/qmp/qjson.h"
#include "qapi/qmp/qlist.h"
#include "qapi/error.h"
#include "libqos/libqos-malloc.h"
#include "libqos/malloc-pc.h"
#include "libqos/pci-pc.h"
#include "libqos/virtio.h"
#include "libqos/virtio-pci.h"
#include "libqos/virtio-mem.h"
#include "standard-headers/linux/virtio_ids.h"
#include "standard-headers/linux/virtio_config.h"

#include <sys/wait.h>

/* The warning when a backend with @slots memslots leaves vm0 one memslot */
#define WARN_FEW_SLOTS(before, slots) \
    "warning: virtio-mem-pci 'vm0' uses 1 memslot instead of " before \
    ": the vhost-user backend on chardev 'c0' supports only " slots \
    " memslots, and memory devices use several only if every vhost " \
    "backend supports at least 509\n" \
    "Use a vhost backend that supports at least 509 memslots (for " \
    "vhost-net, raise the max_mem_regions parameter of the vhost kernel " \
    "module), or set the device's memslot-size so that its memslots fit.\n"

typedef struct Backend {
    GPid pid;
    char *sock;
    char *log;
} Backend;

static char *tmpdir;
static unsigned backend_count;

static Backend *backend_start(unsigned slots)
{
    /* 0: the project's qemu-storage-daemon with a vhost-user-blk export */
    g_autofree char *env = slots ? g_strdup_printf("VHOST_USER_BLK_%u", slots)
                                 : g_strdup("QSD_BINARY");
    const char *bin = g_getenv(env);
    Backend *b = g_new0(Backend, 1);
    g_autofree char *img = NULL;
    g_autofree char *cmd = NULL;
    GError *err = NULL;
    int i;

    g_assert_nonnull(bin);
    b->sock = g_strdup_printf("%s/vub%u.sock", tmpdir, backend_count);
    b->log = g_strdup_printf("%s/vub%u.log", tmpdir, backend_count);
    img = g_strdup_printf("%s/vub%u.img", tmpdir, backend_count);
    backend_count++;
    g_assert_true(g_file_set_contents(img, "", 0, NULL));
    g_assert_cmpint(truncate(img, MiB), ==, 0);
    if (slots) {
        cmd = g_strdup_printf("exec %s -s %s -b %s >%s 2>&1", bin, b->sock,
                              img, b->log);
    } else {
        cmd = g_strdup_printf("exec %s --blockdev driver=file,node-name=f0,"
                              "filename=%s --export type=vhost-user-blk,"
                              "id=e0,node-name=f0,writable=on,addr.type=unix,"
                              "addr.path=%s >%s 2>&1", bin, img, b->sock,
                              b->log);
    }
    {
        char *argv[] = { (char *)"/bin/sh", (char *)"-c", cmd, NULL };

        if (!g_spawn_async(NULL, argv, NULL, G_SPAWN_DO_NOT_REAP_CHILD, NULL,
                           NULL, &b->pid, &err)) {
            g_error("cannot start %s: %s", bin, err->message);
        }
    }
    for (i = 0; i < 500 && !g_file_test(b->sock, G_FILE_TEST_EXISTS); i++) {
        g_usleep(10000);
    }
    g_assert_true(g_file_test(b->sock, G_FILE_TEST_EXISTS));
    return b;
}

static void backend_stop(Backend *b)
{
    kill(b->pid, SIGTERM);
    waitpid(b->pid, NULL, 0);
    g_spawn_close_pid(b->pid);
    unlink(b->sock);
    g_free(b->sock);
    g_free(b->log);
    g_free(b);
}

/* The regions the backend holds, from its log: "gpa+size" strings */
static GPtrArray *backend_regions(Backend *b, unsigned *adds,
                                  unsigned *removes)
{
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    GPtrArray *regions = g_ptr_array_new_with_free_func(g_free);
    unsigned i;

    *adds = *removes = 0;
    g_assert_true(g_file_get_contents(b->log, &text, NULL, NULL));
    lines = g_strsplit(text, "\n", -1);
    for (i = 0; lines[i]; i++) {
        uint64_t gpa, size;
        unsigned n;
        char *r;

        if (sscanf(lines[i], "Nregions: %u", &n) == 1) {
            /* SET_MEM_TABLE: a whole new table follows */
            g_ptr_array_set_size(regions, 0);
            continue;
        }
        if (!g_str_has_prefix(lines[i], "Adding region:") &&
            !g_str_has_prefix(lines[i], "Removing region:") &&
            !g_str_has_prefix(lines[i], "Region ")) {
            continue;
        }
        if (!lines[i + 1] || !lines[i + 2] ||
            sscanf(lines[i + 1], " guest_phys_addr: 0x%" SCNx64, &gpa) != 1 ||
            sscanf(lines[i + 2], " memory_size: 0x%" SCNx64, &size) != 1) {
            continue;
        }
        r = g_strdup_printf("%" PRIx64 "+%" PRIx64, gpa, size);
        if (g_str_has_prefix(lines[i], "Removing")) {
            guint idx;

            (*removes)++;
            g_assert_true(g_ptr_array_find_with_equal_func(regions, r,
                                                           g_str_equal,
                                                           &idx));
            g_ptr_array_remove_index(regions, idx);
            g_free(r);
        } else {
            if (g_str_has_prefix(lines[i], "Adding")) {
                (*adds)++;
            }
            g_ptr_array_add(regions, r);
        }
    }
    return regions;
}

static bool has_region(GPtrArray *regions, uint64_t gpa, uint64_t size)
{
    g_autofree char *r = g_strdup_printf("%" PRIx64 "+%" PRIx64, gpa, size);

    return g_ptr_array_find_with_equal_func(regions, r, g_str_equal, NULL);
}

/* Regions at or above @from (device memory) as "gpa+size,..." sorted */
static char *device_regions(GPtrArray *regions, uint64_t from)
{
    g_autoptr(GPtrArray) sel = g_ptr_array_new();
    GString *s = g_string_new("");
    unsigned i;

    for (i = 0; i < regions->len; i++) {
        const char *r = g_ptr_array_index(regions, i);

        if (g_ascii_strtoull(r, NULL, 16) >= from) {
            g_ptr_array_add(sel, (gpointer)r);
        }
    }
    g_ptr_array_sort(sel, (GCompareFunc)g_strcmp0);
    for (i = 0; i < sel->len; i++) {
        g_string_append_printf(s, "%s%s", i ? "," : "",
                               (char *)g_ptr_array_index(sel, i));
    }
    return g_string_free(s, false);
}

/* Wait until the backend log stops growing (it is written asynchronously) */
static void backend_settle(Backend *b)
{
    goffset last = -1;
    int i;

    for (i = 0; i < 200; i++) {
        struct stat st;

        g_assert_cmpint(stat(b->log, &st), ==, 0);
        if (st.st_size == last) {
            return;
        }
        last = st.st_size;
        g_usleep(20000);
    }
}

typedef struct VM {
    QTestState *qts;
    QGuestAllocator alloc;
    QPCIBus *bus;
    char *trace;
    char *stderr_log;
} VM;

static VM *vm_start(const char *machine, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);

static VM *vm_start(const char *machine, const char *fmt, ...)
{
    VM *vm = g_new0(VM, 1);
    g_autofree char *args = NULL;
    va_list ap;

    va_start(ap, fmt);
    args = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    vm->trace = g_strdup_printf("%s/trace-%u.log", tmpdir, backend_count);
    vm->stderr_log = g_strdup_printf("%s/stderr-%u.log", tmpdir,
                                     backend_count);
    vm->qts = qtest_initf("-machine %s,memory-backend=ram0 -nodefaults "
                          "-cpu qemu64,phys-bits=44 "
                          "-object memory-backend-memfd,id=ram0,size=1G,"
                          "share=on "
                          "-D %s -trace virtio_mem_decide_memslots "
                          "-trace memory_device_memslot_limit %s "
                          "2>%s", /* libqtest runs QEMU with sh -c */
                          machine, vm->trace, args, vm->stderr_log);
    pc_alloc_init(&vm->alloc, vm->qts, ALLOC_NO_FLAGS);
    vm->bus = qpci_new_pc(vm->qts, &vm->alloc);
    return vm;
}

static void vm_quit(VM *vm)
{
    qpci_free_pc(vm->bus);
    alloc_destroy(&vm->alloc);
    qtest_quit(vm->qts);
    g_free(vm->trace);
    g_free(vm->stderr_log);
    g_free(vm);
}

/* nb_memslots of each virtio_mem_decide_memslots trace line, as "4,1" */
static char *decided_memslots(VM *vm)
{
    g_autofree char *text = NULL;
    g_auto(GStrv) lines = NULL;
    GString *s = g_string_new("");
    unsigned i, n;

    g_assert_true(g_file_get_contents(vm->trace, &text, NULL, NULL));
    lines = g_strsplit(text, "\n", -1);
    for (i = 0; lines[i]; i++) {
        const char *p = strstr(lines[i], "virtio_mem_decide_memslots ");

        p = p ? strstr(p, "nb_memslots=") : NULL;
        if (p && sscanf(p, "nb_memslots=%u", &n) == 1) {
            g_string_append_printf(s, "%s%u", s->len ? "," : "", n);
        }
    }
    return g_string_free(s, false);
}

/* The "memslots" that query-memory-devices reports for device @id */
static int64_t device_memslots(QTestState *qts, const char *id)
{
    QDict *resp = qtest_qmp(qts, "{'execute': 'query-memory-devices'}");
    const QListEntry *e;
    int64_t n = -1;

    g_assert_nonnull(resp);
    QLIST_FOREACH_ENTRY(qdict_get_qlist(resp, "return"), e) {
        QDict *data = qdict_get_qdict(qobject_to(QDict, e->value), "data");

        if (!g_strcmp0(qdict_get_try_str(data, "id"), id)) {
            n = qdict_get_int(data, "memslots");
        }
    }
    qobject_unref(resp);
    return n;
}

/* QEMU's stderr so far */
static char *vm_stderr(VM *vm)
{
    char *text = NULL;

    g_assert_true(g_file_get_contents(vm->stderr_log, &text, NULL, NULL));
    return text;
}

/* Start a vhost-user-blk-pci device as a driver would: the backend starts */
static QVirtioPCIDevice *vub_driver_start(VM *vm, int devfn, QVirtQueue **vq)
{
    QPCIAddress addr = { .devfn = devfn };
    QVirtioPCIDevice *d = virtio_pci_new(vm->bus, &addr);
    uint64_t features;

    g_assert_nonnull(d);
    g_assert_cmpuint(d->vdev.device_type, ==, VIRTIO_ID_BLOCK);
    qvirtio_pci_device_enable(d);
    qvirtio_start_device(&d->vdev);
    features = qvirtio_get_features(&d->vdev);
    qvirtio_set_features(&d->vdev, features & (1ull << VIRTIO_F_VERSION_1));
    *vq = qvirtqueue_setup(&d->vdev, &vm->alloc, 0);
    qvirtio_set_driver_ok(&d->vdev);
    return d;
}

static void plug(QVirtioMem *vmem, uint64_t addr, uint16_t nb)
{
    g_assert_cmpuint(qvirtio_mem_plug(vmem, addr, nb), ==,
                     VIRTIO_MEM_RESP_ACK);
}

static void unplug(QVirtioMem *vmem, uint64_t addr, uint16_t nb)
{
    g_assert_cmpuint(qvirtio_mem_unplug(vmem, addr, nb), ==,
                     VIRTIO_MEM_RESP_ACK);
}

static void chardev_add(QTestState *qts, const char *id, const char *path)
{
    qtest_qmp_assert_success(qts, "{'execute': 'chardev-add', 'arguments':"
                             " {'id': %s, 'backend': {'type': 'socket',"
                             " 'data': {'server': false, 'addr': {"
                             " 'type': 'unix', 'data': {'path': %s}}}}}}",
                             id, path);
}

/* device_add; returns the error description or NULL */
static char *device_add(QTestState *qts, const char *driver, const char *id,
                        const char *extra_json)
{
    g_autofree char *args = g_strdup_printf("{\"driver\": \"%s\", "
                                            "\"id\": \"%s\"%s%s}",
                                            driver, id,
                                            extra_json ? ", " : "",
                                            extra_json ? extra_json : "");
    QObject *obj = qobject_from_json(args, &error_abort);
    QDict *resp = qtest_qmp(qts, "{'execute': 'device_add', 'arguments': %p}",
                            obj);
    char *err = NULL;

    g_assert_nonnull(resp);
    if (qdict_haskey(resp, "error")) {
        err = g_strdup(qdict_get_str(qdict_get_qdict(resp, "error"), "desc"));
    }
    qobject_unref(resp);
    return err;
}

static void object_add_memfd(QTestState *qts, const char *id, uint64_t size)
{
    qtest_qmp_assert_success(qts, "{'execute': 'object-add', 'arguments':"
                             " {'qom-type': 'memory-backend-memfd',"
                             " 'id': %s, 'size': %" PRIu64 ", 'share': true}}",
                             id, size);
}

static void object_add_ram(QTestState *qts, const char *id, uint64_t size)
{
    qtest_qmp_assert_success(qts, "{'execute': 'object-add', 'arguments':"
                             " {'qom-type': 'memory-backend-ram',"
                             " 'id': %s, 'size': %" PRIu64 "}}", id, size);
}

/* -------------------------------------------------------------------- */

#define VMEM_ARGS(id, size, extra) \
    "-object memory-backend-memfd,id=m" id ",size=" size ",share=on " \
    "-device virtio-mem-pci,id=vm" id ",memdev=m" id ",addr=04.0," \
    "dynamic-memslots=on,unplugged-inaccessible=on,requested-size=" size \
    extra

/*
 * Start a backend with @slots memslots and a q35 VM with a vhost-user-blk-pci
 * device on it (05.0) and a 4 GiB virtio-mem-pci device with dynamic
 * memslots (04.0, requested-size 4 GiB, @extra appended to its options);
 * @first: whether the vhost-user-blk-pci device comes first on the command
 * line. The device must end up with @memslots memslots.
 */
static VM *vm_start_with_backend(unsigned slots, bool first, const char *extra,
                                 int64_t memslots, Backend **b)
{
    g_autofree char *vub = NULL, *vmem = NULL;
    VM *vm;

    *b = backend_start(slots);
    vub = g_strdup_printf("-chardev socket,id=c0,path=%s "
                          "-device vhost-user-blk-pci,id=vub0,chardev=c0,"
                          "addr=05.0,num-queues=1 ", (*b)->sock);
    vmem = g_strdup_printf(VMEM_ARGS("0", "4G", "%s "), extra);
    vm = vm_start("q35", "-m 1G,maxmem=5G %s %s", first ? vub : vmem,
                  first ? vmem : vub);
    g_assert_cmpint(device_memslots(vm->qts, "vm0"), ==, memslots);
    return vm;
}

static void vm_quit_with_backend(VM *vm, Backend *b)
{
    vm_quit(vm);
    backend_stop(b);
}

/*
 * The regions the backend holds once its log settled; @dev: those in device
 * memory (at or above @from) as a string (see device_regions())
 */
static GPtrArray *settled_regions(Backend *b, uint64_t from, unsigned *adds,
                                  unsigned *removes, char **dev)
{
    GPtrArray *regions;

    backend_settle(b);
    regions = backend_regions(b, adds, removes);
    *dev = device_regions(regions, from);
    return regions;
}

/* Stop the devices a test drove and the VM and backend it started */
static void test_finish(VM *vm, Backend *b, QVirtioMem *vmem,
                        QVirtioPCIDevice *vub, QVirtQueue *vq)
{
    qvirtio_mem_free(vmem);
    qvirtqueue_cleanup(vub->vdev.bus, vq, &vm->alloc);
    qos_object_destroy(&vub->obj);
    vm_quit_with_backend(vm, b);
}

/*
 * Hot-plug a vhost-user-blk-pci device on @b (@where: its 'bus' or 'addr',
 * as JSON), which must be refused; returns QEMU's stderr. vhost-user-blk
 * retries a failed connection, so QMP reports the error of the last try
 * (the backend is gone by then); the refusal itself is reported on stderr.
 */
static char *vub_hotplug_refused(VM *vm, Backend *b, const char *where)
{
    g_autofree char *extra = g_strdup_printf("\"chardev\": \"c0\", %s, "
                                             "'num-queues': 1", where);
    g_autofree char *err = NULL;
    char *text = NULL;

    chardev_add(vm->qts, "c0", b->sock);
    err = device_add(vm->qts, "vhost-user-blk-pci", "vub0", extra);
    g_test_message("device_add: %s", err);
    g_assert_nonnull(err);
    g_assert_true(g_file_get_contents(vm->stderr_log, &text, NULL, NULL));
    return text;
}

static void test_backend_first(void)
{
    Backend *b;
    /* 32 < 509: the device keeps a single memslot */
    VM *vm = vm_start_with_backend(32, true, "", 1, &b);
    g_autofree char *regs = NULL, *text = vm_stderr(vm);
    g_autoptr(GPtrArray) regions = NULL;
    QVirtioMem *vmem;
    QVirtioMemConfig c;
    QVirtioPCIDevice *vub;
    QVirtQueue *vq;
    unsigned adds, removes;

    g_test_message("QEMU's stderr: %s", text);
    g_assert_nonnull(strstr(text, WARN_FEW_SLOTS("4", "32")));
    vub = vub_driver_start(vm, QPCI_DEVFN(5, 0), &vq);
    vmem = qvirtio_mem_pci_init(vm->qts, vm->bus, &vm->alloc,
                                QPCI_DEVFN(4, 0));
    qvirtio_mem_get_config(vmem, &c);
    plug(vmem, c.addr + 2 * GiB, 1);
    regions = settled_regions(b, c.addr, &adds, &removes, &regs);
    /* the one memslot covers the whole device */
    g_assert_true(has_region(regions, c.addr, 4 * GiB));
    g_assert_cmpuint(strchr(regs, ',') == NULL, ==, true);
    g_test_message("backend regions in device memory: %s", regs);

    test_finish(vm, b, vmem, vub, vq);
}

/*
 * The device's memslots and the warnings do not depend on the order of the
 * -device options.
 */
typedef struct OrderCase {
    unsigned slots;
    const char *extra;      /* more virtio-mem-pci options */
    int64_t memslots;
    const char *warning;    /* or NULL: no warning at all */
} OrderCase;

static void test_order(const void *opaque)
{
    const OrderCase *oc = opaque;
    int first;

    for (first = 1; first >= 0; first--) {
        Backend *b;
        VM *vm = vm_start_with_backend(oc->slots, first, oc->extra,
                                       oc->memslots, &b);
        g_autofree char *text = vm_stderr(vm);

        g_test_message("%s first: %" PRId64 " memslots, stderr: '%s'",
                       first ? "backend" : "device",
                       device_memslots(vm->qts, "vm0"), text);
        if (oc->warning) {
            const char *p = strstr(text, oc->warning);

            g_assert_nonnull(p);
            /* exactly once */
            g_assert_null(strstr(p + 1, oc->warning));
        } else {
            g_assert_null(strstr(text, "warning"));
        }
        vm_quit_with_backend(vm, b);
    }
}

static const OrderCase order_cases[] = {
    { 32, "", 1, WARN_FEW_SLOTS("4", "32") },
    { 64, "", 1, WARN_FEW_SLOTS("4", "64") },
    { 509, "", 4, NULL },
    /* the user's memslot-size is kept, and 4 memslots fit into 32 */
    { 32, ",memslot-size=1G", 4, NULL },
};

static void test_backend_after_hotplug(void)
{
    Backend *b = backend_start(32);
    VM *vm = vm_start("q35", "-m 1G,maxmem=65G "
                      "-device pcie-root-port,id=rp1,chassis=1 "
                      VMEM_ARGS("0", "64G", ""));
    g_autofree char *text = NULL;
    QVirtioMem *vmem;
    QVirtioMemConfig c;

    /* 64 memslots reserved: a 32-memslot backend is refused */
    g_assert_cmpint(device_memslots(vm->qts, "vm0"), ==, 64);
    text = vub_hotplug_refused(vm, b, "'bus': \"rp1\"");
    g_test_message("QEMU's stderr: %s", text);
    g_assert_nonnull(strstr(text, "vhost backend memory slots limit (32) is"
                            " less than current number of used ("));
    g_assert_nonnull(strstr(text, ") and reserved (64) memory slots (memory"
                            " devices reserve memslots that they may map"
                            " later, e.g. virtio-mem with"
                            " dynamic-memslots=on)"));
    g_assert_null(strstr(text, "warning"));

    /* the VM is fine: the device still has its memslots and plugs */
    g_assert_cmpint(device_memslots(vm->qts, "vm0"), ==, 64);
    vmem = qvirtio_mem_pci_init(vm->qts, vm->bus, &vm->alloc,
                                QPCI_DEVFN(4, 0));
    qvirtio_mem_get_config(vmem, &c);
    plug(vmem, c.addr + 3 * GiB, 1);
    qvirtio_mem_free(vmem);

    vm_quit_with_backend(vm, b);
}

/* A device hot-plugged after a 32-memslot backend gets one, with a warning */
static void test_device_hotplug_after_backend(void)
{
    Backend *b = backend_start(32);
    VM *vm = vm_start("q35", "-m 1G,maxmem=5G "
                      "-device pcie-root-port,id=rp1,chassis=1 "
                      "-chardev socket,id=c0,path=%s "
                      "-device vhost-user-blk-pci,id=vub0,chardev=c0,"
                      "addr=05.0,num-queues=1", b->sock);
    g_autofree char *err = NULL, *text = NULL;

    object_add_memfd(vm->qts, "m0", 4 * GiB);
    err = device_add(vm->qts, "virtio-mem-pci", "vm0",
                     "'memdev': 'm0', 'bus': 'rp1', "
                     "'dynamic-memslots': true");
    g_assert_null(err);
    g_assert_cmpint(device_memslots(vm->qts, "vm0"), ==, 1);
    text = vm_stderr(vm);
    g_test_message("QEMU's stderr: %s", text);
    g_assert_nonnull(strstr(text, WARN_FEW_SLOTS("4", "32")));
    vm_quit_with_backend(vm, b);
}

static void test_capable_backend(void)
{
    Backend *b;
    /* 509 memslots: the device gets four memslots of 1 GiB */
    VM *vm = vm_start_with_backend(509, true, "", 4, &b);
    g_autoptr(GPtrArray) r0 = NULL, r1 = NULL, r2 = NULL, r3 = NULL;
    g_autofree char *s0 = NULL, *s1 = NULL, *s2 = NULL, *s3 = NULL;
    unsigned a0, d0, a1, d1, a2, d2, a3, d3;
    QVirtioMem *vmem;
    QVirtioMemConfig c;
    QVirtioPCIDevice *vub;
    QVirtQueue *vq;

    vmem = qvirtio_mem_pci_init(vm->qts, vm->bus, &vm->alloc,
                                QPCI_DEVFN(4, 0));
    qvirtio_mem_get_config(vmem, &c);
    /* memslot 1 mapped before the backend starts */
    plug(vmem, c.addr + GiB, 1);
    vub = vub_driver_start(vm, QPCI_DEVFN(5, 0), &vq);
    r0 = settled_regions(b, c.addr, &a0, &d0, &s0);
    g_test_message("started: %s (%u added, %u removed)", s0, a0, d0);
    g_assert_true(has_region(r0, c.addr + GiB, GiB));
    g_assert_cmpuint(strchr(s0, ',') == NULL, ==, true);

    /* map the neighbour memslot 2: one region more, nothing removed */
    plug(vmem, c.addr + 2 * GiB, 1);
    r1 = settled_regions(b, c.addr, &a1, &d1, &s1);
    g_test_message("memslot 2 mapped: %s (%u added, %u removed)", s1, a1, d1);
    g_assert_true(has_region(r1, c.addr + GiB, GiB));
    g_assert_true(has_region(r1, c.addr + 2 * GiB, GiB));
    g_assert_false(has_region(r1, c.addr + GiB, 2 * GiB));
    g_assert_cmpuint(a1, ==, a0 + 1);
    g_assert_cmpuint(d1, ==, d0);

    /* memslot 3 too, then unmap memslot 2 between mapped neighbours */
    plug(vmem, c.addr + 3 * GiB, 1);
    unplug(vmem, c.addr + 2 * GiB, 1);
    r2 = settled_regions(b, c.addr, &a2, &d2, &s2);
    g_test_message("memslot 3 mapped, 2 unmapped: %s (%u added, %u removed)",
                   s2, a2, d2);
    g_assert_cmpuint(a2, ==, a1 + 1);
    g_assert_cmpuint(d2, ==, d1 + 1);
    g_assert_true(has_region(r2, c.addr + GiB, GiB));
    g_assert_false(has_region(r2, c.addr + 2 * GiB, GiB));
    g_assert_true(has_region(r2, c.addr + 3 * GiB, GiB));

    /* unplug-all: every alias leaves the backend */
    g_assert_cmpuint(qvirtio_mem_unplug_all(vmem), ==, VIRTIO_MEM_RESP_ACK);
    r3 = settled_regions(b, c.addr, &a3, &d3, &s3);
    g_test_message("unplug-all: '%s' (%u added, %u removed)", s3, a3, d3);
    g_assert_cmpstr(s3, ==, "");
    g_assert_cmpuint(d3, ==, d2 + 2);

    test_finish(vm, b, vmem, vub, vq);
}

/*
 * Hot-plug 128 MiB DIMMs until one is refused; returns how many were
 * accepted and the last error.
 */
static unsigned plug_dimms_until_refused(QTestState *qts, unsigned *next,
                                         bool fd, char **err)
{
    unsigned n = 0;

    for (;;) {
        g_autofree char *mid = g_strdup_printf("dm%u", *next);
        g_autofree char *did = g_strdup_printf("dimm%u", *next);
        g_autofree char *extra = g_strdup_printf("\"memdev\": '%s'", mid);

        if (fd) {
            object_add_memfd(qts, mid, 128 * MiB);
        } else {
            object_add_ram(qts, mid, 128 * MiB);
        }
        (*next)++;
        *err = device_add(qts, "pc-dimm", did, extra);
        if (*err) {
            return n;
        }
        n++;
        g_assert_cmpuint(n, <, 200);
    }
}

static void test_unplug_one_of_two(void)
{
    Backend *b0 = backend_start(32), *b1 = backend_start(32);
    /* i440fx: the test can eject PCI devices as the guest's ACPI would */
    VM *vm = vm_start("pc", "-m 1G,slots=128,maxmem=17G "
                      "-chardev socket,id=c0,path=%s "
                      "-device vhost-user-blk-pci,id=vub0,chardev=c0,"
                      "addr=05.0,num-queues=1 "
                      "-chardev socket,id=c1,path=%s "
                      "-device vhost-user-blk-pci,id=vub1,chardev=c1,"
                      "addr=06.0,num-queues=1", b0->sock, b1->sock);
    g_autofree char *err1 = NULL, *err2 = NULL, *err3 = NULL;
    g_autofree char *err4 = NULL, *err5 = NULL;
    unsigned next = 0, first, second, i;

    /*
     * Memory without an fd is not counted against vhost-user: more DIMMs
     * of anonymous memory fit than the backends have memslots.
     */
    for (i = 0; i < 40; i++) {
        g_autofree char *mid = g_strdup_printf("dm%u", next);
        g_autofree char *did = g_strdup_printf("dimm%u", next);
        g_autofree char *extra = g_strdup_printf("'memdev': '%s'", mid);

        object_add_ram(vm->qts, mid, 128 * MiB);
        next++;
        err3 = device_add(vm->qts, "pc-dimm", did, extra);
        if (err3) {
            g_error("anonymous DIMM %u refused: %s", i, err3);
        }
    }

    /* fill the 32 vhost-user memslots with fd-backed DIMMs */
    first = plug_dimms_until_refused(vm->qts, &next, true, &err1);
    g_test_message("%u fd DIMMs fit with two vhost-user devices: %s", first,
                   err1);
    g_assert_cmpuint(first, >, 20);
    g_assert_cmpuint(first, <, 32);
    g_assert_nonnull(strstr(err1, "a used vhost backend does not have enough"
                            " free memslots left: the device needs 1, memory"
                            " devices already plugged reserve 0, but only 0"
                            " are free"));

    /* unplug one of the two: the other still uses as many memslots */
    qpci_unplug_acpi_device_test(vm->qts, "vub1", 6);
    second = plug_dimms_until_refused(vm->qts, &next, true, &err2);
    g_test_message("after unplugging one: %u more DIMMs: %s", second, err2);
    g_assert_cmpuint(second, ==, 0);

    /*
     * A new vhost-user device with 32 memslots: used (32) + reserved (0)
     * fit, so it is accepted, and still no DIMM fits.
     */
    {
        Backend *b2 = backend_start(32);

        chardev_add(vm->qts, "c2", b2->sock);
        err4 = device_add(vm->qts, "vhost-user-blk-pci", "vub2",
                          "\"chardev\": \"c2\", 'addr': \"07.0\", "
                          "\"num-queues\": 1");
        g_test_message("vhost-user-blk-pci hot-plugged: %s",
                       err4 ? err4 : "ok");
        g_assert_null(err4);
        second = plug_dimms_until_refused(vm->qts, &next, true, &err5);
        g_test_message("then %u more DIMMs: %s", second, err5);
        g_assert_cmpuint(second, ==, 0);
        vm_quit(vm);
        backend_stop(b2);
    }
    backend_stop(b0);
    backend_stop(b1);
}

static void test_plug_after_memory(void)
{
    Backend *b = backend_start(32);
    VM *vm = vm_start("pc", "-m 1G,slots=64,maxmem=9G");
    g_autofree char *text = NULL;
    unsigned i, next = 0;

    /* 34 fd-backed DIMMs: more than the 32 memslots of the backend */
    for (i = 0; i < 34; i++) {
        g_autofree char *mid = g_strdup_printf("dm%u", next);
        g_autofree char *did = g_strdup_printf("dimm%u", next);
        g_autofree char *extra = g_strdup_printf("\"memdev\": '%s'", mid);
        g_autofree char *e = NULL;

        object_add_memfd(vm->qts, mid, 128 * MiB);
        next++;
        e = device_add(vm->qts, "pc-dimm", did, extra);
        g_assert_null(e);
    }
    text = vub_hotplug_refused(vm, b, "'addr': \"05.0\"");
    {
        unsigned used, reserved;
        const char *p;

        p = strstr(text, "vhost backend memory slots limit (32) is less than"
                   " current number of used (");
        g_assert_nonnull(p);
        g_assert_cmpint(sscanf(p, "vhost backend memory slots limit (32) is"
                               " less than current number of used (%u) and"
                               " reserved (%u) memory slots", &used,
                               &reserved), ==, 2);
        g_test_message("refused: used %u, reserved %u", used, reserved);
        /* 34 DIMMs and the boot memory */
        g_assert_cmpuint(used, >=, 35);
        g_assert_cmpuint(used, <=, 40);
        g_assert_cmpuint(reserved, ==, 0);
    }
    vm_quit_with_backend(vm, b);
}

/*
 * A dynamic-memslots device whose hot-plug failed after it decided on
 * several memslots (realize refuses unplugged-inaccessible=off) must not
 * count as such a device: a 32-memslot backend is still accepted.
 */
static void test_failed_hotplug(void)
{
    Backend *b = backend_start(32);
    VM *vm = vm_start("q35", "-m 1G,maxmem=5G "
                      "-device pcie-root-port,id=rp1,chassis=1 "
                      "-device pcie-root-port,id=rp2,chassis=2");
    g_autofree char *err = NULL, *err2 = NULL, *decided = NULL;

    object_add_memfd(vm->qts, "m0", 4 * GiB);
    err = device_add(vm->qts, "virtio-mem-pci", "vm0",
                     "'memdev': 'm0', 'bus': 'rp1', "
                     "'dynamic-memslots': true, "
                     "'unplugged-inaccessible': 'off'");
    g_test_message("virtio-mem hot-plug: %s", err);
    g_assert_nonnull(err);
    g_assert_nonnull(strstr(err, "'dynamic-memslots' property set to 'on'"
                            " requires 'unplugged-inaccessible' to be 'on'"));
    decided = decided_memslots(vm);
    g_assert_cmpstr(decided, ==, "4");

    chardev_add(vm->qts, "c0", b->sock);
    err2 = device_add(vm->qts, "vhost-user-blk-pci", "vub0",
                      "'chardev': 'c0', 'bus': 'rp2', 'num-queues': 1");
    g_test_message("vhost-user-blk-pci hot-plug: %s", err2 ? err2 : "ok");
    g_assert_null(err2);
    vm_quit_with_backend(vm, b);
}

/* vhost-user is capped at 512 memslots, whatever the backend offers */
static void test_cap_512(void)
{
    Backend *b;
    VM *vm = vm_start_with_backend(1024, true, "", 4, &b);
    g_autofree char *text = NULL;

    g_assert_true(g_file_get_contents(vm->trace, &text, NULL, NULL));
    g_test_message("%s", text);
    g_assert_nonnull(strstr(text, "memory_device_memslot_limit id=vm0 "
                            "max=512 "));
    vm_quit_with_backend(vm, b);
}

/*
 * The mappings of memfds in process @pid: "offset+size" in address order,
 * e.g. "ff00000000+100000000,0+40000000"
 */
static char *memfd_maps(GPid pid, uint64_t *vm_size)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/maps", (int)pid);
    g_autofree char *spath = g_strdup_printf("/proc/%d/status", (int)pid);
    g_autofree char *text = NULL, *status = NULL;
    g_auto(GStrv) lines = NULL;
    GString *s = g_string_new("");
    const char *p;
    unsigned i;

    g_assert_true(g_file_get_contents(path, &text, NULL, NULL));
    lines = g_strsplit(text, "\n", -1);
    for (i = 0; lines[i]; i++) {
        uint64_t lo, hi, off;

        if (strstr(lines[i], "/memfd:") &&
            sscanf(lines[i], "%" SCNx64 "-%" SCNx64 " %*s %" SCNx64, &lo, &hi,
                   &off) == 3) {
            g_string_append_printf(s, "%s%" PRIx64 "+%" PRIx64,
                                   s->len ? "," : "", off, hi - lo);
        }
    }
    g_assert_true(g_file_get_contents(spath, &status, NULL, NULL));
    p = strstr(status, "VmSize:");
    g_assert_nonnull(p);
    *vm_size = g_ascii_strtoull(p + strlen("VmSize:"), NULL, 10) * KiB;
    return g_string_free(s, false);
}

/*
 * The project's qemu-storage-daemon beside a 1 TiB device with 256
 * memslots of 4 GiB: plugging the device's last block maps only the last
 * memslot, from its offset in the memfd (7.2's libvhost-user mapped the
 * memfd from offset 0, i.e. the whole 1 TiB for that region).
 */
static bool has_token(const char *list, const char *token)
{
    g_auto(GStrv) tokens = g_strsplit(list, ",", -1);

    return g_strv_contains((const gchar * const *)tokens, token);
}

static void test_qsd_top_of_1t(void)
{
    Backend *b = backend_start(0);
    VM *vm;
    QVirtioMem *vmem;
    QVirtioMemConfig c;
    QVirtioPCIDevice *vub;
    QVirtQueue *vq;
    g_autofree char *maps0 = NULL, *maps1 = NULL, *maps2 = NULL;
    uint64_t size0, size1, size2;

    vm = vm_start("q35", "-m 1G,maxmem=1025G "
                  "-chardev socket,id=c0,path=%s "
                  "-device vhost-user-blk-pci,id=vub0,chardev=c0,"
                  "addr=05.0,num-queues=1 "
                  VMEM_ARGS("0", "1T", ""), b->sock);
    g_assert_cmpint(device_memslots(vm->qts, "vm0"), ==, 256);
    vub = vub_driver_start(vm, QPCI_DEVFN(5, 0), &vq);
    vmem = qvirtio_mem_pci_init(vm->qts, vm->bus, &vm->alloc,
                                QPCI_DEVFN(4, 0));
    qvirtio_mem_get_config(vmem, &c);
    maps0 = memfd_maps(b->pid, &size0);
    g_test_message("boot memory only: %s, VmSize %" PRIu64, maps0, size0);

    /* the last block: memslot 255, at 1020 GiB into the memfd */
    plug(vmem, c.addr + TiB - c.block_size, 1);
    maps1 = memfd_maps(b->pid, &size1);
    g_test_message("last block plugged: %s, VmSize %" PRIu64, maps1, size1);
    g_assert_true(has_token(maps1, "ff00000000+100000000"));
    g_assert_cmpuint(size1 - size0, ==, 4 * GiB);

    /* and the first: memslot 0 */
    plug(vmem, c.addr, 1);
    maps2 = memfd_maps(b->pid, &size2);
    g_test_message("first block too: %s, VmSize %" PRIu64, maps2, size2);
    g_assert_true(has_token(maps2, "0+100000000"));
    g_assert_true(has_token(maps2, "ff00000000+100000000"));
    g_assert_cmpuint(size2 - size0, ==, 8 * GiB);

    /* unplug-all: both mappings go */
    g_assert_cmpuint(qvirtio_mem_unplug_all(vmem), ==, VIRTIO_MEM_RESP_ACK);
    g_free(maps1);
    maps1 = memfd_maps(b->pid, &size1);
    g_test_message("unplugged all: %s, VmSize %" PRIu64, maps1, size1);
    g_assert_cmpstr(maps1, ==, maps0);
    test_finish(vm, b, vmem, vub, vq);
}

int main(int argc, char **argv)
{
    unsigned i;
    int ret;

    g_test_init(&argc, &argv, NULL);
    tmpdir = g_dir_make_tmp("vhost-memslots-XXXXXX", NULL);
    g_assert_nonnull(tmpdir);
    qtest_add_func("/robust/vhost-user/backend-first", test_backend_first);
    for (i = 0; i < ARRAY_SIZE(order_cases); i++) {
        g_autofree char *name = g_strdup_printf(
            "/robust/vhost-user/order/%u%s", order_cases[i].slots,
            order_cases[i].extra[0] ? "-memslot-size" : "");

        qtest_add_data_func(name, &order_cases[i], test_order);
    }
    qtest_add_func("/robust/vhost-user/backend-after-hotplug",
                   test_backend_after_hotplug);
    qtest_add_func("/robust/vhost-user/device-hotplug-after-backend",
                   test_device_hotplug_after_backend);
    qtest_add_func("/robust/vhost-user/capable-backend",
                   test_capable_backend);
    qtest_add_func("/robust/vhost-user/unplug-one-of-two",
                   test_unplug_one_of_two);
    qtest_add_func("/robust/vhost-user/plug-after-memory",
                   test_plug_after_memory);
    qtest_add_func("/robust/vhost-user/failed-hotplug",
                   test_failed_hotplug);
    if (g_getenv("QSD_BINARY")) {
        qtest_add_func("/robust/vhost-user/qsd-top-of-1t",
                       test_qsd_top_of_1t);
    }
    if (g_getenv("VHOST_USER_BLK_1024")) {
        qtest_add_func("/robust/vhost-user/cap-512", test_cap_512);
    }
    ret = g_test_run();
    if (!g_getenv("ROBUST_KEEP_TMP")) {
        g_autofree char *cmd = g_strdup_printf("rm -rf %s", tmpdir);

        g_assert_true(g_spawn_command_line_sync(cmd, NULL, NULL, NULL, NULL));
    }
    return ret;
}
