import Archive
import Fetch
import Foundation
import KrnativeBase
import Lock
import Patch
import Sandbox
import Store
import Toolchain

/// Why ttyd could not be built.
public enum CompileError: KrnativeError {
    case missingInput(name: String, lockPath: String)
    case toolchainCannotRun(ToolchainKind, host: HostPlatform)
    case noOutput(path: String)
    case treeMismatch(component: String, archive: String, expected: SHA256Digest, actual: SHA256Digest)

    public var description: String {
        switch self {
        case .missingInput(let name, let lockPath):
            "the store has no '\(name)' (or the lock \(lockPath) does not name it); run `krnative fetch --lock \(lockPath) --target …`, "
                + "or bring it in with `krnative bundle import` / `krnative store import`"
        case .toolchainCannotRun(let kind, let host):
            "the \(kind.rawValue) toolchain does not run on \(host) hosts; use --toolchain zig"
        case .noOutput(let path):
            "the ttyd step finished but left no \(path)"
        case .treeMismatch(let component, let archive, let expected, let actual):
            "\(component): \(archive) unpacked to tree \(actual), but the lock pins \(expected); the extraction differs from the tree hash (report this)"
        }
    }
    public var exitCode: Int32 {
        switch self {
        case .missingInput: ExitStatus.missingInput
        case .toolchainCannotRun: ExitStatus.usage
        case .noOutput: ExitStatus.process
        case .treeMismatch: ExitStatus.integrity
        }
    }
}

/// Builds the static ttyd of one target from the lock's sources, step by step in the sandbox,
/// with each library's install tree cached in the store by the hash of everything that went in.
public struct TtydBuild: Sendable {
    public struct Options: Sendable {
        public var target: Target
        public var toolchain: ToolchainKind = .zig
        public var host: HostPlatform = .current
        public var isolation: Isolation = .namespaces
        public var jobs = ProcessInfo.processInfo.activeProcessorCount
        public var patchesDirectory: String
        public var outputDirectory: String
        /// The krnative executable that runs inside the sandbox.
        public var entryExecutable: String
        /// Where to build; a fresh temporary directory when nil (removed afterwards unless `keepWork`).
        public var workDirectory: String?
        public var keepWork = false
        /// Compile every step even when the step cache has its result (the result is cached again).
        public var rebuild = false
        /// Unpack and patch every source into the work directory, and compile nothing.
        public var prepareOnly = false
        /// Build only up to and including this component (tests of the libraries without ttyd's source).
        public var stopAfter: String?
        public var lockPath = Lockfile.defaultFileName
        /// Where step results not in the local step cache are looked for, and (when it allows
        /// uploads) where compiled ones go.
        public var remoteCache: RemoteCache?
        public var log: @Sendable (String) -> Void = Reporting.note

        public init(target: Target, patchesDirectory: String, outputDirectory: String, entryExecutable: String) {
            self.target = target
            self.patchesDirectory = patchesDirectory
            self.outputDirectory = outputDirectory
            self.entryExecutable = entryExecutable
        }
    }

    /// What the build used and made: recorded next to the binary as `ttyd_linux.<arch>.json`.
    public struct Report: Sendable, Codable {
        public struct Source: Sendable, Codable {
            public var name: String
            public var version: String
            public var treeSha256: SHA256Digest
            public var fileSha256: SHA256Digest
        }
        public struct Step: Sendable, Codable {
            public var component: String
            public var key: SHA256Digest
            public var cached: Bool
            /// The result came from the remote cache (`cached` is true then too).
            public var remote: Bool?
            public var seconds: Double
            public var adaptation: String?
        }
        public struct Output: Sendable, Codable {
            public var file: String
            public var sha256: SHA256Digest
            public var size: Int64
        }
        public var triple: String
        public var toolchain: String
        public var isolation: Isolation
        public var sourceDateEpoch: Int64
        public var sources: [Source] = []
        public var patches: [AppliedPatch] = []
        public var steps: [Step] = []
        public var output: Output?

        /// How many steps were compiled, taken from the step cache, and from the remote cache.
        public var counts: (compiled: Int, cached: Int, remote: Int) {
            let remote = steps.filter { $0.remote == true }.count
            let cached = steps.filter(\.cached).count - remote
            return (steps.count - cached - remote, cached, remote)
        }
    }

    public let options: Options
    public let resolver: InputResolver

    public init(options: Options, resolver: InputResolver) {
        self.options = options
        self.resolver = resolver
    }

    var store: Store { resolver.store }

    public func run(lock: Lockfile) throws -> Report {
        let triple = options.target.ttydTriple
        guard Toolchain.runs(options.toolchain, on: options.host) else {
            throw CompileError.toolchainCannotRun(options.toolchain, host: options.host)
        }
        let toolchain = try unpackToolchain(lock: lock, triple: triple)
        let work = options.workDirectory ?? store.temporaryPath("ttyd-\(triple)")
        try FileSystem.createDirectory(work)
        var succeeded = false
        defer {
            if succeeded && options.workDirectory == nil && !options.keepWork {
                FileSystem.remove(work)
            } else if !succeeded {
                options.log("the work directory is kept for inspection: \(work) (logs/ has each step's output)")
            }
        }
        let zigCache = "\(store.root)/zig-cache/\(toolchain.version)-\(triple)"
        try FileSystem.createDirectory(zigCache)
        let layout =
            options.isolation == .namespaces
            ? BuildLayout.sandboxed : BuildLayout(build: work, toolchain: toolchain.hostRoot, zigCache: zigCache)

        var toolchainInLayout = toolchain
        toolchainInLayout.hostRoot = layout.toolchain
        try writeWrappers(toolchainInLayout, layout: layout, work: work)

        let versions = Dictionary(uniqueKeysWithValues: TtydRecipe.components.compactMap { name in lock[name].map { (name, $0.version) } })
        let recipe = TtydRecipe(layout: layout, triple: triple, jobs: options.jobs, versions: versions)
        var report = Report(
            triple: triple, toolchain: toolchain.identity, isolation: options.isolation, sourceDateEpoch: lock.sourceDateEpoch)
        let runner = SandboxRunner(entryExecutable: options.entryExecutable, isolation: options.isolation)
        var previousKey = SHA256Digest.of(Data("krnative ttyd recipe v1 \(toolchain.identity)".utf8))
        let stage = work + "/stage"
        try FileSystem.createDirectory(stage)
        let remoteSteps = options.remoteCache.map { RemoteSteps(cache: $0, store: store, log: options.log) }

        for step in recipe.steps {
            guard let input = lock[step.component], input.kind == .source, let tree = input.treeSha256,
                let archive = try resolver.path(of: input)
            else { throw CompileError.missingInput(name: step.component, lockPath: options.lockPath) }
            let patches = try SourcePatch.series(for: step.component, in: options.patchesDirectory).filter { $0.applies(to: input.version) }
            let key = cacheKey(previous: previousKey, step: step, tree: tree, patches: patches)
            report.sources.append(.init(name: input.name, version: input.version, treeSha256: tree, fileSha256: resolver.located(input)!))
            let started = Date()
            let cached = "\(store.root)/steps/\(key.hex)"
            let mayReuse = !options.rebuild && !options.prepareOnly
            let fromRemote = mayReuse && !FileSystem.exists(cached) && remoteSteps?.restore(key, component: step.component) == true
            let wasCached = mayReuse && FileSystem.exists(cached)
            if wasCached {
                FileSystem.remove(stage)
                try FileManager.default.copyItem(atPath: cached, toPath: stage)
                report.patches += patches.map(\.summary)
                options.log("\(step.component) \(input.version): \(fromRemote ? "from the remote cache" : "cached") (\(key.hex.prefix(12)))")
                // A result made before uploads were asked for reaches the cache too.
                if !fromRemote, let remoteSteps, remoteSteps.cache.upload, !remoteSteps.cache.hasActionResult(key) {
                    remoteSteps.upload(cached, key: key, component: step.component, epoch: lock.sourceDateEpoch, threads: options.jobs)
                }
            } else {
                options.log("\(step.component) \(input.version): \(options.prepareOnly ? "preparing" : "building") for \(triple) with \(toolchain.kind.rawValue)")
                let source = work + "/src/" + step.component
                FileSystem.remove(source)
                try SafeExtractor(stripComponents: 1, limits: .forArchive(recordedSize: input.size)).extract(archive, into: source)
                // What was extracted is what the lock pins, before any patch touches it.
                let extracted = try TreeHash.ofDirectory(at: source)
                guard extracted == tree else {
                    throw CompileError.treeMismatch(component: step.component, archive: archive, expected: tree, actual: extracted)
                }
                report.patches += try PatchApplier().apply(patches, to: source, version: input.version)
                if options.prepareOnly { continue }
                try runCommands(step, in: layout, work: work, toolchain: toolchain, zigCache: zigCache, runner: runner, epoch: lock.sourceDateEpoch)
                try snapshot(stage, as: key)
                remoteSteps?.upload(cached, key: key, component: step.component, epoch: lock.sourceDateEpoch, threads: options.jobs)
            }
            report.steps.append(
                .init(
                    component: step.component, key: key, cached: wasCached, remote: fromRemote ? true : nil,
                    seconds: Date().timeIntervalSince(started), adaptation: step.adaptation))
            previousKey = key
            if step.component == options.stopAfter {
                succeeded = true
                return report
            }
        }
        if options.prepareOnly {
            succeeded = true
            return report
        }
        let binary = stage + "/bin/ttyd"
        guard FileSystem.exists(binary) else { throw CompileError.noOutput(path: binary) }
        try FileSystem.createDirectory(options.outputDirectory)
        let name = "ttyd_linux.\(options.target.arch.rawValue).bin"
        let temp = options.outputDirectory + "/.\(name).partial"
        FileSystem.remove(temp)
        try FileManager.default.copyItem(atPath: binary, toPath: temp)
        chmod(temp, 0o755)
        let (digest, size) = try SHA256Digest.of(fileAt: temp)
        try FileSystem.rename(temp, to: options.outputDirectory + "/" + name)
        report.output = .init(file: name, sha256: digest, size: size)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try FileSystem.writeAtomically(try encoder.encode(report), to: options.outputDirectory + "/ttyd_linux.\(options.target.arch.rawValue).json")
        succeeded = true
        return report
    }

    /// The key of a step's install tree: the previous step's key (so a change below rebuilds
    /// everything above it), the step's commands and environment, the source tree, the patches.
    func cacheKey(previous: SHA256Digest, step: BuildStep, tree: SHA256Digest, patches: [SourcePatch]) -> SHA256Digest {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var material = Data("\(previous.hex)\n\(tree.hex)\n".utf8)
        material += (try? encoder.encode(step)) ?? Data()
        for patch in patches { material += Data("\npatch \(patch.sha256.hex)".utf8) }
        return SHA256Digest.of(material)
    }

    /// Unpacks the toolchain archive once into the store (`toolchains/<sha256>/`), with its tree
    /// hash beside it for `store verify`.
    func unpackToolchain(lock: Lockfile, triple: String) throws -> Toolchain {
        let name = options.toolchain.lockName(triple: triple, host: options.host)
        guard let input = lock[name], let digest = resolver.located(input) else {
            throw CompileError.missingInput(name: name, lockPath: options.lockPath)
        }
        let root = "\(store.root)/toolchains/\(digest.hex)"
        if !FileSystem.exists(root) {
            let entryLock = try store.lock("toolchain-\(digest.hex)")
            defer { entryLock.unlock() }
            if !FileSystem.exists(root) {
                let temp = store.temporaryPath("toolchain")
                options.log("unpacking \(input.name) \(input.version)")
                try SafeExtractor(stripComponents: options.toolchain.stripComponents, limits: .forArchive(recordedSize: input.size))
                    .extract(try store.verifiedPath(for: digest), into: temp)
                if options.toolchain == .zig { chmod(temp + "/ziglang/zig", 0o755) }  // wheels may not keep the mode
                try FileSystem.createDirectory(store.directory(.toolchains))
                try store.complete(.toolchains, digest.hex, from: temp, treeHash: TreeHash.ofDirectory(at:))
            }
        }
        return Toolchain(kind: options.toolchain, version: input.version, archiveSha256: digest, triple: triple, hostRoot: root)
    }

    func writeWrappers(_ toolchain: Toolchain, layout: BuildLayout, work: String) throws {
        try FileSystem.createDirectory(work + "/wrappers")
        for (name, script) in toolchain.wrappers(root: layout.toolchain) {
            try FileSystem.writeAtomically(Data(script.utf8), to: work + "/wrappers/" + name, mode: 0o755)
        }
        let file = toolchain.cmakeToolchainFile(wrappers: layout.wrappers, stage: layout.stage)
        try FileSystem.writeAtomically(Data(file.utf8), to: work + "/toolchain.cmake")
    }

    func runCommands(
        _ step: BuildStep, in layout: BuildLayout, work: String, toolchain: Toolchain, zigCache: String, runner: SandboxRunner,
        epoch: Int64
    ) throws {
        let environment = Self.environment(of: step, in: layout)
        let mounts: [SandboxSpec.Mount] =
            options.isolation == .namespaces
            ? [.writable(work, at: layout.build), .readOnly(toolchain.hostRoot, at: layout.toolchain), .writable(zigCache, at: layout.zigCache)]
            : []
        let logPath = work + "/logs/\(step.component).log"
        try FileSystem.createDirectory(work + "/logs")
        FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = FileHandle(forWritingAtPath: logPath)
        defer { try? log?.close() }
        for argv in step.commands {
            let spec = SandboxSpec(
                argv: argv, environment: environment, mounts: mounts, workingDirectory: layout.source(step.component),
                home: layout.build, sourceDateEpoch: epoch)
            try runner.run(spec) { try? log?.write(contentsOf: $0) }
        }
    }

    /// Copies the install tree to the step cache, whole or not at all.
    /// A step's variables: its own, and where Zig keeps its caches.
    static func environment(of step: BuildStep, in layout: BuildLayout) -> [String: String] {
        var environment = step.environment
        environment["ZIG_GLOBAL_CACHE_DIR"] = layout.zigCache
        environment["ZIG_LOCAL_CACHE_DIR"] = layout.build + "/zig-local-cache"
        return environment
    }

    /// The recipe's commands as a plain bash script for a work directory that a
    /// `build-ttyd --sandbox none --workdir W` left with patched sources, wrappers and the CMake
    /// toolchain file: the baseline the benchmark runs against the step itself.
    public func plainScript(lock: Lockfile, epoch: Int64) throws -> String {
        guard let work = options.workDirectory else { throw UsageError("--print-script needs --workdir, the directory a --sandbox none build prepared") }
        let triple = options.target.ttydTriple
        let toolchain = try unpackToolchain(lock: lock, triple: triple)
        let layout = BuildLayout(build: work, toolchain: toolchain.hostRoot, zigCache: "\(store.root)/zig-cache/\(toolchain.version)-\(triple)")
        let versions = Dictionary(uniqueKeysWithValues: TtydRecipe.components.compactMap { name in lock[name].map { (name, $0.version) } })
        let recipe = TtydRecipe(layout: layout, triple: triple, jobs: options.jobs, versions: versions)
        var lines = [
            "#!/usr/bin/env bash", "# ttyd for \(triple), the recipe's commands without krnative (written by krnative build-ttyd --print-script)",
            "set -euo pipefail", "export SOURCE_DATE_EPOCH=\(epoch) TZ=UTC LC_ALL=C.UTF-8 HOME=\(ChildProcess.quote(work))",
            "mkdir -p \(ChildProcess.quote(layout.zigCache)) \(ChildProcess.quote(layout.stage))",
        ]
        for step in recipe.steps {
            lines.append("cd \(ChildProcess.quote(layout.source(step.component)))")
            let variables = Self.environment(of: step, in: layout).sorted { $0.key < $1.key }.map { "\($0.key)=\(ChildProcess.quote($0.value))" }
            for argv in step.commands { lines.append((["env"] + variables + argv.map(ChildProcess.quote)).joined(separator: " ")) }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Keeps the stage as the cached result of step `key`, with its tree hash beside it for `store verify`.
    func snapshot(_ stage: String, as key: SHA256Digest) throws {
        try FileSystem.createDirectory(store.directory(.steps))
        let temp = store.item(.steps, key.hex) + ".tmp-\(getpid())"
        FileSystem.remove(temp)
        try FileManager.default.copyItem(atPath: stage, toPath: temp)
        try store.complete(.steps, key.hex, from: temp, treeHash: TreeHash.ofDirectory(at:))
    }
}
