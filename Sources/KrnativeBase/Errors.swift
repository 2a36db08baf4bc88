import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// An error krnative reports to the person at the terminal.
///
/// Every stage has its own error type; each case carries the evidence (path, URL, hash, argv)
/// and its `description` says what failed, shows the evidence and names the fix.
public protocol KrnativeError: Error, CustomStringConvertible, Sendable {
    /// The process exit status the CLI uses for this kind of failure.
    var exitCode: Int32 { get }
}

/// Exit statuses, distinct per kind of failure so scripts can tell them apart.
public enum ExitStatus {
    public static let usage: Int32 = 64
    public static let lock: Int32 = 65
    public static let missingInput: Int32 = 66
    public static let store: Int32 = 74
    public static let fetch: Int32 = 75
    public static let integrity: Int32 = 76
    public static let archive: Int32 = 77
    public static let process: Int32 = 78
    public static let sandbox: Int32 = 79
    public static let patch: Int32 = 80
    /// The volume, or a wheel or runtime for it, breaks the target's policy (audit, wheel tags).
    public static let policy: Int32 = 81
    /// Ended by SIGINT, SIGTERM or SIGHUP (128 + SIGINT, as a shell reports Ctrl-C).
    public static let interrupted: Int32 = 130
}

/// A command line that does not make sense.
public struct UsageError: KrnativeError {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
    public var exitCode: Int32 { ExitStatus.usage }
}

/// Set by the CLI's SIGINT handler; transfers and sandboxed steps notice it within a fraction of a second.
/// The flag is a lock-free atomic, so setting it is async-signal-safe; the CLI reads it once before
/// it installs the handler, so that the handler never runs the static's lazy initialisation.
public enum Cancellation {
    private static let flag = Atomic<Bool>(false)
    public static var requested: Bool { flag.load(ordering: .relaxed) }
    public static func request() { flag.store(true, ordering: .relaxed) }
}

