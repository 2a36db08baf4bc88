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

/// Runs a command body, turning krnative's errors into one line of context, the cause, and a
/// distinct exit status.
func perform(_ context: String, _ body: () throws -> Void) throws {
    // Ctrl-C (or SIGTERM) cancels: transfers stop with their partial files kept, sandboxes are
    // torn down. A second one kills at once. A parent may have started us with them blocked.
    for number in [SIGINT, SIGTERM] {
        signal(number) { received in
            Cancellation.request()
            signal(received, SIG_DFL)
        }
    }
    var unblock = sigset_t()
    sigemptyset(&unblock)
    sigaddset(&unblock, SIGINT)
    sigaddset(&unblock, SIGTERM)
    sigprocmask(SIG_UNBLOCK, &unblock, nil)
    do {
        try body()
    } catch let error as any KrnativeError {
        FileHandle.standardError.write(Data("krnative: \(context) failed\n\(error.description)\n".utf8))
        throw ExitCode(error.exitCode)
    } catch let error as ExitCode {
        throw error
    } catch {
        FileHandle.standardError.write(Data("krnative: \(context) failed\n\(error)\n".utf8))
        throw ExitCode(1)
    }
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
