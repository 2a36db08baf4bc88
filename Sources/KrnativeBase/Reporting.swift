import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// How much krnative tells the person at the terminal, on stderr (stdout carries results): `-q`
/// leaves errors and results, `-v` adds every command krnative runs (as cargo's `-v` shows rustc's
/// command lines). Set once, from the command line, before any work starts.
///
/// Every line goes through one swift-log `Logger`, whose level is this one: `-q` is `.warning`,
/// the default `.info`, `-v` `.debug`. The CLI bootstraps `ConsoleLogHandler`, which writes the
/// lines as they are.
public enum Reporting {
    public enum Level: Sendable {
        case quiet, normal, verbose
    }

    /// krnative's logger, at the level the command line set.
    public static var logger: Logger { current.withLock { $0 } }
    private static let current = Mutex(Logger(label: "krnative"))

    /// Set while the command line is read, before any work starts.
    public static var level: Level {
        get {
            switch logger.logLevel {
            case .trace, .debug: .verbose
            case .info, .notice: .normal
            case .warning, .error, .critical: .quiet
            }
        }
        set {
            current.withLock { logger in
                logger.logLevel = switch newValue {
                case .quiet: .warning
                case .normal: .info
                case .verbose: .debug
                }
            }
        }
    }

    /// A line about what krnative is doing: a stage, a wait, a retry. Not shown with `-q`.
    @Sendable public static func note(_ line: String) { logger.info("\(line)") }

    /// A line only `-v` shows: the commands run, the URLs tried.
    @Sendable public static func detail(_ line: String) { logger.debug("\(line)") }

    /// A line about a failure, shown even with `-q`.
    @Sendable public static func error(_ line: String) { logger.error("\(line)") }
}

/// Writes each message as it is, and a newline, to stderr: no time stamp, level or metadata, so
/// that what krnative prints reads the same whichever logger carries it.
public struct ConsoleLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]

    public init(label: String) {}

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) { Console.error("\(event.message)\n") }
}

/// stdout and stderr through write(2), every byte: a closed pipe or a full disk loses the text,
/// never the process (corelibs Foundation's `FileHandle.write(_:)` traps on a write error).
public enum Console {
    public static func error(_ text: String) { _ = write(Data(text.utf8), to: STDERR_FILENO) }

    /// Whether stderr is a terminal, where status lines are redrawn in place.
    public static var isTerminal: Bool { isatty(STDERR_FILENO) == 1 }

    /// The columns of the terminal on stderr; 80 when it does not say.
    public static func terminalWidth() -> Int {
        var size = winsize()
        guard ioctl(STDERR_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 else { return 80 }
        return Int(size.ws_col)
    }

    /// `42 s`, `3 min 5 s`.
    public static func duration(_ seconds: Double) -> String {
        let whole = Int(seconds.rounded(.up))
        return whole < 60 ? "\(whole) s" : "\(whole / 60) min \(whole % 60) s"
    }

    /// A result on stdout; a result that could not be written is a failed command, so this exits
    /// with the I/O status (74, `ExitStatus.store`), saying why on stderr.
    public static func output(_ data: Data) {
        guard let failure = write(data, to: STDOUT_FILENO) else { return }
        error("krnative: cannot write the result to stdout: \(String(cString: strerror(failure)))\n")
        exit(ExitStatus.store)
    }

    /// Nil when every byte went out, else the errno.
    static func write(_ data: Data, to descriptor: Int32) -> Int32? {
        data.withUnsafeBytes { FileSystem.writeAll(descriptor, $0) }
    }
}

/// A number with its noun, singular for one: "1 input", "3 inputs", "1 entry", "2 entries"
/// (`plural` where an added "s" is wrong).
public func counted(_ count: Int, _ singular: String, _ plural: String? = nil) -> String {
    "\(count) " + (count == 1 ? singular : plural ?? singular + "s")
}
