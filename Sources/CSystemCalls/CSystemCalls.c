#define _GNU_SOURCE
#include <sys/syscall.h>
#include <unistd.h>
#include "CSystemCalls.h"

int krn_pivot_root(const char *new_root, const char *put_old) {
    return (int)syscall(SYS_pivot_root, new_root, put_old);
}

#include <sched.h>
#include <string.h>

int krn_enter_uts_namespace(const char *hostname) {
    if (unshare(CLONE_NEWUTS) != 0) return -1;
    return sethostname(hostname, strlen(hostname));
}

#include <fcntl.h>
#include <spawn.h>

int krn_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int krn_spawn_add_chdir(posix_spawn_file_actions_t *actions, const char *directory) {
    return posix_spawn_file_actions_addchdir_np(actions, directory);
}

int krn_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

// MARK: The sandbox's last steps before a build step runs (docs/design.md §5)

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef __NR_close_range
#define __NR_close_range 436
#endif
#ifndef __NR_open_tree_attr
#define __NR_open_tree_attr 467
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

/// One entry of getdents64's buffer (the kernel's struct linux_dirent64; glibc does not declare it).
struct krn_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

int krn_mark_descriptors_cloexec(int from) {
    if (syscall(__NR_close_range, (unsigned)from, ~0U, CLOSE_RANGE_CLOEXEC) == 0) return 0;
    // Kernels before 5.11: walk /proc/self/fd (getdents64 and fcntl only, so it is safe after fork).
    int directory = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (directory < 0) return -1;
    char buffer[4096];
    long count;
    while ((count = syscall(SYS_getdents64, directory, buffer, sizeof buffer)) > 0) {
        for (long offset = 0; offset < count;) {
            struct krn_dirent64 *entry = (struct krn_dirent64 *)(buffer + offset);
            offset += entry->d_reclen;
            int fd = 0;
            const char *digit = entry->d_name;
            if (*digit < '0' || *digit > '9') continue;
            for (; *digit >= '0' && *digit <= '9'; digit++) fd = fd * 10 + (*digit - '0');
            if (fd >= from && fd != directory) fcntl(fd, F_SETFD, FD_CLOEXEC);
        }
    }
    int saved = errno;
    close(directory);
    errno = saved;
    return count < 0 ? -1 : 0;
}

int krn_exec_with_parent_death_signal(pid_t parent, const char *path, char *const argv[]) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) return -1;
    // The parent may have died before the signal was armed; then nobody would send it.
    if (getppid() != parent) {
        errno = ESRCH;
        return -1;
    }
    if (krn_mark_descriptors_cloexec(3) != 0) return -1;
    execv(path, argv);
    return -1;
}

#if defined(__x86_64__)
#define KRN_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define KRN_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

#define KRN_LOAD(field) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (field))
#define KRN_RETURN(value) BPF_STMT(BPF_RET | BPF_K, (value))
#define KRN_DENY(number) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (number), 0, 1), KRN_RETURN(SECCOMP_RET_ERRNO | EPERM)
// The low 32 bits of an argument (both architectures are little-endian): the kernel reads an
// ioctl request and the clone/unshare flags as 32-bit values, so the high half cannot hide one.
#define KRN_ARGUMENT(index) (offsetof(struct seccomp_data, args) + 8 * (index))

int krn_install_step_filter(void) {
#ifdef KRN_AUDIT_ARCH
    struct sock_filter program[] = {
        KRN_LOAD(offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, KRN_AUDIT_ARCH, 1, 0),
        KRN_RETURN(SECCOMP_RET_KILL_PROCESS),
        KRN_LOAD(offsetof(struct seccomp_data, nr)),
#if defined(__x86_64__)
        // x32 system calls are numbered apart and would slip past the numbers below.
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, __X32_SYSCALL_BIT, 0, 1),
        KRN_RETURN(SECCOMP_RET_KILL_PROCESS),
#endif
        KRN_DENY(__NR_mount), KRN_DENY(__NR_umount2), KRN_DENY(__NR_pivot_root),
        KRN_DENY(__NR_open_tree), KRN_DENY(__NR_open_tree_attr), KRN_DENY(__NR_move_mount), KRN_DENY(__NR_fsopen),
        KRN_DENY(__NR_fsconfig), KRN_DENY(__NR_fsmount), KRN_DENY(__NR_fspick), KRN_DENY(__NR_mount_setattr),
        KRN_DENY(__NR_keyctl), KRN_DENY(__NR_add_key), KRN_DENY(__NR_request_key), KRN_DENY(__NR_perf_event_open),
        // io_uring does its reads, writes and opens where seccomp cannot see them, and keeps being
        // a source of kernel holes; ENOSYS, as from a kernel without it, makes libuv and liburing
        // users fall back to plain system calls.
        BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, __NR_io_uring_setup, 0, 2),
        BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, __NR_io_uring_register, 1, 0),
        KRN_RETURN(SECCOMP_RET_ERRNO | ENOSYS),
        // clone3 passes its flags in memory, out of the filter's sight: ENOSYS makes libc fall back to clone.
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 0, 1),
        KRN_RETURN(SECCOMP_RET_ERRNO | ENOSYS),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_ioctl, 0, 5),
        KRN_LOAD(KRN_ARGUMENT(1)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TIOCSTI, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TIOCLINUX, 1, 0),
        KRN_RETURN(SECCOMP_RET_ALLOW),
        KRN_RETURN(SECCOMP_RET_ERRNO | EPERM),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_unshare, 0, 4),
        KRN_LOAD(KRN_ARGUMENT(0)),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_NEWUSER, 1, 0),
        KRN_RETURN(SECCOMP_RET_ALLOW),
        KRN_RETURN(SECCOMP_RET_ERRNO | EPERM),
        KRN_RETURN(SECCOMP_RET_ALLOW),
    };
    struct sock_fprog filter = {.len = sizeof program / sizeof program[0], .filter = program};
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &filter, 0, 0);
#else
    errno = ENOSYS;
    return -1;
#endif
}

static int krn_write_file(const char *path, const char *text, size_t length) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t written = write(fd, text, length);
    int saved = errno;
    close(fd);
    errno = saved;
    return written == (ssize_t)length ? 0 : -1;
}

static int krn_drop_capabilities(void) {
    for (int capability = 0; capability < 64; capability++) {
        if (prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0 && errno != EINVAL) return -1;
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) return -1;
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    return (int)syscall(SYS_capset, &header, data);
}

#include <sys/resource.h>

/// Lowers `resource` to `value` (0: left as it is), never above the hard limit already there.
static int krn_lower_limit(int resource, unsigned long long value) {
    if (value == 0) return 0;
    struct rlimit limit;
    if (getrlimit(resource, &limit) != 0) return -1;
    rlim_t wanted = (rlim_t)value;
    if (limit.rlim_max != RLIM_INFINITY && limit.rlim_max < wanted) wanted = limit.rlim_max;
    limit.rlim_cur = wanted;
    limit.rlim_max = wanted;
    return setrlimit(resource, &limit);
}

/// In the forked child: becomes the step or reports (stage, errno) on `report` and exits.
static void krn_become_step(int report, const char *path, char *const argv[], char *const envp[], const struct krn_step_limits *limits) {
    int stage = KRN_STAGE_SIGNALS;
    struct sigaction defaults;
    memset(&defaults, 0, sizeof defaults);
    defaults.sa_handler = SIG_DFL;
    for (int number = 1; number < NSIG; number++) sigaction(number, &defaults, NULL);
    sigset_t none;
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) != 0) goto failed;
    stage = KRN_STAGE_SESSION;
    if (setsid() < 0) goto failed;
    // A user namespace of its own, with a copy of the mounts: the mounts made for the step are
    // locked there (MNT_LOCKED, read-only stays read-only), and no capability it could hold there
    // reaches the network, host name or mounts of the sandbox's first namespace.
    // Before the user namespace: the kernel takes the new namespace's process ceiling from the
    // RLIMIT_NPROC of its creator.
    stage = KRN_STAGE_LIMITS;
    if (krn_lower_limit(RLIMIT_NPROC, limits->processes) != 0) goto failed;
    if (krn_lower_limit(RLIMIT_DATA, limits->dataBytes) != 0) goto failed;
    stage = KRN_STAGE_NAMESPACE;
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) goto failed;
    stage = KRN_STAGE_MAPS;
    if (krn_write_file("/proc/self/setgroups", "deny", 4) != 0) goto failed;
    if (krn_write_file("/proc/self/uid_map", "0 0 1\n", 6) != 0) goto failed;
    if (krn_write_file("/proc/self/gid_map", "0 0 1\n", 6) != 0) goto failed;
    stage = KRN_STAGE_CAPABILITIES;
    if (krn_drop_capabilities() != 0) goto failed;
    stage = KRN_STAGE_NO_NEW_PRIVS;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) goto failed;
    stage = KRN_STAGE_SECCOMP;
    if (krn_install_step_filter() != 0) goto failed;
    stage = KRN_STAGE_DESCRIPTORS;
    if (krn_mark_descriptors_cloexec(3) != 0) goto failed;
    stage = KRN_STAGE_EXEC;
    execve(path, argv, envp);
failed:;
    int message[2] = {stage, errno};
    (void)!write(report, message, sizeof message);
    _exit(127);
}

int krn_spawn_confined(
    const char *path, char *const argv[], char *const envp[], const struct krn_step_limits *limits, pid_t *pid, int *stage) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) return errno;
    pid_t child = fork();
    if (child < 0) {
        int saved = errno;
        close(report[0]);
        close(report[1]);
        return saved;
    }
    if (child == 0) krn_become_step(report[1], path, argv, envp, limits);
    close(report[1]);
    int message[2] = {0, 0};
    ssize_t got;
    do { got = read(report[0], message, sizeof message); } while (got < 0 && errno == EINTR);
    close(report[0]);
    if (got == (ssize_t)sizeof message) {
        while (waitpid(child, NULL, 0) < 0 && errno == EINTR) {}
        *stage = message[0];
        return message[1] != 0 ? message[1] : EIO;
    }
    *pid = child;
    return 0;
}

int krn_seccomp_mode(void) { return prctl(PR_GET_SECCOMP, 0, 0, 0, 0); }

int krn_no_new_privs(void) { return prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); }

const int krn_o_path = O_PATH;

int krn_start_writeback(int fd, long long offset, long long length) {
    return sync_file_range(fd, (off_t)offset, (off_t)length, SYNC_FILE_RANGE_WRITE);
}
