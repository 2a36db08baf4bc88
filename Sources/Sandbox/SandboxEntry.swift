import CSystemCalls
import Foundation
import KrnativeBase

#if canImport(Glibc)
    import Glibc
#endif

/// The part of krnative that runs inside the namespaces `unshare` made (as `krnative sandbox-entry`):
/// it builds the step's root, pivots into it, spawns the step confined (krn_spawn_confined: new
/// session, nested user namespace, no capabilities, no_new_privs, seccomp, no stray descriptors)
/// and reaps every process until the step ends. It is PID 1 of the sandbox, so when it exits the
/// kernel kills whatever the step left.
public enum SandboxEntry {
    struct SetupError: Error, CustomStringConvertible {
        var description: String
    }

    /// Runs the step described by the spec file and exits with its status; never returns.
    public static func main(specPath: String, statusPath: String) -> Never {
        let statusFD = open(statusPath, O_WRONLY | O_TRUNC | O_CLOEXEC)
        func report(_ status: SandboxStatus) {
            guard statusFD >= 0, let data = try? JSONEncoder().encode(status) else { return }
            _ = data.withUnsafeBytes { write(statusFD, $0.baseAddress, $0.count) }
        }
        do {
            let data = try Data(contentsOf: URL(fileURLWithPath: specPath))
            let spec = try JSONDecoder().decode(SandboxSpec.self, from: data)
            let scratch = (specPath as NSString).deletingLastPathComponent + "/root"
            try buildRoot(spec, at: scratch)
            try enterRoot(scratch)
            let status = try spawnAndReap(spec)
            report(status)
            exit(status.exited ?? (128 + (status.signalled ?? 0)))
        } catch {
            report(SandboxStatus(setupFailed: "\(error)"))
            exit(125)
        }
    }

    // MARK: The root

    static func check(_ result: Int32, _ what: @autoclosure () -> String) throws {
        guard result == 0 else { throw SetupError(description: "\(what()): \(String(cString: strerror(errno)))") }
    }

    static func mountFlags(of path: String) -> UInt {
        // In a user namespace the flags a mount already has (nosuid, nodev, noexec, atime) are
        // locked: a read-only remount must repeat them or it is refused.
        var info = statvfs()
        guard statvfs(path, &info) == 0 else { return 0 }
        var flags: UInt = 0
        // statvfs's ST_* bits (<sys/statvfs.h>, not imported into Swift) and the MS_* flags they lock.
        let pairs: [(UInt, UInt)] = [
            (2, UInt(MS_NOSUID)), (4, UInt(MS_NODEV)), (8, UInt(MS_NOEXEC)),
            (1024, UInt(MS_NOATIME)), (2048, UInt(MS_NODIRATIME)), (4096, UInt(MS_RELATIME)),
        ]
        for (statFlag, mountFlag) in pairs where info.f_flag & statFlag != 0 { flags |= mountFlag }
        return flags
    }

    /// An open `O_PATH` descriptor: mount(2) given `/proc/self/fd/N` reaches exactly the file it
    /// was opened on, whatever has been renamed or linked since.
    final class OpenPath {
        let fd: Int32
        init(_ fd: Int32) { self.fd = fd }
        deinit { close(fd) }
        var procPath: String { "/proc/self/fd/\(fd)" }
    }

    /// Opens the mount point `inside` under `root`, creating what is missing (directories, or an
    /// empty file as the last part when `directory` is false) and following no symbolic link on
    /// the way: a link in a root tree points wherever its maker chose, on the host until the root
    /// is entered. Returns the directory holding the last part, and that part.
    static func mountPoint(_ inside: String, under root: String, directory: Bool) throws -> (parent: OpenPath, name: String) {
        let names = inside.split(separator: "/").map(String.init).filter { $0 != "." }
        guard let last = names.last, !names.contains("..") else {
            throw SetupError(description: "the mount point \(inside) must be an absolute path without '..'")
        }
        var parent = OpenPath(open(root, krn_o_path | O_DIRECTORY | O_CLOEXEC))
        try check(parent.fd >= 0 ? 0 : -1, "cannot open the sandbox root \(root)")
        var walked = ""
        for (index, name) in names.enumerated() {
            walked += "/" + name
            let isLast = index == names.count - 1
            let makeDirectory = !isLast || directory
            var fd = openat(parent.fd, name, krn_o_path | O_NOFOLLOW | O_CLOEXEC)
            if fd < 0 && errno == ENOENT {
                let made =
                    makeDirectory
                    ? mkdirat(parent.fd, name, 0o755)
                    : { let file = openat(parent.fd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644); return file < 0 ? -1 : close(file) }()
                try check(made, "cannot create the mount point \(walked) (a read-only root tree must already contain it)")
                fd = openat(parent.fd, name, krn_o_path | O_NOFOLLOW | O_CLOEXEC)
            }
            try check(fd >= 0 ? 0 : -1, "cannot open the mount point \(walked)")
            let opened = OpenPath(fd)
            var info = stat()
            try check(fstat(fd, &info), "cannot see \(walked)")
            if (info.st_mode & S_IFMT) == S_IFLNK {
                let destination = (try? FileManager.default.destinationOfSymbolicLink(atPath: root + walked)) ?? "?"
                throw SetupError(
                    description: "the mount point \(inside) passes through \(walked), a symbolic link (to \(destination)) in the root tree; "
                        + "krnative does not follow a root tree's links: make \(walked) a directory there, or mount elsewhere")
            }
            if isLast { return (parent, name) }
            guard (info.st_mode & S_IFMT) == S_IFDIR else {
                throw SetupError(description: "the mount point \(inside) passes through \(walked), which is not a directory")
            }
            parent = opened
        }
        return (parent, last)
    }

    /// Makes the mount point `inside` under `root` ahead of time, for a root that will be mounted
    /// read-only, as `mountPoint` does: through the root's real directories only.
    public static func makeMountPoint(_ inside: String, under root: String, directory: Bool) throws {
        _ = try mountPoint(inside, under: root, directory: directory)
    }

    /// Binds `source` (a host path krnative or its caller named) at `inside`; a link at `source`
    /// itself is followed only with `followLink`.
    static func bind(_ source: String, at inside: String, under root: String, writable: Bool, followLink: Bool = true) throws {
        let origin = OpenPath(open(source, krn_o_path | O_CLOEXEC | (followLink ? 0 : O_NOFOLLOW)))
        try check(origin.fd >= 0 ? 0 : -1, "cannot see \(source)")
        var info = stat()
        try check(fstat(origin.fd, &info), "cannot see \(source)")
        let (parent, name) = try mountPoint(inside, under: root, directory: (info.st_mode & S_IFMT) == S_IFDIR)
        let target = OpenPath(openat(parent.fd, name, krn_o_path | O_NOFOLLOW | O_CLOEXEC))
        try check(target.fd >= 0 ? 0 : -1, "cannot open the mount point \(inside)")
        try check(mount(origin.procPath, target.procPath, nil, UInt(MS_BIND | MS_REC), nil), "cannot bind \(source) to \(inside)")
        guard !writable else { return }
        // The descriptor opened before the mount is the mount point beneath it; open the new mount.
        let mounted = OpenPath(openat(parent.fd, name, krn_o_path | O_NOFOLLOW | O_CLOEXEC))
        try check(mounted.fd >= 0 ? 0 : -1, "cannot open \(inside) after mounting it")
        let flags = UInt(MS_BIND | MS_REMOUNT | MS_RDONLY) | mountFlags(of: mounted.procPath)
        try check(mount(nil, mounted.procPath, nil, flags, nil), "cannot make \(inside) read-only")
    }

    static func buildRoot(_ spec: SandboxSpec, at root: String) throws {
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        try check(mount("tmpfs", root, "tmpfs", UInt(MS_NOSUID | MS_NODEV), "mode=0755"), "cannot mount a tmpfs at \(root)")
        let base = spec.rootDirectory ?? "/"
        let names =
            spec.rootDirectory == nil
            ? ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc"]
            : ((try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []).filter {
                !["proc", "dev", "tmp", "sys", "run"].contains($0)
            }
        for name in names.sorted() {
            let source = (base as NSString).appendingPathComponent(name)
            var info = stat()
            guard lstat(source, &info) == 0 else { continue }
            if (info.st_mode & S_IFMT) == S_IFLNK {
                // A link is copied as a link: it resolves inside the sandbox, once the root is entered.
                let target = try FileManager.default.destinationOfSymbolicLink(atPath: source)
                try FileManager.default.createSymbolicLink(atPath: root + "/" + name, withDestinationPath: target)
            } else {
                try bind(source, at: "/" + name, under: root, writable: false, followLink: false)
            }
        }
        try maskSecrets(under: root, placeholders: (root as NSString).deletingLastPathComponent)
        // /proc of the new PID namespace: it shows the sandbox's processes only.
        _ = try mountPoint("/proc", under: root, directory: true)
        try check(mount("proc", root + "/proc", "proc", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC), nil), "cannot mount /proc")
        try limitProcessIDs(spec.limits.processes, proc: root + "/proc")
        try protectProc(root + "/proc")
        try buildDev(root)
        _ = try mountPoint("/tmp", under: root, directory: true)
        try check(mount("tmpfs", root + "/tmp", "tmpfs", UInt(MS_NOSUID | MS_NODEV), "mode=1777"), "cannot mount /tmp")
        for entry in spec.mounts {
            try bind(entry.source, at: entry.target, under: root, writable: entry.writable, followLink: entry.followLink)
        }
        if let emulator = spec.emulator { registerEmulator(emulator, under: root) }
        try bringUpLoopback()
        try check(sethostname(spec.hostname, spec.hostname.utf8.count), "cannot set the host name")
    }

    /// Registers `emulator` for its architecture's ELF executables with a binfmt_misc of the
    /// sandbox's own user namespace (the host's registrations are untouched; nested namespaces,
    /// the step's, find it), with `F`: the kernel opens the emulator now, before the root is
    /// entered. Best effort: a kernel older than 6.7 mounts no binfmt_misc in a user namespace.
    static func registerEmulator(_ emulator: SandboxSpec.Emulator, under root: String) {
        let machine = [Architecture.x86_64: "\\x3e", .aarch64: "\\xb7"][emulator.arch]!
        let magic = "\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00" + machine + "\\x00"
        let mask = "\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff"
        let binfmt = root + "/proc/sys/fs/binfmt_misc"
        guard mount("binfmt_misc", binfmt, "binfmt_misc", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC), nil) == 0 else { return }
        let rule = ":krnative-\(emulator.arch.rawValue):M::\(magic):\(mask):\(root + emulator.path):F"
        let register = open(binfmt + "/register", O_WRONLY | O_CLOEXEC)
        guard register >= 0 else { return }
        // One write(2): the kernel reads a rule from a single write.
        _ = rule.withCString { write(register, $0, strlen($0)) }
        close(register)
    }

    /// Covers, in the root's `/etc`, `/root` and `/home`, every file and directory that others may
    /// not read (`/etc/shadow`, `/etc/gshadow`, SSH host keys, `/etc/ssl/private`, …) with an empty
    /// one (a file of mode 000, a directory with nothing in it): the step runs as the host user
    /// krnative runs as, the owner of those files when that is root, and would read them.
    static func maskSecrets(under root: String, placeholders: String) throws {
        let file = placeholders + "/masked-file", directory = placeholders + "/masked-directory"
        try check(mkdir(directory, 0o555) == 0 || errno == EEXIST ? 0 : -1, "cannot make \(directory)")
        let made = open(file, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0)
        try check(made >= 0 ? close(made) : -1, "cannot make \(file)")
        func walk(_ inside: String) throws {
            var info = stat()
            guard lstat(root + inside, &info) == 0 else { return }
            let kind = info.st_mode & S_IFMT
            guard kind == S_IFREG || kind == S_IFDIR else { return }  // links resolve inside; devices and sockets hold nothing
            let readable = info.st_mode & S_IROTH != 0 && (kind == S_IFREG || info.st_mode & S_IXOTH != 0)
            guard readable else {
                return try bind(kind == S_IFDIR ? directory : file, at: inside, under: root, writable: false)
            }
            guard kind == S_IFDIR else { return }
            for name in ((try? FileManager.default.contentsOfDirectory(atPath: root + inside)) ?? []).sorted() {
                try walk(inside + "/" + name)
            }
        }
        for top in ["/etc", "/root", "/home"] { try walk(top) }
    }

    /// The PID namespace hands out process ids up to `pid_max` only, which makes it a limit on
    /// the processes and threads of the sandbox whoever runs it (RLIMIT_NPROC does not bind root).
    /// Once ids have passed 300 the kernel reuses only those from 300 up, hence the 300 more.
    /// From Linux 6.14 each PID namespace has its own `pid_max`; before, the file is the whole
    /// machine's and is left alone.
    static func limitProcessIDs(_ processes: Int, proc: String) throws {
        guard HostCheck.pidMaxPerNamespace else { return }
        let path = proc + "/sys/kernel/pid_max"
        let text = "\(min(processes + 300, 4_194_304))\n"
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        try check(fd >= 0 ? 0 : -1, "cannot open \(path) to limit the step's processes")
        defer { close(fd) }
        try check(write(fd, text, text.utf8.count) == text.utf8.count ? 0 : -1, "cannot limit the step's processes in \(path)")
    }

    /// The kernel knobs under /proc (sysctls, the SysRq trigger, interrupt and bus settings)
    /// read-only, as bubblewrap covers them.
    static func protectProc(_ proc: String) throws {
        for name in ["sys", "sysrq-trigger", "irq", "bus"] {
            let path = proc + "/" + name
            guard access(path, F_OK) == 0 else { continue }
            try check(mount(path, path, nil, UInt(MS_BIND | MS_REC), nil), "cannot bind /proc/\(name)")
            let flags = UInt(MS_BIND | MS_REMOUNT | MS_RDONLY) | mountFlags(of: path)
            try check(mount(nil, path, nil, flags, nil), "cannot make /proc/\(name) read-only")
        }
    }

    /// A minimal /dev: no host terminal (`/dev/tty` would be the invoking terminal), a devpts of its own.
    static func buildDev(_ root: String) throws {
        let dev = root + "/dev"
        _ = try mountPoint("/dev", under: root, directory: true)
        try check(mount("tmpfs", dev, "tmpfs", UInt(MS_NOSUID | MS_NOEXEC), "mode=0755"), "cannot mount /dev")
        for node in ["null", "zero", "full", "random", "urandom"] {
            try bind("/dev/" + node, at: "/dev/" + node, under: root, writable: true)
        }
        try FileManager.default.createDirectory(atPath: dev + "/pts", withIntermediateDirectories: true)
        try check(
            mount("devpts", dev + "/pts", "devpts", UInt(MS_NOSUID | MS_NOEXEC), "newinstance,ptmxmode=0666,mode=0620"),
            "cannot mount a new devpts")
        try FileManager.default.createDirectory(atPath: dev + "/shm", withIntermediateDirectories: true)
        try check(mount("tmpfs", dev + "/shm", "tmpfs", UInt(MS_NOSUID | MS_NODEV), "mode=1777"), "cannot mount /dev/shm")
        for (name, target) in [
            ("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            try FileManager.default.createSymbolicLink(atPath: dev + "/" + name, withDestinationPath: target)
        }
    }

    /// The new network namespace has a loopback that is down and nothing else; bring it up.
    static func bringUpLoopback() throws {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw SetupError(description: "cannot open a socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var request = ifreq()
        withUnsafeMutableBytes(of: &request.ifr_ifrn.ifrn_name) { buffer in
            for (index, byte) in "lo".utf8.enumerated() { buffer[index] = byte }
        }
        try check(ioctl(fd, UInt(SIOCGIFFLAGS), &request), "cannot read the loopback's flags")
        request.ifr_ifru.ifru_flags |= Int16(IFF_UP | IFF_RUNNING)
        try check(ioctl(fd, UInt(SIOCSIFFLAGS), &request), "cannot bring the loopback up")
    }

    static func enterRoot(_ root: String) throws {
        try check(mount(root, root, nil, UInt(MS_BIND | MS_REC), nil), "cannot bind the new root")
        try check(chdir(root), "cannot enter \(root)")
        try check(krn_pivot_root(".", "."), "pivot_root failed")
        try check(umount2(".", Int32(MNT_DETACH)), "cannot detach the old root")
        try check(chdir("/"), "cannot enter the new root")
        // The root itself is read-only; only the writable mounts and /tmp take writes.
        try check(mount(nil, "/", nil, UInt(MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV), nil), "cannot make / read-only")
    }

    // MARK: The step

    /// What krn_spawn_confined was doing when it failed, in words.
    static func confinementStage(_ stage: Int32) -> String {
        switch UInt32(stage) {
        case KRN_STAGE_SIGNALS.rawValue: "resetting signals"
        case KRN_STAGE_SESSION.rawValue: "a new session"
        case KRN_STAGE_NAMESPACE.rawValue: "a nested user and mount namespace"
        case KRN_STAGE_MAPS.rawValue: "the nested namespace's uid and gid maps"
        case KRN_STAGE_CAPABILITIES.rawValue: "dropping capabilities"
        case KRN_STAGE_NO_NEW_PRIVS.rawValue: "no_new_privs"
        case KRN_STAGE_SECCOMP.rawValue: "the seccomp filter"
        case KRN_STAGE_DESCRIPTORS.rawValue: "closing descriptors"
        case KRN_STAGE_LIMITS.rawValue: "limiting processes and memory"
        default: "stage \(stage)"
        }
    }

    static func spawnAndReap(_ spec: SandboxSpec) throws -> SandboxStatus {
        try check(chdir(spec.workingDirectory), "cannot enter the working directory \(spec.workingDirectory)")
        umask(0o022)
        let environment = spec.fullEnvironment.map { "\($0.key)=\($0.value)" }.sorted()
        let program = ChildProcess.resolve(spec.argv[0], environment: spec.fullEnvironment)
        let argv = spec.argv.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid: pid_t = 0
        var stage: Int32 = 0
        var limits = krn_step_limits(
            processes: UInt64(max(spec.limits.processes, 1)), dataBytes: UInt64(max(spec.limits.memoryBytes, 1)))
        let result = krn_spawn_confined(program, argv, envp, &limits, &pid, &stage)
        guard result == 0 else {
            let reason = String(cString: strerror(result))
            guard UInt32(stage) == KRN_STAGE_EXEC.rawValue else {
                throw SetupError(description: "cannot confine the step (\(confinementStage(stage))): \(reason)")
            }
            throw SetupError(description: "cannot start \(spec.argv[0]) (looked up as \(program)): \(reason)")
        }
        // As PID 1, reap every orphan until the step itself has ended.
        while true {
            var status: Int32 = 0
            let ended = waitpid(-1, &status, 0)
            if ended < 0 {
                if errno == EINTR { continue }
                throw SetupError(description: "waitpid: \(String(cString: strerror(errno)))")
            }
            guard ended == pid else { continue }
            let signal = status & 0x7f
            return signal == 0 ? SandboxStatus(exited: (status >> 8) & 0xff) : SandboxStatus(signalled: signal)
        }
    }
}
