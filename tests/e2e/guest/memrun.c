/*
 * memrun: put a guest workload into the memory of one NUMA node (the
 * virtio-mem device's), for the benchmarks' TCG sections.
 *
 *   memrun -n NODE -m MIB -x        run code from every page: write a
 *                                   "ret" at its start and call it, so that
 *                                   TCG translates code from each page
 *   memrun -n NODE -m MIB -s PASSES fill MIB with a pattern, then checksum
 *                                   it PASSES times (64-bit words, a
 *                                   multiply-xor hash)
 *
 * The memory is anonymous, bound to NODE with mbind(2) (MPOL_BIND, no
 * libnuma), without transparent huge pages (one fault per 4 KiB page, the
 * pages as the guest kernel hands them out).  Prints "memrun: OK ..." with
 * the pages touched, the seconds the work took (guest clock) and, for -s,
 * the checksum; exits non-zero with a message on any error.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MPOL_BIND 2
#define PAGE 4096UL

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "memrun: %s: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv)
{
    unsigned long mib = 0, node = 1, passes = 0, nodemask, pages, i;
    int opt, code = 0;
    unsigned char *mem;
    double t0, t;
    size_t len;

    while ((opt = getopt(argc, argv, "n:m:xs:")) != -1) {
        switch (opt) {
        case 'n':
            node = strtoul(optarg, NULL, 0);
            break;
        case 'm':
            mib = strtoul(optarg, NULL, 0);
            break;
        case 'x':
            code = 1;
            break;
        case 's':
            passes = strtoul(optarg, NULL, 0);
            break;
        default:
            fprintf(stderr, "usage: memrun -n NODE -m MIB (-x | -s PASSES)\n");
            return 2;
        }
    }
    if (!mib || node >= 64 || code == !!passes) {
        fprintf(stderr, "usage: memrun -n NODE -m MIB (-x | -s PASSES)\n");
        return 2;
    }
    len = mib << 20;
    pages = len / PAGE;
    mem = mmap(NULL, len, PROT_READ | PROT_WRITE | (code ? PROT_EXEC : 0),
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) {
        die("mmap");
    }
    if (madvise(mem, len, MADV_NOHUGEPAGE)) {
        die("madvise");
    }
    nodemask = 1UL << node;
    if (syscall(SYS_mbind, mem, len, MPOL_BIND, &nodemask, 64, 0)) {
        die("mbind");
    }

    t0 = now();
    if (code) {
        for (i = 0; i < pages; i++) {
            unsigned char *p = mem + i * PAGE;

            p[0] = 0xc3;    /* ret */
            __builtin___clear_cache((char *)p, (char *)p + 1);
            ((void (*)(void))p)();
        }
        t = now() - t0;
        printf("memrun: OK code pages %lu seconds %.3f\n", pages, t);
    } else {
        uint64_t *w = (uint64_t *)mem, sum = 0;
        size_t n = len / sizeof(*w), k;
        unsigned long pass;
        double tfill;

        for (k = 0; k < n; k++) {
            w[k] = k * 0x9e3779b97f4a7c15ULL;
        }
        tfill = now() - t0;
        t0 = now();
        for (pass = 0; pass < passes; pass++) {
            for (k = 0; k < n; k++) {
                sum = (sum ^ w[k]) * 0x100000001b3ULL;
                sum ^= sum >> 32;
            }
        }
        t = now() - t0;
        printf("memrun: OK sum pages %lu fill %.3f seconds %.3f "
               "checksum %016" PRIx64 "\n", pages, tfill, t, sum);
    }
    return 0;
}
