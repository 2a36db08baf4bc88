import Archive
import Compile
import Fetch
import Foundation
import Inputs
import KrnativeBase
import Layout
import Lock
import Packaging
import Patch
import Sandbox
import Store
import Toolchain
import Verify

#if canImport(Glibc)
    import Glibc
#endif

/// What a build leaves in the output directory, in the order the manifest lists them.
public enum BuildOutput: CaseIterable, Sendable {
    case ttyd, volume, volumeVersion, pythonVersion, versions, wheel, sbom, manifest

    /// What the plugin wheel carries: the volume, ttyd and the files the agent reads beside it.
    static let inWheel: [BuildOutput] = [.ttyd, .volume, .volumeVersion, .pythonVersion, .versions]
    /// What the manifest lists with its hash (all but itself).
    static let listedInTheManifest = allCases.filter { $0 != .manifest }
    /// What is hashed into the manifest before the SBOM, which is made from the manifest.
    static let hashedBeforeTheSBOM = listedInTheManifest.filter { $0 != .sbom }
}

/// `krnative build --target T`: from the lock's inputs in the store to the volume, its side
/// files, the plugin wheel, the manifest and the SBOM, in the output directory whole or not at all.
/// What it makes is its `request`; how it runs, its `settings`.
public struct VolumeBuild: Sendable {
    /// How the build runs, none of which changes its bytes (so none of it is in the build key).
    public struct Settings: Sendable {
        public var outputDirectory: String
        /// The krnative executable that runs inside the sandbox (in the build key by its hash).
        public var entryExecutable: String
        public var jobs = ProcessInfo.processInfo.activeProcessorCount
        /// How many independent steps compile at once (`StepRunner.Settings.concurrentSteps`).
        public var concurrentSteps = 2
        public var packThreads = ProcessInfo.processInfo.activeProcessorCount
        /// Whether what was made before from the same content — a tree's `.pyc`
        /// (`CompiledBytecode`), a packed volume or runtime (`PackedArchives`) — is copied from the store rather
        /// than made again: off for `build --force`, the `--check` runs and `verify`.
        public var reuseDerivedOutputs = true
        public var toolVersion = "0"
        /// The volume ledger the volume's number is checked against (nil: not checked, as in verify).
        public var ledger: VolumeLedgerCheck?
        /// The shared cache ttyd's steps are looked for in (and uploaded to, when it allows).
        public var remoteCache: RemoteCache?
        /// How many processes and how much memory each compile step may take.
        public var stepLimits: StepLimits = .standard
        /// Told what ttyd's build did, step by step (for `build --all`'s table).
        public var onTtydSteps: (@Sendable (TtydBuild.Report) -> Void)?
        public var log: @Sendable (String) -> Void = Reporting.note

        public init(outputDirectory: String, entryExecutable: String) {
            self.outputDirectory = outputDirectory
            self.entryExecutable = entryExecutable
        }
    }

    /// What the build makes, resolved once against the lock: inputs, key, epoch, steps, names.
    public let plan: BuildPlan
    public let settings: Settings
    public let resolver: InputResolver
    public var request: BuildRequest { plan.request }
    var lock: Lockfile { plan.lock }

    /// A build of `request` from `lock`: its plan (recipes read and checked, key, inputs) is made here.
    public init(request: BuildRequest, lock: Lockfile, settings: Settings, resolver: InputResolver) throws {
        self.init(plan: try BuildPlan(request: request, lock: lock, executable: settings.entryExecutable), settings: settings, resolver: resolver)
    }

    /// A build of `plan`.
    public init(plan: BuildPlan, settings: Settings, resolver: InputResolver) {
        self.plan = plan
        self.settings = settings
        self.resolver = resolver
    }

    /// Everything a build of `target` on `host` with `toolchain` needs: the target's runtime,
    /// wheels and sources, the toolchain it compiles with, and — when the target's runtime cannot
    /// run on this host — the host's manylinux runtime of the same Python, to compile the `.pyc`.
    /// With the runtime from source: its sources and Zig instead of any runtime archive.
    public static func inputs(
        of target: Target, in lock: Lockfile, host: HostPlatform, toolchain: ToolchainKind, runtime: RuntimeSource = .pbs,
        recipes: String = RecipeFile.builtIn
    ) throws -> [LockedInput] {
        // The sources of the recipes a volume is built by (the lock's others, the runner binaries', are not).
        var sources = Set(try RecipeFile.load(TtydBuild.name, from: recipes).components)
        if runtime == .source { sources.formUnion(try RecipeFile.load(RuntimeBuild.name, from: recipes).components) }
        return inputs(of: target, in: lock, host: host, toolchain: toolchain, runtime: runtime, sources: sources)
    }

    /// The inputs of a build whose recipes compile `sources` (`inputs(of:in:host:toolchain:runtime:recipes:)`
    /// with the recipes read already, as a `BuildPlan` has them).
    static func inputs(
        of target: Target, in lock: Lockfile, host: HostPlatform, toolchain: ToolchainKind, runtime: RuntimeSource, sources: Set<String>
    ) -> [LockedInput] {
        let toolchainNames =
            [toolchain.lockName(triple: target.ttydTriple, host: host)]
            + (runtime == .source ? [ToolchainKind.zig.lockName(triple: "", host: host)] : [])
        var needed = lock.inputs(for: [target], host: host).filter { input in
            switch input.kind {
            case .toolchain: toolchainNames.contains(input.name)
            case .runtime: runtime == .pbs
            case .source: sources.contains(input.name)
            default: true
            }
        }
        if runtime == .pbs, let bytecode = bytecodeTarget(for: target, host: host), bytecode != target {
            needed += lock.inputs(for: [bytecode], host: host).filter { $0.kind == .runtime }
        }
        return needed
    }

    /// The target whose runtime compiles `target`'s `.pyc` on `host`: a glibc runtime of the host's arch.
    static func bytecodeTarget(for target: Target, host: HostPlatform) -> Target? {
        Target.allCases.first { $0.libc == .gnu && $0.arch == host.arch }
    }

    /// The file name of `output` for this build's target and package version (the plan's).
    public func name(_ output: BuildOutput) -> String { plan.name(output) }

    /// The file name of `output` for `target` as `flavour` and a plugin wheel of `packageVersion`.
    public static func name(_ output: BuildOutput, target: Target, flavour: Flavour, packageVersion: String) -> String {
        let (distro, arch) = (flavour.distro, target.arch.rawValue)
        switch output {
        case .ttyd: return "ttyd_linux.\(arch).bin"
        case .volume: return "krunner-env.\(distro).\(arch).tar.xz"
        case .volumeVersion: return "krunner-version.\(distro).txt"
        case .pythonVersion: return "krunner-python.\(distro).txt"
        // Named by distro beside the other outputs: two flavours' (or targets') builds into one
        // directory would otherwise replace each other's; in the wheel it is `versions.txt`.
        case .versions: return "versions.\(distro).txt"
        case .wheel: return PluginWheel(target: target, flavour: flavour, version: packageVersion, sourceDateEpoch: 0).filename
        case .sbom: return "krnative-sbom.\(distro).\(arch).spdx.json"
        case .manifest: return BuildManifest.fileName(for: target, flavour: flavour)
        }
    }

    /// The name `output` has in the plugin wheel's module: its own, but `versions.txt`, which the
    /// agent reads under that name.
    public func wheelName(_ output: BuildOutput) -> String { output == .versions ? "versions.txt" : name(output) }

    /// What the plugin wheel carries (its name in the module → the output's path in `directory`).
    public func wheelPayload(in directory: String) -> [String: String] {
        Dictionary(uniqueKeysWithValues: BuildOutput.inWheel.map { (wheelName($0), directory + "/" + name($0)) })
    }

    /// The names of `outputs`, in their order.
    func names(_ outputs: [BuildOutput]) -> [String] { outputs.map(name) }

    /// Where the store holds `input`.
    func path(of input: LockedInput) throws -> String {
        guard let path = try resolver.path(of: input) else {
            throw CompileError.missingInput(name: input.name, lockPath: request.locations.lockPath)
        }
        return path
    }

    /// The build that has something to do, as `build` (each build of `--all`, each `--check` run)
    /// and `verify` run it: the ledger's word on the volume's number first; then the outputs from
    /// the remote cache, else the plan's inputs brought into the store by `fetch` and the build
    /// run here, its outputs given to the remote cache when it takes them.
    public func make(fetch: ([LockedInput]) throws -> Void) throws -> BuildManifest {
        // An output directory that cannot take the outputs fails now, not after the build.
        _ = try StagingDirectory(in: settings.outputDirectory)
        if let check = settings.ledger {
            try VolumeLedger.load(from: check.path).preflight(
                target: request.target, flavour: request.chosenFlavour, volume: request.volumeVersion, record: check.record, path: check.path)
        }
        if let restored = try restoreFromRemoteCache() { return restored }
        try fetch(plan.inputs)
        let manifest = try run()
        try uploadToRemoteCache(manifest)
        return manifest
    }

    /// The stages in a staging directory beside the outputs: ttyd, the volume tree, its audit,
    /// the packed volume and the files beside it, the manifest; then all published at once.
    public func run() throws -> BuildManifest {
        let stagingDirectory = try StagingDirectory(in: settings.outputDirectory)
        defer { stagingDirectory.remove() }
        let staging = stagingDirectory.path
        let ttyd = try buildTtyd(into: staging)
        let prefix = staging + "/volume"
        let (layout, records) = try layOut(into: prefix, staging: staging)
        let audit = try audit(prefix)
        let ledgerEntry = try admitToLedger(prefix, volume: request.volumeVersion)
        let packed = try pack(prefix, records: records, into: staging)
        try writeSideFiles(layout: layout, licenses: prefix + "/licenses", into: staging)
        let manifest = try writeManifest(ttyd: ttyd, packed: packed, audit: audit, into: staging)
        if Cancellation.requested { throw ArchiveError.interrupted(archive: staging) }
        try Self.publish(names(BuildOutput.listedInTheManifest), manifest: name(.manifest), from: staging, into: settings.outputDirectory)
        if let ledgerEntry { try record(ledgerEntry) }
        return manifest
    }

    /// What the compile stage needs of this build, for ttyd and the runtime alike: the request's
    /// isolation, lock and patches; the settings' executable, jobs, remote cache and log.
    func stepSettings(firstStep: Int) -> StepRunner.Settings {
        var step = StepRunner.Settings(entryExecutable: settings.entryExecutable, patchesDirectory: request.locations.patchesDirectory)
        step.recipesDirectory = request.locations.recipesDirectory
        step.recipes = plan.recipes
        step.sourceDateEpoch = plan.sourceDateEpoch
        step.numbering = .init(first: firstStep, total: stageCount.total)
        step.isolation = request.isolation
        step.lockPath = request.locations.lockPath
        step.remoteCache = settings.remoteCache
        step.jobs = settings.jobs
        step.concurrentSteps = settings.concurrentSteps
        step.stepLimits = settings.stepLimits
        step.log = settings.log
        step.reuseDerivedOutputs = settings.reuseDerivedOutputs
        return step
    }

    /// The stages of a build after its compiled steps, in the order they run.
    enum Stage: Int, CaseIterable {
        case layout, bytecode, pack, wheel
    }

    /// How many steps the build counts in its `[k/n]`: ttyd's, the runtime's when it is compiled
    /// here, then the stages.
    var stageCount: (ttyd: Int, runtime: Int, total: Int) {
        let (ttyd, runtime) = plan.recipeSteps
        return (ttyd, runtime, ttyd + runtime + Stage.allCases.count)
    }

    /// `[k/n]` of `stage`.
    func stage(_ stage: Stage) -> String {
        let count = stageCount
        return "[\(count.ttyd + count.runtime + stage.rawValue + 1)/\(count.total)]"
    }

    /// ttyd and its libraries, into `staging`.
    func buildTtyd(into staging: String) throws -> TtydBuild.Report {
        let options = TtydBuild.Options(target: request.target, outputDirectory: staging, settings: stepSettings(firstStep: 1))
        let ttyd = try TtydBuild(options: options, toolchain: request.toolchain, resolver: resolver).run(lock: lock)
        let counts = ttyd.counts
        settings.log("ttyd: \(counted(ttyd.steps.count, "step")): \(counts.compiled) compiled, \(counts.cached) cached, \(counts.remote) from the remote cache")
        settings.onTtydSteps?(ttyd)
        FileSystem.remove(staging + "/ttyd_linux.\(request.target.arch.rawValue).json")
        return ttyd
    }

    /// The volume tree in `prefix`: the runtime, the wheels, ttyd, the licenses, the `.pyc`; and
    /// the tree's content records when the `.pyc` stage read them last (nil otherwise).
    func layOut(into prefix: String, staging: String) throws -> (VolumeLayout, [DeterministicTarXz.ContentRecord]?) {
        let needed = plan.inputs
        let layout = VolumeLayout(target: request.target)
        let (runtimeArchive, runtimeSize) = try runtimeArchive(staging: staging, needed: needed)
        settings.log("\(stage(.layout)) laying out the \(request.target.rawValue) volume")
        try layout.placeRuntime(runtimeArchive, into: prefix, recordedSize: runtimeSize)
        switch try layout.ensurePip(in: prefix, runtime: runtimeArchive) {
        case .present: break
        case .installed(let wheel):
            settings.log("the runtime has no pip: installed \(wheel) from its ensurepip/_bundled, as python-build-standalone's runtimes carry it")
        case .unavailable(let bundled):
            settings.log("warning: the runtime \(runtimeArchive) has no pip and no pip wheel in \(bundled): the volume has no pip (python -m pip fails in it)")
        }
        try installWheels(needed.filter { $0.kind == .wheel }, into: prefix, staging: staging)
        try layout.placeTtyd(staging + "/" + name(.ttyd), into: prefix)
        try layout.collectRuntimeLicense(in: prefix)
        try layout.collectWheelLicenses(in: prefix)
        for source in needed.filter({ $0.kind == .source }) {
            try layout.collectLicenses(ofArchive: try path(of: source), component: source.name, into: prefix)
        }
        let records = try compileBytecode(layout: layout, prefix: prefix, staging: staging)
        return (layout, records)
    }

    /// The lock's wheels, in file name order, installed into `prefix`.
    func installWheels(_ wheels: [LockedInput], into prefix: String, staging: String) throws {
        let installer = WheelInstaller(target: request.target)
        settings.log("installing \(counted(wheels.count, "wheel")) into the volume")
        for wheel in wheels.sorted(by: { $0.filename < $1.filename }) {
            // The installer reads the tags from the file name: give it one.
            let named = staging + "/wheels/" + wheel.filename
            try FileSystem.createDirectory(staging + "/wheels")
            try FileManager.default.copyItem(atPath: try path(of: wheel), toPath: named)
            try installer.install(named, into: prefix)
        }
        FileSystem.remove(staging + "/wheels")
    }

    /// The volume tree packed into `staging`; its entries, in archive order. A tree packed before
    /// with the same content key (and krnative) is copied from the store's packed archives, unless
    /// the settings ask for it to be packed again (`build --force`, the `--check` runs, `verify`).
    /// `records` are the tree's content records as the last stage that wrote it read them, if it did.
    func pack(_ prefix: String, records: [DeterministicTarXz.ContentRecord]?, into staging: String) throws -> [DeterministicTarXz.Entry] {
        settings.log("\(stage(.pack)) packing \(name(.volume))")
        let started = Date()
        var packer = DeterministicTarXz(sourceDateEpoch: plan.sourceDateEpoch, threads: settings.packThreads)
        if let preset = request.xzPreset { packer.preset = UInt32(preset) }
        let output = staging + "/" + name(.volume)
        let packs = PackedArchives(store: resolver.store, log: settings.log)
        let (packed, copied, key) = try packs.pack(
            prefix, with: packer, to: output, executable: settings.entryExecutable, reuse: settings.reuseDerivedOutputs, records: records)
        let how = copied ? "copied (this tree was packed before: packs/\(key.hex.prefix(12)))" : "packed"
        settings.log(
            "\(how) \(counted(packed.count, "entry", "entries")) into \(FileSystem.size(of: output) ?? 0) bytes in "
                + String(format: "%.0f s", Date().timeIntervalSince(started)))
        return packed
    }

    /// The version files beside the volume, and the plugin wheel that carries them with the volume and ttyd.
    func writeSideFiles(layout: VolumeLayout, licenses: String, into staging: String) throws {
        try FileSystem.writeAtomically(Data("\(request.volumeVersion)\n".utf8), to: staging + "/" + name(.volumeVersion))
        try FileSystem.writeAtomically(Data("\(layout.python.major).\(layout.python.minor)\n".utf8), to: staging + "/" + name(.pythonVersion))
        try FileSystem.writeAtomically(Data("\(request.chosenFlavour.distro)\n".utf8), to: staging + "/" + name(.versions))
        let payload = wheelPayload(in: staging)
        settings.log("\(stage(.wheel)) writing the plugin wheel, version \(request.packageVersion)")
        _ = try PluginWheel(target: request.target, flavour: request.chosenFlavour, version: request.packageVersion, sourceDateEpoch: plan.sourceDateEpoch)
            .write(into: staging, payload: payload, licenses: licenses)
    }

    /// The manifest (the request, the key, the inputs, the outputs and the volume's entries) and
    /// the SBOM made from it, written into `staging`.
    func writeManifest(
        ttyd: TtydBuild.Report, packed: [DeterministicTarXz.Entry], audit: VolumeAudit.Report?, into staging: String
    ) throws -> BuildManifest {
        let outputs = try names(BuildOutput.hashedBeforeTheSBOM).map { file in
            let (digest, size) = try SHA256Digest.of(fileAt: staging + "/" + file)
            return BuildManifest.Output(file: file, sha256: digest, size: size)
        }
        let inputs = plan.inputs.compactMap { input in
            resolver.located(input).map {
                BuildManifest.Input(name: input.name, kind: input.kind, version: input.version, sha256: $0, treeSha256: input.treeSha256, license: input.license)
            }
        }
        var manifest = BuildManifest(
            request: request.choices, toolVersion: settings.toolVersion, lock: lock, key: plan.keyParts, inputs: inputs, patches: ttyd.patches,
            outputs: outputs, volume: packed.map(BuildManifest.VolumeEntry.init))
        manifest.audit = audit.map { .init(policy: $0.policy, mode: request.auditMode, elfFiles: $0.elfFiles, violations: $0.violations) }
        let sbomName = name(.sbom)
        try FileSystem.writeAtomically(try SBOM.document(for: manifest, name: sbomName), to: staging + "/" + sbomName)
        let (sbomDigest, sbomSize) = try SHA256Digest.of(fileAt: staging + "/" + sbomName)
        manifest.outputs.append(.init(file: sbomName, sha256: sbomDigest, size: sbomSize))
        try FileSystem.writeAtomically(try manifest.encoded(), to: staging + "/" + name(.manifest))
        return manifest
    }

    /// Moves the staged outputs into `directory` so that no reader sees a manifest that does not
    /// describe the files beside it: the old manifest is set aside first (no manifest means "not
    /// whole"), the new files renamed in, the old manifest's outputs the new set lacks removed
    /// (the previous version's wheel), the new manifest renamed in last. Killed at any point, the
    /// directory holds the old whole set or no manifest; the next publish finishes the clean-up
    /// from the set-aside manifest. `afterStep` is for tests (called after each step, counted from 1).
    public static func publish(
        _ outputs: [String], manifest: String, from staging: String, into directory: String,
        afterStep: (Int) -> Void = { _ in }
    ) throws {
        let replaced = directory + "/.krnative-replaced-" + manifest
        let current = directory + "/" + manifest
        if FileSystem.exists(current) { try FileSystem.rename(current, to: replaced) }
        var step = 1
        afterStep(step)
        for name in outputs {
            // Every output is 0644 whatever the umask: the directory listing is an output too.
            chmod(staging + "/" + name, 0o644)
            try FileSystem.rename(staging + "/" + name, to: directory + "/" + name)
            step += 1
            afterStep(step)
        }
        let previous = FileManager.default.contents(atPath: replaced).flatMap { try? DuplicateJSONKey.decode(OutputList.self, from: $0) }
        for stale in Set(previous?.outputs.map(\.file) ?? []).subtracting(outputs + [manifest])
        where !stale.contains("/") && !stale.hasPrefix(".") {
            FileSystem.remove(directory + "/" + stale)
        }
        chmod(staging + "/" + manifest, 0o644)
        try FileSystem.rename(staging + "/" + manifest, to: current)
        afterStep(step + 1)
        FileSystem.remove(replaced)
    }

    /// A manifest's outputs, all `publish` needs of the one it replaces.
    struct OutputList: Decodable {
        struct Output: Decodable { var file: String }
        var outputs: [Output]
    }

    /// Whether the output directory already holds what this build would make: a manifest with
    /// this build's key, and every output it lists present with that size and hash. When not,
    /// the verdict says why, naming what the user changed or what is missing.
    public func upToDate() throws -> UpToDateVerdict {
        let directory = settings.outputDirectory
        let manifestPath = directory + "/" + name(.manifest)
        guard let data = (try? FileSystem.readRegularFile(manifestPath)) else { return .noManifest(in: directory) }
        guard let manifest = try? DuplicateJSONKey.decode(BuildManifest.self, from: data) else {
            return .outOfDate(["\(manifestPath) is not a manifest this krnative can read"])
        }
        let parts = plan.keyParts
        guard manifest.buildKey == plan.key else {
            guard let recorded = manifest.buildKeyParts else {
                return .outOfDate(["the build key differs (the manifest predates recorded key parts)"])
            }
            let differences = BuildKey.differences(from: recorded, to: parts)
            return .outOfDate(["the build key differs" + (differences.isEmpty ? "" : ": " + differences.joined(separator: ", "))])
        }
        let made = Set(names(BuildOutput.listedInTheManifest)), listed = Set(manifest.outputs.map(\.file))
        guard listed == made else {
            let details = [("not listed", made.subtracting(listed)), ("listed, not made by this build", listed.subtracting(made))]
                .filter { !$0.1.isEmpty }.map { "\($0.0): \($0.1.sorted().joined(separator: ", "))" }
            return .outOfDate(["the outputs differ from the manifest's list (" + details.joined(separator: "; ") + ")"])
        }
        var reasons: [String] = []
        for output in manifest.outputs {
            let path = directory + "/" + output.file
            guard FileSystem.exists(path) else {
                reasons.append("\(path) is missing")
                continue
            }
            let found = try? SHA256Digest.of(fileAt: path)
            if found?.digest != output.sha256 || found?.size != output.size {
                reasons.append("\(path) does not hash as the manifest says")
            }
        }
        return reasons.isEmpty ? .upToDate(manifest) : .outOfDate(reasons)
    }

    /// The finished volume tree against the target's policy: a violation fails the build (or, in
    /// report mode, is printed and recorded in the manifest).
    func audit(_ prefix: String) throws -> VolumeAudit.Report? {
        guard let policy = request.auditPolicy else { return nil }
        settings.log("auditing the volume against sysroots/audit-policy.json")
        let report = try VolumeAudit(target: request.target, policy: policy).audit(try Listing.ofDirectory(prefix))
        if !report.passed {
            let failure = AuditFailed(location: "the \(request.target.rawValue) volume", report: report)
            guard request.auditMode == .report else { throw failure }
            settings.log("audit (report only, --audit report): " + failure.description)
        }
        return report
    }

    /// `.pyc` for the volume, by the target's own runtime where it runs here, else by the host's
    /// glibc runtime of the same Python version (the same magic number), mounted beside it. The
    /// `.pyc` of a tree compiled before by the same interpreter are copied from the store instead
    /// (`CompiledBytecode`), unless the settings ask for them to be compiled again. The tree's
    /// content records after compiling, when they were read to keep the `.pyc` (nil otherwise).
    func compileBytecode(layout: VolumeLayout, prefix: String, staging: String) throws -> [DeterministicTarXz.ContentRecord]? {
        guard request.isolation == .namespaces else {
            settings.log("\(stage(.bytecode)) SKIPPED .pyc: without the sandbox the volume is not at \(layout.mountPoint) to be compiled there")
            return nil
        }
        guard let compiler = try bytecodeCompiler(layout: layout, staging: staging) else { return nil }
        settings.log("\(stage(.bytecode)) compiling .pyc with \(compiler.name)")
        let records = DeterministicTarXz(sourceDateEpoch: plan.sourceDateEpoch)
        let before = try records.contentRecords(of: prefix)
        let kept = CompiledBytecode(store: resolver.store, log: settings.log)
        let key = try CompiledBytecode.key(before: records.contentKey(of: before), compiler: compiler.identity, executable: settings.entryExecutable)
        if settings.reuseDerivedOutputs, try kept.restore(key, into: prefix) {
            settings.log("copied the .pyc (this tree was compiled before by the same interpreter: bytecode/\(key.hex.prefix(12)))")
            return nil
        }
        try compiler.prepare()
        defer { compiler.cleanUp() }
        let runner = SandboxRunner(entryExecutable: settings.entryExecutable, isolation: request.isolation)
        try layout.compileBytecode(
            in: prefix, runner: runner, interpreter: compiler.interpreter, extraMounts: compiler.mounts, sourceDateEpoch: plan.sourceDateEpoch)
        let after = try records.contentRecords(of: prefix)
        guard let added = CompiledBytecode.added(before: before, after: after) else {
            settings.log("the .pyc stage changed more than it added (a wheel's .pth?): its result is not kept for later builds")
            return after
        }
        kept.keep(added, from: prefix, as: key)
        return after
    }

    /// The interpreter that compiles a volume's `.pyc`, as `compileBytecode` runs it.
    struct BytecodeCompiler {
        /// For people: "the volume's own runtime".
        var name: String
        /// What identifies it in the key of its `.pyc` (`CompiledBytecode.key`).
        var identity: String
        /// Its path in the sandbox (nil: the volume's own `bin/python3.x`).
        var interpreter: String?
        var mounts: [SandboxSpec.Mount] = []
        var prepare: () throws -> Void = {}
        var cleanUp: () -> Void = {}
    }

    /// Who compiles the `.pyc` of this build's volume; nil when nothing on this host can.
    func bytecodeCompiler(layout: VolumeLayout, staging: String) throws -> BytecodeCompiler? {
        guard let bytecode = Self.bytecodeTarget(for: request.target, host: .current) else { return nil }
        let beside = "/opt/host-python/bin/python\(layout.python.major).\(layout.python.minor)"
        if request.runtime == .source, bytecode != request.target {
            // The build Python the runtime was cross-compiled with: the same CPython, for this machine.
            let buildPython = staging + "/runtime/build-python"
            return BytecodeCompiler(
                name: "the build Python of the runtime from source", identity: "build Python, tree \(try TreeHash.ofDirectory(at: buildPython).hex)",
                interpreter: beside, mounts: [.readOnly(buildPython, at: "/opt/host-python", followLink: false)])
        }
        if bytecode == request.target {
            // The runtime is in the volume: the tree's content key covers it.
            return BytecodeCompiler(name: "the volume's own runtime", identity: "the volume's runtime")
        }
        guard let runtime = lock.inputs(for: [bytecode], host: .current).first(where: { $0.kind == .runtime }), let digest = resolver.located(runtime) else {
            throw CompileError.missingInput(name: "the \(bytecode.rawValue) runtime (it compiles the .pyc)", lockPath: request.locations.lockPath)
        }
        let hostPython = staging + "/host-python"
        return BytecodeCompiler(
            name: "\(runtime.name), which runs on this host", identity: "\(runtime.name) sha256 \(digest.hex)", interpreter: beside,
            mounts: [.readOnly(hostPython, at: "/opt/host-python", followLink: false)],
            prepare: { try VolumeLayout(target: bytecode).placeRuntime(try path(of: runtime), into: hostPython, recordedSize: runtime.size) },
            cleanUp: { FileSystem.remove(hostPython) })
    }
}

/// What a build finds in its output directory before it starts (`VolumeBuild.upToDate`).
public enum UpToDateVerdict: Sendable {
    /// The outputs are this build's, as the manifest lists them: nothing to do.
    case upToDate(BuildManifest)
    /// No manifest: nothing was built there yet, or a publish was killed before its manifest went in.
    case noManifest(in: String)
    /// A manifest that does not describe this build's outputs, and why, one phrase each for the
    /// person at the terminal ("the build key differs: audit mode report → enforce").
    case outOfDate([String])

    /// Why there is something to build (none when up to date).
    public var reasons: [String] {
        switch self {
        case .upToDate: []
        case .noManifest(let directory): ["no manifest in \(directory)"]
        case .outOfDate(let reasons): reasons
        }
    }
}

/// What `krnative build --json` prints: the manifest of the outputs, its keys as in the file, and
/// beside them `rebuildReasons` — why the build had something to do (the verdict's reasons, or that
/// it was forced) — and `upToDate`, true when it had nothing to do (no reasons).
public struct BuildReport: Encodable, Sendable {
    public var manifest: BuildManifest
    public var rebuildReasons: [String]

    public init(manifest: BuildManifest, rebuildReasons: [String]) {
        self.manifest = manifest
        self.rebuildReasons = rebuildReasons
    }

    enum CodingKeys: String, CodingKey { case upToDate, rebuildReasons }

    public func encode(to encoder: any Encoder) throws {
        // One object: a reader of the manifest reads this document too.
        try manifest.encode(to: encoder)
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(rebuildReasons.isEmpty, forKey: .upToDate)
        try container.encode(rebuildReasons, forKey: .rebuildReasons)
    }
}

extension VolumeBuild {
    /// The runtime archive of the target and the size it may unpack from: the lock's, or (with
    /// `runtime: source`) one built here into `staging/runtime`, beside the build Python that
    /// compiles the `.pyc`.
    func runtimeArchive(staging: String, needed: [LockedInput]) throws -> (path: String, size: Int64?) {
        guard request.runtime == .source else {
            guard let runtime = needed.first(where: { $0.kind == .runtime }) else {
                throw CompileError.missingInput(name: "the runtime of \(request.target.rawValue)", lockPath: request.locations.lockPath)
            }
            return (try path(of: runtime), runtime.size)
        }
        let options = RuntimeBuild.Options(
            target: request.target, outputDirectory: staging + "/runtime", settings: stepSettings(firstStep: stageCount.ttyd + 1))
        let report = try RuntimeBuild(options: options, buildPythonDirectory: staging + "/runtime/build-python", resolver: resolver).run(lock: lock)
        guard let archive = report.archive else { throw CompileError.noOutput(path: staging + "/runtime") }
        let file = staging + "/runtime/" + archive
        // The size from the file system: reading the archive again only to count it was a second read of it.
        guard let size = FileSystem.size(of: file) else { throw CompileError.noOutput(path: file) }
        return (file, size)
    }
}
