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
public struct VolumeBuild: Sendable {
    public struct Options: Sendable {
        public var target: Target
        public var config: KrunnerConfig
        public var outputDirectory: String
        public var patchesDirectory: String
        public var entryExecutable: String
        public var toolchain: ToolchainKind = .zig
        public var isolation: Isolation = .namespaces
        public var jobs = ProcessInfo.processInfo.activeProcessorCount
        public var packThreads = ProcessInfo.processInfo.activeProcessorCount
        public var lockPath = Lockfile.defaultFileName
        public var toolVersion = "0"
        /// The policy every build's volume is audited against, and whether a violation fails the build.
        public var auditPolicy: AuditPolicy?
        public var auditMode: AuditMode = .enforce
        /// The volume ledger the volume's number is checked against (nil: not checked, as in verify).
        public var ledger: VolumeLedgerCheck?
        /// The shared cache ttyd's steps are looked for in (and uploaded to, when it allows).
        public var remoteCache: RemoteCache?
        /// Told what ttyd's build did, step by step (for `build --all`'s table).
        public var onTtydSteps: (@Sendable (TtydBuild.Report) -> Void)?
        /// Where the Python runtime comes from: the lock's python-build-standalone archive, or built here.
        public var runtime: RuntimeSource = .pbs
        public var log: @Sendable (String) -> Void = Reporting.note

        public init(target: Target, config: KrunnerConfig, outputDirectory: String, patchesDirectory: String, entryExecutable: String) {
            self.target = target
            self.config = config
            self.outputDirectory = outputDirectory
            self.patchesDirectory = patchesDirectory
            self.entryExecutable = entryExecutable
        }
    }

    public let options: Options
    public let resolver: InputResolver

    public init(options: Options, resolver: InputResolver) {
        self.options = options
        self.resolver = resolver
    }

    /// Everything a build of `target` on `host` with `toolchain` needs: the target's runtime,
    /// wheels and sources, the toolchain it compiles with, and — when the target's runtime cannot
    /// run on this host — the host's manylinux runtime of the same Python, to compile the `.pyc`.
    /// With the runtime from source: its sources and Zig instead of any runtime archive.
    public static func inputs(
        of target: Target, in lock: Lockfile, host: HostPlatform, toolchain: ToolchainKind, runtime: RuntimeSource = .pbs
    ) -> [LockedInput] {
        let toolchainNames =
            [toolchain.lockName(triple: target.ttydTriple, host: host)]
            + (runtime == .source ? [ToolchainKind.zig.lockName(triple: "", host: host)] : [])
        let runtimeOnly = Set(RuntimeRecipe.components).subtracting(TtydRecipe.components)
        var needed = lock.inputs(for: [target], host: host).filter { input in
            switch input.kind {
            case .toolchain: toolchainNames.contains(input.name)
            case .runtime: runtime == .pbs
            case .source: runtime == .source || !runtimeOnly.contains(input.name)
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

    /// The file name of `output` for this build's target and package version.
    public func name(_ output: BuildOutput) -> String {
        let (distro, arch) = (options.target.distro, options.target.arch.rawValue)
        switch output {
        case .ttyd: return "ttyd_linux.\(arch).bin"
        case .volume: return "krunner-env.\(distro).\(arch).tar.xz"
        case .volumeVersion: return "krunner-version.\(distro).txt"
        case .pythonVersion: return "krunner-python.\(distro).txt"
        case .versions: return "versions.txt"
        case .wheel:
            let version = (try? options.config.packageVersion(for: options.target)) ?? "0"
            return PluginWheel(target: options.target, version: version, sourceDateEpoch: 0).filename
        case .sbom: return "krnative-sbom.\(distro).\(arch).spdx.json"
        case .manifest: return "krnative-manifest.\(distro).\(arch).json"
        }
    }

    /// The file names of the outputs, in the order the manifest lists them.
    public var outputNames: [String] { BuildOutput.allCases.map(name) }

    /// The names of `outputs`, in their order.
    func names(_ outputs: [BuildOutput]) -> [String] { outputs.map(name) }

    public func run(lock: Lockfile) throws -> BuildManifest {
        let target = options.target
        let (distro, arch) = (target.distro, target.arch.rawValue)
        let stagingDirectory = try StagingDirectory(in: options.outputDirectory)
        defer { stagingDirectory.remove() }
        let staging = stagingDirectory.path
        let needed = Self.inputs(of: target, in: lock, host: .current, toolchain: options.toolchain, runtime: options.runtime)
        func path(of input: LockedInput) throws -> String {
            guard let path = try resolver.path(of: input) else { throw CompileError.missingInput(name: input.name, lockPath: options.lockPath) }
            return path
        }

        // ttyd and its libraries.
        var ttydOptions = TtydBuild.Options(
            target: target, patchesDirectory: options.patchesDirectory, outputDirectory: staging, entryExecutable: options.entryExecutable)
        ttydOptions.toolchain = options.toolchain
        ttydOptions.isolation = options.isolation
        ttydOptions.jobs = options.jobs
        ttydOptions.lockPath = options.lockPath
        ttydOptions.log = options.log
        ttydOptions.remoteCache = options.remoteCache
        let ttyd = try TtydBuild(options: ttydOptions, resolver: resolver).run(lock: lock)
        let counts = ttyd.counts
        options.log("ttyd: \(ttyd.steps.count) steps: \(counts.compiled) compiled, \(counts.cached) cached, \(counts.remote) from the remote cache")
        options.onTtydSteps?(ttyd)
        FileSystem.remove(staging + "/ttyd_linux.\(arch).json")

        // The volume tree.
        options.log("laying out the \(target.rawValue) volume")
        let prefix = staging + "/volume"
        let layout = VolumeLayout(target: target)
        let (runtimeArchive, runtimeSize) = try runtimeArchive(lock: lock, staging: staging, needed: needed, path: path)
        try layout.placeRuntime(runtimeArchive, into: prefix, recordedSize: runtimeSize)
        let installer = WheelInstaller(target: target)
        let wheels = needed.filter({ $0.kind == .wheel }).sorted(by: { $0.filename < $1.filename })
        options.log("installing \(wheels.count) wheels into the volume")
        for wheel in wheels {
            // The installer reads the tags from the file name: give it one.
            let named = staging + "/wheels/" + wheel.filename
            try FileSystem.createDirectory(staging + "/wheels")
            try FileManager.default.copyItem(atPath: try path(of: wheel), toPath: named)
            try installer.install(named, into: prefix)
        }
        FileSystem.remove(staging + "/wheels")
        try layout.placeTtyd(staging + "/" + name(.ttyd), into: prefix)
        try layout.collectRuntimeLicense(in: prefix)
        try layout.collectWheelLicenses(in: prefix)
        for source in needed.filter({ $0.kind == .source }) {
            try layout.collectLicenses(ofArchive: try path(of: source), component: source.name, into: prefix)
        }
        try compileBytecode(layout: layout, prefix: prefix, staging: staging, lock: lock, path: path)
        let audit = try audit(prefix)
        let volumeVersion = try options.config.volumeVersion(for: target)
        let packageVersion = try options.config.packageVersion(for: target)
        let ledgerEntry = try admitToLedger(prefix, volume: volumeVersion)

        // Pack, side files, the plugin wheel.
        options.log("packing \(name(.volume))")
        let packingStarted = Date()
        let packed = try DeterministicTarXz(sourceDateEpoch: lock.sourceDateEpoch, threads: options.packThreads)
            .pack(prefix, to: staging + "/" + name(.volume))
        options.log(
            "packed \(packed.count) entries into \(FileSystem.size(of: staging + "/" + name(.volume)) ?? 0) bytes in "
                + String(format: "%.0f s", Date().timeIntervalSince(packingStarted)))
        try FileSystem.writeAtomically(Data("\(volumeVersion)\n".utf8), to: staging + "/" + name(.volumeVersion))
        try FileSystem.writeAtomically(Data("\(layout.python.major).\(layout.python.minor)\n".utf8), to: staging + "/" + name(.pythonVersion))
        try FileSystem.writeAtomically(Data("\(distro)\n".utf8), to: staging + "/" + name(.versions))
        let payload = Dictionary(uniqueKeysWithValues: names(BuildOutput.inWheel).map { ($0, staging + "/" + $0) })
        options.log("writing the plugin wheel, version \(packageVersion)")
        _ = try PluginWheel(target: target, version: packageVersion, sourceDateEpoch: lock.sourceDateEpoch)
            .write(into: staging, payload: payload, licenses: prefix + "/licenses")

        // The manifest and the SBOM.
        var outputs: [BuildManifest.Output] = []
        for file in names(BuildOutput.hashedBeforeTheSBOM) {
            let (digest, size) = try SHA256Digest.of(fileAt: staging + "/" + file)
            outputs.append(.init(file: file, sha256: digest, size: size))
        }
        var volume: [BuildManifest.VolumeEntry] = []
        for entry in packed {
            volume.append(.init(path: entry.path, type: entry.kind, mode: String(entry.mode, radix: 8), size: entry.size, sha256: entry.sha256, target: entry.target))
        }
        let inputs = Self.inputs(of: target, in: lock, host: .current, toolchain: options.toolchain).compactMap { input in
            resolver.located(input).map {
                BuildManifest.Input(name: input.name, kind: input.kind, version: input.version, sha256: $0, treeSha256: input.treeSha256, license: input.license)
            }
        }
        var manifest = BuildManifest(
            tool: .init(version: options.toolVersion), target: target, lockSha256: lock.digest, sourceDateEpoch: lock.sourceDateEpoch,
            isolation: options.isolation, packageVersion: packageVersion, volumeVersion: volumeVersion,
            inputs: inputs, patches: ttyd.patches, outputs: outputs, volume: volume)
        let keyParts = try buildKeyParts(lock: lock)
        manifest.buildKeyParts = keyParts
        manifest.buildKey = BuildKey.digest(of: keyParts)
        manifest.toolchain = options.toolchain
        manifest.runtime = options.runtime
        manifest.audit = audit.map { .init(policy: $0.policy, mode: options.auditMode, elfFiles: $0.elfFiles, violations: $0.violations) }
        let sbomName = name(.sbom)
        try FileSystem.writeAtomically(try SBOM.document(for: manifest, name: sbomName), to: staging + "/" + sbomName)
        let (sbomDigest, sbomSize) = try SHA256Digest.of(fileAt: staging + "/" + sbomName)
        manifest.outputs.append(.init(file: sbomName, sha256: sbomDigest, size: sbomSize))
        try FileSystem.writeAtomically(try manifest.encoded(), to: staging + "/" + name(.manifest))

        if Cancellation.requested { throw ArchiveError.interrupted(archive: staging) }
        try Self.publish(names(BuildOutput.listedInTheManifest), manifest: name(.manifest), from: staging, into: options.outputDirectory)
        if let ledgerEntry { try record(ledgerEntry) }
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
        let previous = FileManager.default.contents(atPath: replaced).flatMap { try? JSONDecoder().decode(OutputList.self, from: $0) }
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

    /// Everything that decides the outputs, by name (`BuildKey`): the krnative executable, the
    /// lock, the target, toolchain, isolation and audit mode, the target's package and volume
    /// versions, the audit policy, and each file under the patches directory ("patch NAME").
    /// Files and documents are there by their hash.
    public func buildKeyParts(lock: Lockfile) throws -> [String: String] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        var parts = [
            "krnative executable": BuildKey.contents(try SHA256Digest.of(fileAt: options.entryExecutable).digest),
            "lock": BuildKey.contents(lock.digest),
            "target": options.target.rawValue,
            "toolchain": options.toolchain.rawValue,
            "isolation": options.isolation.rawValue,
            "audit mode": options.auditMode.rawValue,
            "runtime": options.runtime.rawValue,
            "package version": try options.config.packageVersion(for: options.target),
            "volume version": String(try options.config.volumeVersion(for: options.target)),
            "audit policy": try options.auditPolicy.map { BuildKey.contents(SHA256Digest.of(try encoder.encode($0))) } ?? "none",
        ]
        let patches = (FileManager.default.enumerator(atPath: options.patchesDirectory)?.allObjects as? [String] ?? []).sorted()
        for name in patches where !FileSystem.isDirectory(options.patchesDirectory + "/" + name) {
            parts["patch " + name] = BuildKey.contents(try SHA256Digest.of(fileAt: options.patchesDirectory + "/" + name).digest)
        }
        return parts
    }

    /// Whether the output directory already holds what this build would make: a manifest with
    /// this build's key, and every output it lists present with that size and hash. When not,
    /// the verdict says why, naming what the user changed or what is missing.
    public func upToDate(lock: Lockfile) throws -> UpToDateVerdict {
        let directory = options.outputDirectory
        let manifestPath = directory + "/" + name(.manifest)
        guard let data = FileManager.default.contents(atPath: manifestPath) else { return .noManifest(in: directory) }
        guard let manifest = try? JSONDecoder().decode(BuildManifest.self, from: data) else {
            return .outOfDate(["\(manifestPath) is not a manifest this krnative can read"])
        }
        let parts = try buildKeyParts(lock: lock)
        guard manifest.buildKey == BuildKey.digest(of: parts) else {
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
        guard let policy = options.auditPolicy else { return nil }
        options.log("auditing the volume against sysroots/audit-policy.json")
        let report = try VolumeAudit(target: options.target, policy: policy).audit(try Listing.ofDirectory(prefix))
        if !report.passed {
            let failure = AuditFailed(location: "the \(options.target.rawValue) volume", report: report)
            guard options.auditMode == .report else { throw failure }
            options.log("audit (report only, --audit report): " + failure.description)
        }
        return report
    }

    /// `.pyc` for the volume, by the target's own runtime where it runs here, else by the host's
    /// glibc runtime of the same Python version (the same magic number), mounted beside it.
    func compileBytecode(layout: VolumeLayout, prefix: String, staging: String, lock: Lockfile, path: (LockedInput) throws -> String) throws {
        guard options.isolation == .namespaces else {
            options.log("SKIPPED .pyc: without the sandbox the volume is not at \(layout.mountPoint) to be compiled there")
            return
        }
        let runner = SandboxRunner(entryExecutable: options.entryExecutable, isolation: options.isolation)
        guard let bytecode = Self.bytecodeTarget(for: options.target, host: .current) else { return }
        if options.runtime == .source, bytecode != options.target {
            // The build Python the runtime was cross-compiled with: the same CPython, for this machine.
            options.log("compiling .pyc with the build Python of the runtime from source")
            try layout.compileBytecode(
                in: prefix, runner: runner, interpreter: "/opt/host-python/bin/python\(layout.python.major).\(layout.python.minor)",
                extraMounts: [.readOnly(staging + "/runtime/build-python", at: "/opt/host-python")], sourceDateEpoch: lock.sourceDateEpoch)
            return
        }
        if bytecode == options.target {
            try layout.compileBytecode(in: prefix, runner: runner, sourceDateEpoch: lock.sourceDateEpoch)
            return
        }
        guard let runtime = lock.inputs(for: [bytecode], host: .current).first(where: { $0.kind == .runtime }) else {
            throw CompileError.missingInput(name: "the \(bytecode.rawValue) runtime (it compiles the .pyc)", lockPath: options.lockPath)
        }
        let hostPython = staging + "/host-python"
        try VolumeLayout(target: bytecode).placeRuntime(try path(runtime), into: hostPython, recordedSize: runtime.size)
        defer { FileSystem.remove(hostPython) }
        options.log("compiling .pyc with \(runtime.name), which runs on this host")
        try layout.compileBytecode(
            in: prefix, runner: runner, interpreter: "/opt/host-python/bin/python\(layout.python.major).\(layout.python.minor)",
            extraMounts: [.readOnly(hostPython, at: "/opt/host-python")], sourceDateEpoch: lock.sourceDateEpoch)
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
    func runtimeArchive(
        lock: Lockfile, staging: String, needed: [LockedInput], path: (LockedInput) throws -> String
    ) throws -> (path: String, size: Int64?) {
        guard options.runtime == .source else {
            guard let runtime = needed.first(where: { $0.kind == .runtime }) else {
                throw CompileError.missingInput(name: "the runtime of \(options.target.rawValue)", lockPath: options.lockPath)
            }
            return (try path(runtime), runtime.size)
        }
        var runtimeOptions = RuntimeBuild.Options(
            target: options.target, patchesDirectory: options.patchesDirectory, outputDirectory: staging + "/runtime",
            entryExecutable: options.entryExecutable)
        runtimeOptions.jobs = options.jobs
        runtimeOptions.buildPythonDirectory = staging + "/runtime/build-python"
        runtimeOptions.settings.isolation = options.isolation
        runtimeOptions.settings.lockPath = options.lockPath
        runtimeOptions.settings.remoteCache = options.remoteCache
        runtimeOptions.settings.jobs = options.jobs
        runtimeOptions.settings.log = options.log
        let report = try RuntimeBuild(options: runtimeOptions, resolver: resolver).run(lock: lock)
        guard let archive = report.archive else { throw CompileError.noOutput(path: staging + "/runtime") }
        let file = staging + "/runtime/" + archive
        return (file, try SHA256Digest.of(fileAt: file).size)
    }
}
