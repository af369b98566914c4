/* A target for the attached triggers of `pss-dup watch` (--on-signal, --on-crash, --on-exit), one mode per run:
 *   usr1 MS           after MS milliseconds (0: once a line comes on stdin) raise SIGUSR1 at itself; its handler
 *                     counts it, and "handled N" is printed after; then wait
 *   crash MS          after that cue dereference NULL in crash_here() (no handler: SIGSEGV kills it)
 *   exit MS           after that cue call exit(3) from exit_here()
 *   segv N            once a line comes on stdin, take N handled SIGSEGVs, one a millisecond (the handler jumps
 *                     back), printing "segv N" at the end; then wait
 *   log               print "sig N" for each signal N received (handlers for USR1, USR2, HUP, ALRM, WINCH, URG,
 *                     CONT, PIPE, TERM and the real-time ones); "sleep" while blocked in nanosleep, checked for EINTR
 *   storm N WORK      once a line comes on stdin, raise N handled SIGUSR1s, each after WORK loop turns of work;
 *                     print "took SECONDS HANDLED"; then wait (bench/bench_watch.py)
 *   big MIB           fill MIB MiB at `big` (byte i holds (i >> 20) ^ 0x5a), then per line on stdin: "usr1" raises
 *                     a handled SIGUSR1 and prints "handled N code C pid P" (the si_code and si_pid its handler saw), "spin" starts a thread spinning in spin_here(),
 *                     "crash" dereferences NULL in crash_here() (a clone-method dump while attached)
 * It prints "ready" first. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t usr1_count;
static sigjmp_buf back;
static volatile unsigned long work;

static void say(const char *what) { printf("%s\n", what); fflush(stdout); }

static void on_usr1(int sig) { (void)sig; usr1_count++; }

static volatile int usr1_code, usr1_pid;

static void on_usr1_info(int sig, siginfo_t *info, void *context) {
    (void)sig;
    (void)context;
    usr1_count++;
    usr1_code = info->si_code;
    usr1_pid = info->si_pid;
}

static void on_segv(int sig) { (void)sig; siglongjmp(back, 1); }

static void on_any(int sig) {
    char line[16];
    int n = snprintf(line, sizeof line, "sig %d\n", sig);
    ssize_t ignored = write(1, line, (size_t)n);
    (void)ignored;
}

/* Read through a volatile global, so that the compiler cannot prove it NULL and drop the call as undefined. */
static int *volatile nothing;

__attribute__((noinline)) void crash_here(void) { *nothing = 42; }

__attribute__((noinline)) void exit_here(void) {
    fflush(stdout);
    exit(3);
}

static void wait_forever(void) { for (;;) pause(); }

unsigned char *big;
static volatile unsigned long spins;

__attribute__((noinline)) static void *spin_here(void *arg) {
    (void)arg;
    for (;;) spins++;
    return NULL;
}

static void big_mode(int mib) {
    size_t size = (size_t)mib << 20;
    big = malloc(size);
    if (!big) exit(2);
    for (size_t i = 0; i < size; i += 4096) memset(big + i, (int)((i >> 20) ^ 0x5a) & 0xff, 4096);
    say("ready");
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "usr1", 4)) {
            raise(SIGUSR1);
            printf("handled %d code %d pid %d\n", (int)usr1_count, (int)usr1_code, (int)usr1_pid);
            fflush(stdout);
        } else if (!strncmp(line, "spin", 4)) {
            pthread_t t;
            pthread_create(&t, NULL, spin_here, NULL);
        } else if (!strncmp(line, "crash", 5)) {
            crash_here();
        }
    }
    wait_forever();
}

/* After MS milliseconds, or with 0 once a line comes on stdin (the test's cue, once its watcher is attached). */
static void cue(int ms) {
    if (ms == 0)
        while (getchar() != '\n') {}
    usleep((useconds_t)ms * 1000);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *mode = argv[1];
    int arg = argc > 2 ? atoi(argv[2]) : 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    if (!strcmp(mode, "usr1") || !strcmp(mode, "storm")) {
        sa.sa_handler = on_usr1;
        sigaction(SIGUSR1, &sa, NULL);
    } else if (!strcmp(mode, "big")) {
        sa.sa_sigaction = on_usr1_info;
        sa.sa_flags = SA_SIGINFO;
        sigaction(SIGUSR1, &sa, NULL);
    } else if (!strcmp(mode, "segv")) {
        sa.sa_handler = on_segv;
        sa.sa_flags = SA_NODEFER;
        sigaction(SIGSEGV, &sa, NULL);
    } else if (!strcmp(mode, "log")) {
        int logged[] = {SIGUSR1, SIGUSR2, SIGHUP, SIGALRM, SIGWINCH, SIGURG, SIGCONT, SIGPIPE, SIGTERM};
        sa.sa_handler = on_any;
        for (size_t i = 0; i < sizeof logged / sizeof logged[0]; i++) sigaction(logged[i], &sa, NULL);
        for (int s = SIGRTMIN; s <= SIGRTMAX; s++) sigaction(s, &sa, NULL);
    }
    if (!strcmp(mode, "big")) big_mode(arg);
    say("ready");
    if (!strcmp(mode, "usr1")) {
        cue(arg);
        raise(SIGUSR1);
        printf("handled %d\n", (int)usr1_count);
        fflush(stdout);
        wait_forever();
    } else if (!strcmp(mode, "crash")) {
        cue(arg);
        crash_here();
    } else if (!strcmp(mode, "exit")) {
        cue(arg);
        exit_here();
    } else if (!strcmp(mode, "segv")) {
        volatile int taken = 0;
        while (getchar() != '\n') {}
        for (;;) {
            if (sigsetjmp(back, 0) == 0 && taken < arg) {
                crash_here();
            }
            if (taken >= arg) break;
            taken++;
            usleep(1000);
        }
        printf("segv %d\n", (int)taken);
        fflush(stdout);
        wait_forever();
    } else if (!strcmp(mode, "log")) {
        for (;;) {
            struct timespec t = {3600, 0};
            if (nanosleep(&t, &t) != 0 && errno != EINTR) say("nanosleep failed");
        }
    } else if (!strcmp(mode, "storm")) {
        int turns = argc > 3 ? atoi(argv[3]) : 20000;
        while (getchar() != '\n') {}
        double started = now();
        for (int i = 0; i < arg; i++) {
            for (int j = 0; j < turns; j++) work++;
            raise(SIGUSR1);
        }
        printf("took %.6f %d\n", now() - started, (int)usr1_count);
        fflush(stdout);
        wait_forever();
    }
    return 2;
}
