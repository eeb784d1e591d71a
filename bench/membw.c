/*
 * Memory bandwidth ceilings for bench section 9 (preallocation): how fast
 * T threads populate a fresh memfd with MADV_POPULATE_WRITE (what QEMU's
 * preallocation does), and how fast they memset() memory that is populated
 * already.  Prints "populate T GiB/s" and "memset T GiB/s" lines.
 *
 *   membw SIZE_GIB THREADS
 */
#define _GNU_SOURCE
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

struct part {
    char *addr;
    size_t len;
    int populate;
};

static void *worker(void *opaque)
{
    struct part *p = opaque;

    if (p->populate) {
        if (madvise(p->addr, p->len, MADV_POPULATE_WRITE)) {
            for (size_t off = 0; off < p->len; off += 4096) {
                p->addr[off] = 0;
            }
        }
    } else {
        memset(p->addr, 0x5a, p->len);
    }
    return NULL;
}

static double run(char *area, size_t size, int threads, int populate)
{
    pthread_t tid[64];
    struct part parts[64];
    struct timespec t0, t1;
    size_t per = size / threads;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < threads; i++) {
        parts[i].addr = area + i * per;
        parts[i].len = i == threads - 1 ? size - i * per : per;
        parts[i].populate = populate;
        pthread_create(&tid[i], NULL, worker, &parts[i]);
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(tid[i], NULL);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
}

int main(int argc, char **argv)
{
    size_t size;
    int threads, fd;
    char *area;
    double s;

    if (argc != 3 || (threads = atoi(argv[2])) < 1 || threads > 64) {
        fprintf(stderr, "usage: membw SIZE_GIB THREADS\n");
        return 2;
    }
    size = (size_t)atoi(argv[1]) << 30;
    fd = memfd_create("membw", 0);
    if (fd < 0 || ftruncate(fd, size)) {
        perror("memfd");
        return 1;
    }
    area = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (area == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    s = run(area, size, threads, 1);
    printf("populate %d %.3f\n", threads, (size >> 30) / s);
    s = run(area, size, threads, 0);
    printf("memset %d %.3f\n", threads, (size >> 30) / s);
    return 0;
}
