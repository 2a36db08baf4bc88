import Archive
import Fetch
import Foundation
import Inputs
import KrnativeBase
import Lock
import Patch
import Sandbox
import Store
import Synchronization
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
        /// Recipes read already, by name (a `BuildPlan`'s): a build takes its recipe from here
        /// rather than reading its file again.
        public var recipes: [String: RecipeFile] = [:]
        /// The SOURCE_DATE_EPOCH the steps get and the outputs are clamped to (nil: the lock's).
        public var sourceDateEpoch: Int64?
        /// Compile every step even when the step cache has its result (the result is cached again).
        public var rebuild = false
        /// Warm Zig's cache again even when the step cache holds it (`--rebuild` sets it too; a
        /// library caller that wants its steps compiled, not Zig's libc, leaves it off).
        public var rewarmZig = false
        /// Copy what is derived from cached steps (a runtime's packed archive) from the store's
        /// packs when the same content was packed before, rather than pack it again.
        public var reuseDerivedOutputs = true
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
        /// How many steps that do not need one another may compile at the same time (each with
        /// `jobs`): configure scripts run on one core, so two steps keep two cores busier than one.
        public var concurrentSteps = 2
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
        /// (`held`, removed with the workspace) that holds a cache per step; with `--sandbox none`,
        /// `zig-cache/` in the work directory, the steps' one cache.
        public var zigCache: String
        let held: StagingDirectory?
        /// The build machine's triple, when the recipe also compiles for it (`build-cc`, …).
        public var buildTriple: String? = nil
        /// krnative's files every build directory has: the compiler wrappers (`wrappers/<name>`)
        /// and the CMake toolchain file, as the steps see them.
        var buildFiles: [(path: String, text: String, mode: mode_t)] = []
        public var stage: String { work + "/stage" }

        /// Writes `buildFiles` into `directory`, a build directory krnative made.
        func writeBuildFiles(into directory: String) throws {
            try FileSystem.createDirectory(directory + "/wrappers")
            for file in buildFiles { try FileSystem.writeAtomically(Data(file.text.utf8), to: directory + "/" + file.path, mode: file.mode) }
        }
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
        if store.intactItem(.toolchains, digest.hex, log: settings.log) == nil {
            let entryLock = try store.lock(.toolchains, digest.hex)
            defer { entryLock.unlock() }
            if !FileSystem.exists(root) {
                let temp = store.temporaryPath("toolchain")
                settings.log("unpacking \(input.name) \(input.version)")
                try SafeExtractor(stripComponents: kind.stripComponents, limits: .forArchive(recordedSize: input.size))
                    .extract(try store.verifiedPath(for: digest), into: temp)
                if kind == .zig { chmod(temp + "/ziglang/zig", 0o755) }  // wheels may not keep the mode
                try FileSystem.createDirectory(store.directory(.toolchains))
                try store.complete(.toolchains, digest.hex, from: temp)
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
        var wrappers = inLayout.wrappers(root: layout.toolchain)
        if let buildTriple {
            var native = inLayout
            native.triple = buildTriple
            for (name, script) in native.wrappers(root: layout.toolchain) { wrappers["build-" + name] = script }
        }
        var space = Workspace(work: work, layout: layout, toolchain: toolchain, zigCache: zigCache, held: held, buildTriple: buildTriple)
        space.buildFiles = wrappers.sorted { $0.key < $1.key }.map { ("wrappers/" + $0.key, $0.value, 0o755) }
        space.buildFiles.append(("toolchain.cmake", inLayout.cmakeToolchainFile(wrappers: layout.wrappers, stage: layout.stage), 0o644))
        try space.writeBuildFiles(into: work)
        for name in ["stage", "steps"] { try FileSystem.createDirectory(work + "/" + name) }
        try FileSystem.createDirectory(zigCache)
        return space
    }

    /// A step of a run resolved against the lock: its source, patches and key, and the steps below it.
    struct PlannedStep: Sendable {
        var index: Int
        var step: BuildStep
        var input: LockedInput
        var archive: String
        var patches: [SourcePatch]
        var key: SHA256Digest
        /// The steps it needs (indices into the plan).
        var needs: [Int]
        /// Those and all they need, in the recipe's order: what its stage is made of.
        var below: [Int]
        var source: Source
    }

    /// Runs `recipe`'s steps in `space` as a graph: each step whose result the step cache (or the
    /// remote cache) holds is taken from it; the others compile, as many at once as
    /// `concurrentSteps` allows, each once the steps it needs are done. The install tree
    /// (`stage/`) is then every step's result, in the recipe's order.
    ///
    /// In the sandbox each step has a build directory of its own (`steps/<name>/`, seen as
    /// `/build`): its source, krnative's wrappers, and a stage made of the results of the steps
    /// it needs, nothing else; and a Zig cache of its own, a copy of one krnative warmed. What a
    /// step could leave for another (in a shared stage, wrappers or Zig cache) reaches only steps
    /// whose keys name it. A step's result is what it added to or changed in its stage.
    public func run(_ recipe: some Recipe, lock: Lockfile, in space: Workspace) throws -> Outcome {
        let plan = try self.plan(recipe, lock: lock, in: space)
        var selected = Array(plan.indices)
        let stop = plan.firstIndex { $0.step.name == settings.stopAfter || $0.step.component == settings.stopAfter }
        if let stop { selected = plan[stop].below + [stop] }
        var outcome = Outcome()
        for index in selected where !outcome.sources.contains(plan[index].source) { outcome.sources.append(plan[index].source) }
        let numbering = settings.numbering ?? StepNumbering(first: 1, total: plan.count)
        let counter: @Sendable (Int) -> String = { index in "[\(numbering.first + index)/\(numbering.total)]" }
        if settings.prepareOnly {
            for index in selected {
                settings.log(label(plan[index], counter: counter(index), space: space, verb: "preparing"))
                outcome.patches += try unpack(plan[index], into: space.work + "/src/" + plan[index].step.name)
            }
            outcome.stoppedEarly = true
            return outcome
        }
        let remoteSteps = settings.remoteCache.map { RemoteSteps(cache: $0, store: store, log: settings.log) }
        var fromRemote: [Int: Bool] = [:]
        for index in selected where !settings.rebuild {
            let (step, key) = (plan[index].step, plan[index].key)
            if store.intactItem(.steps, key.hex, log: settings.log) != nil {
                fromRemote[index] = false
                // A result made before uploads were asked for reaches the cache too.
                if let remoteSteps, remoteSteps.cache.upload, !remoteSteps.cache.hasActionResult(key) {
                    remoteSteps.upload(store.item(.steps, key.hex), key: key, component: step.name, epoch: settings.epoch(lock), threads: settings.jobs)
                }
            } else if remoteSteps?.restore(key, component: step.name) == true {
                fromRemote[index] = true
            } else {
                continue
            }
            let origin = fromRemote[index]! ? "from the remote cache" : "cached"
            settings.log("\(counter(index)) \(step.name) \(plan[index].input.version): \(origin) (\(key.hex.prefix(12)))")
        }
        let compile = selected.filter { fromRemote[$0] == nil }
        var built: [Int: Built] = [:]
        if !compile.isEmpty {
            let warm = settings.isolation == .namespaces ? try warmZigCache(space, epoch: settings.epoch(lock)) : nil
            // Without the sandbox the steps share one work directory: one at a time.
            let limit = warm == nil ? 1 : max(1, settings.concurrentSteps)
            built = try Self.schedule(compile, needs: { plan[$0].needs }, done: Set(fromRemote.keys), limit: limit) { index in
                try build(plan[index], of: plan, in: space, warm: warm, counter: counter(index), lock: lock, remoteSteps: remoteSteps)
            }
        }
        FileSystem.remove(space.stage)
        try FileSystem.createDirectory(space.stage)
        try compose(selected, of: plan, into: space.stage, seenAs: space.layout.stage)
        for index in selected {
            let planned = plan[index]
            outcome.patches += built[index]?.patches ?? planned.patches.map(\.summary)
            outcome.steps.append(
                .init(
                    component: planned.step.name, key: planned.key, cached: built[index] == nil, remote: fromRemote[index] == true ? true : nil,
                    seconds: built[index]?.seconds ?? 0, adaptation: planned.step.adaptation))
        }
        outcome.stoppedEarly = stop != nil
        return outcome
    }

    /// The recipe's steps resolved against the lock, keyed: each key hashes the keys of the
    /// steps it needs (with the recipe and the toolchain), never a step it does not.
    func plan(_ recipe: some Recipe, lock: Lockfile, in space: Workspace) throws -> [PlannedStep] {
        let targetSeed = SHA256Digest.of(Data("\(recipe.seed) \(space.toolchain.identity)".utf8))
        var plan: [PlannedStep] = []
        for (index, step) in recipe.steps.enumerated() {
            guard let input = lock[step.component], input.kind == .source, let tree = input.treeSha256,
                let archive = try resolver.path(of: input), let fileSha256 = resolver.located(input)
            else { throw CompileError.missingInput(name: step.component, lockPath: settings.lockPath) }
            let patches =
                try SourcePatch.series(for: step.component, in: settings.patchesDirectory).filter { $0.applies(to: input.version) }
                + (step.edits.map { [SourcePatch.recipeEdits($0, step: step.name)] } ?? [])
            var needs: [Int] = []
            for name in step.needs ?? plan.map(\.step.name) {
                guard let need = plan.firstIndex(where: { $0.step.name == name }) else {
                    throw CompileError.unknownNeed(step: step.name, needs: name, before: plan.map(\.step.name))
                }
                needs.append(need)
            }
            let below = Set(needs.flatMap { plan[$0].below + [$0] }).sorted()
            let seed =
                Self.buildMachineSeed(of: recipe, step: step, needs: needs, in: space)
                ?? (needs.isEmpty ? targetSeed : SHA256Digest.of(Data(([targetSeed] + needs.map { plan[$0].key }).map(\.hex).joined(separator: " ").utf8)))
            let environment = Self.commandSpec([], of: step, in: space.layout, epoch: settings.epoch(lock)).fullEnvironment
            let key = Self.cacheKey(previous: seed, step: step, tree: tree, patches: patches, environment: environment)
            let source = Source(name: input.name, version: input.version, treeSha256: tree, fileSha256: fileSha256)
            plan.append(
                PlannedStep(index: index, step: step, input: input, archive: archive, patches: patches, key: key, needs: needs, below: below, source: source))
        }
        return plan
    }

    /// What compiling a step gave: the patches applied, and the time it took.
    struct Built: Sendable {
        var patches: [AppliedPatch]
        var seconds: Double
    }

    /// Runs `body` for each of `indices` (in their order) once the steps it `needs` are done, at
    /// most `limit` at a time, each on a thread of its own. After a failure no step starts; the
    /// running ones finish (their results are cached), and the first failure in the recipe's
    /// order is thrown.
    static func schedule(
        _ indices: [Int], needs: (Int) -> [Int], done: Set<Int>, limit: Int, _ body: @escaping @Sendable (Int) throws -> Built
    ) throws -> [Int: Built] {
        let finished = Mutex<[(Int, Result<Built, any Error>)]>([])
        let signal = DispatchSemaphore(value: 0)
        var (waiting, running, done) = (indices, Set<Int>(), done)
        var results: [Int: Built] = [:]
        var failures: [(Int, any Error)] = []
        while !waiting.isEmpty || !running.isEmpty {
            while failures.isEmpty && running.count < limit, let next = waiting.firstIndex(where: { needs($0).allSatisfy(done.contains) }) {
                let index = waiting.remove(at: next)
                running.insert(index)
                let thread = Thread {
                    let result = Result { try body(index) }
                    finished.withLock { $0.append((index, result)) }
                    signal.signal()
                }
                thread.name = "krnative step \(index)"
                thread.stackSize = 8 << 20
                thread.start()
            }
            if running.isEmpty { break }
            signal.wait()
            for (index, result) in finished.withLock({ list in defer { list = [] }; return list }) {
                running.remove(index)
                switch result {
                case .success(let built):
                    results[index] = built
                    done.insert(index)
                case .failure(let error): failures.append((index, error))
                }
            }
        }
        if let first = failures.min(by: { $0.0 < $1.0 }) { throw first.1 }
        return results
    }

    /// The line that says what a step does: `[3/6] mbedtls 2.28.3: building for x86_64-linux-musl with zig`.
    func label(_ planned: PlannedStep, counter: String, space: Workspace, verb: String) -> String {
        // The build Python is compiled by the build-machine wrappers, for this machine.
        let machine = planned.step.forBuildMachine == true ? "the build machine (\(HostPlatform.current))" : space.toolchain.triple
        return "\(counter) \(planned.step.name) \(planned.input.version): \(verb) for \(machine) with \(space.toolchain.kind.rawValue)"
    }

    /// Unpacks the step's source into `directory` and applies its patches; what was extracted is
    /// what the lock pins, before any patch touches it.
    func unpack(_ planned: PlannedStep, into directory: String) throws -> [AppliedPatch] {
        FileSystem.remove(directory)
        try SafeExtractor(stripComponents: 1, limits: .forArchive(recordedSize: planned.input.size)).extract(planned.archive, into: directory)
        let extracted = try TreeHash.ofDirectory(at: directory)
        guard extracted == planned.source.treeSha256 else {
            throw CompileError.treeMismatch(
                component: planned.step.component, archive: planned.archive, expected: planned.source.treeSha256, actual: extracted)
        }
        return try PatchApplier().apply(planned.patches, to: directory, version: planned.input.version)
    }

    /// Compiles one step and keeps what it added to or changed in its stage as its result (`steps/<key>`).
    func build(
        _ planned: PlannedStep, of plan: [PlannedStep], in space: Workspace, warm: [String]?, counter: String, lock: Lockfile, remoteSteps: RemoteSteps?
    ) throws -> Built {
        let started = Date()
        let name = planned.step.name
        // In the sandbox, a build directory and a Zig cache of the step's own; without it, the work directory's.
        let directory = warm == nil ? space.work : space.work + "/steps/" + name
        let zigCache = warm == nil ? space.zigCache : space.zigCache + "/" + name
        if let warm {
            FileSystem.remove(directory)
            try FileSystem.createDirectory(directory)
            try space.writeBuildFiles(into: directory)
            FileSystem.remove(zigCache)
            try FileSystem.createDirectory(zigCache)
            for item in warm { _ = try StepResultTree(root: item, madeBy: "krnative's Zig warm-up").merge(into: zigCache) }
        }
        defer { if warm != nil { FileSystem.remove(zigCache) } }
        let stage = directory + "/stage"
        FileSystem.remove(stage)
        try FileSystem.createDirectory(stage)
        try compose(planned.below, of: plan, into: stage, seenAs: space.layout.stage)
        let patches = try unpack(planned, into: directory + "/src/" + name)
        let before = FileSystem.entryStamps(of: stage)
        let progress = StepProgress(emit: settings.log)
        let done = "\(counter) \(name) \(planned.input.version):"
        // Begun here, ended on both paths below: no status outlives its step.
        progress.begin(label(planned, counter: counter, space: space, verb: "building"))
        do {
            try runCommands(planned.step, in: space, directory: directory, zigCache: zigCache, epoch: settings.epoch(lock), progress: progress)
        } catch {
            progress.end("\(done) failed after \(Console.duration(Date().timeIntervalSince(started)))")
            throw error
        }
        progress.end("\(done) built in \(Console.duration(Date().timeIntervalSince(started)))")
        try Self.checkWorkDirectory(directory, layout: space.layout, after: name, isolated: warm != nil)
        let result = StepResultTree("stage", in: directory, madeBy: "the \(name) step", seenAs: space.layout.stage)
        try snapshot(result, as: planned.key, keepingOnlyChangesFrom: before)
        remoteSteps?.upload(store.item(.steps, planned.key.hex), key: planned.key, component: name, epoch: settings.epoch(lock), threads: settings.jobs)
        // A work directory the user named (`--workdir`) is kept whole, each step's sources too.
        if warm != nil, settings.workDirectory == nil { FileSystem.remove(directory) }
        return Built(patches: patches, seconds: Date().timeIntervalSince(started))
    }

    /// Copies the results of steps `indices` (in the recipe's order) into `stage`. A step may
    /// change what a step it needs installed; two steps that do not need one another may not
    /// write the same file, or the stage would depend on their order.
    func compose(_ indices: [Int], of plan: [PlannedStep], into stage: String, seenAs: String) throws {
        var writer: [String: Int] = [:]
        for index in indices {
            let planned = plan[index]
            let result = StepResultTree(planned.key.hex, in: store.directory(.steps), madeBy: "the \(planned.step.name) step (its cached result)", seenAs: seenAs)
            for (path, replaced) in try result.merge(into: stage) {
                if replaced, let earlier = writer[path], !planned.below.contains(earlier) {
                    throw CompileError.stepsCollide(path: path, first: plan[earlier].step.name, second: planned.step.name)
                }
                writer[path] = index
            }
        }
    }

    /// Zig's runtime libraries (libc, compiler-rt, libc++) for the target and, when the recipe
    /// compiles for it, the build machine, at the optimisation levels builds ask for: compiled by
    /// krnative's own two-line programs in groups (`warmUpGroups`), each kept in the step cache on
    /// its own — the target's per toolchain and triple, the build machine's per toolchain and
    /// machine, so that another target's build on this machine takes it as it is — and merged
    /// into each step's Zig cache so that no step compiles them again. Returns the groups' items.
    func warmZigCache(_ space: Workspace, epoch: Int64) throws -> [String] {
        let groups = Self.warmUpGroups(wrappers: space.layout.wrappers, buildMachine: space.buildTriple != nil)
        let keys = Self.warmUpKeys(space.toolchain, buildTriple: space.buildTriple)
        // The groups share no library: those not warmed yet, all at once, each its own sandbox run and log.
        _ = try Self.schedule(Array(groups.indices), needs: { _ in [] }, done: [], limit: groups.count) { [self] index in
            try warm(groups[index], as: keys[index], in: space, epoch: epoch)
            return Built(patches: [], seconds: 0)
        }
        return keys.map { store.item(.steps, $0.hex) }
    }

    /// The step-cache keys of Zig's warm-up groups (`warmUpGroups`' order) for `toolchain` and,
    /// given its triple, the build machine: the target's per toolchain and triple, the build
    /// machine's per toolchain and machine. `build --check` copies them into a run's fresh store.
    public static func warmUpKeys(_ toolchain: Toolchain, buildTriple: String?) -> [SHA256Digest] {
        warmUpGroups(wrappers: "", buildMachine: buildTriple != nil).map { group in
            let compilesFor = group.component == buildMachineWarmUp
                ? "\(toolchain.kind.rawValue) \(toolchain.version) \(toolchain.archiveSha256.hex) build machine \(buildTriple ?? "")"
                : toolchain.identity
            return SHA256Digest.of(Data("krnative Zig warm-up v3 \(group.component) \(compilesFor)".utf8))
        }
    }

    /// Warms one group's Zig cache and keeps it as the step result `key`, unless the step cache
    /// holds it (`--rebuild`: again). One warm-up at a time for a key: a second build (another
    /// target's, another process's) waits for it and takes its result instead of compiling the
    /// same libraries beside it.
    func warm(_ group: BuildStep, as key: SHA256Digest, in space: Workspace, epoch: Int64) throws {
        let warmed = { [self] in store.intactItem(.steps, key.hex, log: settings.log) != nil }
        if !settings.rewarmZig, warmed() { return }
        let warmUpLock = try store.lock("zig-warm-up-\(key.hex)")
        defer { warmUpLock.unlock() }
        if !settings.rewarmZig, warmed() { return }
        let started = Date()
        let directory = space.work + "/steps/.zig-\(group.component)"
        let zigCache = space.zigCache + "/.zig-\(group.component)"
        for path in [directory, zigCache] { FileSystem.remove(path) }
        defer { for path in [directory, zigCache] { FileSystem.remove(path) } }
        try FileSystem.createDirectory(directory + "/stage")
        try FileSystem.createDirectory(zigCache)
        try space.writeBuildFiles(into: directory)
        try FileSystem.createDirectory(directory + "/src/" + group.name)
        try FileSystem.writeAtomically(Data("int main(void) { return 0; }\n".utf8), to: directory + "/src/\(group.name)/c.c")
        try FileSystem.writeAtomically(
            Data("#include <string>\nint main() { return int(std::string(\"k\").size()) - 1; }\n".utf8), to: directory + "/src/\(group.name)/cxx.cc")
        let machine = group.component == Self.buildMachineWarmUp ? "the build machine, \(space.buildTriple ?? "")" : space.toolchain.triple
        settings.log("warming Zig's cache for \(machine): \(group.component) (once per toolchain and machine)")
        try runCommands(group, in: space, directory: directory, zigCache: zigCache, epoch: epoch)
        try snapshot(StepResultTree(root: zigCache, madeBy: "Zig, warming its cache"), as: key)
        settings.log("Zig's cache warmed for \(machine) (\(group.component)) in \(Console.duration(Date().timeIntervalSince(started)))")
    }

    /// The warm-up group that compiles for the build machine (kept per machine, not per target).
    static let buildMachineWarmUp = "warm-up-build-machine"

    /// What warming Zig's cache compiles: a C program for every variant of the C library and
    /// compiler runtime Zig builds for the steps — optimized for speed (-O0 to -O3 share it) or
    /// size, position-dependent or not (a step's `-fPIC` links its configure tests against another
    /// libc.a), a shared library —, and a C++ program at -O2 (libc++); for the build machine too
    /// when there is one, where only speed matters. Three groups that share no library (C, C++, the
    /// build machine's), run at once: Zig builds a compiler runtime on one thread.
    static func warmUpGroups(wrappers: String, buildMachine: Bool) -> [BuildStep] {
        func compile(_ compiler: String, _ flags: [String], _ source: String, _ output: String) -> [String] {
            [wrappers + "/" + compiler] + flags + [source, "-o", output]
        }
        var groups = [
            BuildStep(
                component: "warm-up-c",
                commands: [
                    compile("cc", ["-O2"], "c.c", "c-fast"), compile("cc", ["-O0"], "c.c", "c-debug"), compile("cc", ["-Os"], "c.c", "c-small"),
                    compile("cc", ["-O2", "-fPIC"], "c.c", "c-fast-pic"), compile("cc", ["-O2", "-fPIC", "-shared"], "c.c", "c-fast.so"),
                ], environment: [:]),
            BuildStep(component: "warm-up-cxx", commands: [compile("c++", ["-O2"], "cxx.cc", "cxx-fast")], environment: [:]),
        ]
        if buildMachine {
            groups.append(
                BuildStep(
                    component: buildMachineWarmUp,
                    commands: [
                        compile("build-cc", ["-O2"], "c.c", "c-fast"), compile("build-cc", ["-O0"], "c.c", "c-debug"),
                        compile("build-cc", ["-O2", "-fPIC"], "c.c", "c-fast-pic"), compile("build-cc", ["-O2", "-fPIC", "-shared"], "c.c", "c-fast.so"),
                    ], environment: [:]))
        }
        return groups
    }

    /// The first key of a step that compiles for the build machine and needs no step: the recipe,
    /// the toolchain without its target triple, and the build machine's triple (nil otherwise).
    static func buildMachineSeed(of recipe: some Recipe, step: BuildStep, needs: [Int], in space: Workspace) -> SHA256Digest? {
        guard needs.isEmpty, step.forBuildMachine == true, let buildTriple = space.buildTriple else { return nil }
        let toolchain = space.toolchain
        return SHA256Digest.of(
            Data("\(recipe.seed) \(toolchain.kind.rawValue) \(toolchain.version) \(toolchain.archiveSha256.hex) build machine \(buildTriple)".utf8))
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

    /// Runs `step`'s commands with `directory` as the build directory (`/build` in the sandbox)
    /// and `zigCache` as Zig's; the output goes to `logs/<step>.log` of the work directory.
    func runCommands(
        _ step: BuildStep, in space: Workspace, directory: String, zigCache: String, epoch: Int64, progress: StepProgress? = nil
    ) throws {
        let layout = space.layout
        let runner = SandboxRunner(entryExecutable: settings.entryExecutable, isolation: settings.isolation)
        let mounts: [SandboxSpec.Mount] =
            settings.isolation == .namespaces
            ? [
                .writable(directory, at: layout.build), .readOnly(space.toolchain.hostRoot, at: layout.toolchain),
                .writable(zigCache, at: layout.zigCache),
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

    /// Keeps the tree as the cached result of step `key`, whole or not at all, with its tree hash
    /// beside it for `store verify`; what the step left is copied as untrusted input. With
    /// `before` (the stage's `FileSystem.entryStamps` before the step), only what the step added
    /// or changed is kept: a file or link whose stamp is the same is left out, and so is a
    /// directory that was there and holds nothing the step made. A step may not remove what a
    /// step it needs installed (the result could not say so).
    func snapshot(_ tree: StepResultTree, as key: SHA256Digest, keepingOnlyChangesFrom before: [String: String]? = nil) throws {
        try FileSystem.createDirectory(store.directory(.steps))
        let itemLock = try store.lock(.steps, key.hex)
        defer { itemLock.unlock() }
        let temp = store.item(.steps, key.hex) + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        FileSystem.remove(temp)
        try tree.copy(to: temp)
        if let before {
            let after = FileSystem.entryStamps(of: tree.path)
            if let gone = before.keys.sorted().first(where: { after[$0] == nil }) {
                FileSystem.remove(temp)
                throw CompileError.removedFromStage(step: tree.maker, path: tree.path + gone)
            }
            // Deepest first, so that a directory is emptied before it is looked at.
            for (relative, stamp) in after.sorted(by: { $0.key > $1.key }) where !relative.isEmpty {
                guard let earlier = before[relative] else { continue }
                if FileSystem.kind(of: String(relative.dropFirst()), beneath: temp) == S_IFDIR {
                    rmdir(temp + relative)  // fails, as it should, when the step put something in it
                } else if earlier == stamp {
                    unlink(temp + relative)
                }
            }
        }
        try store.complete(.steps, key.hex, from: temp)
    }

    /// The directories krnative makes in the work directory for the steps: a step may fill them,
    /// never replace them.
    static let hostDirectories = ["src", "logs", "stage", "wrappers", "steps"]
    /// Those of a step's own build directory.
    static let stepDirectories = ["src", "stage", "wrappers"]

    /// Refuses the work directory when one of `hostDirectories` is no longer a real directory (a
    /// symbolic link, a file, gone), naming `step` and the path; before the first step of a
    /// build (`step` nil) those not made yet may be absent. The sandbox is a PID namespace, so
    /// nothing of a step outlives it: what this sees stays so until krnative runs the next step.
    static func checkWorkDirectory(_ work: String, layout: BuildLayout, after step: String?, isolated: Bool = false) throws(StepResultError) {
        for name in isolated ? stepDirectories : hostDirectories {
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
