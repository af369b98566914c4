/* A C test target for freezing and injection: many threads, threads being born, signals in flight, a vfork
 * parent stuck in an uninterruptible wait, a group leader that has exited.
 *
 *   threads N      N extra threads (half in nanosleep, half in a futex wait), main thread serves commands
 *   spawner        a thread keeps creating short-lived threads; main serves commands
 *   sigspam        a thread keeps sending itself SIGRTMIN (queued, never merged) and counts what its handler gets
 *   sigcatch       like sigspam, but the signals go to the main thread, which sits in read(2) (SA_RESTART)
 *   vfork S        the main thread vforks a child that sleeps S seconds: the parent waits in state D
 *   vfork-tick S   the same, while a second thread ticks every millisecond and keeps its longest gap
 *   leader-exit    a worker thread serves commands, then the main thread calls pthread_exit (a zombie leader)
 *   ownstack       a worker thread on a malloc'd stack (no guard page) serves commands; the main thread sleeps
 *
 * Commands (lines on stdin, read with raw read(2)): "count" -> "count SENT RECEIVED", "quiet" (stop sending),
 * "check FD" -> "check FD <first bytes>", "ping" -> "pong", "gap" -> "gap LONGEST_US TICKS" (the ticker's longest
 * gap between two ticks, in microseconds), "exit". Every failed read is reported as "read-error ERRNO". Prints
 * "ready PID" once set up.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static atomic_long sent, received, longest_gap_us, ticks;
static atomic_int quiet;
static int futex_word;
static pid_t spam_target; /* 0: the spamming thread itself */

static void say(const char *fmt, long a, long b) {
    char line[256];
    int n = snprintf(line, sizeof line, fmt, a, b);
    if (write(1, line, (size_t)n) < 0) _exit(2);
}

static void sleep_for(double seconds) {
    struct timespec ts = {(time_t)seconds, (long)((seconds - (time_t)seconds) * 1e9)};
    syscall(SYS_nanosleep, &ts, NULL);
}

static void *napper(void *arg) {
    (void)arg;
    for (;;) sleep_for(1000);
    return NULL;
}

static void *futex_waiter(void *arg) {
    (void)arg;
    for (;;) syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, NULL);
    return NULL;
}

static void *short_lived(void *arg) {
    (void)arg;
    sleep_for(0.002);
    return NULL;
}

static void *spawner(void *arg) {
    (void)arg;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (;;) {
        pthread_t t;
        pthread_create(&t, &attr, short_lived, NULL);
        sleep_for(0.0005);
    }
    return NULL;
}

static void on_rt(int sig) {
    (void)sig;
    atomic_fetch_add(&received, 1);
}

static void *sig_spammer(void *arg) {
    (void)arg;
    pid_t pid = getpid(), tid = spam_target ? spam_target : (pid_t)syscall(SYS_gettid);
    while (!atomic_load(&quiet)) {
        if (atomic_load(&sent) - atomic_load(&received) < 100) {
            atomic_fetch_add(&sent, 1);
            syscall(SYS_tgkill, pid, tid, SIGRTMIN);
        }
    }
    return NULL;
}

static long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000L + ts.tv_nsec / 1000;
}

static void *ticker(void *arg) {
    (void)arg;
    long last = now_us();
    for (;;) {
        sleep_for(0.001);
        long now = now_us();
        if (now - last > atomic_load(&longest_gap_us)) atomic_store(&longest_gap_us, now - last);
        atomic_fetch_add(&ticks, 1);
        last = now;
    }
    return NULL;
}

static void *serve(void *arg) {
    (void)arg;
    char buf[4096];
    size_t have = 0;
    for (;;) {
        ssize_t n = syscall(SYS_read, 0, buf + have, sizeof buf - have - 1);
        if (n < 0) {
            say("read-error %ld\n", errno, 0);
            continue;
        }
        if (n == 0) _exit(0);
        have += (size_t)n;
        buf[have] = 0;
        char *nl;
        while ((nl = strchr(buf, '\n')) != NULL) {
            *nl = 0;
            if (strcmp(buf, "count") == 0) {
                say("count %ld %ld\n", atomic_load(&sent), atomic_load(&received));
            } else if (strcmp(buf, "quiet") == 0) {
                atomic_store(&quiet, 1);
                say("quiet %ld %ld\n", 0, 0);
            } else if (strncmp(buf, "check ", 6) == 0) {
                int fd = atoi(buf + 6);
                char data[64] = {0};
                ssize_t got = pread(fd, data, sizeof data - 1, 0);
                char line[160];
                int len = snprintf(line, sizeof line, "check %d %zd %s\n", fd, got, got > 0 ? data : "-");
                if (write(1, line, (size_t)len) < 0) _exit(2);
            } else if (strcmp(buf, "gap") == 0) {
                say("gap %ld %ld\n", atomic_load(&longest_gap_us), atomic_load(&ticks));
            } else if (strcmp(buf, "ping") == 0) {
                say("pong %ld %ld\n", 0, 0);
            } else if (strcmp(buf, "exit") == 0) {
                _exit(0);
            }
            size_t used = (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, have - used + 1);
            have -= used;
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2) return 64;
    const char *mode = argv[1];
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_t t;
    if (strcmp(mode, "threads") == 0) {
        int n = argc > 2 ? atoi(argv[2]) : 10;
        for (int i = 0; i < n; i++) {
            if (pthread_create(&t, &attr, i % 2 ? futex_waiter : napper, NULL) != 0) return 3;
        }
    } else if (strcmp(mode, "spawner") == 0) {
        pthread_create(&t, &attr, spawner, NULL);
    } else if (strcmp(mode, "sigspam") == 0 || strcmp(mode, "sigcatch") == 0) {
        if (strcmp(mode, "sigcatch") == 0) spam_target = getpid();
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_rt;
        sa.sa_flags = SA_RESTART;
        sigaction(SIGRTMIN, &sa, NULL);
        pthread_create(&t, &attr, sig_spammer, NULL);
    } else if (strcmp(mode, "vfork") == 0 || strcmp(mode, "vfork-tick") == 0) {
        double seconds = argc > 2 ? atof(argv[2]) : 2;
        if (strcmp(mode, "vfork-tick") == 0) pthread_create(&t, &attr, ticker, NULL);
        say("ready %ld %ld\n", (long)getpid(), 0);
        pid_t child = vfork();
        if (child == 0) {
            sleep_for(seconds);
            _exit(0);
        }
        say("vfork-done %ld %ld\n", (long)child, 0);
        serve(NULL);
        return 0;
    } else if (strcmp(mode, "ownstack") == 0) {
        size_t size = 256 * 1024;
        pthread_attr_setstack(&attr, malloc(size), size);
        pthread_create(&t, &attr, serve, NULL);
        say("ready %ld %ld\n", (long)getpid(), 0);
        for (;;) sleep_for(1000);
    } else if (strcmp(mode, "leader-exit") == 0) {
        pthread_create(&t, &attr, serve, NULL);
        say("ready %ld %ld\n", (long)getpid(), 0);
        pthread_exit(NULL);
    } else {
        return 64;
    }
    say("ready %ld %ld\n", (long)getpid(), 0);
    serve(NULL);
    return 0;
}
