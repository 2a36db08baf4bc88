import ArgumentParser
import Archive
import Foundation
import Inputs
import KrnativeBase
import Lock
import Sandbox
import Store

struct StoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store", abstract: "Inspect and maintain the content-addressed input store.",
        discussion: helpText(examples: "krnative store ls", "krnative store verify", "krnative store gc --dry-run -v"),
        subcommands: [Import.self, Verify.self, List.self, Collect.self])

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Admit files into the store that match an input of the lock (by sha256, or by tree hash for sources).",
            discussion: helpText(examples: "krnative store import downloads/*.tar.gz"))
        @OptionGroup var inputs: InputOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "Files to import.") var files: [String]

        func run() throws {
            try perform("store import") {
                let lock = try Lockfile.load(from: inputs.lockPath)
                let resolver = InputResolver(store: try Store(root: inputs.storePath))
                var admitted: [String: String] = [:]
                for file in files {
                    let (match, digest) = try resolver.input(matching: file, in: lock.inputs)
                    guard let match else {
                        throw UsageError(
                            "\(file) (sha256 \(digest)) matches no input of \(inputs.lockPath); "
                                + "pin it with `krnative lock add --file \(file) …` first")
                    }
                    _ = try resolver.importFile(file, for: match)
                    admitted[file] = match.name
                    if !output.json { print("imported \(file) as \(match.name) (sha256 \(digest))") }
                }
                if output.json { printJSON(admitted) }
            }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check every area of the store; quarantine corrupted entries and derived items.",
            discussion: helpText(
                """
                Entries under sha256/ are hashed again against their names; step results and unpacked \
                toolchains against the tree hash recorded when they were made (older ones have none and \
                are reported as not verified by hash). Unfinished copies left by processes that are gone, \
                stale temp files, empty partial downloads and quarantined files are reported as warnings, \
                each with its size and the command that removes it. Exits 76 when something is corrupted, \
                0 otherwise.
                """,
                examples: "krnative store verify", "krnative store verify --json"))
        @OptionGroup var inputs: InputOptions
        @OptionGroup var output: OutputOptions

        func run() throws {
            try perform("store verify") {
                let report = try Store(root: inputs.storePath).verify()
                if output.json {
                    printJSON(report)
                } else {
                    let verdict = report.corrupted + report.warnings == 0 ? "all well" : "\(report.corrupted) corrupted, \(report.warnings) warnings"
                    print("\(report.root): \(verdict)")
                    print("  \("area".padding(toLength: 11, withPad: " ", startingAt: 0)) \("checked".leftPadded(8)) \("problems".leftPadded(9))  checks")
                    for area in report.areas {
                        print(
                            "  \(area.area.rawValue.padding(toLength: 11, withPad: " ", startingAt: 0)) \(String(area.checked).leftPadded(8)) \(String(area.problems.count).leftPadded(9))  \(area.checks)")
                    }
                    for problem in report.areas.flatMap(\.problems) {
                        print("\(problem.severity.rawValue) \(problem.path) (\(byteCount(problem.bytes))): \(problem.finding); fix: \(problem.fix)")
                    }
                }
                if report.corrupted > 0 {
                    Reporting.error("krnative: store verify found \(report.corrupted) corrupted items in \(report.root), now in its quarantine/")
                    throw ExitCode(ExitStatus.integrity)
                }
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ls", abstract: "Show each area of the store with its size, then the entries and the lock inputs they hold.",
            discussion: helpText(examples: "krnative store ls", "krnative store ls --store ~/krnative-store --json"))
        @OptionGroup var inputs: InputOptions
        @OptionGroup var output: OutputOptions

        struct Row: Encodable {
            var sha256: SHA256Digest
            var size: Int64
            var trees: [SHA256Digest]
            var inputs: [String]
        }
        struct Listing: Encodable {
            var areas: [Store.AreaUsage]
            var entries: [Row]
        }

        func run() throws {
            try perform("store ls") {
                let store = try Store(root: inputs.storePath)
                let resolver = InputResolver(store: store)
                // Without a lock (the default one absent) the entries are listed unnamed.
                let optional = inputs.lockPath == Lockfile.defaultFileName && !FileSystem.exists(inputs.lockPath)
                let lock = optional ? nil : try Lockfile.load(from: inputs.lockPath)
                var names: [SHA256Digest: [String]] = [:]
                for input in lock?.inputs ?? [] {
                    if let digest = resolver.located(input) { names[digest, default: []].append(input.name) }
                }
                let rows = store.entries().map { Row(sha256: $0.sha256, size: $0.size, trees: $0.trees, inputs: names[$0.sha256] ?? []) }
                let areas = store.usage()
                if output.json { return printJSON(Listing(areas: areas, entries: rows)) }
                print("\(store.root): \(byteCount(areas.reduce(0) { $0 + $1.bytes }))")
                for area in areas {
                    print("  \(area.area.rawValue.padding(toLength: 11, withPad: " ", startingAt: 0)) \(String(area.items).leftPadded(6)) items  \(byteCount(area.bytes).leftPadded(10))")
                }
                for row in rows {
                    print("\(row.sha256)  \(byteCount(row.size).leftPadded(10))  \(row.inputs.joined(separator: ", "))")
                }
            }
        }
    }

    struct Collect: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "gc",
            abstract: "Remove what the lock no longer needs and caches not used for a while.",
            discussion: helpText(
                """
                Removes entries no input of the lock names; step results, unpacked toolchains, Zig's cache \
                and smoke root file systems not used for --max-age days; quarantined files older than that; \
                temp files, work directories and unfinished copies of processes that are gone, the sandbox scratch directories \
                of killed runs (in $TMPDIR), and empty partial downloads. Partial downloads with \
                bytes stay (a fetch resumes them). Each removal is listed with its reason; with -v, also \
                what is kept and why.
                """,
                examples: "krnative store gc --dry-run -v", "krnative store gc --max-age 7"))
        @OptionGroup var inputs: InputOptions
        @OptionGroup var output: OutputOptions
        @Flag(help: "Say what would be removed and why, and remove nothing.") var dryRun = false
        @Option(help: "Keep derived items used within this many days.") var maxAge: UInt = 30

        func run() throws {
            try perform("store gc") {
                let lock = try Lockfile.load(from: inputs.lockPath)
                let store = try Store(root: inputs.storePath)
                let resolver = InputResolver(store: store)
                let plan = store.planCollection(keepEntries: Set(lock.inputs.compactMap(resolver.located)), maxAge: TimeInterval(maxAge) * 86_400)
                if !dryRun { store.collect(plan) }
                // Outside the store, but left the same way: the scratch directories of killed sandbox runs.
                let scratch = dryRun ? [] : SandboxScratch.removeAbandoned()
                if output.json { return printJSON(plan) }
                let verb = dryRun ? "would remove" : "removed"
                for path in scratch { print("removed \(path): the scratch directory of a sandbox run that was killed") }
                for item in plan.remove { print("\(verb) \(item.area.rawValue)/\(item.name) (\(byteCount(item.bytes))): \(item.reason)") }
                if output.verbose { for item in plan.keep { print("kept \(item.area.rawValue)/\(item.name) (\(byteCount(item.bytes))): \(item.reason)") } }
                print("\(verb) \(counted(plan.remove.count, "item")) (\(byteCount(plan.bytesRemoved))); kept \(plan.keep.count)")
            }
        }
    }
}

/// Bytes for people: 1.2 MB, 734 kB, 12 B (decimal units, as du --si and uv print them).
func byteCount(_ bytes: Int64) -> String {
    guard bytes >= 1000 else { return "\(bytes) B" }
    var value = Double(bytes)
    for unit in ["kB", "MB", "GB", "TB"] {
        value /= 1000
        if value < 1000 || unit == "TB" { return String(format: value < 10 ? "%.1f %@" : "%.0f %@", value, unit) }
    }
    return "\(bytes) B"
}

extension String {
    func leftPadded(_ width: Int) -> String { count >= width ? self : String(repeating: " ", count: width - count) + self }
}
