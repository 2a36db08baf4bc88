import Foundation
import KrnativeBase
import Sandbox
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Who runs krnative: the test's own user, or an ordinary user made for the test (when the
/// tests run as root, as in CI), so the sandbox is proven rootless.
enum Runner: String, CaseIterable, CustomTestStringConvertible {
    case currentUser
    case ordinaryUser
    var testDescription: String { rawValue }

    static let ordinaryName = "krnative-sandbox-test"

    /// The uid and gid of the ordinary user, creating it when the tests run as root; nil otherwise.
    static let ordinary: (uid: uid_t, gid: gid_t)? = {
        guard getuid() == 0 else { return nil }
        if getpwnam(ordinaryName) == nil {
            _ = ChildProcess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", ordinaryName])
        }
        guard let entry = getpwnam(ordinaryName) else { return nil }
        return (entry.pointee.pw_uid, entry.pointee.pw_gid)
    }()

    /// The users this machine can run as: an ordinary user only when the tests run as root (else the
    /// current user already is one).
    static var available: [Runner] { ordinary == nil ? [.currentUser] : allCases }

    var identity: (uid: uid_t, gid: gid_t)? {
        switch self {
        case .currentUser: (getuid(), getgid())
        case .ordinaryUser: Runner.ordinary
        }
    }

    /// argv that runs krnative as this user.
    func command(_ arguments: [String]) -> [String] {
        switch self {
        case .currentUser:
            return [Package.binary] + arguments
        case .ordinaryUser:
            let (uid, gid) = Runner.ordinary!
            return ["setpriv", "--reuid=\(uid)", "--regid=\(gid)", "--clear-groups", "--", Package.binary] + arguments
        }
    }

    /// Hands a directory to this user.
    func own(_ path: String) {
        guard let (uid, gid) = identity else { return }
        _ = ChildProcess.run(["chown", "-R", "\(uid):\(gid)", path])
        chmod(path, 0o755)
    }
}

@Suite("Sandbox", .timeLimit(.minutes(60)), .tags(.namespaces), .endToEnd, .serialized, .needsNamespaces)
struct SandboxTests {
    let runner = SandboxRunner(entryExecutable: Package.binary)

    @Test(arguments: Runner.available)
    func isolationHoldsFromInside(as user: Runner) throws {
        let server = try FaultServer()
        let work = TemporaryDirectory("krnative-sb-work"), input = TemporaryDirectory("krnative-sb-in"), prefix = TemporaryDirectory("krnative-sb-prefix")
        _ = input.file("file", "original\n")
        for directory in [work, input, prefix] { user.own(directory.path) }
        let marker = 900_000 + Int(getpid() % 50_000) + (user == .ordinaryUser ? 1 : 0)
        let probe = """
            import os, socket, subprocess
            def attempt(action):
                try:
                    action(); return "allowed"
                except OSError as error:
                    return "denied"
            def write(path):
                with open(path, "w") as f: f.write("x")
            print("hostLoopback=" + attempt(lambda: socket.create_connection(("127.0.0.1", \(server.port)), timeout=3)))
            print("dns=" + attempt(lambda: socket.getaddrinfo("example.com", 443)))
            s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
            print("ownLoopback=" + attempt(lambda: socket.create_connection(s.getsockname(), timeout=3)))
            print("writeInput=" + attempt(lambda: write("/input/file")))
            print("writeUsr=" + attempt(lambda: write("/usr/krnative-test")))
            print("writeEtc=" + attempt(lambda: write("/etc/krnative-test")))
            print("writeRoot=" + attempt(lambda: write("/krnative-test")))
            print("writePrefix=" + attempt(lambda: write("/opt/backend.ai/made-inside")))
            print("writeWork=" + attempt(lambda: write(os.getcwd() + "/made-inside")))
            print("writeTmp=" + attempt(lambda: write("/tmp/made-inside")))
            subprocess.Popen(["sleep", "\(marker)"], start_new_session=True)
            print("processes=" + " ".join(sorted(p for p in os.listdir("/proc") if p.isdigit())))
            print("hostname=" + socket.gethostname())
            print("uid=%d" % os.getuid())
            """
        let script = work.file("probe.py", probe)
        user.own(work.path)
        let result = ChildProcess.run(
            user.command([
                "sandbox", "run", "--ro", "\(input.path):/input", "--prefix", prefix.path, "--workdir", work.path, "--",
                "python3", script,
            ]))
        #expect(result.succeeded, "\(result.stdout)\(result.stderr)")
        var seen: [String: String] = [:]
        for line in result.stdout.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { seen[parts[0]] = parts[1] }
        }
        // Outside, the same host port is reachable: the denial inside is the namespace's doing.
        #expect(ChildProcess.run(["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', \(server.port)), timeout=3)"]).succeeded)
        #expect(seen["hostLoopback"] == "denied")
        #expect(seen["dns"] == "denied")
        #expect(seen["ownLoopback"] == "allowed")
        #expect(seen["writeInput"] == "denied")
        #expect(seen["writeUsr"] == "denied")
        #expect(seen["writeEtc"] == "denied")
        #expect(seen["writeRoot"] == "denied")
        #expect(seen["writePrefix"] == "allowed")
        #expect(seen["writeWork"] == "allowed")
        #expect(seen["writeTmp"] == "allowed")
        #expect(seen["hostname"] == "krnative")
        #expect(seen["uid"] == "0")
        let pids = (seen["processes"] ?? "").split(separator: " ").compactMap { Int($0) }
        #expect(!pids.isEmpty && pids.allSatisfy { $0 < 20 }, "host processes visible: \(pids)")
        #expect(!pids.contains(Int(getpid())) || getpid() < 20)
        // What the step wrote to the prefix is on the host, owned by the calling user.
        var info = stat()
        #expect(stat(prefix.path + "/made-inside", &info) == 0)
        #expect(info.st_uid == user.identity!.uid)
        #expect(try String(contentsOfFile: input.path + "/file", encoding: .utf8) == "original\n")
        // The daemon the step started in its own session died with the sandbox.
        #expect(!ChildProcess.run(["pgrep", "-f", "^sleep \(marker)$"]).succeeded, "a daemon outlived the sandbox")
    }

    @Test func environmentIsExactlyTheDeclaredOne() throws {
        let work = TemporaryDirectory()
        let spec = SandboxSpec(
            argv: ["/usr/bin/env"], environment: ["CC": "zig cc"], mounts: [.writable(work.path)],
            workingDirectory: work.path, sourceDateEpoch: 1_786_665_600)
        let collected = Collected()
        try runner.run(spec) { collected.append($0) }
        let lines = Set(collected.text.split(separator: "\n").map(String.init))
        #expect(lines == [
            "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=\(work.path)", "TZ=UTC", "LC_ALL=C.UTF-8",
            "SOURCE_DATE_EPOCH=1786665600", "CC=zig cc",
        ])
        let umask = try runner.run(SandboxSpec(argv: ["sh", "-c", "umask"], mounts: [.writable(work.path)], workingDirectory: work.path))
        #expect(umask.outputTail.trimmingCharacters(in: .whitespacesAndNewlines) == "0022")
    }

    @Test func exitStatusAndSignalsPropagate() throws {
        let work = TemporaryDirectory()
        let exited = try runner.start(SandboxSpec(argv: ["sh", "-c", "echo failing >&2; exit 7"], mounts: [.writable(work.path)], workingDirectory: work.path))
        #expect(exited.termination == .exited(7))
        #expect(exited.outputTail.contains("failing"))
        let signalled = try runner.start(SandboxSpec(argv: ["sh", "-c", "kill -TERM $$"], mounts: [.writable(work.path)], workingDirectory: work.path))
        #expect(signalled.termination == .signalled(SIGTERM))
        do {
            try runner.run(SandboxSpec(argv: ["sh", "-c", "echo the cause; exit 3"], mounts: [.writable(work.path)], workingDirectory: work.path))
            Issue.record("a failing step did not throw")
        } catch {
            #expect(error.description.contains("exit status 3"))
            #expect(error.description.contains("sh -c 'echo the cause; exit 3'"))
            #expect(error.description.contains("the cause"))
        }
        let missing = try? runner.start(SandboxSpec(argv: ["no-such-program"], mounts: [.writable(work.path)], workingDirectory: work.path))
        #expect(missing == nil)
    }

    @Test func megabytesOfOutputStreamWithBoundedMemory() throws {
        let work = TemporaryDirectory()
        var bounded = runner
        bounded.tailLimit = 4096
        let streamed = Counted()
        let result = try bounded.run(
            SandboxSpec(argv: ["sh", "-c", "head -c 50000000 /dev/zero | tr '\\0' a"], mounts: [.writable(work.path)], workingDirectory: work.path)
        ) { streamed.add($0.count) }
        #expect(result.outputBytes == 50_000_000)
        #expect(streamed.total == 50_000_000)
        #expect(result.outputTail.utf8.count <= 4096)
    }

    @Test func refusedNamespacesNameTheSettingAndTheFix() throws {
        let work = TemporaryDirectory()
        // Inside a user namespace whose limit is 0, unshare --user is refused as on a locked-down host.
        let refused = ChildProcess.run(
            [
                "unshare", "--user", "--map-root-user", "sh", "-c",
                "echo 0 > /proc/sys/user/max_user_namespaces && exec \"$0\" sandbox run --workdir \"$1\" -- true",
                Package.binary, work.path,
            ])
        #expect(refused.termination == .exited(79))
        #expect(refused.stderr.contains("user.max_user_namespaces is 0"))
        #expect(refused.stderr.contains("sysctl -w user.max_user_namespaces="))
        #expect(refused.stderr.contains("--sandbox none"))

        let noUnshare = ChildProcess.run(
            [Package.binary, "sandbox", "run", "--workdir", work.path, "--", "true"], environment: ["PATH": "/nonexistent"])
        #expect(noUnshare.termination == .exited(79))
        #expect(noUnshare.stderr.contains("no `unshare` on PATH"))
        #expect(noUnshare.stderr.contains("apt-get install util-linux"))

        // The settings are read from /proc/sys; a copy with each switch off names each fix.
        let proc = TemporaryDirectory()
        _ = proc.file("user/max_user_namespaces", "0\n")
        _ = proc.file("kernel/unprivileged_userns_clone", "0\n")
        _ = proc.file("kernel/apparmor_restrict_unprivileged_userns", "1\n")
        let fixes = HostCheck.blockingSettings(procSys: proc.path).map(\.fix).joined(separator: "\n")
        #expect(fixes.contains("user.max_user_namespaces=15000"))
        #expect(fixes.contains("kernel.unprivileged_userns_clone=1"))
        #expect(fixes.contains("kernel.apparmor_restrict_unprivileged_userns=0"))
    }

    @Test func interruptTearsDownTheWholeSandbox() throws {
        let work = TemporaryDirectory()
        let marker = 800_000 + Int(getpid() % 50_000)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Package.binary)
        process.arguments = ["sandbox", "run", "--workdir", work.path, "--", "sh", "-c", "sleep \(marker) & sleep \(marker + 1)"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(10)
        while !ChildProcess.run(["pgrep", "-f", "^sleep \(marker + 1)$"]).succeeded && Date() < deadline { usleep(50_000) }
        #expect(ChildProcess.run(["pgrep", "-f", "^sleep \(marker)$"]).succeeded, "the step did not start")
        kill(process.processIdentifier, SIGINT)
        let patience = Date().addingTimeInterval(10)
        while process.isRunning && Date() < patience { usleep(50_000) }
        if process.isRunning {
            Issue.record("krnative ignored SIGINT for 10 s")
            kill(process.processIdentifier, SIGKILL)
        }
        process.waitUntilExit()
        #expect(process.terminationStatus == 130)
        usleep(200_000)
        #expect(!ChildProcess.run(["pgrep", "-f", "^sleep \(marker)"]).succeeded, "processes outlived the interrupted sandbox")
    }

    @Test func doctorExplainsThisHost() throws {
        let result = krnative(["doctor", "--json"])
        let checks = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as! [[String: String]]
        let byName = Dictionary(uniqueKeysWithValues: checks.map { ($0["name"]!, $0) })
        for name in ["unshare", "user namespaces", "seccomp", "no_new_privs", "tiocsti", "sandbox", "libcurl", "libarchive", "liblzma", "store disk"] {
            #expect(byName[name] != nil, "doctor has no \(name) check")
        }
        #expect(byName["sandbox"]?["status"] == (Sandbox.userNamespacesWork ? "ok" : "fail"))
        #expect(result.succeeded == Sandbox.userNamespacesWork)
        for name in ["cmake", "ninja", "mmdebstrap", "qemu-aarch64-static", "faketime", "disorderfs", "patchelf", "pip"] {
            #expect(byName[name] != nil, "doctor has no \(name) check")
        }
    }

    /// On a PATH with nothing on it: unshare fails once (the namespaces check says it could not
    /// run, not a second failure) and every missing program names the package that has it.
    @Test func doctorNamesThePackageOfEveryMissingProgram() throws {
        let empty = TemporaryDirectory("krnative-doctor-path")
        let result = krnative(["doctor", "--json"], environment: ["PATH": empty.path])
        #expect(result.termination == .exited(ExitStatus.sandbox), "\(result.stderr)")
        let checks = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as! [[String: String]]
        let byName = Dictionary(uniqueKeysWithValues: checks.map { ($0["name"]!, $0) })
        #expect(byName["unshare"]?["fix"] == "apt-get install util-linux")
        #expect(byName["user namespaces"]?["status"] == "info", "\(byName["user namespaces"] ?? [:])")
        let packages = [
            "cmake": "cmake", "ninja": "ninja-build", "mmdebstrap": "mmdebstrap", "qemu-aarch64-static": "qemu-user-static",
            "faketime": "faketime", "disorderfs": "disorderfs", "fusermount": "fuse3", "patchelf": "patchelf", "pip": "python3-pip",
        ]
        for (program, package) in packages {
            #expect(byName[program]?["fix"] == "apt-get install \(package)", "\(program): \(byName[program] ?? [:])")
        }
        // Issue #27: what every build runs is a failure when missing; what one command runs, a note.
        #expect(byName["cmake"]?["status"] == "fail" && byName["ninja"]?["status"] == "fail")
        #expect(byName["mmdebstrap"]?["status"] == "info")

        // Only unshare on PATH, no `true`: the namespaces are judged by themselves (a missing
        // `true` was reported as a user-namespace failure), and -q leaves out what is fine.
        try #require(symlink(ChildProcess.resolve("unshare"), empty.path + "/unshare") == 0)
        let quiet = krnative(["doctor", "-q"], environment: ["PATH": empty.path])
        #expect(quiet.stdout.contains("user namespaces") == !Sandbox.userNamespacesWork, "\(quiet.stdout)")
        #expect(!quiet.stdout.contains("OK "), "\(quiet.stdout)")
        #expect(quiet.stdout.contains("FAIL  cmake"), "\(quiet.stdout)")
    }
}

final class Collected: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    func append(_ chunk: Data) { lock.withLock { data.append(chunk) } }
    var text: String { lock.withLock { String(decoding: data, as: UTF8.self) } }
}

final class Counted: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func add(_ n: Int) { lock.withLock { count += n } }
    var total: Int { lock.withLock { count } }
}
