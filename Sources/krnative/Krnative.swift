import ArgumentParser
import Fetch
import Foundation
import KrnativeBase
import Lock
import Store

#if canImport(Glibc)
    import Glibc
#endif

@main
struct Krnative: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "krnative",
        abstract: "Build Backend.AI kernel-runner volumes reproducibly, offline, without Docker or root.",
        version: KrnativeVersion.current,
        subcommands: [
            TargetsCommand.self, FetchCommand.self, BuildCommand.self, StoreCommand.self, BundleCommand.self,
            LockCommand.self, BuildTtydCommand.self, PackCommand.self, WheelCommand.self, SandboxCommand.self, SandboxEntryCommand.self, DoctorCommand.self,
            DiffCommand.self, AuditCommand.self, VerifyCommand.self, SmokeCommand.self, VariationExecCommand.self,
        ])
}

enum KrnativeVersion {
    static let current = "0.1.0"
}

/// Options every command that touches inputs shares.
struct InputOptions: ParsableArguments {
    @Option(help: "The lock file. Default: ./krnative.lock.json; env KRNATIVE_LOCK.")
    var lock: String?

    @Option(help: "The content-addressed store. Default: $XDG_CACHE_HOME/krnative/store, else ~/.cache/krnative/store; env KRNATIVE_STORE.")
    var store: String?

    var lockPath: String {
        lock ?? ProcessInfo.processInfo.environment["KRNATIVE_LOCK"].flatMap { $0.isEmpty ? nil : $0 }
            ?? Lockfile.defaultFileName
    }
    var storePath: String { store ?? Store.defaultRoot() }
}

/// Output format: human lines, or one JSON document on stdout.
struct OutputOptions: ParsableArguments {
    @Flag(help: "Print the result as JSON on stdout (for scripts).")
    var json = false
}

/// Runs a command body, turning krnative's errors into a line naming what failed (then the
/// details, if any), and a distinct exit status. A signal ends it with 130.
func perform(_ context: String, _ body: () throws -> Void) throws {
    installSignalHandlers()
    do {
        try body()
    } catch {
        if Cancellation.requested { throw interrupted(context) }
        if let error = error as? ExitCode { throw error }
        let status = (error as? any KrnativeError)?.exitCode ?? 1
        let text = (error as? any KrnativeError)?.description ?? "\(error)"
        FileHandle.standardError.write(Data("krnative: \(context) failed: \(text)\n".utf8))
        throw ExitCode(status)
    }
    if Cancellation.requested { throw interrupted(context) }
}

/// Ctrl-C, SIGTERM and SIGHUP cancel: the handler only sets a flag; transfers stop with their
/// partial files kept, children get SIGTERM then SIGKILL, packing and extraction stop at the next
/// block, staging is removed. A second signal kills at once. A parent may have started us with
/// them blocked; SIGHUP ignored (nohup) stays ignored.
func installSignalHandlers() {
    var unblock = sigset_t()
    sigemptyset(&unblock)
    for number in [SIGINT, SIGTERM, SIGHUP] {
        if number == SIGHUP, isIgnored(SIGHUP) { continue }
        signal(number) { received in
            Cancellation.request()
            signal(received, SIG_DFL)
        }
        sigaddset(&unblock, number)
    }
    sigprocmask(SIG_UNBLOCK, &unblock, nil)
}

private func isIgnored(_ number: Int32) -> Bool {
    var current = sigaction()
    sigaction(number, nil, &current)
    return unsafeBitCast(current.__sigaction_handler.sa_handler, to: Int.self) == unsafeBitCast(SIG_IGN, to: Int.self)
}

private func interrupted(_ context: String) -> ExitCode {
    FileHandle.standardError.write(Data("krnative: \(context) interrupted by a signal; its children are stopped and partial outputs removed\n".utf8))
    return ExitCode(ExitStatus.interrupted)
}

/// Writes a value as sorted, indented JSON on stdout.
func printJSON(_ value: some Encodable) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    if let data = try? encoder.encode(value) {
        FileHandle.standardOutput.write(data + Data("\n".utf8))
    }
}

extension Target: ExpressibleByArgument {
    public init?(argument: String) { self.init(rawValue: argument) }
    public static var allValueStrings: [String] { allCases.map(\.rawValue) }
}
