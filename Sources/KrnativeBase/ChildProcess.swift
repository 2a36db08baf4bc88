import Foundation

/// A child process that failed: its argv, how it ended, and the tail of what it printed.
public struct ChildProcessError: KrnativeError {
    public var argv: [String]
    public var termination: ChildProcess.Termination
    public var stderrTail: String

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
        let process = Process()
        process.executableURL = URL(fileURLWithPath: resolve(argv[0], environment: environment))
        process.arguments = Array(argv.dropFirst())
        if let environment { process.environment = environment }
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        let stdoutTail = BoundedBuffer(limit: captureLimit), stderrTail = BoundedBuffer(limit: captureLimit)
        let group = DispatchGroup()
        for (pipe, buffer) in [(out, stdoutTail), (err, stderrTail)] {
            group.enter()
            DispatchQueue.global().async {
                while true {
                    let chunk = pipe.fileHandleForReading.availableData
                    if chunk.isEmpty { break }
                    buffer.append(chunk)
                }
                group.leave()
            }
        }
        do {
            try process.run()
        } catch {
            try? out.fileHandleForWriting.close()
            try? err.fileHandleForWriting.close()
            group.wait()
            return Result(termination: .notStarted("\(error.localizedDescription)"), stdout: "", stderr: "")
        }
        process.waitUntilExit()
        group.wait()
        let termination: Termination =
            process.terminationReason == .uncaughtSignal
            ? .signalled(process.terminationStatus) : .exited(process.terminationStatus)
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

/// Keeps the last `limit` bytes appended to it, and counts them all: a child's output tail for
/// error reports, however much it prints.
public final class BoundedBuffer: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    private var count: Int64 = 0
    private let limit: Int
    public init(limit: Int) { self.limit = limit }
    public func append(_ chunk: Data) {
        lock.withLock {
            count += Int64(chunk.count)
            data.append(chunk.suffix(limit))
            if data.count > limit { data = Data(data.suffix(limit)) }
        }
    }
    public var text: String { lock.withLock { String(decoding: data, as: UTF8.self) } }
    /// Every byte appended, kept or not.
    public var total: Int64 { lock.withLock { count } }
}
