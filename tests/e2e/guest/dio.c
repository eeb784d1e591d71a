/*
 * dio: direct I/O between a file or block device and a buffer that must lie
 * in a given range of guest physical memory (a virtio-mem device's), for the
 * vhost-user tests: the backend then reads and writes exactly that memory.
 *
 *   dio write FILE OFFSET MIB SEED LO HI [SPLIT]
 *   dio read  FILE OFFSET MIB SEED LO HI [SPLIT]
 *
 * The buffer is anonymous memory, without transparent huge pages, locked;
 * each page's physical address (from /proc/self/pagemap) must lie in
 * [LO, HI) (hex or decimal), or dio fails before any I/O. With SPLIT, dio
 * also counts the pages below and above SPLIT (e.g. a memslot boundary).
 * "write" fills the buffer with the pattern of SEED and writes it at OFFSET
 * with O_DIRECT, then fsync()s; "read" reads it back with O_DIRECT into a
 * buffer filled with 0xaa and checks every byte.
 *
 * The pattern of page P (counted in 4 KiB pages from the start of the file):
 * the 64-bit little-endian SEED, then P, then 4080 bytes of (SEED + P) & 0xff.
 * Prints "dio: OK ..." with the page counts; exits non-zero with a message
 * on any error or mismatch.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL

static void die(const char *what)
{
    fprintf(stderr, "dio: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void fill_page(uint8_t *p, uint64_t seed, uint64_t page)
{
    memcpy(p, &seed, 8);
    memcpy(p + 8, &page, 8);
    memset(p + 16, (int)((seed + page) & 0xff), PAGE - 16);
}

int main(int argc, char **argv)
{
    uint64_t offset, size, seed, lo, hi, split = 0, pages, i;
    uint64_t inside = 0, below = 0, above = 0;
    uint8_t *buf, expect[PAGE];
    int writing, fd, pm;

    if (argc < 8 || argc > 9 ||
        (strcmp(argv[1], "write") && strcmp(argv[1], "read"))) {
        fprintf(stderr, "usage: dio write|read FILE OFFSET MIB SEED LO HI"
                " [SPLIT]\n");
        return 2;
    }
    writing = !strcmp(argv[1], "write");
    offset = strtoull(argv[3], NULL, 0);
    size = strtoull(argv[4], NULL, 0) << 20;
    seed = strtoull(argv[5], NULL, 0);
    lo = strtoull(argv[6], NULL, 0);
    hi = strtoull(argv[7], NULL, 0);
    if (argc == 9) {
        split = strtoull(argv[8], NULL, 0);
    }
    if (!size || offset % PAGE) {
        fprintf(stderr, "dio: bad size or offset\n");
        return 2;
    }
    pages = size / PAGE;

    buf = mmap(NULL, size, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) {
        die("mmap");
    }
    if (madvise(buf, size, MADV_NOHUGEPAGE)) {
        die("madvise");
    }
    memset(buf, 0xaa, size);
    if (mlock(buf, size)) {
        die("mlock");
    }

    pm = open("/proc/self/pagemap", O_RDONLY);
    if (pm < 0) {
        die("open /proc/self/pagemap");
    }
    for (i = 0; i < pages; i++) {
        uint64_t entry, phys;
        off_t at = (off_t)(((uintptr_t)buf / PAGE + i) * 8);

        if (pread(pm, &entry, 8, at) != 8) {
            die("read /proc/self/pagemap");
        }
        if (!(entry >> 63)) {
            fprintf(stderr, "dio: page %" PRIu64 " not present\n", i);
            return 1;
        }
        phys = (entry & ((1ULL << 55) - 1)) * PAGE;
        if (phys >= lo && phys < hi) {
            inside++;
        }
        if (split && phys >= lo && phys < hi) {
            if (phys < split) {
                below++;
            } else {
                above++;
            }
        }
    }
    close(pm);
    if (inside != pages) {
        fprintf(stderr, "dio: only %" PRIu64 " of %" PRIu64 " pages lie in"
                " [0x%" PRIx64 ", 0x%" PRIx64 ")\n", inside, pages, lo, hi);
        return 1;
    }

    fd = open(argv[2], (writing ? O_RDWR : O_RDONLY) | O_DIRECT);
    if (fd < 0) {
        die(argv[2]);
    }
    if (writing) {
        for (i = 0; i < pages; i++) {
            fill_page(buf + i * PAGE, seed, offset / PAGE + i);
        }
        if (pwrite(fd, buf, size, (off_t)offset) != (ssize_t)size) {
            die("pwrite");
        }
        if (fsync(fd)) {
            die("fsync");
        }
    } else {
        if (pread(fd, buf, size, (off_t)offset) != (ssize_t)size) {
            die("pread");
        }
        for (i = 0; i < pages; i++) {
            fill_page(expect, seed, offset / PAGE + i);
            if (memcmp(buf + i * PAGE, expect, PAGE)) {
                fprintf(stderr, "dio: page %" PRIu64 " differs\n", i);
                return 1;
            }
        }
    }
    close(fd);
    printf("dio: OK %s %" PRIu64 " pages, all in [0x%" PRIx64 ", 0x%" PRIx64
           "), %" PRIu64 " below and %" PRIu64 " above the split\n",
           argv[1], pages, lo, hi, below, above);
    return 0;
}
