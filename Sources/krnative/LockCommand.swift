import ArgumentParser
import Archive
import Fetch
import Foundation
import Inputs
import KrnativeBase
import Lock
import Store

extension LockedInput.Kind: ExpressibleByArgument {}

struct LockCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lock", abstract: "Write and check the lock.",
        discussion: helpText(examples: "krnative lock check", "krnative lock tree-hash ttyd-1.7.7.tar.gz"),
        subcommands: [Add.self, Check.self, TreeHashCommand.self])

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add or refresh an entry, hashing a local file or a download (the file is admitted to the store).",
            discussion: helpText(
                "A source read with --file is pinned by tree hash only; its file hash is recorded when it is first downloaded.",
                examples: "krnative lock add --name attrs --kind wheel --upstream-version 24.2.0\n--pip-requirement attrs==24.2.0",
                "krnative lock add --name ttyd --kind source --upstream-version 1.7.7\n--file ttyd-1.7.7.tar.gz\n--url https://github.com/tsl0922/ttyd/archive/refs/tags/1.7.7.tar.gz"))
        @OptionGroup var inputs: InputOptions
        @OptionGroup var network: NetworkOptions
        @OptionGroup var output: OutputOptions
        @Option(help: "Entry name, unique in the lock.") var name: String
        @Option(help: "runtime, toolchain, source or wheel.") var kind: LockedInput.Kind
        @Option(help: "Upstream version (the lock's `version`).") var upstreamVersion: String
        @Option(name: .customLong("url"), help: "A URL (repeatable, tried in order).") var urls: [String] = []
        @Option(help: "Read this file instead of downloading.") var file: String?
        @Option(help: "The upstream file name. Default: the last component of --file or the first --url.") var filename: String?
        @Option(name: .customLong("target"), help: "A target that needs it (repeatable). Default: every target.") var targets: [Target] = []
        @Option(help: "For toolchains: the machine it runs on (x86_64-linux, aarch64-linux).") var host: String?
        @Option(help: "Fetch with pip instead: the exact requirement, name==version.") var pipRequirement: String?
        @Option(help: "pip --platform tag (repeatable).") var pipPlatform: [String] = []
        @Option(help: "pip --python-version.") var pipPythonVersion: String?
        @Option(help: "pip --implementation.") var pipImplementation: String?
        @Option(help: "pip --abi.") var pipAbi: String?
        @Option(help: "SPDX license expression.") var license: String?
        @Option(help: "SOURCE_DATE_EPOCH for a new lock.") var sourceDateEpoch: Int64?

        func run() throws {
            try perform("lock add") {
                guard file != nil || !urls.isEmpty || pipRequirement != nil else {
                    throw UsageError("give --file, at least one --url, or --pip-requirement")
                }
                guard file == nil || !urls.isEmpty || pipRequirement != nil else {
                    throw UsageError("--file reads a local copy, but the lock must say where the file comes from: add --url URL (repeatable) or --pip-requirement")
                }
                if let file, FileSystem.isDirectory(file) || !FileSystem.exists(file) {
                    throw FileSystemError.cannotRead(path: file, reason: FileSystem.whyUnreadable(file))
                }
                let platform = try host.map { text throws(UsageError) in
                    guard let platform = HostPlatform(rawValue: text) else { throw UsageError("unknown --host '\(text)'") }
                    return platform
                }
                // With pip alone, the file name is the one pip chooses.
                let defaultName = file ?? urls.first.flatMap { URL(string: $0)?.lastPathComponent } ?? ""
                let pip = pipRequirement.map {
                    LockedInput.PipQuery(
                        requirement: $0, platforms: pipPlatform, pythonVersion: pipPythonVersion,
                        implementation: pipImplementation, abi: pipAbi)
                }
                var draft = LockedInput(
                    name: name, kind: kind, version: upstreamVersion,
                    filename: filename ?? (defaultName as NSString).lastPathComponent.removingPercentEncoding ?? defaultName,
                    urls: urls, targets: targets, host: platform, pip: pip, license: license)
                var lock =
                    FileSystem.exists(inputs.lockPath)
                    ? try Lockfile.load(from: inputs.lockPath) : Lockfile(sourceDateEpoch: sourceDateEpoch ?? 0)
                if let sourceDateEpoch { lock.sourceDateEpoch = sourceDateEpoch }
                // Refreshing an entry keeps what this command was not told (its licence).
                if draft.license == nil, let existing = lock[name] { draft.license = existing.license }
                let authoring = LockAuthoring(
                    resolver: InputResolver(store: try Store(root: inputs.storePath)),
                    options: try network.fetchOptions(lockPath: inputs.lockPath))
                let entry = try authoring.complete(draft, file: file)
                lock.upsert(entry)
                // Never write a lock that `lock check` (and every later command) would refuse.
                try lock.validate(file: inputs.lockPath)
                try lock.write(to: inputs.lockPath)
                if output.json { return printJSON(entry) }
                let pin = entry.kind == .source ? "tree \(entry.treeSha256!)" : "sha256 \(entry.sha256!)"
                print("\(inputs.lockPath): \(entry.name) \(entry.version) pinned by \(pin)")
            }
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate the lock and print its digest.", discussion: helpText(examples: "krnative lock check", "krnative lock check --lock other.lock.json --json"))
        @OptionGroup var inputs: InputOptions
        @OptionGroup var output: OutputOptions

        struct Summary: Encodable {
            var lock: String
            var inputs: Int
            var format: Int
            var sha256: SHA256Digest
        }

        func run() throws {
            try perform("lock check") {
                let lock = try Lockfile.load(from: inputs.lockPath)
                if output.json {
                    return printJSON(Summary(lock: inputs.lockPath, inputs: lock.inputs.count, format: Lockfile.formatVersion, sha256: lock.digest))
                }
                print("\(inputs.lockPath): \(counted(lock.inputs.count, "input")), format \(Lockfile.formatVersion), sha256 \(lock.digest)")
            }
        }
    }

    struct TreeHashCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "tree-hash", abstract: "Print the tree hash v1 of an archive (top directory stripped) or a directory.",
            discussion: helpText(examples: "krnative lock tree-hash ttyd-1.7.7.tar.gz", "krnative lock tree-hash --strip 0 unpacked/"))
        @Argument(help: "An archive or a directory.") var path: String
        @Option(help: "Leading path components to strip from archive entries.") var strip = 1
        @OptionGroup var output: OutputOptions

        func run() throws {
            try perform("tree-hash") {
                let digest = FileSystem.isDirectory(path) ? try TreeHash.ofDirectory(at: path) : try TreeHash.ofArchive(at: path, strip: strip)
                if output.json { return printJSON(["path": path, "treeSha256": digest.hex]) }
                print("\(digest)  \(path)")
            }
        }
    }
}
