import Compile
import Foundation
import Inputs
import KrnativeBase
import Lock
import Patch
import Sandbox
import Toolchain

/// The agent's runner binaries for one architecture (lablup/backend.ai's
/// `src/ai/backend/runner/NAME.ARCH.bin`): ttyd and the recipes beside it, each built from its
/// recipe with Zig for musl, under the file name the agent's `runner/` directory uses, with a
/// manifest and an SBOM of what went in.
public struct RunnerSet: Sendable {
    /// The recipes, in the order they are built; ttyd goes through `TtydBuild`, the others
    /// through `GenericRecipeBuild` (their `outputs` name the agent's files).
    public static let recipes = ["ttyd", "dropbear", "sftp-server", "tmux"]

    public let arch: Architecture
    /// The recipes to build (all of `recipes` unless narrowed).
    public let only: [String]
    /// How every build runs; its output directory is the set's.
    public let options: RecipeBuildOptions
    public let resolver: InputResolver
    public var toolVersion = "0"

    public init(arch: Architecture, only: [String] = RunnerSet.recipes, options: RecipeBuildOptions, resolver: InputResolver) throws(UsageError) {
        if let unknown = only.first(where: { !Self.recipes.contains($0) }) {
            throw UsageError("\(unknown) is not a runner binary's recipe; the recipes are \(Self.recipes.joined(separator: ", "))")
        }
        guard !only.isEmpty else { throw UsageError("no runner binary's recipe named; the recipes are \(Self.recipes.joined(separator: ", "))") }
        self.arch = arch
        self.only = Self.recipes.filter(only.contains)
        self.options = options
        self.resolver = resolver
    }

    static func noSingleOutput(_ recipe: String) -> UsageError {
        UsageError("recipes/\(recipe).json left no single binary: a runner binary's recipe names one output, the agent's name for it")
    }

    /// The target whose toolchain triple the binaries are built for: static musl of the arch.
    public var target: Target { Self.target(for: arch) }

    static func target(for arch: Architecture) -> Target { arch == .x86_64 ? .musllinuxX86_64 : .musllinuxAarch64 }

    /// The lock's inputs this set is built from here.
    public func neededInputs(_ lock: Lockfile) throws -> [LockedInput] {
        try Self.inputs(of: only, arch: arch, host: .current, lock: lock, recipesDirectory: options.settings.recipesDirectory)
    }

    /// The lock's inputs `recipes` for `arch` are built from on `host`: their sources and Zig
    /// (what `fetch --runner` fetches and `bundle export --runner` carries).
    public static func inputs(
        of recipes: [String] = RunnerSet.recipes, arch: Architecture, host: HostPlatform, lock: Lockfile, recipesDirectory: String
    ) throws -> [LockedInput] {
        let sources = Set(try recipes.flatMap { try RecipeFile.load($0, from: recipesDirectory).components })
        let zig = ToolchainKind.zig.lockName(triple: "", host: host)
        return lock.inputs(for: [target(for: arch)], host: host).filter { input in
            switch input.kind {
            case .source: sources.contains(input.name)
            case .toolchain: input.name == zig
            default: false
            }
        }
    }

    /// Builds every recipe of the set, then puts the binaries into the output directory with
    /// the manifest and the SBOM (the manifest last); the manifest. The builds write into a
    /// directory beside them (their own reports stay there, and go): a set that fails leaves
    /// nothing of itself.
    public func run(lock: Lockfile) throws -> RunnerManifest {
        let staging = options.outputDirectory + "/.build-runner.\(arch.rawValue).partial"
        FileSystem.remove(staging)
        defer { FileSystem.remove(staging) }
        var options = options
        options.target = target
        options.outputDirectory = staging
        var binaries: [RunnerManifest.Binary] = []
        for recipe in only {
            let (file, digest, sources, patches): (String, SHA256Digest, [StepRunner.Source], [AppliedPatch])
            if recipe == TtydBuild.name {
                let report = try TtydBuild(options: options, resolver: resolver).run(lock: lock)
                guard let output = report.output else { throw Self.noSingleOutput(recipe) }
                (file, digest, sources, patches) = (output.file, output.sha256, report.sources, report.patches)
            } else {
                let report = try GenericRecipeBuild(recipe: recipe, options: options, resolver: resolver).run(lock: lock)
                guard report.outputs.count == 1, let output = report.outputs.first else { throw Self.noSingleOutput(recipe) }
                (file, digest, sources, patches) = (output.file, output.sha256, report.sources, report.outcome.patches)
            }
            let size = FileSystem.size(of: staging + "/" + file) ?? 0
            binaries.append(.init(file: file, sha256: digest, size: size, recipe: recipe, sources: sources, patches: patches))
        }
        let manifest = RunnerManifest(
            tool: .init(version: toolVersion), arch: arch, lockSha256: lock.digest, sourceDateEpoch: options.settings.epoch(lock),
            isolation: options.settings.isolation, binaries: binaries)
        let out = self.options.outputDirectory
        FileSystem.remove(out + "/" + RunnerManifest.fileName(arch: arch))
        for binary in binaries { try FileSystem.rename(staging + "/" + binary.file, to: out + "/" + binary.file) }
        try manifest.write(into: out, lock: lock)
        return manifest
    }
}

extension RunnerSet {
    /// The set built again into `directory`, every step compiled afresh (Zig's warmed libraries
    /// kept: they are not the binaries' code); its manifest and directory.
    public func rebuilt(into directory: String, lock: Lockfile) throws -> (manifest: RunnerManifest, directory: String) {
        var options = options
        options.outputDirectory = directory
        options.settings.rebuild = true
        var again = try RunnerSet(arch: arch, only: only, options: options, resolver: resolver)
        again.toolVersion = toolVersion
        return (try again.run(lock: lock), directory)
    }
}

/// What a runner set's build used and made: `krnative-runner-manifest.ARCH.json`.
public struct RunnerManifest: Codable, Sendable {
    public struct Binary: Codable, Sendable {
        /// The agent's name for it (`dropbearmulti.aarch64.bin`).
        public var file: String
        public var sha256: SHA256Digest
        public var size: Int64
        /// The recipe it was built by (`recipes/<recipe>.json`).
        public var recipe: String
        public var sources: [StepRunner.Source]
        public var patches: [AppliedPatch]
    }

    public var tool: BuildManifest.Tool
    public var arch: Architecture
    public var lockSha256: SHA256Digest
    public var sourceDateEpoch: Int64
    public var isolation: Isolation
    public var binaries: [Binary]

    public static func fileName(arch: Architecture) -> String { "krnative-runner-manifest.\(arch.rawValue).json" }
    /// Whether `path` names a runner set's manifest rather than a volume's.
    public static func isNamed(_ path: String) -> Bool { (path as NSString).lastPathComponent.hasPrefix("krnative-runner-manifest.") }
    public static func sbomName(arch: Architecture) -> String { "krnative-runner-sbom.\(arch.rawValue).spdx.json" }

    /// The sources of every binary, each once, as the SBOM lists them (licences from `lock`).
    func inputs(lock: Lockfile) -> [BuildManifest.Input] {
        var seen: [String: BuildManifest.Input] = [:]
        for source in binaries.flatMap(\.sources) where seen[source.name] == nil {
            seen[source.name] = .init(
                name: source.name, kind: .source, version: source.version, sha256: source.fileSha256, treeSha256: source.treeSha256,
                license: lock[source.name]?.license)
        }
        return seen.keys.sorted().compactMap { seen[$0] }
    }

    /// Writes the SBOM, then the manifest, into `directory`, each whole or not at all.
    func write(into directory: String, lock: Lockfile) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let sbomName = Self.sbomName(arch: arch)
        let sbom = try SBOM.document(
            inputs: inputs(lock: lock), lockSha256: lockSha256, sourceDateEpoch: sourceDateEpoch, toolVersion: tool.version, name: sbomName)
        try FileSystem.writeAtomically(sbom, to: directory + "/" + sbomName)
        try FileSystem.writeAtomically(try encoder.encode(self) + Data("\n".utf8), to: directory + "/" + Self.fileName(arch: arch))
    }

    public static func load(from path: String) throws -> RunnerManifest {
        let data = try FileSystem.readRegularFile(path)
        do { return try JSONDecoder().decode(RunnerManifest.self, from: data) } catch {
            throw UsageError("\(path) is not a runner manifest krnative wrote (\(error))")
        }
    }

    /// The files a runner set's build leaves: its binaries, the SBOM and the manifest.
    public var files: [String] { binaries.map(\.file) + [Self.sbomName(arch: arch), Self.fileName(arch: arch)] }

    /// The binaries whose hash differs from `other`'s (or that only one of the two has), by file name.
    public func differences(from other: RunnerManifest) -> [String] {
        let theirs = Dictionary(uniqueKeysWithValues: other.binaries.map { ($0.file, $0.sha256) })
        let ours = Dictionary(uniqueKeysWithValues: binaries.map { ($0.file, $0.sha256) })
        return Set(ours.keys).union(theirs.keys).sorted().filter { ours[$0] != theirs[$0] }
    }
}
