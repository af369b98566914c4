/* A target blocked, again and again, in one system call that a ptrace stop ends with EINTR.
 *
 *   eintr CALL TIMEOUT_MS [allow]
 *
 * CALL: epoll_wait epoll_pwait epoll_pwait2 semop semtimedop sigtimedwait io_getevents recv_timeout
 * TIMEOUT_MS: -1 waits for ever (semop and the NULL-timeout forms), otherwise the call's own timeout.
 * Every call is made with a raw syscall(), so nothing in libc retries it. Each call that ends prints one line:
 * "done MS" when its timeout ran out (MS: how long it took), "eintr" when it failed with EINTR. Without `allow`
 * an EINTR aborts the process (the test sees it die with SIGABRT). SIGUSR1 has a handler installed without
 * SA_RESTART, which prints "handler N" after the interrupted call: a real signal must still interrupt it.
 * Prints "ready" first. stdin is not read; the test ends the process.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/aio_abi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t handled;

static void on_usr1(int sig) {
    (void)sig;
    handled++;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *call = argv[1];
    long timeout = atol(argv[2]);
    int allow = argc > 3 && strcmp(argv[3], "allow") == 0;
    struct timespec ts = {timeout / 1000, (timeout % 1000) * 1000000L};
    struct timespec *tsp = timeout < 0 ? NULL : &ts;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1; /* no SA_RESTART */
    sigaction(SIGUSR1, &sa, NULL);
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    sigprocmask(SIG_BLOCK, &usr2, NULL);

    int pipefd[2];
    if (pipe(pipefd) != 0) return 2;
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN};
    epoll_ctl(ep, EPOLL_CTL_ADD, pipefd[0], &ev);
    int semid = semget(IPC_PRIVATE, 1, 0600);
    aio_context_t aio = 0;
    syscall(SYS_io_setup, 1, &aio);
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    struct timeval tv = {timeout / 1000, (timeout % 1000) * 1000};
    setsockopt(sv[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

    printf("ready\n");
    fflush(stdout);
    int seen = 0;
    for (;;) {
        struct epoll_event out;
        struct sembuf op = {0, -1, 0};
        struct io_event events[1];
        char buf[16];
        double started = now_ms();
        long ret;
        if (strcmp(call, "epoll_wait") == 0)
            ret = syscall(SYS_epoll_wait, ep, &out, 1, (int)timeout);
        else if (strcmp(call, "epoll_pwait") == 0)
            ret = syscall(SYS_epoll_pwait, ep, &out, 1, (int)timeout, NULL, 8);
        else if (strcmp(call, "epoll_pwait2") == 0)
            ret = syscall(441, ep, &out, 1, tsp, NULL, 8);
        else if (strcmp(call, "semop") == 0)
            ret = syscall(SYS_semop, semid, &op, 1);
        else if (strcmp(call, "semtimedop") == 0)
            ret = syscall(SYS_semtimedop, semid, &op, 1, tsp);
        else if (strcmp(call, "sigtimedwait") == 0)
            ret = syscall(SYS_rt_sigtimedwait, &usr2, NULL, tsp, 8);
        else if (strcmp(call, "io_getevents") == 0)
            ret = syscall(SYS_io_getevents, aio, 1, 1, events, tsp);
        else if (strcmp(call, "recv_timeout") == 0)
            ret = syscall(SYS_recvfrom, sv[0], buf, sizeof buf, 0, NULL, NULL);
        else
            return 2;
        int err = errno;
        double took = now_ms() - started;
        if (ret < 0 && err == EINTR) {
            printf("eintr\n");
            fflush(stdout);
            if (!allow && handled == seen) abort();
        } else if (ret < 0 && err != EAGAIN && err != ETIMEDOUT) {
            printf("error %s\n", strerror(err));
            fflush(stdout);
            return 3;
        } else {
            printf("done %.1f\n", took);
            fflush(stdout);
        }
        if (handled != seen) {
            seen = handled;
            printf("handler %d\n", seen);
            fflush(stdout);
        }
    }
}
