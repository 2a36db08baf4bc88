import Archive
import Fetch
import Foundation
import Inputs
import KrnativeBase
import Lock
import Patch
import Sandbox
import Store
import Toolchain

/// A build as a value: its steps in order, and what seeds the first step's cache key.
public protocol Recipe: Sendable {
    /// Names the recipe and its version in the first key (with the toolchain's identity).
    var seed: String { get }
    var steps: [BuildStep] { get }
}

/// Runs a recipe's steps in the sandbox, one lock source each, with each step's install tree
/// (`stage/`) cached in the store (`steps/<key>`) by the hash of everything that went in: the
/// previous step's key, the step's commands and environment, the source tree and the patches.
public struct StepRunner: Sendable {
    public struct Settings: Sendable {
        public var isolation: Isolation = .namespaces
        /// The krnative executable that runs inside the sandbox.
        public var entryExecutable: String
        public var patchesDirectory: String
        /// Where the recipes are (`recipes/<name>.json`).
        public var recipesDirectory = RecipeFile.builtIn
        /// The SOURCE_DATE_EPOCH the steps get and the outputs are clamped to (nil: the lock's).
        public var sourceDateEpoch: Int64?
        /// Compile every step even when the step cache has its result (the result is cached again).
        public var rebuild = false
        /// Unpack and patch every source into the work directory, and compile nothing.
        public var prepareOnly = false
        /// Stop after the step that builds this directory (or component).
        public var stopAfter: String?
        public var lockPath = Lockfile.defaultFileName
        /// Where step results not in the local step cache are looked for, and (when it allows
        /// uploads) where compiled ones go.
        public var remoteCache: RemoteCache?
        /// Parallel jobs for the steps' `make`, and threads for packing step results.
        public var jobs = ProcessInfo.processInfo.activeProcessorCount
        /// The machine that builds: which toolchain archive runs here, and the build triple.
        public var host: HostPlatform = .current
        /// Where to build; a fresh temporary directory when nil (removed afterwards unless `keepWork`).
        public var workDirectory: String?
        public var keepWork = false
        /// How many processes and how much memory each step may take.
        public var stepLimits: StepLimits = .standard
        /// Where the recipe's steps stand in the `[k/n]` of a larger build; nil: the recipe's own count.
        public var numbering: StepNumbering?
        public var log: @Sendable (String) -> Void = Reporting.note

        /// The epoch a build from `lock` uses: the one asked for, else the lock's.
        public func epoch(_ lock: Lockfile) -> Int64 { sourceDateEpoch ?? lock.sourceDateEpoch }

        public init(entryExecutable: String, patchesDirectory: String) {
            self.entryExecutable = entryExecutable
            self.patchesDirectory = patchesDirectory
        }
    }

    /// The number of a recipe's first step in a larger build's `[k/n]`, and n.
    public struct StepNumbering: Sendable, Equatable {
        public var first: Int
        public var total: Int

        public init(first: Int, total: Int) {
            self.first = first
            self.total = total
        }
    }

    public struct Source: Sendable, Codable, Equatable {
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
    /// What the steps used and did.
    public struct Outcome: Sendable, Codable {
        public var sources: [Source] = []
        public var patches: [AppliedPatch] = []
        public var steps: [Step] = []
        /// The run ended at `stopAfter` or after preparing only: there is no finished install tree.
        public var stoppedEarly = false
    }

    /// How many steps were compiled, taken from the step cache, and from the remote cache.
    public static func counts(_ steps: [Step]) -> (compiled: Int, cached: Int, remote: Int) {
        let remote = steps.filter { $0.remote == true }.count
        let cached = steps.filter(\.cached).count - remote
        return (steps.count - cached - remote, cached, remote)
    }

    /// Where one build happens: the host's work directory and Zig cache, and the paths the steps see.
    public struct Workspace: Sendable {
        public var work: String
        public var layout: BuildLayout
        public var toolchain: Toolchain
        /// Zig's cache for this build alone (`ZIG_GLOBAL_CACHE_DIR`: the runtime libraries Zig
        /// builds per target, every object `zig cc` compiles). Steps write it, so no other build
        /// may read it: in the sandbox, a directory in the store's `tmp/` held by this run
        /// (`held`, removed with the workspace); with `--sandbox none`, `zig-cache/` in the work directory.
        public var zigCache: String
        let held: StagingDirectory?
        /// The build machine's triple, when the recipe also compiles for it (`build-cc`, …).
        public var buildTriple: String? = nil
        public var stage: String { work + "/stage" }
    }

    public let settings: Settings
    public let resolver: InputResolver

    public init(settings: Settings, resolver: InputResolver) {
        self.settings = settings
        self.resolver = resolver
    }

    var store: Store { resolver.store }

    /// Runs `body` in `directory`, or in a fresh one in the store's `tmp/` held by this run
    /// (`StagingDirectory`, `.krnative-work-<pid>-<random>`: what a killed run leaves there, the
    /// next build removes), removed afterwards unless `keep`; a failed build's directory is kept
    /// for inspection as `tmp/<name>.<pid>.<random>.tmp`, which `store gc` removes.
    public func withWorkDirectory<T>(_ directory: String?, name: String, keep: Bool, _ body: (String) throws -> T) throws -> T {
        let staging = directory == nil ? try StagingDirectory(in: store.directory(.tmp), prefix: Store.workPrefix, unique: true) : nil
        defer { staging?.remove() }
        /// Moves the held directory to a name that outlives this run; the path the caller can look in.
        func keepStaging() -> String {
            guard let staging else { return directory ?? "" }
            let kept = store.temporaryPath(name)
            return rename(staging.path, kept) == 0 ? kept : staging.path
        }
        let work = directory ?? staging!.path
        try FileSystem.createDirectory(work)
        do {
            let result = try body(work)
            if keep && staging != nil { settings.log("the work directory is kept: \(keepStaging())") }
            return result
        } catch {
            settings.log("the work directory is kept for inspection: \(keepStaging()) (logs/ has each step's output)")
            throw error
        }
    }

    /// Unpacks the toolchain archive once into the store (`toolchains/<sha256>/`), with its tree
    /// hash beside it for `store verify`.
    public func unpackToolchain(_ kind: ToolchainKind, host: HostPlatform, lock: Lockfile, triple: String) throws -> Toolchain {
        let name = kind.lockName(triple: triple, host: host)
        guard let input = lock[name], let digest = resolver.located(input) else {
            throw CompileError.missingInput(name: name, lockPath: settings.lockPath)
        }
        let root = store.item(.toolchains, digest.hex)
        if store.intactItem(.toolchains, digest.hex, treeHash: TreeHash.ofDirectory(at:), log: settings.log) == nil {
            let entryLock = try store.lock(.toolchains, digest.hex)
            defer { entryLock.unlock() }
            if !FileSystem.exists(root) {
                let temp = store.temporaryPath("toolchain")
                settings.log("unpacking \(input.name) \(input.version)")
                try SafeExtractor(stripComponents: kind.stripComponents, limits: .forArchive(recordedSize: input.size))
                    .extract(try store.verifiedPath(for: digest), into: temp)
                if kind == .zig { chmod(temp + "/ziglang/zig", 0o755) }  // wheels may not keep the mode
                try FileSystem.createDirectory(store.directory(.toolchains))
                try store.complete(.toolchains, digest.hex, from: temp, treeHash: TreeHash.ofDirectory(at:))
            }
        }
        return Toolchain(kind: kind, version: input.version, archiveSha256: digest, triple: triple, hostRoot: root)
    }

    /// The layout the steps see, the compiler wrappers and the CMake toolchain file in `work`;
    /// with `buildTriple`, also `build-cc`, `build-ar`, … that compile for the build machine.
    public func prepare(_ toolchain: Toolchain, work: String, buildTriple: String? = nil) throws -> Workspace {
        // Zig reuses what its cache holds without checking it (an object a hostile step planted
        // there, another build would link), so each build starts from an empty one.
        let sandboxed = settings.isolation == .namespaces
        let held = sandboxed ? try StagingDirectory(in: store.directory(.tmp), prefix: Store.workPrefix, unique: true) : nil
        let zigCache = held?.path ?? BuildLayout.zigCache(inWork: work)
        let layout = sandboxed ? BuildLayout.sandboxed : BuildLayout(build: work, toolchain: toolchain.hostRoot, zigCache: zigCache)
        var inLayout = toolchain
        inLayout.hostRoot = layout.toolchain
        // A work directory kept from an earlier build (`--workdir`) holds what its steps left.
        try Self.checkWorkDirectory(work, layout: layout, after: nil)
        try FileSystem.createDirectory(work + "/wrappers")
        var wrappers = inLayout.wrappers(root: layout.toolchain)
        if let buildTriple {
            var native = inLayout
            native.triple = buildTriple
            for (name, script) in native.wrappers(root: layout.toolchain) { wrappers["build-" + name] = script }
        }
        for (name, script) in wrappers {
            try FileSystem.writeAtomically(Data(script.utf8), to: work + "/wrappers/" + name, mode: 0o755)
        }
        let file = inLayout.cmakeToolchainFile(wrappers: layout.wrappers, stage: layout.stage)
        try FileSystem.writeAtomically(Data(file.utf8), to: work + "/toolchain.cmake")
        try FileSystem.createDirectory(work + "/stage")
        try FileSystem.createDirectory(zigCache)
        return Workspace(work: work, layout: layout, toolchain: toolchain, zigCache: zigCache, held: held, buildTriple: buildTriple)
    }

    /// Runs `recipe`'s steps in `space`, each from its cache when it is there.
    public func run(_ recipe: some Recipe, lock: Lockfile, in space: Workspace) throws -> Outcome {
        var outcome = Outcome()
        let targetSeed = SHA256Digest.of(Data("\(recipe.seed) \(space.toolchain.identity)".utf8))
        var previousKey = targetSeed
        let runner = SandboxRunner(entryExecutable: settings.entryExecutable, isolation: settings.isolation)
        let remoteSteps = settings.remoteCache.map { RemoteSteps(cache: $0, store: store, log: settings.log) }
        let progress = StepProgress(emit: settings.log)
        for (index, step) in recipe.steps.enumerated() {
            let numbering = settings.numbering ?? StepNumbering(first: 1, total: recipe.steps.count)
            let counter = "[\(numbering.first + index)/\(numbering.total)]"
            guard let input = lock[step.component], input.kind == .source, let tree = input.treeSha256,
                let archive = try resolver.path(of: input)
            else { throw CompileError.missingInput(name: step.component, lockPath: settings.lockPath) }
            let patches =
                try SourcePatch.series(for: step.component, in: settings.patchesDirectory).filter { $0.applies(to: input.version) }
                + (step.edits.map { [SourcePatch.recipeEdits($0, step: step.name)] } ?? [])
            let environment = Self.commandSpec([], of: step, in: space.layout, epoch: settings.epoch(lock)).fullEnvironment
            let hostSeed = Self.buildMachineSeed(of: recipe, step: step, at: index, in: space)
            let key = Self.cacheKey(previous: hostSeed ?? previousKey, step: step, tree: tree, patches: patches, environment: environment)
            let source = Source(name: input.name, version: input.version, treeSha256: tree, fileSha256: resolver.located(input)!)
            if !outcome.sources.contains(source) { outcome.sources.append(source) }
            let started = Date()
            let cached = store.item(.steps, key.hex)
            let mayReuse = !settings.rebuild && !settings.prepareOnly
            let intact = mayReuse && store.intactItem(.steps, key.hex, treeHash: TreeHash.ofDirectory(at:), log: settings.log) != nil
            let fromRemote = mayReuse && !intact && remoteSteps?.restore(key, component: step.name) == true
            let wasCached = intact || fromRemote
            if wasCached {
                FileSystem.remove(space.stage)
                try StepResultTree(key.hex, in: store.directory(.steps), madeBy: "the \(step.name) step (its cached result)", seenAs: space.layout.stage)
                    .copy(to: space.stage)
                outcome.patches += patches.map(\.summary)
                settings.log("\(counter) \(step.name) \(input.version): \(fromRemote ? "from the remote cache" : "cached") (\(key.hex.prefix(12)))")
                // A result made before uploads were asked for reaches the cache too.
                if !fromRemote, let remoteSteps, remoteSteps.cache.upload, !remoteSteps.cache.hasActionResult(key) {
                    remoteSteps.upload(cached, key: key, component: step.name, epoch: settings.epoch(lock), threads: settings.jobs)
                }
            } else {
                let verb = settings.prepareOnly ? "preparing" : "building"
                // The build Python is compiled by the build-machine wrappers, for this machine.
                let machine = step.forBuildMachine == true ? "the build machine (\(HostPlatform.current))" : space.toolchain.triple
                let label = "\(counter) \(step.name) \(input.version): \(verb) for \(machine) with \(space.toolchain.kind.rawValue)"
                if settings.prepareOnly { settings.log(label) }
                let directory = space.work + "/src/" + step.name
                FileSystem.remove(directory)
                try SafeExtractor(stripComponents: 1, limits: .forArchive(recordedSize: input.size)).extract(archive, into: directory)
                // What was extracted is what the lock pins, before any patch touches it.
                let extracted = try TreeHash.ofDirectory(at: directory)
                guard extracted == tree else {
                    throw CompileError.treeMismatch(component: step.component, archive: archive, expected: tree, actual: extracted)
                }
                outcome.patches += try PatchApplier().apply(patches, to: directory, version: input.version)
                if !settings.prepareOnly {
                    // Begun here, ended on both paths below: no status outlives its step.
                    progress.begin(label)
                    do { try runCommands(step, in: space, runner: runner, epoch: settings.epoch(lock), progress: progress) } catch {
                        progress.end("\(counter) \(step.name) \(input.version): failed after \(Console.duration(Date().timeIntervalSince(started)))")
                        throw error
                    }
                    progress.end("\(counter) \(step.name) \(input.version): built in \(Console.duration(Date().timeIntervalSince(started)))")
                    try Self.checkWorkDirectory(space.work, layout: space.layout, after: step.name)
                    try snapshot(StepResultTree("stage", in: space.work, madeBy: "the \(step.name) step", seenAs: space.layout.stage), as: key)
                    remoteSteps?.upload(cached, key: key, component: step.name, epoch: settings.epoch(lock), threads: settings.jobs)
                }
            }
            if settings.prepareOnly { continue }
            outcome.steps.append(
                .init(
                    component: step.name, key: key, cached: wasCached, remote: fromRemote ? true : nil,
                    seconds: Date().timeIntervalSince(started), adaptation: step.adaptation))
            // After a step keyed by the build machine, the target comes back into the chain.
            previousKey = hostSeed == nil ? key : SHA256Digest.of(Data("\(targetSeed.hex) \(key.hex)".utf8))
            if step.name == settings.stopAfter || step.component == settings.stopAfter {
                outcome.stoppedEarly = true
                return outcome
            }
        }
        outcome.stoppedEarly = settings.prepareOnly
        return outcome
    }

    /// The first key of a recipe's first step when it compiles for the build machine: the recipe,
    /// the toolchain without its target triple, and the build machine's triple (nil otherwise).
    static func buildMachineSeed(of recipe: some Recipe, step: BuildStep, at index: Int, in space: Workspace) -> SHA256Digest? {
        guard index == 0, step.forBuildMachine == true, let buildTriple = space.buildTriple else { return nil }
        let toolchain = space.toolchain
        return SHA256Digest.of(Data("\(recipe.seed) \(toolchain.kind.rawValue) \(toolchain.version) \(toolchain.archiveSha256.hex) build machine \(buildTriple)".utf8))
    }

    /// The key of a step's install tree: the previous step's key (so a change below rebuilds
    /// everything above it), the step's commands, the source tree, the patches, and the whole
    /// environment its commands get (`commandSpec(_:of:in:epoch:)`'s, SOURCE_DATE_EPOCH included).
    public static func cacheKey(
        previous: SHA256Digest, step: BuildStep, tree: SHA256Digest, patches: [SourcePatch], environment: [String: String]
    ) -> SHA256Digest {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var material = Data("\(previous.hex)\n\(tree.hex)\n".utf8)
        material += (try? encoder.encode(step)) ?? Data()
        for patch in patches { material += Data("\npatch \(patch.sha256.hex)".utf8) }
        material += Data("\nenvironment ".utf8) + ((try? encoder.encode(environment)) ?? Data())
        return SHA256Digest.of(material)
    }

    /// How the sandbox runs `argv`, one of `step`'s commands: in its source directory, with its
    /// variables (`environment(of:in:)`) and the fixed ones. The step's key is made from this
    /// spec's `fullEnvironment`, so what a command sees and what its key covers are one thing.
    public static func commandSpec(
        _ argv: [String], of step: BuildStep, in layout: BuildLayout, epoch: Int64, mounts: [SandboxSpec.Mount] = []
    ) -> SandboxSpec {
        SandboxSpec(
            argv: argv, environment: environment(of: step, in: layout), mounts: mounts, workingDirectory: layout.source(step.name),
            home: layout.build, sourceDateEpoch: epoch)
    }

    func runCommands(_ step: BuildStep, in space: Workspace, runner: SandboxRunner, epoch: Int64, progress: StepProgress? = nil) throws {
        let layout = space.layout
        let mounts: [SandboxSpec.Mount] =
            settings.isolation == .namespaces
            ? [
                .writable(space.work, at: layout.build), .readOnly(space.toolchain.hostRoot, at: layout.toolchain),
                .writable(space.zigCache, at: layout.zigCache),
            ]
            : []
        // Without its log a failed step could not be looked into: no log, no step.
        let log = try Self.openLog(of: step.name, in: space.work)
        defer { try? log.close() }
        for argv in step.commands {
            // The limits bound what a step may take, not what it makes: they stay out of its key.
            var spec = Self.commandSpec(argv, of: step, in: layout, epoch: epoch, mounts: mounts)
            spec.limits = settings.stepLimits
            try runner.run(spec) { chunk in
                try? log.write(contentsOf: chunk)
                progress?.output(chunk)
            }
        }
    }

    /// A step's variables: its own, and where Zig keeps its caches.
    public static func environment(of step: BuildStep, in layout: BuildLayout) -> [String: String] {
        var environment = step.environment
        environment["ZIG_GLOBAL_CACHE_DIR"] = layout.zigCache
        environment["ZIG_LOCAL_CACHE_DIR"] = layout.build + "/zig-local-cache"
        return environment
    }

    /// The recipe's commands as a plain bash script for a work directory a `--sandbox none`
    /// run prepared (patched sources, wrappers): the baseline the benchmark runs against the steps.
    public static func plainScript(_ recipe: some Recipe, layout: BuildLayout, title: String, epoch: Int64) -> String {
        var lines = [
            "#!/usr/bin/env bash", "# \(title)",
            "set -euo pipefail", "export SOURCE_DATE_EPOCH=\(epoch) TZ=UTC LC_ALL=C.UTF-8 HOME=\(ChildProcess.quote(layout.build))",
            "mkdir -p \(ChildProcess.quote(layout.zigCache)) \(ChildProcess.quote(layout.stage))",
        ]
        for step in recipe.steps {
            lines.append("cd \(ChildProcess.quote(layout.source(step.name)))")
            let variables = environment(of: step, in: layout).sorted { $0.key < $1.key }.map { "\($0.key)=\(ChildProcess.quote($0.value))" }
            for argv in step.commands { lines.append((["env"] + variables + argv.map(ChildProcess.quote)).joined(separator: " ")) }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Keeps the stage as the cached result of step `key`, whole or not at all, with its tree hash
    /// beside it for `store verify`; what the step left is copied as untrusted input.
    func snapshot(_ stage: StepResultTree, as key: SHA256Digest) throws {
        try FileSystem.createDirectory(store.directory(.steps))
        let itemLock = try store.lock(.steps, key.hex)
        defer { itemLock.unlock() }
        let temp = store.item(.steps, key.hex) + ".tmp-\(getpid())"
        FileSystem.remove(temp)
        try stage.copy(to: temp)
        try store.complete(.steps, key.hex, from: temp, treeHash: TreeHash.ofDirectory(at:))
    }

    /// The directories krnative makes in the work directory for the steps: a step may fill them,
    /// never replace them.
    static let hostDirectories = ["src", "logs", "stage", "wrappers"]

    /// Refuses the work directory when one of `hostDirectories` is no longer a real directory (a
    /// symbolic link, a file, gone), naming `step` and the path; before the first step of a
    /// build (`step` nil) those not made yet may be absent. The sandbox is a PID namespace, so
    /// nothing of a step outlives it: what this sees stays so until krnative runs the next step.
    static func checkWorkDirectory(_ work: String, layout: BuildLayout, after step: String?) throws(StepResultError) {
        for name in hostDirectories {
            let path = work + "/" + name
            if step == nil && !FileSystem.exists(path) { continue }
            guard FileSystem.kind(of: name, beneath: work) != S_IFDIR else { continue }
            throw .replacedDirectory(
                maker: step.map { "the \($0) step" } ?? "a step of an earlier build in this work directory", path: path,
                inside: layout.build + "/" + name, found: StepResultTree.describe(path))
        }
    }

    /// The step's log, `logs/<step>.log`, created new without following a link: whatever stands
    /// at its name is removed first, and `logs/` is opened as a real directory.
    static func openLog(of step: String, in work: String) throws -> FileHandle {
        try FileSystem.createDirectory(work + "/logs")
        let logs = open(work + "/logs", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard logs >= 0 else { throw FileSystemError.cannotOpen(path: work + "/logs", errno: errno) }
        defer { close(logs) }
        let name = step + ".log"
        unlinkat(logs, name, 0)
        let fd = openat(logs, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw FileSystemError.cannotOpen(path: work + "/logs/" + name, errno: errno) }
        return FileHandle(fileDescriptor: fd, closeOnDealloc: true)
    }
}
