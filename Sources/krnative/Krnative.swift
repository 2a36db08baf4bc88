import ArgumentParser
import Archive
import Foundation
import KrnativeBase
import Lock
import Logging
import Sandbox
import Store
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

@main
struct Krnative: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "krnative",
        abstract: "Build Backend.AI kernel-runner volumes reproducibly, offline, without Docker or root.",
        discussion: helpText(examples: "krnative doctor", "krnative build --target musllinux-aarch64", "krnative targets"),
        version: KrnativeVersion.current,
        subcommands: [
            TargetsCommand.self, FetchCommand.self, BuildCommand.self, StoreCommand.self, BundleCommand.self,
            LockCommand.self, BuildTtydCommand.self, BuildRuntimeCommand.self, BuildRecipeCommand.self, BuildRunnerCommand.self, PackCommand.self, WheelCommand.self, SandboxCommand.self, SandboxEntryCommand.self, DoctorCommand.self,
            DiffCommand.self, AuditCommand.self, VerifyCommand.self, SmokeCommand.self, VariationExecCommand.self,
        ])
}

extension Krnative {
    /// Refuses an unknown command word before ArgumentParser reads the rest (it would blame the
    /// first option instead: `krnative biuld --target …` said "Unknown option '--target'"), and
    /// suggests the nearest command.
    static func main() {
        LoggingSystem.bootstrap(ConsoleLogHandler.init)
        if let message = unknownCommand(in: Array(CommandLine.arguments.dropFirst())) ?? unknownOption(in: Array(CommandLine.arguments.dropFirst())) {
            Reporting.error("krnative: \(message)")
            Glibc.exit(ExitStatus.usage)
        }
        do { try checkEnvironment() } catch {
            Reporting.error("krnative: \(error.description)")
            Glibc.exit(ExitStatus.usage)
        }
        main(nil)
    }

    /// Reads every `KRNATIVE_*` variable that takes a flag, a choice or a number, as its command
    /// would, before any work: a bad value is refused by every command, not only by the one that
    /// reads it, and not halfway through a build.
    static func checkEnvironment() throws(UsageError) {
        for name in ["KRNATIVE_OFFLINE", "KRNATIVE_REMOTE_CACHE_ALLOW_HTTP", "KRNATIVE_REMOTE_CACHE_UPLOAD"] { _ = try EnvironmentSetting.flag(name) }
        _ = try EnvironmentSetting.choice("KRNATIVE_SANDBOX", as: Isolation.self)
        _ = try StepLimits.chosen(processes: nil, memory: nil)
        for name in [SafeExtractor.Limits.bytesVariable, SafeExtractor.Limits.entriesVariable] { _ = try EnvironmentSetting.positiveInteger(name) }
    }

    /// The message for the first word that names no command where one is expected, if any.
    static func unknownCommand(in arguments: [String]) -> String? {
        var command: any ParsableCommand.Type = Krnative.self
        var spelled = ["krnative"]
        var words = arguments[...]
        if words.first == "help" { words = words.dropFirst() }
        for word in words {
            let subcommands = command.configuration.subcommands
            guard !subcommands.isEmpty, !word.hasPrefix("-") else { return nil }
            if let next = subcommands.first(where: { $0._commandName == word }) {
                command = next
                spelled.append(word)
                continue
            }
            let visible = subcommands.filter { $0.configuration.shouldDisplay }.map { $0._commandName }
            let nearest = visible.map { ($0, editDistance(word, $0)) }.filter { $0.1 <= max(2, word.count / 3) }.min { $0.1 < $1.1 }
            let command = spelled.joined(separator: " ")
            return "'\(word)' is not a command of `\(command)`"
                + (nearest.map { "; did you mean `\(command) \($0.0)`?" } ?? "; the commands are \(visible.joined(separator: ", "))")
                + " (`\(command) --help` lists them)"
        }
        return nil
    }
}

extension Krnative {
    /// The message for the first `--option` that the command `arguments` name does not take, if
    /// any, with the nearest one it does. ArgumentParser names one only after the command's
    /// required arguments are there and its validation has passed (`smoke --targt X` said
    /// "missing --target"), and at the root it suggests nothing (`--verison`).
    static func unknownOption(in arguments: [String]) -> String? {
        var command: any ParsableCommand.Type = Krnative.self
        var spelled = ["krnative"]
        var words = arguments[...]
        while let word = words.first, let next = command.configuration.subcommands.first(where: { $0._commandName == word }) {
            command = next
            spelled.append(word)
            words = words.dropFirst()
        }
        // krnative's own internal commands (a step's launcher and sandbox entry, once per command
        // of every step) are not typed by people: nothing to suggest, no help to render.
        guard command.configuration.shouldDisplay else { return nil }
        let known = longOptions(of: command)
        for word in words.prefix(while: { $0 != "--" }) where word.hasPrefix("--") {
            let name = String(word.prefix { $0 != "=" })
            guard !known.contains(name) else { continue }
            let nearest = known.map { ($0, editDistance(name, $0)) }.filter { $0.1 <= max(2, name.count / 3) }.min { $0.1 < $1.1 }
            let spelledCommand = spelled.joined(separator: " ")
            return "`\(spelledCommand)` has no option \(name)" + (nearest.map { "; did you mean \($0.0)?" } ?? "")
                + " (`\(spelledCommand) --help` lists its options)"
        }
        return nil
    }

    /// Every long option `command` takes, hidden ones included, as its help lists them (an option
    /// line starts with `-`; its names come before the two spaces that begin its text).
    static func longOptions(of command: any ParsableCommand.Type) -> Set<String> {
        let help = Krnative.helpMessage(for: command, includeHidden: true, columns: 10_000)
        var names: Set<String> = ["--help", "--version"]
        for line in help.split(separator: "\n") {
            let trimmed = line.drop { $0 == " " }
            guard trimmed.hasPrefix("-") else { continue }
            let heading = trimmed.components(separatedBy: "  ")[0]
            for match in heading.matches(of: /--[a-z0-9][a-z0-9-]*/) { names.insert(String(match.output)) }
        }
        return names
    }
}

/// Levenshtein distance: the fewest single-character edits from `a` to `b`.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    var previous = Array(0...b.count)
    for (i, x) in a.enumerated() {
        var current = [i + 1]
        for (j, y) in b.enumerated() {
            current.append(Swift.min(previous[j + 1] + 1, current[j] + 1, previous[j] + (x == y ? 0 : 1)))
        }
        previous = current
    }
    return previous[b.count]
}

enum KrnativeVersion {
    static let number = "0.1.0"
    /// The release and the commit it is built from (Plugins/RecordCommit), as `--version` prints it
    /// and the build manifest records it.
    static let current = "\(number) (commit \(BuildCommit.commit))"
}

/// Options every command that touches inputs shares.
struct InputOptions: ParsableArguments {
    @Option(help: "The lock file. Default: env KRNATIVE_LOCK, else the project's: krnative.lock.json in the working directory or the nearest directory above it that has one.")
    var lock: String?

    @Option(help: "The content-addressed store. Default: $XDG_CACHE_HOME/krnative/store, else ~/.cache/krnative/store; env KRNATIVE_STORE.")
    var store: String?

    private var explicitLock: String? {
        lock ?? ProcessInfo.processInfo.environment["KRNATIVE_LOCK"].flatMap { $0.isEmpty ? nil : $0 }
    }
    var project: Project { Project.discover(lock: explicitLock) }
    var lockPath: String { explicitLock ?? project.file(nil, default: Lockfile.defaultFileName) }
    var storePath: String { store ?? Store.defaultRoot() }
}

/// `SOURCE_DATE_EPOCH`, which must be seconds since 1970 when set: a value that is not would
/// otherwise mean 0, another archive than the one asked for. Nil when unset or empty.
func sourceDateEpochFromEnvironment() throws -> Int64? {
    guard let raw = ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"], !raw.isEmpty else { return nil }
    guard let seconds = Int64(raw), seconds >= 0 else {
        throw UsageError("SOURCE_DATE_EPOCH=\(raw) is not a number of seconds since 1970; set it to one or unset it")
    }
    return seconds
}

/// Counts such as `--jobs` are whole numbers from 1 (`parsing: .unconditional` lets `-1` reach
/// this check instead of being read as an option).
func requirePositive(_ values: [String: Int?]) throws {
    for (name, value) in values.sorted(by: { $0.key < $1.key }) {
        if let value, value < 1 { throw ValidationError("\(name) takes a whole number from 1 (got \(value))") }
    }
}

/// Output format: human lines, or one JSON document on stdout.
struct OutputOptions: ParsableArguments {
    @Flag(help: "Print the result as JSON on stdout (for scripts).")
    var json = false
    @Flag(name: .shortAndLong, help: "Print only errors and the result: no progress, no stage lines.")
    var quiet = false
    @Flag(name: .shortAndLong, help: "Also print every command krnative runs and every URL it tries.")
    var verbose = false

    /// Sets how much krnative says (`Reporting.level`, its logger's level) as the command line is
    /// read, before any work, and whether a failure is said in JSON on stdout too.
    func validate() throws {
        if quiet && verbose { throw ValidationError("--quiet and --verbose contradict each other; give one") }
        Reporting.level = quiet ? .quiet : verbose ? .verbose : .normal
        Self.jsonWanted.store(json, ordering: .relaxed)
    }

    /// `--json` was given: a failure is also printed on stdout, as `JSONFailure`, unless the
    /// command printed its JSON result already (`fetch --json` reports what failed in it).
    static let jsonWanted = Atomic<Bool>(false)
    static let jsonPrinted = Atomic<Bool>(false)
}

/// What a command given `--json` prints on stdout when it fails, so that a script reading stdout
/// never gets nothing: `{"error": {"command": …, "message": …, "exitStatus": …}}`.
struct JSONFailure: Encodable {
    struct Failure: Encodable {
        var command: String
        var message: String
        var exitStatus: Int32
    }
    var error: Failure

    /// Prints it when `--json` was given; returns `status`.
    static func report(_ context: String, _ message: String, status: Int32) -> Int32 {
        if OutputOptions.jsonWanted.load(ordering: .relaxed) && !OutputOptions.jsonPrinted.load(ordering: .relaxed) {
            printJSON(JSONFailure(error: Failure(command: context, message: message, exitStatus: status)))
        }
        return status
    }
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
        Reporting.error("krnative: \(context) failed: \(text)")
        throw ExitCode(JSONFailure.report(context, text, status: status))
    }
    if Cancellation.requested { throw interrupted(context) }
}

/// Ctrl-C, SIGTERM and SIGHUP cancel: the handler only sets a flag; transfers stop with their
/// partial files kept, children get SIGTERM then SIGKILL, packing and extraction stop at the next
/// block, staging is removed. A second signal kills at once. A parent may have started us with
/// them blocked; SIGHUP ignored (nohup) stays ignored. The handlers are installed without
/// `SA_RESTART` (which `signal` sets): a call blocked in the kernel (an `open` or `read` waiting
/// for a peer) returns `EINTR` and its caller sees the flag, instead of blocking again until a second signal.
func installSignalHandlers() {
    _ = Cancellation.requested  // initialises the flag here, not in the handler
    var unblock = sigset_t()
    sigemptyset(&unblock)
    for number in [SIGINT, SIGTERM, SIGHUP] {
        if number == SIGHUP, isIgnored(SIGHUP) { continue }
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { received in
            Cancellation.request()
            signal(received, SIG_DFL)
        }
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0
        sigaction(number, &action, nil)
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
    let message = "\(context) interrupted by a signal; its children are stopped and partial outputs removed"
    Reporting.error("krnative: " + message)
    return ExitCode(JSONFailure.report(context, message, status: ExitStatus.interrupted))
}

/// Writes a value as sorted, indented JSON on stdout.
func printJSON(_ value: some Encodable) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    if let data = try? encoder.encode(value) {
        Console.output(data + Data("\n".utf8))
        OutputOptions.jsonPrinted.store(true, ordering: .relaxed)
    }
}

extension Target: ExpressibleByArgument {
    public init?(argument: String) { self.init(rawValue: argument) }
    public static var allValueStrings: [String] { allCases.map(\.rawValue) }
}

/// A command's help text: what it does, then `Examples:` with one indented command line each.
func helpText(_ discussion: String = "", examples: String...) -> String {
    // An example longer than a line is written with "\n" where it breaks and printed as a shell
    // continues a command, so that the help never wraps it mid-word (it wraps at 80 columns).
    let lines = examples.map { "  " + $0.split(separator: "\n").joined(separator: " \\\n      ") }.joined(separator: "\n")
    return [discussion, "Examples:\n" + lines].filter { !$0.isEmpty }.joined(separator: "\n\n")
}

/// Which options of a group the command line gave, read off their parsed values: an optional
/// with a value, a repeatable option with one or more, a flag that is on. An option keeps
/// ArgumentParser's default name, its property's in kebab case (`xzPreset`: `--xz-preset`), and
/// a default of nothing (nil, empty, off), so that its value tells whether it was given.
enum CommandLineValues {
    /// The long names of the options of `group` the command line gave, in declaration order.
    static func given(in group: some ParsableArguments) -> [String] {
        Mirror(reflecting: group).children.compactMap { child in
            guard let label = child.label, label.hasPrefix("_"), let option = child.value as? any GivenOnCommandLine, option.given else { return nil }
            return "--" + kebab(label.dropFirst())
        }
    }

    /// `sourceDateEpoch` as `source-date-epoch`.
    static func kebab(_ name: Substring) -> String {
        name.reduce(into: "") { words, character in
            if character.isUppercase && !words.isEmpty { words.append("-") }
            words.append(character.lowercased())
        }
    }

    /// Whether `value` says something: an optional holds a value (even an empty one), a
    /// collection an element, a Bool is true.
    static func says(_ value: Any) -> Bool {
        let mirror = Mirror(reflecting: value)
        if mirror.displayStyle == .optional { return !mirror.children.isEmpty }
        if let flag = value as? Bool { return flag }
        if let collection = value as? any Collection { return !collection.isEmpty }
        return true
    }
}

/// An option or flag whose value tells whether the command line gave it (`CommandLineValues`).
protocol GivenOnCommandLine {
    var given: Bool { get }
}

extension Option: GivenOnCommandLine {
    var given: Bool { CommandLineValues.says(wrappedValue) }
}

extension Flag: GivenOnCommandLine {
    var given: Bool { CommandLineValues.says(wrappedValue) }
}
