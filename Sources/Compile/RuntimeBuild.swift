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
    /// CPython and its libraries compiled here from the lock's sources (`RuntimeRecipe`).
    case source
}

/// Builds a target's CPython from the lock's sources with `RuntimeRecipe`, and packs it as
/// python-build-standalone's `install_only_stripped` archive (`python/…`), so the volume's
/// layout stage takes it as it takes a downloaded one.
public struct RuntimeBuild: Sendable {
    public struct Options: Sendable {
        public var target: Target
        public var outputDirectory: String
        /// Where to copy the build Python (a CPython of the same version for this machine), if anywhere.
        public var buildPythonDirectory: String?
        public var settings: StepRunner.Settings

        public init(target: Target, outputDirectory: String, settings: StepRunner.Settings) {
            self.target = target
            self.outputDirectory = outputDirectory
            self.settings = settings
        }
    }

    /// What the build used and made: written beside the archive as `<archive>.json`.
    public struct Report: Sendable, Codable {
        public var target: Target
        public var triple: String
        public var toolchain: String
        public var sourceDateEpoch: Int64
        public var sources: [StepRunner.Source]
        public var patches: [AppliedPatch]
        public var steps: [StepRunner.Step]
        public var archive: String?
        public var sha256: SHA256Digest?
    }

    public let options: Options
    public let resolver: InputResolver

    public init(options: Options, resolver: InputResolver) {
        self.options = options
        self.resolver = resolver
    }

    /// The archive's file name: python-build-standalone's pattern, with `krnative` as the build.
    public static func archiveName(for target: Target, version: String) -> String {
        "cpython-\(version)-\(RuntimeRecipe.zigTriple(for: target))-krnative-install_only_stripped.tar.xz"
    }

    public func run(lock: Lockfile) throws -> Report {
        let triple = RuntimeRecipe.zigTriple(for: options.target)
        let runner = StepRunner(settings: options.settings, resolver: resolver)
        let toolchain = try runner.unpackToolchain(.zig, host: options.settings.host, lock: lock, triple: triple)
        return try runner.withWorkDirectory(options.settings.workDirectory, name: "runtime-\(triple)", keep: options.settings.keepWork) { work in
            let space = try runner.prepare(toolchain, work: work, buildTriple: "\(options.settings.host.arch.rawValue)-linux-gnu")
            let recipe = RuntimeRecipe(layout: space.layout, target: options.target, buildArch: options.settings.host.arch, jobs: options.settings.jobs)
            let outcome = try runner.run(recipe, lock: lock, in: space)
            var report = Report(
                target: options.target, triple: triple, toolchain: toolchain.identity, sourceDateEpoch: lock.sourceDateEpoch,
                sources: outcome.sources, patches: outcome.patches, steps: outcome.steps)
            if outcome.stoppedEarly { return report }
            if let destination = options.buildPythonDirectory {
                FileSystem.remove(destination)
                try FileSystem.createDirectory((destination as NSString).deletingLastPathComponent)
                try FileManager.default.copyItem(atPath: space.stage + "/build-python", toPath: destination)
            }
            let version = lock["cpython"]?.version ?? "3.13"
            let name = Self.archiveName(for: options.target, version: version)
            try pack(space.stage + "/runtime/install", into: work + "/pack", as: options.outputDirectory + "/" + name, epoch: lock.sourceDateEpoch)
            report.archive = name
            report.sha256 = try SHA256Digest.of(fileAt: options.outputDirectory + "/" + name).0
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            try FileSystem.writeAtomically(try encoder.encode(report), to: options.outputDirectory + "/" + name + ".json")
            return report
        }
    }

    /// `make install`'s tree as `python/…`, without what python-build-standalone's stripped
    /// archive leaves out (manual pages), packed deterministically.
    func pack(_ installed: String, into directory: String, as archive: String, epoch: Int64) throws {
        let python = directory + "/python"
        guard FileSystem.exists(installed + "/bin/python3.13") else { throw CompileError.noOutput(path: installed + "/bin/python3.13") }
        FileSystem.remove(directory)
        try FileSystem.createDirectory(directory)
        try FileManager.default.copyItem(atPath: installed, toPath: python)
        FileSystem.remove(python + "/share/man")
        try FileSystem.createDirectory(python + "/lib/python3.13/site-packages")
        try FileSystem.createDirectory(options.outputDirectory)
        try DeterministicTarXz(sourceDateEpoch: epoch, threads: options.settings.jobs).pack(directory, to: archive)
    }
}
