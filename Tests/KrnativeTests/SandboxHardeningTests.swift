import Foundation
import KrnativeBase
import Sandbox
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The attacks of issue #13 on the sandbox, each made by a step through the real `unshare` and
/// the real krnative binary, and shown refused (docs/design.md §5).
@Suite("Sandbox hardening", .timeLimit(.minutes(60)), .tags(.namespaces, .process), .endToEnd, .serialized, .needsNamespaces)
struct SandboxHardeningTests {
    /// Runs a Python probe in the sandbox as `user` and returns its `key=value` lines.
    func probe(_ script: String, as user: Runner = .currentUser, arguments: [String] = [], extra: [String] = []) -> (ChildProcess.Result, [String: String]) {
        let work = TemporaryDirectory("krnative-hard-work")
        let path = work.file("probe.py", script)
        user.own(work.path)
        let result = ChildProcess.run(
            user.command(["sandbox", "run", "--workdir", work.path] + extra + ["--", "python3", path] + arguments))
        var seen: [String: String] = [:]
        for line in result.stdout.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { seen[parts[0]] = parts[1] }
        }
        return (result, seen)
    }

    static let attempt = """
        import errno, os
        def attempt(action):
            try:
                action()
                return "allowed"
            except OSError as error:
                return errno.errorcode.get(error.errno, str(error.errno))

        """

    /// A step types into the terminal krnative was started from (its controlling terminal, a pty
    /// the test holds the master of): through /dev/tty, through the pty's name, and, to prove the
    /// seccomp filter itself, on a terminal of its own made its controlling terminal, where the
    /// kernel (dev.tty.legacy_tiocsti=1) would allow it.
    @Test func aStepCannotTypeIntoTheInvokingTerminal() throws {
        let terminal = try PseudoTerminal()
        let work = TemporaryDirectory("krnative-hard-tty")
        let script = work.file(
            "probe.py",
            Self.attempt + """
                import fcntl, sys, termios
                marker = "krnative-" + "injected" + chr(10)
                def inject(fd):
                    for character in marker:
                        fcntl.ioctl(fd, termios.TIOCSTI, character.encode())
                def through(path):
                    fd = os.open(path, os.O_RDWR)
                    inject(fd)
                print("devTty=" + attempt(lambda: through("/dev/tty")))
                print("hostPty=" + attempt(lambda: through(sys.argv[1])))
                master, slave = os.openpty()
                pid = os.fork()
                if pid == 0:
                    os.setsid()
                    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
                    os.write(1, ("ownPty=" + attempt(lambda: inject(slave)) + chr(10)).encode())
                    os._exit(0)
                os.waitpid(pid, 0)
                print("session=" + ("own" if os.getsid(0) == os.getpid() else "inherited"))
                """)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setsid")
        process.arguments = [
            "--ctty", "--wait", Package.binary, "sandbox", "run", "--workdir", work.path, "--", "python3", script, terminal.slaveName,
        ]
        let slave = FileHandle(fileDescriptor: terminal.slave, closeOnDealloc: false)
        process.standardInput = slave
        process.standardOutput = slave
        process.standardError = slave
        try process.run()
        process.waitUntilExit()
        let seen = terminal.drain()
        let pending = terminal.pendingInput()
        #expect(process.terminationStatus == 0, "\(seen)")
        #expect(!seen.contains("krnative-injected"), "the step typed into the invoking terminal: \(seen)")
        #expect(pending.isEmpty, "the invoking terminal has input the step pushed: \(pending)")
        #expect(seen.contains("devTty=ENOENT") || seen.contains("devTty=ENXIO"), "\(seen)")
        #expect(seen.contains("hostPty=ENOENT"), "\(seen)")
        #expect(seen.contains("ownPty=EPERM"), "\(seen)")
        #expect(seen.contains("session=own"), "\(seen)")
    }

    /// Capabilities, no_new_privs and seccomp as the step sees them; remounting a read-only bind
    /// (and /usr, /) writable, writing sysctls, creating a user namespace, and the calls the filter
    /// refuses — as the test's user and as an ordinary one.
    @Test(arguments: Runner.available)
    func aStepHoldsNoPrivilegeAndCannotRemount(as user: Runner) throws {
        let input = TemporaryDirectory("krnative-hard-in")
        let file = input.file("file", "original\n")
        user.own(input.path)
        let script =
            Self.attempt + """
                import ctypes, platform, subprocess
                libc = ctypes.CDLL(None, use_errno=True)
                def call(result):
                    if result != 0:
                        raise OSError(ctypes.get_errno(), "")
                MS_RDONLY, MS_REMOUNT, MS_BIND = 1, 32, 4096
                def remount(target):
                    call(libc.mount(None, target.encode(), None, MS_REMOUNT | MS_BIND, None))
                def write(path):
                    with open(path, "w") as f:
                        f.write("rewritten" + chr(10))
                print("remountInput=" + attempt(lambda: remount("/input")))
                print("remountUsr=" + attempt(lambda: remount("/usr")))
                print("remountRoot=" + attempt(lambda: remount("/")))
                tool = subprocess.run(["mount", "-o", "remount,rw,bind", "/input"], capture_output=True)
                print("mountTool=" + ("allowed" if tool.returncode == 0 else "denied"))
                print("writeInput=" + attempt(lambda: write("/input/file")))
                print("writeHostname=" + attempt(lambda: write("/proc/sys/kernel/hostname")))
                print("writeUserns=" + attempt(lambda: write("/proc/sys/user/max_user_namespaces")))
                # Opened, never written: on a failure this must not reboot the machine.
                print("openSysrq=" + attempt(lambda: os.close(os.open("/proc/sysrq-trigger", os.O_WRONLY))))
                print("unshareUser=" + attempt(lambda: call(libc.unshare(0x10000000))))
                nested = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
                print("unshareTool=" + ("allowed" if nested.returncode == 0 else "denied"))
                x86 = platform.machine() == "x86_64"
                numbers = {"keyctl": 250 if x86 else 219, "add_key": 248 if x86 else 217, "perf_event_open": 298 if x86 else 241,
                           "open_tree": 428, "fsopen": 430, "mount_setattr": 442, "clone3": 435}
                libc.syscall.restype = ctypes.c_long
                for name, number in sorted(numbers.items()):
                    print("sys_" + name + "=" + attempt(lambda: call(libc.syscall(ctypes.c_long(number), 0, 0, 0, 0, 0))))
                print("status=" + open("/proc/self/status").read().replace(chr(10), "|"))
                """
        let (result, seen) = probe(script, as: user, extra: ["--ro", "\(input.path):/input"])
        #expect(result.succeeded, "\(result.stdout)\(result.stderr)")
        for key in ["remountInput", "remountUsr", "remountRoot", "unshareUser", "sys_keyctl", "sys_add_key", "sys_perf_event_open", "sys_open_tree", "sys_fsopen", "sys_mount_setattr"] {
            #expect(seen[key] == "EPERM", "\(key)=\(seen[key] ?? "missing")")
        }
        #expect(seen["sys_clone3"] == "ENOSYS")
        #expect(seen["mountTool"] == "denied")
        #expect(seen["unshareTool"] == "denied")
        #expect(seen["writeInput"] == "EROFS")
        // Read-only, or (where the kernel's permission check comes first) not writable at all.
        for key in ["writeHostname", "writeUserns", "openSysrq"] {
            let absent = key == "openSysrq" && !FileManager.default.fileExists(atPath: "/proc/sysrq-trigger")
            #expect(absent ? seen[key] == "ENOENT" : (seen[key] == "EROFS" || seen[key] == "EACCES"), "\(key)=\(seen[key] ?? "missing")")
        }
        let status = (seen["status"] ?? "").replacingOccurrences(of: "|", with: "\n")
        #expect(HostCheck.confinementProblems(status: status).isEmpty, "\(HostCheck.confinementProblems(status: status))")
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "original\n")
    }

    /// A directory descriptor (the host's /) and a socket connected to a host server, inherited by
    /// krnative from whoever started it, and krnative's own descriptors: none reaches the step.
    @Test func inheritedDescriptorsDoNotReachTheStep() throws {
        let server = try FaultServer()
        let root = open("/", O_RDONLY | O_DIRECTORY)
        let socketFD = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(server.port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(socketFD, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        try #require(root >= 0 && connected == 0)
        // High numbers nobody else uses; fcntl's duplicates are not close-on-exec.
        let directory = fcntl(root, F_DUPFD, 400), network = fcntl(socketFD, F_DUPFD, 400)
        close(root)
        close(socketFD)
        defer {
            close(directory)
            close(network)
        }
        let script =
            Self.attempt + """
                import sys
                leaked = []
                for name in os.listdir("/proc/self/fd"):
                    try:
                        leaked.append(name + ":" + os.readlink("/proc/self/fd/" + name))
                    except OSError:
                        pass
                print("open=" + " ".join(sorted(leaked)))
                print("directory=" + attempt(lambda: os.listdir("/proc/self/fd/%s/../../.." % sys.argv[1])))
                print("socket=" + attempt(lambda: os.fstat(int(sys.argv[2]))))
                """
        let (result, seen) = probe(script, arguments: [String(directory), String(network)])
        #expect(result.succeeded, "\(result.stdout)\(result.stderr)")
        let open = Set((seen["open"] ?? "").split(separator: " ").compactMap { $0.split(separator: ":").first.flatMap { Int($0) } })
        #expect(open == [0, 1, 2], "descriptors reached the step: \(seen["open"] ?? "")")
        #expect(seen["directory"] == "ENOENT")
        #expect(seen["socket"] == "EBADF")
    }

    /// krnative killed (SIGKILL, SIGHUP, SIGTERM) while a step runs: the launcher, `unshare`, the
    /// entry and the step's processes are all gone within seconds.
    @Test(arguments: [SIGKILL, SIGHUP, SIGTERM])
    func killingKrnativeEndsTheSandbox(signal: Int32) throws {
        let work = TemporaryDirectory("krnative-hard-kill")
        let marker = 700_000 + Int(getpid() % 50_000) + Int(signal) * 100
        // Spawn, not Foundation's Process: that starts children with the signal mask of the
        // thread it runs on, where SIGHUP is blocked.
        let started = ChildPid(), ended = DispatchSemaphore(value: 0), directory = work.path
        DispatchQueue.global().async {
            _ = Spawn.run(
                [Package.binary, "sandbox", "run", "--workdir", directory, "--", "sh", "-c", "sleep \(marker) & sleep \(marker + 1)"],
                environment: nil, directory: nil, streams: [{ _ in }], onStart: { started.set($0) })
            ended.signal()
        }
        let deadline = Date().addingTimeInterval(20)
        while !ChildProcess.run(["pgrep", "-f", "^sleep \(marker + 1)$"]).succeeded && Date() < deadline { usleep(50_000) }
        try #require(ChildProcess.run(["pgrep", "-f", "^sleep \(marker)$"]).succeeded, "the step did not start")
        let krnative = try #require(started.get())
        // The launcher (now unshare), the entry, sh and the sleeps.
        let sandbox = descendants(of: krnative)
        #expect(sandbox.count >= 5, "expected unshare, the entry, sh and the sleeps: \(sandbox.map(describe))")
        kill(krnative, signal)
        if ended.wait(timeout: .now() + 10) != .success {
            Issue.record("krnative outlived signal \(signal) for 10 s")
            kill(krnative, SIGKILL)
            ended.wait()
        }
        let patience = Date().addingTimeInterval(5)
        var left: [pid_t] = sandbox
        while !left.isEmpty && Date() < patience {
            usleep(50_000)
            left = sandbox.filter(isAlive)
        }
        #expect(left.isEmpty, "still running after krnative got signal \(signal): \(left.map(describe))")
        #expect(!ChildProcess.run(["pgrep", "-f", "^sleep \(marker)"]).succeeded)
    }

    /// A root tree whose `opt` is a link out of it: the prefix's mount point under /opt is refused,
    /// naming the link, and nothing is made where the link points.
    @Test func aRootTreeLinkIsNotFollowed() throws {
        let tree = TemporaryDirectory("krnative-hard-root"), outside = TemporaryDirectory("krnative-hard-outside")
        let prefix = TemporaryDirectory("krnative-hard-prefix"), work = TemporaryDirectory("krnative-hard-work")
        try FileManager.default.createSymbolicLink(atPath: tree.path + "/opt", withDestinationPath: outside.path)
        let result = krnative(["sandbox", "run", "--root", tree.path, "--prefix", prefix.path, "--workdir", work.path, "--", "true"])
        #expect(result.termination == .exited(79), "\(result.stderr)")
        #expect(result.stderr.contains("/opt/backend.ai passes through /opt, a symbolic link"), "\(result.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: outside.path).isEmpty)
        // A mount point under a link of the host's root (merged /usr: /lib -> usr/lib) is refused too.
        let input = TemporaryDirectory("krnative-hard-in")
        var info = stat()
        if lstat("/lib", &info) == 0 && (info.st_mode & S_IFMT) == S_IFLNK {
            let name = "krnative-must-not-exist-\(getpid())"
            let underLink = krnative(["sandbox", "run", "--ro", "\(input.path):/lib/\(name)", "--workdir", work.path, "--", "true"])
            #expect(underLink.termination == .exited(79), "\(underLink.stderr)")
            #expect(underLink.stderr.contains("passes through /lib, a symbolic link"))
            #expect(!FileManager.default.fileExists(atPath: "/usr/lib/\(name)"))
            rmdir("/usr/lib/\(name)")
        }
    }

    /// Issue #22 item 12: the `.pyc` step binds a tree an earlier step made (the runtime's build
    /// Python, `staging/runtime/build-python`) without following a link at that path: a step that
    /// left it as a link to a host directory gets a refused bind, and the directory's secret is not
    /// read inside. The same bind of a real directory works, and a followed bind would show it.
    @Test func aBindOfAStepMadePathFollowsNoLinkThere() throws {
        let staging = TemporaryDirectory("krnative-hard-staging"), secret = TemporaryDirectory("krnative-hard-secret")
        let work = TemporaryDirectory("krnative-hard-work")
        _ = secret.file("id_rsa", "PRIVATE KEY\n")
        try FileManager.default.createSymbolicLink(atPath: staging.path + "/build-python", withDestinationPath: secret.path)
        let runner = SandboxRunner(entryExecutable: Package.binary)
        func cat(_ source: String, followLink: Bool) -> (SandboxResult?, String) {
            let spec = SandboxSpec(
                argv: ["cat", "/opt/host-python/id_rsa"], mounts: [.readOnly(source, at: "/opt/host-python", followLink: followLink), .writable(work.path)],
                workingDirectory: work.path)
            let result = try? runner.start(spec)
            return (result, result?.outputTail ?? "")
        }
        let (refused, seen) = cat(staging.path + "/build-python", followLink: false)
        #expect(refused?.termination != .exited(0) && !seen.contains("PRIVATE KEY"), "\(String(describing: refused)) \(seen)")
        // What the link would have given (the check above is the flag's doing), and a real directory.
        #expect(cat(staging.path + "/build-python", followLink: true).1.contains("PRIVATE KEY"))
        #expect(cat(secret.path, followLink: false).1.contains("PRIVATE KEY"))
    }

    @Test func doctorReportsWhatTheSandboxReliesOn() throws {
        let result = krnative(["doctor", "--json"])
        let checks = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as! [[String: String]]
        let byName = Dictionary(uniqueKeysWithValues: checks.map { ($0["name"]!, $0) })
        #expect(byName["seccomp"]?["status"] == "ok")
        #expect(byName["no_new_privs"]?["status"] == "ok")
        let setting = HostCheck.legacyTIOCSTI()
        #expect(byName["tiocsti"]?["status"] == (setting == "0" ? "ok" : setting == nil ? "info" : "warn"))
        #expect(byName["sandbox"]?["status"] == "ok")
        #expect(byName["sandbox"]?["detail"]?.contains("no capabilities, no_new_privs and the seccomp filter") == true)
    }

    // MARK: Helpers

    /// Every process below `pid`, from /proc.
    func descendants(of pid: pid_t) -> [pid_t] {
        var parents: [pid_t: pid_t] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let child = pid_t(name), let stat = try? String(contentsOfFile: "/proc/\(name)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 1, let parent = pid_t(fields[1]) { parents[child] = parent }
        }
        var found: [pid_t] = [], frontier = [pid]
        while let next = frontier.popLast() {
            let children = parents.filter { $0.value == next }.map(\.key)
            found += children
            frontier += children
        }
        return found
    }

    /// Running (not a zombie waiting to be reaped).
    func isAlive(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return false }
        return stat[stat.index(after: close)...].split(separator: " ").first != "Z"
    }

    final class ChildPid: @unchecked Sendable {
        private let lock = NSLock()
        private var pid: pid_t?
        func set(_ value: pid_t) { lock.withLock { pid = value } }
        func get() -> pid_t? { lock.withLock { pid } }
    }

    func describe(_ pid: pid_t) -> String {
        let command = (try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8))?.replacingOccurrences(of: "\0", with: " ") ?? "?"
        return "\(pid) \(command)"
    }
}

/// A pseudo-terminal pair the test holds: the slave becomes krnative's terminal, the master shows
/// what reached it.
final class PseudoTerminal {
    let master: Int32
    let slave: Int32
    let slaveName: String

    init() throws {
        // posix_openpt and ptsname need _XOPEN_SOURCE, which Swift's Glibc lacks: /dev/ptmx and
        // its ioctls TIOCSPTLCK and TIOCGPTN (the same numbers on x86_64 and aarch64) instead.
        master = open("/dev/ptmx", O_RDWR | O_NOCTTY)
        var unlock: Int32 = 0, number: UInt32 = 0
        guard master >= 0, ioctl(master, 0x4004_5431, &unlock) == 0, ioctl(master, 0x8004_5430, &number) == 0 else {
            throw UsageError("cannot open a pseudo-terminal: \(String(cString: strerror(errno)))")
        }
        slaveName = "/dev/pts/\(number)"
        slave = open(slaveName, O_RDWR | O_NOCTTY)
        guard slave >= 0 else { throw UsageError("cannot open \(slaveName): \(String(cString: strerror(errno)))") }
    }

    deinit {
        close(master)
        close(slave)
    }

    /// Everything written to the terminal (the output and the echo of its input) so far.
    func drain() -> String { Self.readAvailable(master) }

    /// Input waiting to be read from the terminal, as the invoking shell would read it.
    func pendingInput() -> String {
        var settings = termios()
        tcgetattr(slave, &settings)
        settings.c_lflag &= ~tcflag_t(ICANON)
        tcsetattr(slave, TCSANOW, &settings)
        return Self.readAvailable(slave)
    }

    static func readAvailable(_ fd: Int32) -> String {
        var collected = Data()
        var buffer = [UInt8](repeating: 0, count: 4096)
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        while poll(&poller, 1, 200) > 0 && poller.revents & Int16(POLLIN) != 0 {
            let count = read(fd, &buffer, buffer.count)
            if count <= 0 { break }
            collected.append(contentsOf: buffer[0..<count])
        }
        return String(decoding: collected, as: UTF8.self)
    }
}
