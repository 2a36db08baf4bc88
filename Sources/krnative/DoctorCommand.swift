import ArgumentParser
import Archive
import Fetch
import Foundation
import KrnativeBase
import Sandbox
import Store

struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor", abstract: "Check that this machine can run krnative builds, with the fix for each failure.",
        discussion: helpText(examples: "krnative doctor", "krnative doctor --json"))

    @OptionGroup var inputs: InputOptions
    @OptionGroup var output: OutputOptions
    @Option(help: "A remote cache to check. Default: env KRNATIVE_REMOTE_CACHE.") var remoteCache: String?

    struct Check: Encodable {
        enum Status: String, Encodable { case ok, fail, warn, info }
        var name: String
        var status: Status
        var detail: String
        var fix: String?
    }

    func run() throws {
        var checks: [Check] = []
        let unshare = ChildProcess.resolve("unshare")
        checks.append(
            access(unshare, X_OK) == 0
                ? Check(name: "unshare", status: .ok, detail: unshare)
                : Check(name: "unshare", status: .fail, detail: "not on PATH", fix: "apt-get install util-linux"))
        let blocking = HostCheck.blockingSettings()
        if let (reason, fix) = blocking.first {
            checks.append(Check(name: "user namespaces", status: .fail, detail: reason, fix: fix))
        } else if access(unshare, X_OK) != 0 {
            // Not a second failure: the check needs unshare, whose absence is reported above.
            checks.append(Check(name: "user namespaces", status: .info, detail: "not checked: it needs unshare"))
        } else {
            // krnative itself is what runs inside: a program that is surely there (a missing `true`
            // on PATH was taken for a namespace failure).
            let probe = ChildProcess.run(["unshare", "--user", "--map-root-user", currentExecutable, "--version"])
            checks.append(
                probe.succeeded
                    ? Check(name: "user namespaces", status: .ok, detail: "unshare --user --map-root-user works as uid \(getuid())")
                    : Check(
                        name: "user namespaces", status: .fail,
                        detail: "unshare --user failed: \(probe.stderr.trimmingCharacters(in: .whitespacesAndNewlines))",
                        fix: "enable user namespaces for ordinary users (user.max_user_namespaces > 0), or build with --sandbox none"))
        }
        checks.append(contentsOf: confinementChecks())
        checks.append(sandboxCheck())
        let limits = StepLimits.standard
        checks.append(
            HostCheck.processLimit.map {
                Check(
                    name: "step limits", status: .ok,
                    detail: "a step may run \(limits.processes) processes and threads (bound by \($0)) and take \(limits.memoryBytes >> 20) MiB per process (RLIMIT_DATA)")
            }
                ?? Check(
                    name: "step limits", status: .warn,
                    detail: "as root on Linux before 6.14 nothing bounds a step's processes (RLIMIT_NPROC does not bind root; pid_max is the machine's)",
                    fix: "run krnative as an ordinary user, or on Linux 6.14 or later"))
        checks.append(Check(name: "libcurl", status: .ok, detail: CurlLibrary.version))
        checks.append(Check(name: "libarchive", status: .ok, detail: ArchiveLibraries.libarchive))
        checks.append(Check(name: "liblzma", status: .ok, detail: ArchiveLibraries.liblzma))
        let store = inputs.storePath
        try? FileManager.default.createDirectory(atPath: store, withIntermediateDirectories: true)
        if let free = FileSystem.freeBytes(at: store) {
            let gib = Double(free) / Double(1 << 30)
            checks.append(
                Check(
                    name: "store disk", status: gib >= 5 ? .ok : .warn, detail: String(format: "%.1f GiB free at %@", gib, store),
                    fix: gib >= 5 ? nil : "a build needs about 5 GiB; free space or point --store / KRNATIVE_STORE elsewhere"))
        }
        checks.append(contentsOf: Self.tools.map(\.check))
        checks.append(pipCheck())
        if let check = try remoteCacheCheck(store: store) { checks.append(check) }
        if output.json {
            printJSON(checks)
        } else {
            // -q: only what needs doing.
            for check in checks where !output.quiet || check.status == .fail || check.status == .warn {
                print("\(check.status.rawValue.uppercased().padding(toLength: 5, withPad: " ", startingAt: 0)) \(check.name): \(check.detail)")
                if let fix = check.fix { print("      fix: \(fix)") }
            }
        }
        if checks.contains(where: { $0.status == .fail }) { throw ExitCode(ExitStatus.sandbox) }
    }

    /// A program a later stage runs, found on PATH or not: a failure when every build needs it,
    /// else a note naming the command that does.
    struct Tool {
        var program: String
        var package: String
        var purpose: String
        var everyBuildNeedsIt = false

        var check: Check {
            let path = ChildProcess.resolve(program)
            return access(path, X_OK) == 0
                ? Check(name: program, status: .ok, detail: path)
                : Check(name: program, status: everyBuildNeedsIt ? .fail : .info, detail: "not found; \(purpose) needs it", fix: "apt-get install \(package)")
        }
    }

    /// The programs stages after the sandbox run, each with the Debian package that has it.
    static let tools = [
        Tool(program: "cmake", package: "cmake", purpose: "every build (ttyd's libraries)", everyBuildNeedsIt: true),
        Tool(program: "ninja", package: "ninja-build", purpose: "every build (ttyd's libraries)", everyBuildNeedsIt: true),
        Tool(program: "mmdebstrap", package: "mmdebstrap", purpose: "krnative smoke (its root file system)"),
        Tool(program: "qemu-aarch64-static", package: "qemu-user-static", purpose: "smoke and ttyd checks of aarch64 targets"),
        Tool(program: "faketime", package: "faketime", purpose: "build --check (the clock variation)"),
        Tool(program: "disorderfs", package: "disorderfs", purpose: "build --check (the file-order variation)"),
        Tool(program: "fusermount", package: "fuse3", purpose: "build --check (unmounting the file-order variation's disorderfs)"),
        Tool(program: "patchelf", package: "patchelf", purpose: "scripts/standin-lock (the stand-in runtime)"),
    ]

    /// The remote cache, when one is named: does it answer?
    private func remoteCacheCheck(store: String) throws -> Check? {
        let environment = ProcessInfo.processInfo.environment
        guard let url = remoteCache ?? environment["KRNATIVE_REMOTE_CACHE"].flatMap({ $0.isEmpty ? nil : $0 }) else { return nil }
        do { try RemoteCache.checkScheme(url, allowHTTP: EnvironmentSetting.flag("KRNATIVE_REMOTE_CACHE_ALLOW_HTTP") == true) } catch {
            return Check(name: "remote cache", status: .warn, detail: error.description + "; not asked", fix: "use https://")
        }
        let cache = RemoteCache(url: url, store: try Store(root: store), trust: CacheTrust(source: "doctor"))
        guard let problem = cache.probe() else { return Check(name: "remote cache", status: .ok, detail: "\(cache.base) answers") }
        return Check(
            name: "remote cache", status: .warn, detail: problem + "; builds go on without it",
            fix: "check the URL and that the server runs (bazel-remote, or nginx with WebDAV: see the README)")
    }

    /// pip, which downloads the wheels a lock pins by requirement (lock add, fetch).
    private func pipCheck() -> Check {
        let probe = ChildProcess.run(["python3", "-m", "pip", "--version"])
        return probe.succeeded
            ? Check(name: "pip", status: .ok, detail: probe.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
            : Check(
                name: "pip", status: .info, detail: "python3 -m pip does not run; fetching wheels by requirement needs it",
                fix: "apt-get install python3-pip")
    }

    /// What the step's confinement relies on in the kernel, and the terminal-injection setting.
    private func confinementChecks() -> [Check] {
        let filtered = "the step's filter refuses TIOCSTI, TIOCLINUX, mounts, keyctl and new user namespaces"
        let noKernel = "use a kernel built with CONFIG_SECCOMP_FILTER (every distribution kernel), or build with --sandbox none"
        var checks = [
            HostCheck.seccompAvailable
                ? Check(name: "seccomp", status: .ok, detail: "available: \(filtered)")
                : Check(name: "seccomp", status: .fail, detail: "this kernel has no seccomp: steps cannot be confined", fix: noKernel),
            HostCheck.noNewPrivsAvailable
                ? Check(name: "no_new_privs", status: .ok, detail: "available: steps cannot gain privileges by executing a program")
                : Check(name: "no_new_privs", status: .fail, detail: "this kernel has no PR_SET_NO_NEW_PRIVS (before 3.5)", fix: noKernel),
        ]
        let steps = "build steps cannot: they run in a session of their own, without /dev/tty, and seccomp refuses TIOCSTI"
        switch HostCheck.legacyTIOCSTI() {
        case "0":
            checks.append(Check(name: "tiocsti", status: .ok, detail: "dev.tty.legacy_tiocsti=0: only privileged processes may type into a terminal"))
        case let value?:
            checks.append(
                Check(
                    name: "tiocsti", status: .warn, detail: "dev.tty.legacy_tiocsti=\(value): any process may type into its controlling terminal; \(steps)",
                    fix: "sudo sysctl -w dev.tty.legacy_tiocsti=0 closes it for every program (persist it in /etc/sysctl.d/)"))
        case nil:
            checks.append(Check(name: "tiocsti", status: .info, detail: "kernel before 6.2: any process may type into its controlling terminal; \(steps)"))
        }
        return checks
    }

    private func sandboxCheck() -> Check {
        let scratch = NSTemporaryDirectory() + "/krnative-doctor-\(getpid())"
        try? FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let spec = SandboxSpec(
            argv: ["cat", "/proc/sys/kernel/hostname", "/proc/self/status"], mounts: [.writable(scratch)], workingDirectory: scratch)
        do {
            // The entry mounts /proc, /dev and /tmp and brings the loopback up before the step runs;
            // the step reads its own UTS namespace's host name and its confinement through the new /proc.
            let result = try SandboxRunner(entryExecutable: currentExecutable).run(spec)
            let hostname = result.outputTail.split(separator: "\n").first.map(String.init) ?? ""
            guard hostname == spec.hostname else {
                return Check(name: "sandbox", status: .fail, detail: "the step saw host name '\(hostname)'", fix: "report this: the UTS namespace was not applied")
            }
            let problems = HostCheck.confinementProblems(status: result.outputTail)
            guard problems.isEmpty else {
                return Check(name: "sandbox", status: .fail, detail: "the step is not confined: " + problems.joined(separator: "; "), fix: "report this")
            }
            return Check(
                name: "sandbox", status: .ok,
                detail: "a step ran with its own /proc, /dev, /tmp, loopback and host name, no capabilities, no_new_privs and the seccomp filter")
        } catch {
            let fix: String? = if case .refused(_, let fix) = error { fix } else { "run `krnative sandbox run -- true` to see the failure" }
            return Check(name: "sandbox", status: .fail, detail: error.description.split(separator: "\n").first.map(String.init) ?? "", fix: fix)
        }
    }
}
