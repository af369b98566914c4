/* A target under seccomp that echoes stdin to stdout, for the "never harm a process" tests.
 *
 *   seccomp strict COUNTER     PR_SET_SECCOMP, SECCOMP_MODE_STRICT: only read, write, exit, rt_sigreturn
 *   seccomp kill COUNTER       a filter: read, write, exit, exit_group, rt_sigreturn, restart_syscall allowed;
 *   seccomp errno COUNTER        anything else kills the process (kill), fails with EPERM (errno),
 *   seccomp trap COUNTER         or raises SIGSYS (trap), whose handler counts in COUNTER
 *
 * COUNTER is a file of at least 8 bytes mapped MAP_SHARED; its first word counts SIGSYS in trap mode, seen from
 * outside, so a test also sees a copy of the process (a VA clone) that ran into the filter: the mapping is shared.
 * The target prints "ready" once the filter is on, then echoes each line it reads; EOF ends it (SYS_exit).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile long *counter;

static void on_sigsys(int sig) {
    (void)sig;
    __atomic_fetch_add(&counter[0], 1, __ATOMIC_SEQ_CST);
}

static long raw(long nr, long a, long b, long c) { return syscall(nr, a, b, c); }

#define ALLOW(nr) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int fd = open(argv[2], O_RDWR);
    if (fd < 0) return 2;
    counter = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (counter == MAP_FAILED) return 2;
    close(fd);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigsys;
    sigaction(SIGSYS, &sa, NULL);

    unsigned int action;
    if (strcmp(argv[1], "strict") == 0) action = 0;
    else if (strcmp(argv[1], "kill") == 0) action = SECCOMP_RET_KILL_PROCESS;
    else if (strcmp(argv[1], "errno") == 0) action = SECCOMP_RET_ERRNO | 1;
    else if (strcmp(argv[1], "trap") == 0) action = SECCOMP_RET_TRAP;
    else return 2;

    if (action == 0) {
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0) != 0) return 3;
    } else {
        struct sock_filter code[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            ALLOW(__NR_read),
            ALLOW(__NR_write),
            ALLOW(__NR_exit),
            ALLOW(__NR_exit_group),
            ALLOW(__NR_rt_sigreturn),
            ALLOW(__NR_restart_syscall),
            BPF_STMT(BPF_RET | BPF_K, action),
        };
        struct sock_fprog prog = {.len = sizeof code / sizeof code[0], .filter = code};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 3;
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0) return 3;
    }
    raw(__NR_write, 1, (long)"ready\n", 6);
    char buf[256];
    for (;;) {
        long n = raw(__NR_read, 0, (long)buf, sizeof buf);
        if (n <= 0) break;
        raw(__NR_write, 1, (long)buf, n);
    }
    raw(__NR_exit, 0, 0, 0);
    return 0;
}
