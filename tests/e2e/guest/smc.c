/*
 * smc: self-modifying code in the memory of one NUMA node, for the e2e
 * suite's TCG test (tests/e2e/test_smc.py).  Built static by
 * scripts/build-guest.sh into the test guest's initramfs as /bin/smc.
 *
 *   smc [-n NODE] [-i ROUNDS] [-v VERSION] [-w]
 *                       (defaults: node 1, 1000 rounds, version 0)
 *
 * Makes a memfd of PAGES pages, maps it twice at fixed addresses (A:
 * read/write/execute, B: read/write only), binds both mappings to NODE with
 * mbind(2) (MPOL_BIND, no libnuma), writes x86-64 functions through A and
 * prints the guest-physical address of every page (/proc/self/pagemap,
 * needs root) and its node (get_mempolicy(2)):
 *
 *   smc: page 0 phys 0x140000000 node 1 (A 0x200000000 B 0x300000000)
 *
 * The immediates of the code first written depend on VERSION (0-255, all 0
 * for version 0), the code layout does not: runs with different versions
 * put different instruction bytes at the same virtual addresses:
 *
 *   smc: code version 1: first results 0x1010101 0x10010101 0x1000101 ...
 *
 * Every function is then called (round 0).  With -w it then prints
 *
 *   smc: waiting for SIGUSR1 (pid 123)
 *
 * and waits (at most 10 minutes) until it gets SIGUSR1, while the code's
 * translations stay cached in the pages (e.g. while the memory is unplugged
 * and plugged again, the process's pages moved elsewhere), then calls every
 * function again (round 0 too) and prints the placement ("held").
 *
 * Then, ROUNDS times (may be 0), it rewrites the code and runs it, each
 * function called several times before and after every rewrite so that TCG
 * has a translation cached when the next write comes:
 *
 *   imm-A      page 0: "mov eax, imm32; ret", imm32 rewritten through A
 *   imm-B      page 0 (other half): "mov eax, imm32; add eax, imm32; ret",
 *              the add's imm32 rewritten through the second mapping B
 *   opcode     page 1: "mov eax, edi; add/sub eax, imm32; ret", the opcode
 *              toggled between add and sub, alternately through A and B
 *   straddle   pages 2-3: "mov eax, imm32; ret" whose imm32 crosses the
 *              page boundary; only its upper half (in page 3) is rewritten,
 *              through B
 *
 * and prints one "smc: PASS <step> ..." or "smc: FAIL <step> ..." line per
 * step (the first mismatches of a step are printed as they happen).  The
 * placement is printed again at the end (pages could have moved).  Exit
 * status 0 if every call returned what was written, 1 on any mismatch,
 * 2 if the setup failed.  x86 needs no cache flush between writing code
 * and running it (also not through another mapping of the same page).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PAGE 4096
#define PAGES 4
#define MPOL_BIND 2
#define MPOL_MF_STRICT (1 << 0)
#define MPOL_MF_MOVE (1 << 1)
#define MPOL_F_NODE (1 << 0)
#define MPOL_F_ADDR (1 << 1)
/*
 * Fixed virtual addresses: every run puts the code at the same guest-virtual
 * address, so a translation left over from an earlier run in the same
 * physical page (e.g. before the memory was unplugged and plugged again)
 * would match and be used if a write failed to invalidate it.
 */
#define A_ADDR 0x200000000UL
#define B_ADDR 0x300000000UL
/* Offsets of the functions (see above) in the code. */
#define F0 0
#define F1 (PAGE / 2)
#define F2 PAGE
#define F3 (3 * PAGE - 3)
#define CALLS 3         /* calls of a function before and after each write */
#define MAX_REPORTS 5   /* mismatch lines printed per step */
#define WAIT_SECONDS 600 /* -w: longest wait for SIGUSR1 */

typedef int (*fn_t)(int);

static unsigned char *a, *b;    /* the two mappings of the memfd */

static void die(const char *what)
{
    printf("smc: FAIL setup: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* Write bytes into the code through mapping m (a or b). */
static void poke(unsigned char *m, size_t off, const void *src, size_t n)
{
    volatile unsigned char *dst = m + off;
    const unsigned char *s = src;

    for (size_t i = 0; i < n; i++) {
        dst[i] = s[i];
    }
}

static void poke32(unsigned char *m, size_t off, uint32_t v)
{
    poke(m, off, &v, 4);
}

static uint64_t phys_of(int pagemap, const void *addr)
{
    uint64_t e;
    off_t off = (off_t)((uintptr_t)addr / PAGE) * 8;

    if (pread(pagemap, &e, 8, off) != 8) {
        die("pread /proc/self/pagemap");
    }
    if (!(e & (1ULL << 63))) {
        return 0;                               /* not present */
    }
    return (e & ((1ULL << 55) - 1)) * PAGE;     /* PFN 0 without root */
}

static int node_of(void *addr)
{
    int node = -1;

    if (syscall(SYS_get_mempolicy, &node, NULL, 0, addr,
                MPOL_F_NODE | MPOL_F_ADDR) != 0) {
        return -1;
    }
    return node;
}

/* Print where every page is; 0 if all are present, the same in A and B. */
static int placement(const char *when)
{
    int pagemap = open("/proc/self/pagemap", O_RDONLY);
    int bad = 0;

    if (pagemap < 0) {
        die("open /proc/self/pagemap");
    }
    printf("smc: placement %s\n", when);
    for (int i = 0; i < PAGES; i++) {
        /* pagemap shows a mapping's page tables: fault B's pages in too. */
        (void)*(volatile unsigned char *)(b + i * PAGE);
    }
    for (int i = 0; i < PAGES; i++) {
        uint64_t pa = phys_of(pagemap, a + i * PAGE);
        uint64_t pb = phys_of(pagemap, b + i * PAGE);

        printf("smc: page %d phys 0x%" PRIx64 " node %d (A %p B %p)\n",
               i, pa, node_of(a + i * PAGE), (void *)(a + i * PAGE),
               (void *)(b + i * PAGE));
        if (pa == 0 || pa != pb) {
            printf("smc: FAIL placement: page %d phys via A 0x%" PRIx64
                   ", via B 0x%" PRIx64 " (want the same, non-zero)\n",
                   i, pa, pb);
            bad = 1;
        }
    }
    close(pagemap);
    return bad;
}

struct step {
    const char *name, *what;
    long calls, bad;
};

static void expect(struct step *s, long round, fn_t f, int arg, int want)
{
    for (int i = 0; i < CALLS; i++) {
        int got = f(arg);

        s->calls++;
        if (got != want) {
            if (s->bad++ < MAX_REPORTS) {
                printf("smc: FAIL %s: round %ld call %d: got %#x, want %#x "
                       "(stale code?)\n", s->name, round, i, (unsigned)got,
                       (unsigned)want);
            }
        }
    }
}

/* Call every function, expecting the results its current code gives. */
static void run_all(struct step *s, long round, uint32_t v0, uint32_t v1,
                    int add2, uint32_t k2, uint32_t v3)
{
    expect(&s[0], round, (fn_t)(a + F0), 0, v0);
    expect(&s[1], round, (fn_t)(a + F1), 0, 0x10000000 + v1);
    expect(&s[2], round, (fn_t)(a + F2), 0x01000000,
           add2 ? 0x01000000 + k2 : 0x01000000 - k2);
    expect(&s[3], round, (fn_t)(a + F3), 0, v3);
}

static uint32_t next(uint32_t *seed)
{
    *seed = *seed * 1103515245u + 12345u;
    return *seed;
}

int main(int argc, char **argv)
{
    int node = 1, opt, fd, version = 0, hold = 0;
    long rounds = 1000;
    sigset_t usr1;
    unsigned long mask;
    size_t len = PAGES * PAGE;
    uint32_t seed = 12345, v0, v1, k2, v3;
    int add2 = 1, bad = 0;
    const unsigned char ret = 0xc3;
    struct step steps[] = {
        { .name = "imm-A",
          .what = "page 0, imm32 rewritten through mapping A" },
        { .name = "imm-B",
          .what = "page 0, other function, imm32 rewritten through B" },
        { .name = "opcode",
          .what = "page 1, add/sub opcode toggled through A and B" },
        { .name = "straddle",
          .what = "pages 2-3, imm32 across the boundary, its page 3 half "
                  "rewritten through B" },
    };

    setvbuf(stdout, NULL, _IOLBF, 0);
    while ((opt = getopt(argc, argv, "n:i:v:w")) != -1) {
        switch (opt) {
        case 'n':
            node = atoi(optarg);
            break;
        case 'i':
            rounds = atol(optarg);
            break;
        case 'v':
            version = atoi(optarg);
            break;
        case 'w':
            hold = 1;
            break;
        default:
            fprintf(stderr, "usage: %s [-n NODE] [-i ROUNDS] [-v VERSION] "
                    "[-w]\n", argv[0]);
            return 2;
        }
    }
    if (node < 0 || node >= 64 || rounds < 0 || version < 0 ||
        version > 255) {
        fprintf(stderr, "smc: bad node %d, rounds %ld or version %d\n", node,
                rounds, version);
        return 2;
    }
    /* Blocked from the start: a SIGUSR1 sent early is kept pending. */
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);

    fd = memfd_create("smc", 0);
    if (fd < 0) {
        die("memfd_create");
    }
    if (ftruncate(fd, len) != 0) {
        die("ftruncate");
    }
    a = mmap((void *)A_ADDR, len, PROT_READ | PROT_WRITE | PROT_EXEC,
             MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0);
    b = mmap((void *)B_ADDR, len, PROT_READ | PROT_WRITE,
             MAP_SHARED | MAP_FIXED_NOREPLACE, fd, 0);
    if (a != (void *)A_ADDR || b != (void *)B_ADDR) {
        die("mmap");
    }
    mask = 1UL << node;
    if (syscall(SYS_mbind, a, len, MPOL_BIND, &mask, 64,
                MPOL_MF_STRICT | MPOL_MF_MOVE) != 0) {
        die("mbind mapping A");
    }
    if (syscall(SYS_mbind, b, len, MPOL_BIND, &mask, 64,
                MPOL_MF_STRICT | MPOL_MF_MOVE) != 0) {
        die("mbind mapping B");
    }
    printf("smc: %d pages bound to node %d, %ld rounds, code version %d\n",
           PAGES, node, rounds, version);

    /*
     * The code, written through A (this allocates the pages); its
     * immediates (version 0: all 0) are the functions' first results.
     */
    v0 = 0x01010101u * version;
    v1 = 0x00010101u * version;
    k2 = 0x0101u * version;
    v3 = 0x10101010u * version;
    memset(a, 0xcc, len);                                   /* int3 */
    poke(a, F0, "\xb8", 1);                                 /* mov eax, v0 */
    poke32(a, F0 + 1, v0);
    poke(a, F0 + 5, &ret, 1);
    poke(a, F1, "\xb8\x00\x00\x00\x10", 5);          /* mov eax, 0x10000000 */
    poke(a, F1 + 5, "\x05", 1);                             /* add eax, v1 */
    poke32(a, F1 + 6, v1);
    poke(a, F1 + 10, &ret, 1);
    poke(a, F2, "\x89\xf8", 2);                             /* mov eax, edi */
    poke(a, F2 + 2, "\x05", 1);                             /* add eax, k2 */
    poke32(a, F2 + 3, k2);
    poke(a, F2 + 7, &ret, 1);
    poke(a, F3, "\xb8", 1);        /* mov eax, v3: bytes 1-2 in page 2, */
    poke32(a, F3 + 1, v3);         /* bytes 3-4 and the ret in page 3 */
    poke(a, F3 + 5, &ret, 1);

    printf("smc: code version %d: first results %#x %#x %#x %#x\n",
           version, (unsigned)v0, (unsigned)(0x10000000 + v1),
           (unsigned)(0x01000000 + k2), (unsigned)v3);
    bad |= placement("before");
    run_all(steps, 0, v0, v1, add2, k2, v3);
    if (hold) {
        siginfo_t si;
        struct timespec limit = { .tv_sec = WAIT_SECONDS };

        printf("smc: waiting for SIGUSR1 (pid %d)\n", (int)getpid());
        if (sigtimedwait(&usr1, &si, &limit) != SIGUSR1) {
            printf("smc: FAIL wait: no SIGUSR1 within %d s: %s\n",
                   WAIT_SECONDS, strerror(errno));
            bad = 1;
        }
        run_all(steps, 0, v0, v1, add2, k2, v3);
        bad |= placement("held");
    }

    for (long r = 1; r <= rounds; r++) {
        uint32_t hi;

        /* Run everything (translations cached), then rewrite and run. */
        run_all(steps, r, v0, v1, add2, k2, v3);

        v0 = next(&seed);
        poke32(a, F0 + 1, v0);
        expect(&steps[0], r, (fn_t)(a + F0), 0, v0);

        v1 = next(&seed) & 0xffffff;
        poke32(b, F1 + 6, v1);
        expect(&steps[1], r, (fn_t)(a + F1), 0, 0x10000000 + v1);

        k2 = next(&seed) & 0xffff;
        poke32(a, F2 + 3, k2);          /* the immediate, then the opcode */
        add2 = !add2;
        poke(r & 1 ? b : a, F2 + 2, add2 ? "\x05" : "\x2d", 1);
        expect(&steps[2], r, (fn_t)(a + F2), 0x01000000,
               add2 ? 0x01000000 + k2 : 0x01000000 - k2);

        hi = next(&seed) & 0xffff0000;  /* bytes 3-4 of the imm: page 3 */
        poke(b, F3 + 3, (unsigned char *)&hi + 2, 2);
        v3 = (v3 & 0xffff) | hi;
        expect(&steps[3], r, (fn_t)(a + F3), 0, v3);
    }

    bad |= placement("after");
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
        struct step *s = &steps[i];

        printf("smc: %s %s: %s: %ld rounds, %ld calls, %ld mismatches\n",
               s->bad ? "FAIL" : "PASS", s->name, s->what, rounds, s->calls,
               s->bad);
        bad |= s->bad != 0;
    }
    printf("smc: %s\n", bad ? "FAIL" : "PASS");
    return bad;
}
