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

#endif
