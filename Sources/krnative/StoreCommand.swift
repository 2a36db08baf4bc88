import ArgumentParser
import Fetch
import Foundation
import KrnativeBase
import Lock
import Store

struct StoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store", abstract: "Inspect and maintain the content-addressed input store.",
        subcommands: [Import.self, Verify.self, List.self, Collect.self])

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Admit files into the store that match an input of the lock (by sha256, or by tree hash for sources).")
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
        static let configuration = CommandConfiguration(abstract: "Hash every entry again; quarantine corrupted ones.")
        @OptionGroup var inputs: InputOptions
        @OptionGroup var output: OutputOptions

        func run() throws {
            try perform("store verify") {
                let report = try Store(root: inputs.storePath).verifyAll()
                if output.json {
                    printJSON(report)
                } else {
                    print("\(report.verified.count) entries verified, \(report.quarantined.count) corrupted")
                    for (digest, what) in report.quarantined.sorted(by: { $0.key < $1.key }) { print("corrupted \(digest): \(what)") }
                }
                if !report.quarantined.isEmpty { throw ExitCode(ExitStatus.integrity) }
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List the store's entries and the lock inputs they hold.")
        @OptionGroup var inputs: InputOptions
        @OptionGroup var output: OutputOptions

        struct Row: Encodable {
            var sha256: SHA256Digest
            var size: Int64
            var trees: [SHA256Digest]
            var inputs: [String]
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
                if output.json { return printJSON(rows) }
                for row in rows {
                    print("\(row.sha256)  \(String(row.size).padding(toLength: 10, withPad: " ", startingAt: 0))  \(row.inputs.joined(separator: ", "))")
                }
            }
        }
    }

    struct Collect: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "gc", abstract: "Remove entries no input of the lock names.")
        @OptionGroup var inputs: InputOptions
        @OptionGroup var output: OutputOptions

        func run() throws {
            try perform("store gc") {
                let lock = try Lockfile.load(from: inputs.lockPath)
                let store = try Store(root: inputs.storePath)
                let resolver = InputResolver(store: store)
                let keep = Set(lock.inputs.compactMap(resolver.located))
                let removed = store.collectGarbage(keep: keep)
                if output.json { return printJSON(removed.map(\.sha256)) }
                print("removed \(removed.count) entries (\(removed.reduce(0) { $0 + $1.size }) bytes); kept \(keep.count)")
            }
        }
    }
}
