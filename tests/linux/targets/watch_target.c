/* A target for `pss-dup watch` that does one thing on cue (argv[1]), after argv[2] milliseconds:
 *   spin FILE         write the time (CLOCK_REALTIME, seconds) to FILE, then spin in spin_here() forever
 *   grow MIB STEPS    touch MIB more MiB every 300 ms, STEPS times, then wait
 *   fds N             open N more fds (/dev/null), then wait
 *   threads N         start N more threads that wait, then wait
 *   deadlock          one thread takes a lock and waits forever; the main thread waits for that lock
 * It prints "ready" first, and "done" once it did its thing. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static volatile unsigned long spins;

__attribute__((noinline)) static void spin_here(void) { for (;;) spins++; }

static void *wait_forever(void *arg) { (void)arg; for (;;) pause(); return NULL; }

static void *hold_lock(void *arg) {
    (void)arg;
    pthread_mutex_lock(&lock);
    for (;;) pause();
    return NULL;
}

static void say(const char *what) { printf("%s\n", what); fflush(stdout); }

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    say("ready");
    usleep((useconds_t)atoi(argv[2]) * 1000);
    const char *mode = argv[1];
    if (!strcmp(mode, "spin") && argc > 3) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        FILE *f = fopen(argv[3], "w");
        if (!f) return 1;
        fprintf(f, "%ld.%09ld\n", (long)now.tv_sec, now.tv_nsec);
        fclose(f);
        say("done");
        spin_here();
    } else if (!strcmp(mode, "grow") && argc > 4) {
        size_t step = (size_t)atoi(argv[3]) << 20;
        for (int i = 0; i < atoi(argv[4]); i++) {
            char *block = malloc(step);
            if (!block) return 1;
            memset(block, 1 + i, step);
            usleep(300 * 1000);
        }
        say("done");
    } else if (!strcmp(mode, "fds") && argc > 3) {
        for (int i = 0; i < atoi(argv[3]); i++)
            if (open("/dev/null", O_RDONLY) < 0) return 1;
        say("done");
    } else if (!strcmp(mode, "threads") && argc > 3) {
        for (int i = 0; i < atoi(argv[3]); i++) {
            pthread_t t;
            if (pthread_create(&t, NULL, wait_forever, NULL)) return 1;
        }
        say("done");
    } else if (!strcmp(mode, "deadlock")) {
        pthread_t t;
        pthread_create(&t, NULL, hold_lock, NULL);
        usleep(50 * 1000);
        say("done");
        pthread_mutex_lock(&lock);
    } else if (strcmp(mode, "wait")) {
        return 2;
    }
    for (;;) pause();
}
