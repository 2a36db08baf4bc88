import Compile
import Foundation
import KrnativeBase
import Lock
import Sandbox
import Store
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The remaining holes of issue #22 (item 12): a step's processes and memory bounded, io_uring
/// refused, the host's secrets not bound in, and what killed runs leave removed by the next one.
@Suite("Sandbox limits", .timeLimit(.minutes(60)), .tags(.namespaces, .process), .endToEnd, .serialized, .needsNamespaces)
struct SandboxLimitsTests {
    /// Runs a Python probe in the sandbox as `user` and returns its `key=value` lines.
    func probe(_ script: String, as user: Runner = .currentUser, extra: [String] = [], environment: [String: String] = [:]) -> (
        ChildProcess.Result, [String: String]
    ) {
        let work = TemporaryDirectory("krnative-limit-work")
        let path = work.file("probe.py", script)
        user.own(work.path)
        var full = ProcessInfo.processInfo.environment
        full.merge(environment) { $1 }
        let result = ChildProcess.run(
            user.command(["sandbox", "run", "--workdir", work.path] + extra + ["--", "python3", path]), environment: full)
        var seen: [String: String] = [:]
        for line in result.stdout.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { seen[parts[0]] = parts[1] }
        }
        return (result, seen)
    }

    /// A step that forks until it cannot (a fork bomb held in check by the probe's own ceiling of
    /// 2000, so a failure of the limit does no harm) gets EAGAIN near the limit; the step itself
    /// goes on and ends normally. As root only the PID namespace's pid_max binds (about 300
    /// more); as an ordinary user RLIMIT_NPROC binds exactly.
    @Test(.timeLimit(.minutes(60)), arguments: Runner.available)
    func forkingBeyondTheLimitFails(as user: Runner) throws {
        try #require(
            HostCheck.pidMaxPerNamespace || user.identity?.uid != 0,
            "as root, only a kernel from 6.14 (pid_max per PID namespace) can bound a step's processes")
        let script = """
            import errno, os, signal, time
            children = []
            error = "none"
            while len(children) < 2000:
                try:
                    pid = os.fork()
                except OSError as failure:
                    error = errno.errorcode.get(failure.errno, str(failure.errno))
                    break
                if pid == 0:
                    time.sleep(60)
                    os._exit(0)
                children.append(pid)
            print("forked=%d" % len(children))
            print("error=" + error)
            for pid in children:
                os.kill(pid, signal.SIGKILL)
            for pid in children:
                os.waitpid(pid, 0)
            print("after=" + ("fork works" if os.fork() or os._exit(0) else ""))
            """
        let limit = 64
        let (result, seen) = probe(script, as: user, extra: ["--step-max-processes", String(limit)])
        #expect(result.succeeded, "\(result.stdout)\(result.stderr)")
        #expect(seen["error"] == "EAGAIN", "the step forked \(seen["forked"] ?? "?") processes and was never refused")
        let forked = Int(seen["forked"] ?? "") ?? -1
        let ceiling = user.identity?.uid == 0 ? limit + 300 : limit
        #expect(forked > 0 && forked <= ceiling, "forked \(forked), the ceiling is \(ceiling)")
        #expect(seen["after"] == "fork works")
    }

    /// A step allocating past `--step-max-memory` gets an allocation failure (Python's
    /// MemoryError), not the machine's memory; below it, allocation works.
    @Test(.timeLimit(.minutes(60)), arguments: Runner.available)
    func allocatingBeyondTheMemoryLimitFails(as user: Runner) throws {
        let script = """
            def allocate(megabytes):
                try:
                    block = bytearray(megabytes << 20)
                    block[-1] = 1
                    return "allocated"
                except MemoryError:
                    return "MemoryError"
            print("small=" + allocate(32))
            print("large=" + allocate(1024))
            """
        let (result, seen) = probe(script, as: user, extra: ["--step-max-memory", "256M"])
        #expect(result.succeeded, "\(result.stdout)\(result.stderr)")
        #expect(seen["small"] == "allocated")
        #expect(seen["large"] == "MemoryError", "large=\(seen["large"] ?? "missing")")
        // The same limit from the environment, and a value that is not a size refused by name.
        let (fromEnvironment, seenThen) = probe(script, as: user, environment: ["KRNATIVE_STEP_MAX_MEMORY": "256M"])
        #expect(fromEnvironment.succeeded && seenThen["large"] == "MemoryError", "\(fromEnvironment.stdout)\(fromEnvironment.stderr)")
        let wrong = krnative(["sandbox", "run", "--step-max-memory", "lots", "--", "true"])
        #expect(wrong.termination == .exited(ExitStatus.usage), "\(wrong.stderr)")
        #expect(wrong.stderr.contains("--step-max-memory lots is not a size"), "\(wrong.stderr)")
    }

    /// io_uring_setup, io_uring_enter and io_uring_register end in ENOSYS inside; outside, the
    /// same probe shows what the host would have allowed.
    @Test(.timeLimit(.minutes(60))) func ioUringIsRefused() throws {
        let script = """
            import ctypes, errno
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            params = ctypes.create_string_buffer(120)
            for name, number, arguments in [("setup", 425, (8, params)), ("enter", 426, (0, 1, 0, 0, None, 0)),
                                            ("register", 427, (0, 0, None, 0))]:
                result = libc.syscall(ctypes.c_long(number), *arguments)
                print(name + "=" + ("fd" if result >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")))
            """
        let (result, seen) = probe(script)
        #expect(result.succeeded, "\(result.stdout)\(result.stderr)")
        for name in ["setup", "enter", "register"] {
            #expect(seen[name] == "ENOSYS", "io_uring_\(name)=\(seen[name] ?? "missing")")
        }
        // Outside, the host allows it: the refusal inside is the filter's.
        let outside = ChildProcess.run(["python3", "-c", script])
        #expect(outside.stdout.contains("setup=fd"), "io_uring is not available on this host: \(outside.stdout)")
    }

    /// The host's secrets under /etc (every file or directory others may not read: shadow,
    /// gshadow, SSH host keys, /etc/ssl/private, …), /root and /home: a step running as the user
    /// krnative runs as (root here, their owner) reads nothing of them, /etc/passwd still works,
    /// and the host files are unchanged.
    @Test(.timeLimit(.minutes(60)), arguments: Runner.available)
    func theHostsSecretsAreNotVisible(as user: Runner) throws {
        var secrets = ["/etc/shadow", "/etc/gshadow", "/root", "/home"]
        secrets += ((try? FileManager.default.contentsOfDirectory(atPath: "/etc/ssh")) ?? []).filter { $0.hasSuffix("_key") }.map { "/etc/ssh/" + $0 }
        if let walker = FileManager.default.enumerator(atPath: "/etc") {
            for case let name as String in walker {
                var info = stat()
                guard lstat("/etc/" + name, &info) == 0 else { continue }
                let kind = info.st_mode & S_IFMT
                guard kind == S_IFREG || kind == S_IFDIR else { continue }
                if info.st_mode & S_IROTH == 0 || (kind == S_IFDIR && info.st_mode & S_IXOTH == 0) {
                    secrets.append("/etc/" + name)
                    walker.skipDescendants()
                }
            }
        }
        let before = Dictionary(secrets.map { ($0, Self.fingerprint($0)) }) { first, _ in first }
        let script = """
            import os, sys
            def look(path):
                try:
                    if os.path.isdir(path):
                        return "listed:" + ",".join(sorted(os.listdir(path))) if os.listdir(path) else "empty"
                    with open(path, "rb") as f:
                        return "read:%d" % len(f.read())
                except FileNotFoundError:
                    return "absent"
                except PermissionError:
                    return "denied"
            for path in sys.argv[1:]:
                print(path + "=" + look(path))
            print("passwd=" + look("/etc/passwd"))
            """
        let work = TemporaryDirectory("krnative-limit-secrets")
        let path = work.file("probe.py", script)
        user.own(work.path)
        let result = ChildProcess.run(user.command(["sandbox", "run", "--workdir", work.path, "--", "python3", path] + secrets))
        #expect(result.succeeded, "\(result.stdout)\(result.stderr)")
        var seen: [String: String] = [:]
        for line in result.stdout.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { seen[parts[0]] = parts[1] }
        }
        for secret in secrets {
            let found = seen[secret] ?? "missing"
            #expect(["absent", "denied", "empty", "read:0"].contains(found), "the step saw \(secret): \(found)")
        }
        #expect(seen["passwd"]?.hasPrefix("read:") == true && seen["passwd"] != "read:0", "/etc/passwd: \(seen["passwd"] ?? "missing")")
        for secret in secrets { #expect(Self.fingerprint(secret) == before[secret], "\(secret) changed on the host") }
    }

    /// A sandbox run killed leaves `$TMPDIR/krnative-sandbox-<pid>-<random>` (and its lock); the
    /// next sandbox run removes it, and `store gc` too, but never one whose lock a live run holds.
    @Test(.timeLimit(.minutes(60))) func killedSandboxRunsLeaveNothingBehind() throws {
        let temporary = TemporaryDirectory("krnative-limit-tmp")
        let dead = Self.plantAbandoned(in: temporary.path, name: "krnative-sandbox-\(StoreTests.goneProcess)-1")
        let live = temporary.path + "/krnative-sandbox-\(getpid())-2"
        let held = try Self.hold(live)
        defer { close(held) }
        let run = krnative(["sandbox", "run", "--", "true"], environment: ["TMPDIR": temporary.path])
        #expect(run.succeeded, "\(run.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dead) && !FileManager.default.fileExists(atPath: dead + ".lock"))
        #expect(FileManager.default.fileExists(atPath: live + "/spec.json") && FileManager.default.fileExists(atPath: live + ".lock"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: temporary.path).sorted() == [(live as NSString).lastPathComponent, (live as NSString).lastPathComponent + ".lock"])

        let again = Self.plantAbandoned(in: temporary.path, name: "krnative-sandbox-\(StoreTests.goneProcess)-3")
        let store = TemporaryDirectory("krnative-limit-store")
        let lock = store.path + "/krnative.lock.json"
        try Lockfile(sourceDateEpoch: 0, inputs: []).write(to: lock)
        let gc = krnative(["store", "gc", "--lock", lock, "--store", store.path + "/store"], environment: ["TMPDIR": temporary.path])
        #expect(gc.succeeded, "\(gc.stderr)")
        #expect(gc.stdout.contains("removed \(again): the scratch directory of a sandbox run that was killed"), "\(gc.stdout)")
        #expect(!FileManager.default.fileExists(atPath: again))
        #expect(FileManager.default.fileExists(atPath: live + "/spec.json"))
    }

    /// A build killed leaves its work directory in the store's `tmp/` (here with a tree deeper
    /// than PATH_MAX, as a refused deep archive's staging is): `store gc` and the next build's
    /// work directory remove it, and keep the one a live build holds.
    @Test(.timeLimit(.minutes(60))) func killedBuildsWorkDirectoriesAreRemoved() throws {
        let work = TemporaryDirectory("krnative-limit-build")
        let store = try Store(root: work.path + "/store")
        let tmp = store.directory(.tmp)
        let dead = Self.plantAbandoned(in: tmp, name: Store.workPrefix + "\(StoreTests.goneProcess)-1")
        Self.plantDeepTree(in: dead, depth: 600)
        let live = tmp + "/" + Store.workPrefix + "\(getpid())-2"
        let held = try Self.hold(live)
        defer { close(held) }
        let lock = work.path + "/krnative.lock.json"
        try Lockfile(sourceDateEpoch: 0, inputs: []).write(to: lock)
        let gc = krnative(["store", "gc", "--lock", lock, "--store", store.root])
        #expect(gc.succeeded, "\(gc.stderr)")
        #expect(gc.stdout.contains("removed tmp/\((dead as NSString).lastPathComponent) ("), "\(gc.stdout)")
        #expect(!FileManager.default.fileExists(atPath: dead) && !FileManager.default.fileExists(atPath: dead + ".lock"))
        #expect(FileManager.default.fileExists(atPath: live + "/spec.json"))

        let next = Self.plantAbandoned(in: tmp, name: Store.workPrefix + "\(StoreTests.goneProcess)-3")
        Self.plantDeepTree(in: next, depth: 600)
        let runner = StepRunner(settings: .init(entryExecutable: Package.binary, patchesDirectory: work.path), resolver: .init(store: store))
        let used = try runner.withWorkDirectory(nil, name: "ttyd-x86_64-linux-musl", keep: false) { $0 }
        #expect(!FileManager.default.fileExists(atPath: next), "the next build left a killed build's work directory")
        #expect(!FileManager.default.fileExists(atPath: used), "a finished build's work directory stays")
        #expect(FileManager.default.fileExists(atPath: live + "/spec.json"))
    }

    // MARK: Helpers

    /// A directory as a killed run leaves it: files in it, a lock file nobody holds.
    static func plantAbandoned(in parent: String, name: String) -> String {
        let path = parent + "/" + name
        try? FileManager.default.createDirectory(atPath: path + "/root", withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: path + "/spec.json", contents: Data("{}".utf8))
        _ = FileManager.default.createFile(atPath: path + ".lock", contents: nil)
        return path
    }

    /// A directory with its lock held by this process, as a live run has it; returns the lock's descriptor.
    static func hold(_ path: String) throws -> Int32 {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: path + "/spec.json", contents: Data("{}".utf8))
        let fd = open(path + ".lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        try #require(fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0)
        return fd
    }

    /// Nested directories deeper than PATH_MAX can name from `path`, one read-only, with a file at the bottom.
    static func plantDeepTree(in path: String, depth: Int) {
        var fd = open(path, O_RDONLY | O_DIRECTORY)
        for _ in 0..<depth {
            mkdirat(fd, "deep-directory", 0o755)
            let inner = openat(fd, "deep-directory", O_RDONLY | O_DIRECTORY)
            close(fd)
            fd = inner
        }
        close(openat(fd, "file", O_WRONLY | O_CREAT, 0o644))
        fchmod(fd, 0o555)
        close(fd)
    }

    /// Mode, size and contents' digest of a host file (a directory: its mode and names).
    static func fingerprint(_ path: String) -> String {
        var info = stat()
        guard lstat(path, &info) == 0 else { return "absent" }
        if (info.st_mode & S_IFMT) == S_IFDIR {
            return "\(info.st_mode) " + ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().joined(separator: ",")
        }
        let data = FileManager.default.contents(atPath: path) ?? Data()
        return "\(info.st_mode) \(info.st_size) \(SHA256Digest.of(data).hex)"
    }
}
