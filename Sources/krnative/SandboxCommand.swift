import ArgumentParser
import Build
import Foundation
import KrnativeBase
import Sandbox

/// The path of this krnative executable, which the sandbox runs inside as `sandbox-entry`.
var currentExecutable: String {
    (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
}

extension Isolation: ExpressibleByArgument {
    /// `--sandbox`, else `KRNATIVE_SANDBOX`, else namespaces.
    static func chosen(_ flag: Isolation?) throws -> Isolation {
        try flag ?? EnvironmentSetting.choice("KRNATIVE_SANDBOX", as: Isolation.self) ?? .namespaces
    }
}

extension LocalPolicy {
    /// This command line's `--sandbox` (else `KRNATIVE_SANDBOX`, else namespaces) and `--audit`.
    static func chosen(sandbox: Isolation?, audit: AuditMode?) throws -> LocalPolicy {
        let environment = try EnvironmentSetting.choice("KRNATIVE_SANDBOX", as: Isolation.self)
        return LocalPolicy(isolation: sandbox ?? environment ?? .namespaces, isolationAskedFor: sandbox != nil || environment != nil, auditMode: audit)
    }
}

struct SandboxCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sandbox", abstract: "Run a command in the build sandbox, as a build step runs.",
        discussion: helpText(examples: "krnative sandbox run -- id"),
        subcommands: [Run.self, Launch.self])

    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run ARGV with the host's /usr read-only, no network, the given mounts and a clean environment.",
            discussion: helpText(examples: "krnative sandbox run -- id", "krnative sandbox run --ro src --rw build --env CC=cc -- make -C build"))

        @Option(name: .customLong("ro"), help: "Mount SRC read-only at DST (SRC[:DST], repeatable).") var readOnly: [String] = []
        @Option(name: .customLong("rw"), help: "Mount SRC writable at DST (SRC[:DST], repeatable).") var writable: [String] = []
        @Option(help: "Mount this directory writable at /opt/backend.ai.") var prefix: String?
        @Option(help: "Working directory inside; it is mounted writable from the same host path. Default: the current directory.")
        var workdir: String?
        @Option(name: .customLong("env"), help: "Add KEY=VALUE to the step's environment (repeatable).") var environment: [String] = []
        @Option(help: "Use this directory as the root file system instead of the host's /usr, /lib, /etc.") var root: String?
        @Option(help: "namespaces, or none to run without isolation. Default: namespaces; env KRNATIVE_SANDBOX.")
        var sandbox: Isolation?
        @OptionGroup var limits: StepLimitOptions
        @Argument(parsing: .postTerminator, help: "The command and its arguments, after -- (so `sandbox run --help` is help, not a step).")
        var argv: [String] = []

        func run() throws {
            try perform("sandbox run") {
                let command = argv
                guard !command.isEmpty else { throw UsageError("give the command to run after --: krnative sandbox run [options] -- ARGV") }
                let workdir = workdir ?? FileManager.default.currentDirectoryPath
                var mounts = try readOnly.map { try Self.mount($0, writable: false) } + (try writable.map { try Self.mount($0, writable: true) })
                mounts.append(.writable(workdir))
                if let prefix { mounts.append(.writable(prefix, at: "/opt/backend.ai")) }
                var declared: [String: String] = [:]
                for pair in environment {
                    guard let equals = pair.firstIndex(of: "=") else { throw UsageError("--env takes KEY=VALUE, not '\(pair)'") }
                    declared[String(pair[..<equals])] = String(pair[pair.index(after: equals)...])
                }
                let spec = SandboxSpec(
                    argv: command, environment: declared, mounts: mounts, rootDirectory: root, workingDirectory: workdir,
                    sourceDateEpoch: try sourceDateEpochFromEnvironment() ?? 0, limits: try limits.chosen())
                let isolation = try Isolation.chosen(sandbox)
                let runner = SandboxRunner(entryExecutable: currentExecutable, isolation: isolation)
                let result = try runner.start(spec) { Console.output($0) }
                switch result.termination {
                case .exited(let code): throw ExitCode(code)
                case .signalled(let signal): throw ExitCode(128 + signal)
                case .notStarted: throw ChildProcessError(argv: command, termination: result.termination, stderrTail: "")
                }
            }
        }

        /// `SRC[:DST]`: SRC relative to the current directory or absolute; DST absolute, by default
        /// SRC's absolute path.
        static func mount(_ text: String, writable: Bool) throws -> SandboxSpec.Mount {
            let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
            guard let given = parts.first, !given.isEmpty else { throw UsageError("mount '\(text)' needs SRC[:DST]") }
            let source = given.hasPrefix("/") ? given : FileManager.default.currentDirectoryPath + "/" + given
            guard FileSystem.exists(source) else { throw FileSystemError.cannotOpen(path: source, errno: ENOENT) }
            let target = parts.count > 1 ? parts[1] : source
            guard target.hasPrefix("/") else { throw UsageError("mount '\(text)': DST must be an absolute path inside the sandbox") }
            return SandboxSpec.Mount(source: source, target: target, writable: writable)
        }
    }
}

/// `--step-max-processes` and `--step-max-memory`, for the commands that run build steps.
struct StepLimitOptions: ParsableArguments {
    @Option(help: "Processes and threads a build step may run at once. Default: 4096 + CPUs × (CPUs + 16); env KRNATIVE_STEP_MAX_PROCESSES.")
    var stepMaxProcesses: Int?
    @Option(help: "Private memory each process of a build step may take (RLIMIT_DATA), e.g. 8G. Default: half the RAM, at least 2G; env KRNATIVE_STEP_MAX_MEMORY.")
    var stepMaxMemory: String?

    func chosen() throws -> StepLimits { try StepLimits.chosen(processes: stepMaxProcesses, memory: stepMaxMemory) }
}

extension SandboxCommand {
    /// Between krnative and `unshare`: arms the parent-death signal, then becomes ARGV. Not for people to call.
    struct Launch: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Internal: run ARGV so that it is killed when the krnative with pid PARENT dies.", shouldDisplay: false)
        @Option(help: "The pid of the krnative that started this.") var parent: Int32
        @Argument(parsing: .postTerminator) var command: [String]
        func run() throws {
            guard !command.isEmpty else { throw UsageError("sandbox launch needs a command after --") }
            SandboxRunner.launch(parent: parent, argv: command)
        }
    }
}

/// Inside the namespaces: build the root and run the step. Not for people to call.
struct SandboxEntryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sandbox-entry", abstract: "Internal: the sandbox's PID 1.", shouldDisplay: false)
    @Argument var specPath: String
    @Argument var statusPath: String
    func run() throws { SandboxEntry.main(specPath: specPath, statusPath: statusPath) }
}

/// `krnative variation-exec`: the check's way to vary what the environment cannot (umask, hostname).
struct VariationExecCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "variation-exec", abstract: "Internal: run a command with another umask or hostname.", shouldDisplay: false)
    @Option(help: "The file creation mask, octal.") var umask: String?
    @Option(help: "The hostname, in a new UTS namespace.") var hostname: String?
    @Argument(parsing: .postTerminator) var command: [String]
    func run() throws {
        guard !command.isEmpty else { throw UsageError("variation-exec needs a command after --") }
        let mask = try umask.map { text -> mode_t in
            guard let value = mode_t(text, radix: 8) else { throw UsageError("--umask \(text) is not octal") }
            return value
        }
        ProcessVariation.exec(argv: command, umask: mask, hostname: hostname)
    }
}
