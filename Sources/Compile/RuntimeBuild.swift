import Archive
import Foundation
import Inputs
import KrnativeBase
import Lock
import Patch
import Sandbox
import Store
import Toolchain

/// Where a target's Python runtime comes from (`runtime` in krunner.json, `--runtime` on build).
public enum RuntimeSource: String, Sendable, Codable, CaseIterable {
    /// python-build-standalone's `install_only_stripped` archive, pinned in the lock.
    case pbs
    /// CPython and its libraries compiled here from the lock's sources (`recipes/runtime.json`).
    case source
}

/// Builds a target's CPython from the lock's sources with `recipes/runtime.json`, and packs it as
/// python-build-standalone's `install_only_stripped` archive (`python/…`), so the volume's
/// layout stage takes it as it takes a downloaded one.
public struct RuntimeBuild: RecipeBuild {
    public typealias Options = RecipeBuildOptions

    /// What the build used and made: written beside the archive as `<archive>.json`.
    public struct Report: RecipeBuildReport, Codable {
        public var target: Target
        public var triple: String
        public var toolchain: String
        public var sourceDateEpoch: Int64
        public var sources: [StepRunner.Source]
        public var patches: [AppliedPatch]
        public var steps: [StepRunner.Step]
        public var archive: String?
        public var sha256: SHA256Digest?

        public var produced: (file: String, sha256: SHA256Digest)? { archive.flatMap { name in sha256.map { (name, $0) } } }
    }

    public static let name = "runtime"
    public static let product = "CPython and its libraries"
    public let options: Options
    /// Where to copy the build Python (a CPython of the same version for this machine), if anywhere.
    public let buildPythonDirectory: String?
    public let resolver: InputResolver

    public init(options: Options, buildPythonDirectory: String? = nil, resolver: InputResolver) {
        self.options = options
        self.buildPythonDirectory = buildPythonDirectory
        self.resolver = resolver
    }

    public var toolchainKind: ToolchainKind { .zig }
    public var triple: String { Self.zigTriple(for: options.target) }

    /// Zig's target for `target`: manylinux2014's glibc, or musl (dynamic, so musllinux wheels load).
    public static func zigTriple(for target: Target) -> String {
        "\(target.arch.rawValue)-linux-" + (target.libc == .gnu ? "gnu.2.17" : "musl")
    }
    public var buildTriple: String? { Self.buildMachineTriple(host: options.settings.host) }

    /// The archive's file name: python-build-standalone's pattern, with `krnative` as the build.
    public static func archiveName(for target: Target, version: String) -> String {
        "cpython-\(version)-\(zigTriple(for: target))-krnative-install_only_stripped.tar.xz"
    }

    public func run(lock: Lockfile) throws -> Report {
        try runSteps(lock: lock) { space, outcome in
            var report = Report(
                target: options.target, triple: triple, toolchain: space.toolchain.identity, sourceDateEpoch: options.settings.epoch(lock),
                sources: outcome.sources, patches: outcome.patches, steps: outcome.steps)
            if outcome.stoppedEarly { return report }
            if let destination = buildPythonDirectory {
                FileSystem.remove(destination)
                try FileSystem.createDirectory((destination as NSString).deletingLastPathComponent)
                try StepResultTree("stage/build-python", in: space.work, madeBy: "the cpython-build step", seenAs: space.layout.stage + "/build-python")
                    .copy(to: destination)
            }
            let version = lock["cpython"]?.version ?? "3.13"
            let name = Self.archiveName(for: options.target, version: version)
            try pack(
                StepResultTree("stage/runtime/install", in: space.work, madeBy: "the cpython step", seenAs: space.layout.stage + "/runtime/install"),
                into: space.work + "/pack",
                as: options.outputDirectory + "/" + name, epoch: options.settings.epoch(lock))
            report.archive = name
            report.sha256 = try SHA256Digest.of(fileAt: options.outputDirectory + "/" + name).0
            try writeReport(report, to: options.outputDirectory + "/" + name + ".json")
            return report
        }
    }

    /// `make install`'s tree as `python/…`, without what python-build-standalone's stripped
    /// archive leaves out (manual pages), packed deterministically. The tree is copied as
    /// untrusted input first; only krnative's copy is changed.
    func pack(_ installed: StepResultTree, into directory: String, as archive: String, epoch: Int64) throws {
        let python = directory + "/python"
        FileSystem.remove(directory)
        try FileSystem.createDirectory(directory)
        try installed.copy(to: python)
        guard FileSystem.kind(of: "bin/python3.13", beneath: python) == S_IFREG else {
            throw CompileError.noOutput(path: installed.path + "/bin/python3.13")
        }
        FileSystem.remove(python + "/share/man")
        try FileSystem.createDirectory(python + "/lib/python3.13/site-packages")
        try FileSystem.createDirectory(options.outputDirectory)
        // Packed before from the same tree (a rebuild whose steps are all cached): copied, not compressed again.
        let settings = options.settings
        let (_, copied, key) = try PackedArchives(store: resolver.store, log: settings.log).pack(
            directory, with: DeterministicTarXz(sourceDateEpoch: epoch, threads: settings.jobs), to: archive, executable: settings.entryExecutable,
            reuse: settings.reuseDerivedOutputs && !settings.rebuild)
        if copied { settings.log("copied the runtime archive (this tree was packed before: packs/\(key.hex.prefix(12)))") }
    }
}
