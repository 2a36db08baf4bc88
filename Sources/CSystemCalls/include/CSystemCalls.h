#ifndef KRNATIVE_CSYSTEMCALLS_H
#define KRNATIVE_CSYSTEMCALLS_H
// System calls glibc has no wrapper for (Swift cannot call the variadic syscall()).

/// pivot_root(2): makes new_root the root of the mount namespace, the old root moves to put_old.
int krn_pivot_root(const char *new_root, const char *put_old);

#endif
