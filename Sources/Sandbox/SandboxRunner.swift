import CSystemCalls
import Foundation
import KrnativeBase
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Why a step could not run in the sandbox, or how it failed there.
public enum SandboxError: KrnativeError {
    /// The kernel or the machine refuses user namespaces; `fix` names the setting and the command.
    case refused(reason: String, fix: String)
    /// The entry could not build the step's root (a mount, the loopback, pivot_root).
    case setupFailed(argv: [String], reason: String)
    /// The step ran and failed.
    case stepFailed(argv: [String], termination: ChildProcess.Termination, outputTail: String)
    case cancelled(argv: [String])

    public var description: String {
        switch self {
        case .refused(let reason, let fix):
            "the build sandbox cannot start: \(reason)\nFix: \(fix)\n"
                + "(krnative never falls back to running without isolation; `--sandbox none` does that explicitly.)"
        case .setupFailed(let argv, let reason):
            "the sandbox for `\(argv.map(ChildProcess.quote).joined(separator: " "))` could not be set up: \(reason)"
        case .stepFailed(let argv, let termination, let tail):
            "step failed (\(termination)) in the sandbox: \(argv.map(ChildProcess.quote).joined(separator: " "))"
                + (tail.isEmpty ? "" : "\n--- last lines of its output ---\n\(tail)")
        case .cancelled(let argv):
            "cancelled: \(argv.map(ChildProcess.quote).joined(separator: " "))"
        }
    }
    public var exitCode: Int32 {
        switch self {
        case .refused: ExitStatus.sandbox
        case .setupFailed: ExitStatus.sandbox
        case .stepFailed: ExitStatus.process
        case .cancelled: ExitStatus.interrupted
        }
    }
}

/// How much isolation a build gets. `none` is explicit and recorded in the build manifest.
public enum Isolation: String, Sendable, Codable, CaseIterable {
    case namespaces
    case none
}

/// How a step ended, with the tail of what it printed.
public struct SandboxResult: Sendable {
    public var termination: ChildProcess.Termination
    public var outputTail: String
    public var outputBytes: Int64
}

/// Runs steps in the rootless sandbox: krnative starts `unshare` (user, mount, pid, net, uts, ipc
/// namespaces; the caller mapped to root) through `krnative sandbox launch`, and, inside,
/// `krnative sandbox-entry`.
public struct SandboxRunner: Sendable {
    /// The krnative executable whose `sandbox-entry` runs inside.
    public var entryExecutable: String
    public var isolation: Isolation
    /// How many bytes of output to keep for error reports.
    public var tailLimit = 64 * 1024
    /// Where `unshare` is looked up; the host's PATH by default.
    public var searchPath: String

    public init(
        entryExecutable: String, isolation: Isolation = .namespaces,
        searchPath: String = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    ) {
        self.entryExecutable = entryExecutable
        self.isolation = isolation
        self.searchPath = searchPath
    }

    /// Runs `spec`, streaming its output (stdout and stderr together) to `output` as it comes.
    /// A step that exits non-zero or is killed is `SandboxError.stepFailed`.
    @discardableResult
    public func run(_ spec: SandboxSpec, output: @escaping @Sendable (Data) -> Void = { _ in }) throws(SandboxError) -> SandboxResult {
        let result = try start(spec, output: output)
        guard result.termination == .exited(0) else {
            throw .stepFailed(argv: spec.argv, termination: result.termination, outputTail: result.outputTail)
        }
        return result
    }

    /// Runs `spec` and returns how it ended, failing only when the sandbox itself cannot work.
    public func start(_ spec: SandboxSpec, output: @escaping @Sendable (Data) -> Void = { _ in }) throws(SandboxError) -> SandboxResult {
        switch isolation {
        case .none: return runUnisolated(spec, output: output)
        case .namespaces: return try runIsolated(spec, output: output)
        }
    }

    private func runIsolated(_ spec: SandboxSpec, output: @escaping @Sendable (Data) -> Void) throws(SandboxError) -> SandboxResult {
        let unshare = ChildProcess.resolve("unshare", environment: ["PATH": searchPath])
        guard access(unshare, X_OK) == 0 else {
            throw .refused(
                reason: "no `unshare` on PATH (\(searchPath))",
                fix: "install util-linux (apt-get install util-linux), which provides unshare")
        }
        let scratch: StagingDirectory
        do { scratch = try SandboxScratch.make() } catch {
            throw .setupFailed(argv: spec.argv, reason: "cannot make the sandbox's scratch directory: \(error)")
        }
        let specPath = scratch.path + "/spec.json", statusPath = scratch.path + "/status.json"
        // The entry reads the spec and writes its status into the file that is there (an empty
        // status means it never ran): without either, the step's failure would be misread.
        guard let specData = try? JSONEncoder().encode(spec), FileManager.default.createFile(atPath: specPath, contents: specData),
            FileManager.default.createFile(atPath: statusPath, contents: nil)
        else { throw .setupFailed(argv: spec.argv, reason: "cannot write the step's spec and status files in \(scratch.path)") }
        // krnative → `krnative sandbox launch` (dies with krnative, passes on only 0, 1 and 2) →
        // unshare (--kill-child: the entry dies with it) → the entry, PID 1 (its death ends the
        // PID namespace): whatever kills krnative, nothing of the sandbox is left running.
        let argv = [
            entryExecutable, "sandbox", "launch", "--parent", String(getpid()), "--",
            unshare, "--user", "--map-root-user", "--mount", "--pid", "--net", "--uts", "--ipc", "--fork",
            "--kill-child", "--propagation", "private", "--", entryExecutable, "sandbox-entry", specPath, statusPath,
        ]
        let (termination, tail, bytes) = Self.stream(argv, environment: ["PATH": searchPath], directory: nil, tailLimit: tailLimit, output: output)
        let statusData = FileManager.default.contents(atPath: statusPath) ?? Data()
        guard !statusData.isEmpty, let status = try? JSONDecoder().decode(SandboxStatus.self, from: statusData) else {
            if Cancellation.requested { throw .cancelled(argv: spec.argv) }
            // The entry never ran: unshare itself was refused.
            throw HostCheck.diagnoseRefusal(unshareOutput: tail, termination: termination)
        }
        if let reason = status.setupFailed { throw .setupFailed(argv: spec.argv, reason: reason) }
        let stepTermination: ChildProcess.Termination =
            status.signalled.map { .signalled($0) } ?? .exited(status.exited ?? termination.exitStatus)
        return SandboxResult(termination: stepTermination, outputTail: tail, outputBytes: bytes)
    }

    private func runUnisolated(_ spec: SandboxSpec, output: @escaping @Sendable (Data) -> Void) -> SandboxResult {
        // Inside paths mean host paths here: the working directory is the source of the mount
        // that would have been at it.
        let directory = spec.mounts.last { spec.workingDirectory.hasPrefix($0.target) }.map {
            $0.source + spec.workingDirectory.dropFirst($0.target.count)
        } ?? spec.workingDirectory
        let environment = spec.fullEnvironment
        let argv = [ChildProcess.resolve(spec.argv[0], environment: environment)] + spec.argv.dropFirst()
        let (termination, tail, bytes) = Self.stream(argv, environment: environment, directory: directory, tailLimit: tailLimit, output: output)
        return SandboxResult(termination: termination, outputTail: tail, outputBytes: bytes)
    }

    /// Runs argv with stdout and stderr on one pipe, passing chunks on and keeping a bounded tail;
    /// cancellation kills the child (unshare's --kill-child takes the whole sandbox with it).
    static func stream(
        _ argv: [String], environment: [String: String], directory: String?, tailLimit: Int,
        output: @escaping @Sendable (Data) -> Void
    ) -> (ChildProcess.Termination, String, Int64) {
        let tail = BoundedBuffer(limit: tailLimit)
        let child = ChildPid()
        let watcher = DispatchSource.makeTimerSource()
        watcher.schedule(deadline: .now() + 0.1, repeating: 0.1)
        watcher.setEventHandler { if Cancellation.requested, let pid = child.pid { kill(pid, SIGKILL) } }
        watcher.resume()
        defer { watcher.cancel() }
        let termination = Spawn.run(
            argv, environment: environment, directory: directory,
            streams: [{ chunk in
                tail.append(chunk)
                output(chunk)
            }], onStart: { child.pid = $0 })
        return (termination, tail.text, tail.total)
    }
}

extension SandboxRunner {
    /// `krnative sandbox launch`: becomes `argv` with SIGKILL armed for when `parent` dies (checked
    /// after arming, so a parent that died first is noticed) and only descriptors 0, 1 and 2 open.
    public static func launch(parent: pid_t, argv: [String]) -> Never {
        var cArguments = argv.map { strdup($0) } + [nil]
        krn_exec_with_parent_death_signal(parent, argv[0], &cArguments)
        let reason = errno == ESRCH ? "krnative (pid \(parent)) is gone" : String(cString: strerror(errno))
        Reporting.error("krnative: sandbox launch: cannot run \(argv[0]): \(reason)")
        exit(ExitStatus.sandbox)
    }
}

extension ChildProcess.Termination {
    var exitStatus: Int32 {
        switch self {
        case .exited(let code): code
        case .signalled(let signal): 128 + signal
        case .notStarted: 127
        }
    }
}

/// The pid of a running child, for the cancellation watcher.
final class ChildPid: Sendable {
    private let value = Mutex<pid_t?>(nil)
    var pid: pid_t? {
        get { value.withLock { $0 } }
        set { value.withLock { $0 = newValue } }
    }
}

/// A private directory for one sandbox run's spec, status file and root mount point:
/// `$TMPDIR/krnative-sandbox-<pid>-<random>`, with its lock held while the run lives, so the next
/// sandbox run (or `store gc`) removes the ones of runs that were killed.
public enum SandboxScratch {
    static let prefix = "krnative-sandbox-"
    public static var parent: String {
        let temporary = NSTemporaryDirectory()
        return temporary.count > 1 && temporary.hasSuffix("/") ? String(temporary.dropLast()) : temporary
    }

    static func make() throws(FileSystemError) -> StagingDirectory {
        try StagingDirectory(in: parent, prefix: prefix, unique: true, mode: 0o700)
    }

    /// Removes the scratch directories of sandbox runs that were killed; returns their paths.
    @discardableResult
    public static func removeAbandoned() -> [String] { StagingDirectory.removeAbandoned(in: parent, prefix: prefix) }
}
