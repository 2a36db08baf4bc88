import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// How much krnative tells the person at the terminal, on stderr (stdout carries results): `-q`
/// leaves errors and results, `-v` adds every command krnative runs (as cargo's `-v` shows rustc's
/// command lines). Set once, from the command line, before any work starts.
public enum Reporting {
    public enum Level: Int, Sendable, Comparable {
        case quiet, normal, verbose
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
    }

    /// Set while the command line is read, before any work starts.
    public static var level: Level {
        get { Level(rawValue: storedLevel.load(ordering: .relaxed)) ?? .normal }
        set { storedLevel.store(newValue.rawValue, ordering: .relaxed) }
    }
    private static let storedLevel = Atomic<Int>(Level.normal.rawValue)

    /// A line about what krnative is doing: a stage, a wait, a retry. Not shown with `-q`.
    @Sendable public static func note(_ line: String) {
        if level >= .normal { Console.error(line + "\n") }
    }

    /// A line only `-v` shows: the commands run, the URLs tried.
    @Sendable public static func detail(_ line: String) {
        if level >= .verbose { Console.error(line + "\n") }
    }
}

/// stdout and stderr through write(2), every byte: a closed pipe or a full disk loses the text,
/// never the process (corelibs Foundation's `FileHandle.write(_:)` traps on a write error).
public enum Console {
    public static func error(_ text: String) { _ = write(Data(text.utf8), to: STDERR_FILENO) }

    /// A result on stdout; a result that could not be written is a failed command, so this exits
    /// with the I/O status (74, `ExitStatus.store`), saying why on stderr.
    public static func output(_ data: Data) {
        guard let failure = write(data, to: STDOUT_FILENO) else { return }
        error("krnative: cannot write the result to stdout: \(String(cString: strerror(failure)))\n")
        exit(ExitStatus.store)
    }

    /// Nil when every byte went out, else the errno.
    static func write(_ data: Data, to descriptor: Int32) -> Int32? {
        data.withUnsafeBytes { bytes -> Int32? in
            var offset = 0
            while offset < bytes.count {
                let written = Glibc.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 && errno == EINTR { continue }
                guard written > 0 else { return written < 0 ? errno : EIO }
                offset += written
            }
            return nil
        }
    }
}
