import Foundation

/// How much krnative tells the person at the terminal, on stderr (stdout carries results): `-q`
/// leaves errors and results, `-v` adds every command krnative runs (as cargo's `-v` shows rustc's
/// command lines). Set once, from the command line, before any work starts.
public enum Reporting {
    public enum Level: Int, Sendable, Comparable {
        case quiet, normal, verbose
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
    }

    /// Written only while the command line is read, before any other thread exists.
    nonisolated(unsafe) public static var level = Level.normal

    /// A line about what krnative is doing: a stage, a wait, a retry. Not shown with `-q`.
    @Sendable public static func note(_ line: String) {
        if level >= .normal { FileHandle.standardError.write(Data((line + "\n").utf8)) }
    }

    /// A line only `-v` shows: the commands run, the URLs tried.
    @Sendable public static func detail(_ line: String) {
        if level >= .verbose { FileHandle.standardError.write(Data((line + "\n").utf8)) }
    }
}
