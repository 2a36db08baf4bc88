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
