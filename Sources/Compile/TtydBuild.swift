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
        public var outputDirectory: String
        /// How the steps run: the sandbox, the patches, the lock, the caches, the log; whether to
        /// compile every step again, only prepare, or stop early.
        public var settings: StepRunner.Settings

        public init(target: Target, outputDirectory: String, settings: StepRunner.Settings) {
            self.target = target
            self.outputDirectory = outputDirectory
            self.settings = settings
        }
    }

    /// What the build used and made: recorded next to the binary as `ttyd_linux.<arch>.json`.
    public struct Report: Sendable, Codable {
        public typealias Source = StepRunner.Source
        public typealias Step = StepRunner.Step
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
        public var counts: (compiled: Int, cached: Int, remote: Int) { StepRunner.counts(steps) }
    }

    public let options: Options
    public let resolver: InputResolver

    public init(options: Options, resolver: InputResolver) {
        self.options = options
        self.resolver = resolver
    }

    var store: Store { resolver.store }

    var stepRunner: StepRunner { StepRunner(settings: options.settings, resolver: resolver) }

    func recipe(lock: Lockfile, layout: BuildLayout) -> TtydRecipe {
        let versions = Dictionary(uniqueKeysWithValues: TtydRecipe.components.compactMap { name in lock[name].map { (name, $0.version) } })
        return TtydRecipe(layout: layout, triple: options.target.ttydTriple, jobs: options.settings.jobs, versions: versions)
    }

    public func run(lock: Lockfile) throws -> Report {
        let triple = options.target.ttydTriple
        guard Toolchain.runs(options.toolchain, on: options.settings.host) else {
            throw CompileError.toolchainCannotRun(options.toolchain, host: options.settings.host)
        }
        let runner = stepRunner
        let toolchain = try runner.unpackToolchain(options.toolchain, host: options.settings.host, lock: lock, triple: triple)
        return try runner.withWorkDirectory(options.settings.workDirectory, name: "ttyd-\(triple)", keep: options.settings.keepWork) { work in
            let space = try runner.prepare(toolchain, work: work)
            let outcome = try runner.run(recipe(lock: lock, layout: space.layout), lock: lock, in: space)
            var report = Report(
                triple: triple, toolchain: toolchain.identity, isolation: options.settings.isolation, sourceDateEpoch: lock.sourceDateEpoch,
                sources: outcome.sources, patches: outcome.patches, steps: outcome.steps)
            if outcome.stoppedEarly { return report }
            report.output = try publish(space.stage + "/bin/ttyd", report: report)
            return report
        }
    }

    /// Copies the binary to the output directory, whole or not at all, with the report beside it.
    func publish(_ binary: String, report: Report) throws -> Report.Output {
        guard FileSystem.exists(binary) else { throw CompileError.noOutput(path: binary) }
        try FileSystem.createDirectory(options.outputDirectory)
        let name = "ttyd_linux.\(options.target.arch.rawValue).bin"
        let temp = options.outputDirectory + "/.\(name).partial"
        FileSystem.remove(temp)
        try FileManager.default.copyItem(atPath: binary, toPath: temp)
        chmod(temp, 0o755)
        let (digest, size) = try SHA256Digest.of(fileAt: temp)
        try FileSystem.rename(temp, to: options.outputDirectory + "/" + name)
        var report = report
        report.output = .init(file: name, sha256: digest, size: size)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try FileSystem.writeAtomically(try encoder.encode(report), to: options.outputDirectory + "/ttyd_linux.\(options.target.arch.rawValue).json")
        return report.output!
    }

    /// The recipe's commands as a plain bash script for a work directory that a
    /// `build-ttyd --sandbox none --workdir W` left with patched sources, wrappers and the CMake
    /// toolchain file: the baseline the benchmark runs against the step itself.
    public func plainScript(lock: Lockfile, epoch: Int64) throws -> String {
        guard let work = options.settings.workDirectory else { throw UsageError("--print-script needs --workdir, the directory a --sandbox none build prepared") }
        let triple = options.target.ttydTriple
        let toolchain = try stepRunner.unpackToolchain(options.toolchain, host: options.settings.host, lock: lock, triple: triple)
        let layout = BuildLayout(build: work, toolchain: toolchain.hostRoot, zigCache: store.item(.zigCache, "\(toolchain.version)-\(triple)"))
        return StepRunner.plainScript(
            recipe(lock: lock, layout: layout), layout: layout,
            title: "ttyd for \(triple), the recipe's commands without krnative (written by krnative build-ttyd --print-script)", epoch: epoch)
    }
}
