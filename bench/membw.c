/*
 * Memory bandwidth ceilings of bench section 9 (preallocation), built by
 * bench/run.py into build/bench/membw (gcc, no other dependency).
 *
 *   membw SIZE_MIB THREADS [hugetlb] [once]
 *
 * On a fresh memfd of SIZE_MIB (4 KiB pages, or 2 MiB hugetlb pages with
 * "hugetlb"), THREADS threads, each on its own contiguous share:
 *
 *   populate    MADV_POPULATE_WRITE of the fresh memfd (what QEMU's
 *               preallocation does; falls back to writing one byte per
 *               page where the kernel lacks it): allocation and zeroing
 *               of every page, and on a host that is itself a VM the
 *               hypervisor backing the memory on first touch;
 *   memset      memset() of the now populated memory: the write bandwidth;
 *   repopulate  the whole file punched out (FALLOC_FL_PUNCH_HOLE) and
 *               populated again at once: memory the kernel just freed, so
 *               (unless the host reclaimed it meanwhile) allocation and
 *               zeroing only.
 *
 * "once": populate only (a warm-up pass).
 * Prints "NAME GIB_PER_S" lines, plus "method madvise|touch".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/memfd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21 << 26)
#endif

enum { POPULATE, MEMSET };

struct part {
    char *addr;
    size_t len, page;
    int what;
    int touched;
};

static void *worker(void *opaque)
{
    struct part *p = opaque;

    if (p->what == MEMSET) {
        memset(p->addr, 0x5a, p->len);
    } else if (madvise(p->addr, p->len, MADV_POPULATE_WRITE)) {
        p->touched = 1;
        for (size_t off = 0; off < p->len; off += p->page) {
            ((volatile char *)p->addr)[off] = 0;
        }
    }
    return NULL;
}

static int touched;

static double run(char *area, size_t size, size_t page, int threads, int what)
{
    pthread_t tid[64];
    struct part parts[64];
    struct timespec t0, t1;
    size_t per = size / threads / page * page;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < threads; i++) {
        parts[i].addr = area + i * per;
        parts[i].len = i == threads - 1 ? size - i * per : per;
        parts[i].page = page;
        parts[i].what = what;
        parts[i].touched = 0;
        if (pthread_create(&tid[i], NULL, worker, &parts[i])) {
            perror("pthread_create");
            exit(1);
        }
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(tid[i], NULL);
        touched |= parts[i].touched;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
}

int main(int argc, char **argv)
{
    size_t size, page = 4096;
    int threads, fd, huge = 0, once = 0;
    char *area;
    double gib;

    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "hugetlb")) {
            huge = 1;
        } else if (!strcmp(argv[i], "once")) {
            once = 1;
        } else {
            argc = 0;
        }
    }
    if (argc < 3 || (threads = atoi(argv[2])) < 1 || threads > 64 ||
        atol(argv[1]) < 2) {
        fprintf(stderr, "usage: membw SIZE_MIB THREADS [hugetlb] [once]\n");
        return 2;
    }
    if (huge) {
        page = 2 << 20;
    }
    size = (size_t)atol(argv[1]) << 20;
    size = size / page * page;
    gib = (double)size / (1 << 30);
    fd = memfd_create("membw", huge ? MFD_HUGETLB | MFD_HUGE_2MB : 0);
    if (fd < 0 || ftruncate(fd, size)) {
        perror("memfd");
        return 1;
    }
    /* MAP_NORESERVE: hugetlb pages are taken from the pool when touched */
    area = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
                fd, 0);
    if (area == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    printf("populate %.3f\n", gib / run(area, size, page, threads, POPULATE));
    if (once) {
        printf("method %s\n", touched ? "touch" : "madvise");
        return 0;
    }
    printf("memset %.3f\n", gib / run(area, size, page, threads, MEMSET));
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, size)) {
        perror("fallocate");
        return 1;
    }
    printf("repopulate %.3f\n", gib / run(area, size, page, threads, POPULATE));
    printf("method %s\n", touched ? "touch" : "madvise");
    return 0;
}
