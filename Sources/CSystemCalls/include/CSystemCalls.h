#ifndef KRNATIVE_CSYSTEMCALLS_H
#define KRNATIVE_CSYSTEMCALLS_H
// System calls glibc has no wrapper for (Swift cannot call the variadic syscall()).

/// pivot_root(2): makes new_root the root of the mount namespace, the old root moves to put_old.
int krn_pivot_root(const char *new_root, const char *put_old);

/// unshare(CLONE_NEWUTS) then sethostname(2): this process and its children see `hostname`.
int krn_enter_uts_namespace(const char *hostname);

#include <spawn.h>

/// pipe2(fds, O_CLOEXEC): both ends closed in children, so only the ones dup2'ed survive.
int krn_pipe_cloexec(int fds[2]);

/// posix_spawn_file_actions_addchdir_np (glibc 2.29): the child starts in `directory`.
int krn_spawn_add_chdir(posix_spawn_file_actions_t *actions, const char *directory);

/// posix_spawn_file_actions_addclosefrom_np (glibc 2.34): the child starts with no descriptor from
/// `from` up, whatever this process inherited without close-on-exec.
int krn_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from);


#include <sys/types.h>

/// Marks every descriptor from `from` up close-on-exec (close_range, or a /proc/self/fd walk on
/// kernels before 5.11). Safe between fork and exec.
int krn_mark_descriptors_cloexec(int from);

/// Arms PR_SET_PDEATHSIG(SIGKILL), checks that `parent` is still the parent, marks descriptors
/// above 2 close-on-exec and executes `path`. Returns -1 with errno only when it could not.
int krn_exec_with_parent_death_signal(pid_t parent, const char *path, char *const argv[]);

/// Installs the build step's seccomp filter on the calling thread (needs no_new_privs): EPERM for
/// ioctl TIOCSTI and TIOCLINUX, mount, umount2, pivot_root, the new mount API, keyctl, add_key,
/// request_key, perf_event_open, clone and unshare with CLONE_NEWUSER; ENOSYS for clone3 and
/// io_uring_setup, io_uring_enter and io_uring_register; a
/// foreign architecture's (or x32) system call kills the process.
int krn_install_step_filter(void);

/// What krn_spawn_confined was doing when the child failed.
enum krn_confine_stage {
    KRN_STAGE_SIGNALS = 1,
    KRN_STAGE_SESSION,
    KRN_STAGE_NAMESPACE,
    KRN_STAGE_MAPS,
    KRN_STAGE_CAPABILITIES,
    KRN_STAGE_NO_NEW_PRIVS,
    KRN_STAGE_SECCOMP,
    KRN_STAGE_DESCRIPTORS,
    KRN_STAGE_EXEC,
    KRN_STAGE_LIMITS,
};

/// A step's resource limits; 0 leaves one as it is.
struct krn_step_limits {
    /// RLIMIT_NPROC: processes and threads (counted in the step's own user namespace, so only the
    /// step's; the kernel does not apply it when the host user is root).
    unsigned long long processes;
    /// RLIMIT_DATA: bytes of private writable memory (heap, anonymous mappings) per process.
    unsigned long long dataBytes;
};

/// Forks a child that becomes a build step: default signals, a new session (no controlling
/// terminal), `limits`, a user and mount namespace of its own (uid and gid 0 mapped to 0), every capability
/// dropped (bounding, ambient, effective, permitted, inheritable), no_new_privs, the step filter,
/// descriptors above 2 closed; then execve. Returns 0 with `*pid`, or an errno value with `*stage`.
int krn_spawn_confined(
    const char *path, char *const argv[], char *const envp[], const struct krn_step_limits *limits, pid_t *pid, int *stage);

/// prctl(PR_GET_SECCOMP): this process's seccomp mode, -1 (EINVAL) on a kernel without seccomp.
int krn_seccomp_mode(void);

/// prctl(PR_GET_NO_NEW_PRIVS): 0 or 1, -1 on a kernel without it.
int krn_no_new_privs(void);

/// O_PATH (glibc defines it only under _GNU_SOURCE, which Swift's Glibc module is not built with).
extern const int krn_o_path;

/// sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE): starts writing that range to disk
/// without waiting for it (a GNU call, declared only under _GNU_SOURCE).
int krn_start_writeback(int fd, long long offset, long long length);

#endif
