import CSystemCalls
import Foundation
import KrnativeBase

#if canImport(Glibc)
    import Glibc
#endif

/// The part of krnative that runs inside the namespaces `unshare` made (as `krnative sandbox-entry`):
/// it builds the step's root, pivots into it, spawns the step and reaps every process until the
/// step ends. It is PID 1 of the sandbox, so when it exits the kernel kills whatever the step left.
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

    static func bind(_ source: String, _ target: String, writable: Bool) throws {
        var info = stat()
        try check(stat(source, &info), "cannot see \(source)")
        if (info.st_mode & S_IFMT) == S_IFDIR {
            try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        } else {
            try FileManager.default.createDirectory(
                atPath: (target as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            if !FileManager.default.fileExists(atPath: target) {
                FileManager.default.createFile(atPath: target, contents: nil)
            }
        }
        try check(mount(source, target, nil, UInt(MS_BIND | MS_REC), nil), "cannot bind \(source) to \(target)")
        if !writable {
            let flags = UInt(MS_BIND | MS_REMOUNT | MS_RDONLY) | mountFlags(of: target)
            try check(mount(nil, target, nil, flags, nil), "cannot make \(target) read-only")
        }
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
                let target = try FileManager.default.destinationOfSymbolicLink(atPath: source)
                try FileManager.default.createSymbolicLink(atPath: root + "/" + name, withDestinationPath: target)
            } else {
                try bind(source, root + "/" + name, writable: false)
            }
        }
        // /proc of the new PID namespace: it shows the sandbox's processes only.
        try FileManager.default.createDirectory(atPath: root + "/proc", withIntermediateDirectories: true)
        try check(mount("proc", root + "/proc", "proc", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC), nil), "cannot mount /proc")
        try buildDev(root + "/dev")
        try FileManager.default.createDirectory(atPath: root + "/tmp", withIntermediateDirectories: true)
        try check(mount("tmpfs", root + "/tmp", "tmpfs", UInt(MS_NOSUID | MS_NODEV), "mode=1777"), "cannot mount /tmp")
        for entry in spec.mounts {
            try bind(entry.source, root + entry.target, writable: entry.writable)
        }
        try bringUpLoopback()
        try check(sethostname(spec.hostname, spec.hostname.utf8.count), "cannot set the host name")
    }

    static func buildDev(_ dev: String) throws {
        try FileManager.default.createDirectory(atPath: dev, withIntermediateDirectories: true)
        try check(mount("tmpfs", dev, "tmpfs", UInt(MS_NOSUID | MS_NOEXEC), "mode=0755"), "cannot mount /dev")
        for node in ["null", "zero", "full", "random", "urandom", "tty"] {
            try bind("/dev/" + node, dev + "/" + node, writable: true)
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

    static func spawnAndReap(_ spec: SandboxSpec) throws -> SandboxStatus {
        try check(chdir(spec.workingDirectory), "cannot enter the working directory \(spec.workingDirectory)")
        umask(0o022)
        let environment = spec.fullEnvironment.map { "\($0.key)=\($0.value)" }.sorted()
        let program = ChildProcess.resolve(spec.argv[0], environment: spec.fullEnvironment)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Whatever the parent blocked or ignored, the step starts with default signal handling.
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        let argv = spec.argv.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        let result = posix_spawn(&pid, program, nil, &attributes, argv, envp)
        guard result == 0 else {
            throw SetupError(description: "cannot start \(spec.argv[0]) (looked up as \(program)): \(String(cString: strerror(result)))")
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
