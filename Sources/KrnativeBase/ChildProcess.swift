import CSystemCalls
import Foundation
import Synchronization

/// A child process that failed: its argv, how it ended, and the tail of what it printed.
public struct ChildProcessError: KrnativeError {
    public var argv: [String]
    public var termination: ChildProcess.Termination
    public var stderrTail: String

    public init(argv: [String], termination: ChildProcess.Termination, stderrTail: String) {
        self.argv = argv
        self.termination = termination
        self.stderrTail = stderrTail
    }

    public var description: String {
        var text = "command failed (\(termination)): \(argv.map(ChildProcess.quote).joined(separator: " "))"
        if !stderrTail.isEmpty {
            text += "\n--- last lines of its output ---\n" + stderrTail
        }
        return text
    }
    public var exitCode: Int32 { ExitStatus.process }
}

/// Runs programs from argv arrays (never through a shell), keeping a bounded tail of their output.
public enum ChildProcess {
    public enum Termination: Sendable, CustomStringConvertible, Equatable {
        case exited(Int32)
        case signalled(Int32)
        case notStarted(String)
        public var description: String {
            switch self {
            case .exited(let code): "exit status \(code)"
            case .signalled(let signal): "killed by signal \(signal)"
            case .notStarted(let reason): "could not start: \(reason)"
            }
        }
    }

    public struct Result: Sendable {
        public var termination: Termination
        public var stdout: String
        public var stderr: String
        public var succeeded: Bool { termination == .exited(0) }
    }

    /// Runs `argv` to completion. `environment` nil inherits this process's environment.
    /// At most `captureLimit` bytes of each stream are kept (the last ones).
    public static func run(
        _ argv: [String], environment: [String: String]? = nil, directory: String? = nil,
        captureLimit: Int = 64 * 1024
    ) -> Result {
        let stdoutTail = BoundedBuffer(limit: captureLimit), stderrTail = BoundedBuffer(limit: captureLimit)
        let termination = Spawn.run(argv, environment: environment, directory: directory, streams: [stdoutTail.append, stderrTail.append])
        return Result(termination: termination, stdout: stdoutTail.text, stderr: stderrTail.text)
    }

    /// Runs `argv` and throws `ChildProcessError` unless it exits 0.
    @discardableResult
    public static func check(
        _ argv: [String], environment: [String: String]? = nil, directory: String? = nil
    ) throws(ChildProcessError) -> Result {
        let result = run(argv, environment: environment, directory: directory)
        guard result.succeeded else {
            let tail = (result.stderr.isEmpty ? result.stdout : result.stderr)
                .split(separator: "\n", omittingEmptySubsequences: false).suffix(20).joined(separator: "\n")
            throw ChildProcessError(argv: argv, termination: result.termination, stderrTail: tail)
        }
        return result
    }

    /// Finds a bare program name on PATH; paths are returned as they are.
    public static func resolve(_ program: String, environment: [String: String]? = nil) -> String {
        if program.contains("/") { return program }
        let path = (environment ?? ProcessInfo.processInfo.environment)["PATH"] ?? "/usr/bin:/bin"
        for directory in path.split(separator: ":") {
            let candidate = "\(directory)/\(program)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return program
    }

    /// Quotes an argument for display, so a failing argv can be pasted into a shell.
    public static func quote(_ argument: String) -> String {
        let safe = argument.unicodeScalars.allSatisfy {
            CharacterSet.alphanumerics.contains($0) || "-_./=:+,@%".unicodeScalars.contains($0)
        }
        return safe && !argument.isEmpty ? argument : "'" + argument.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}

/// Starts children with posix_spawn and waits for them with waitpid: no run loop, so krnative
/// behaves the same under an LD_PRELOAD clock (libfaketime) that Foundation's `Process` hangs
/// under. The child gets a clean signal mask and default SIGINT, SIGTERM, SIGHUP and SIGPIPE
/// dispositions, in a process group of its own: on cancellation (`Cancellation`) the whole group
/// gets SIGTERM, then SIGKILL, and the child is reaped before `run` returns.
public enum Spawn {
    /// How long a cancelled child's group has between SIGTERM and SIGKILL.
    static let termGrace = 0.3
    /// Secrets krnative reads from its environment and no child gets, whatever environment it is
    /// given: the remote cache's token is for the cache, not for pip, a check's run or a step.
    public static let withheld: Set<String> = ["KRNATIVE_REMOTE_CACHE_TOKEN"]

    /// Runs `argv`, feeding each output pipe's chunks to `streams[i]`: one stream gets stdout and
    /// stderr together, two get them apart. `onStart` gets the child's pid (to kill it on cancellation).
    public static func run(
        _ argv: [String], environment: [String: String]?, directory: String?, streams: [@Sendable (Data) -> Void],
        onStart: (pid_t) -> Void = { _ in }
    ) -> ChildProcess.Termination {
        var pipes: [(read: Int32, write: Int32)] = []
        for _ in streams {
            var ends: [Int32] = [0, 0]
            guard krn_pipe_cloexec(&ends) == 0 else { return .notStarted("pipe: \(String(cString: strerror(errno)))") }
            pipes.append((ends[0], ends[1]))
        }
        defer { for ends in pipes { close(ends.read) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        if let first = pipes.first {
            posix_spawn_file_actions_adddup2(&actions, first.write, 1)
            posix_spawn_file_actions_adddup2(&actions, (pipes.count > 1 ? pipes[1] : first).write, 2)
        }
        if let directory { krn_spawn_add_chdir(&actions, directory) }
        // Only 0, 1 and 2 reach the child. What krnative inherited without close-on-exec (a test
        // runner's pipes, a shell's extra descriptors) would push the child's own descriptors
        // past 9, where dash cannot name them: mmdebstrap's `cat >&20` failed so under `swift test`.
        krn_spawn_add_closefrom(&actions, 3)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t(), defaults = sigset_t()
        sigemptyset(&empty)
        sigemptyset(&defaults)
        for number in [SIGINT, SIGTERM, SIGHUP, SIGPIPE] { sigaddset(&defaults, number) }
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        let program = ChildProcess.resolve(argv[0], environment: environment)
        Reporting.detail("+ " + argv.map(ChildProcess.quote).joined(separator: " ") + (directory.map { "  (in \($0))" } ?? ""))
        let variables = (environment ?? ProcessInfo.processInfo.environment).filter { !withheld.contains($0.key) }.map { "\($0.key)=\($0.value)" }
        var cArguments = argv.map { strdup($0) } + [nil]
        var cEnvironment = variables.map { strdup($0) } + [nil]
        defer { (cArguments + cEnvironment).forEach { free($0) } }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, program, &actions, &attributes, &cArguments, &cEnvironment)
        for ends in pipes { close(ends.write) }
        guard status == 0 else { return .notStarted("\(program): \(String(cString: strerror(status)))") }
        onStart(pid)
        let stopper = stopOnCancellation(group: pid)
        defer { stopper.cancel() }

        let readers = DispatchGroup()
        for (ends, stream) in zip(pipes, streams) {
            readers.enter()
            let descriptor = ends.read
            DispatchQueue.global().async {
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 8)
                defer { buffer.deallocate() }
                while true {
                    let count = read(descriptor, buffer.baseAddress, buffer.count)
                    if count < 0 && errno == EINTR { continue }
                    if count <= 0 { break }
                    stream(Data(buffer[0..<count]))
                }
                readers.leave()
            }
        }
        var waitStatus: Int32 = 0
        while waitpid(pid, &waitStatus, 0) < 0 && errno == EINTR {}
        // What the child left in its group would hold the pipes open: it goes too.
        if Cancellation.requested { kill(-pid, SIGKILL) }
        readers.wait()
        let signal = waitStatus & 0x7f
        return signal == 0 ? .exited((waitStatus >> 8) & 0xff) : .signalled(signal)
    }
}

extension Spawn {
    /// Watches for cancellation while the child runs: SIGTERM to its process group, SIGKILL
    /// `termGrace` seconds later.
    static func stopOnCancellation(group: pid_t) -> any DispatchSourceTimer {
        let timer = DispatchSource.makeTimerSource(queue: DispatchQueue.global())
        let terminatedAt = TerminationTime()
        timer.setEventHandler {
            guard Cancellation.requested else { return }
            if let sent = terminatedAt.value {
                if DispatchTime.now() >= sent + termGrace { kill(-group, SIGKILL) }
            } else {
                kill(-group, SIGTERM)
                terminatedAt.value = .now()
            }
        }
        timer.schedule(deadline: .now() + 0.05, repeating: 0.05)
        timer.resume()
        return timer
    }
}

/// When the cancellation watcher sent SIGTERM, nil until it has; its timer's handler reads and sets it.
private final class TerminationTime: Sendable {
    private let uptimeNanoseconds = Atomic<UInt64>(0)
    var value: DispatchTime? {
        get {
            let nanoseconds = uptimeNanoseconds.load(ordering: .relaxed)
            return nanoseconds == 0 ? nil : DispatchTime(uptimeNanoseconds: nanoseconds)
        }
        set { uptimeNanoseconds.store(newValue?.uptimeNanoseconds ?? 0, ordering: .relaxed) }
    }
}

/// Keeps the last `limit` bytes appended to it, and counts them all: a child's output tail for
/// error reports, however much it prints.
public final class BoundedBuffer: Sendable {
    private let kept = Mutex((tail: Data(), total: Int64(0)))
    private let limit: Int
    public init(limit: Int) { self.limit = limit }
    public func append(_ chunk: Data) {
        kept.withLock { kept in
            kept.total += Int64(chunk.count)
            kept.tail.append(chunk.suffix(limit))
            if kept.tail.count > limit { kept.tail = Data(kept.tail.suffix(limit)) }
        }
    }
    public var text: String { kept.withLock { String(decoding: $0.tail, as: UTF8.self) } }
    /// Every byte appended, kept or not.
    public var total: Int64 { kept.withLock { $0.total } }
}
