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
    /// A recipe's step needs a step the recipe has not (or not before it).
    case unknownNeed(step: String, needs: String, before: [String])
    /// Two steps that do not need one another both wrote `path` of the stage.
    case stepsCollide(path: String, first: String, second: String)
    /// A step removed from its stage what a step it needs installed.
    case removedFromStage(step: String, path: String)

    public var description: String {
        switch self {
        case .missingInput(let name, let lockPath):
            "the store has no '\(name)' (or the lock \(lockPath) does not name it); run `krnative fetch --lock \(lockPath) --target …`, "
                + "or bring it in with `krnative bundle import` / `krnative store import`"
        case .toolchainCannotRun(let kind, let host):
            "the \(kind.rawValue) toolchain does not run on \(host) hosts; use --toolchain zig"
        case .noOutput(let path):
            "the steps finished but left no \(path)"
        case .treeMismatch(let component, let archive, let expected, let actual):
            "\(component): \(archive) unpacked to tree \(actual), but the lock pins \(expected); the extraction differs from the tree hash (report this)"
        case .unknownNeed(let step, let needs, let before):
            "the \(step) step needs \(needs), which is no step before it (\(before.isEmpty ? "it is the first" : "those: " + before.joined(separator: ", "))); "
                + "fix the step's `needs` in its recipe"
        case .stepsCollide(let path, let first, let second):
            "the \(first) and \(second) steps both installed \(path), and neither needs the other, so the install tree would depend on their order; "
                + "make one need the other in the recipe (`needs`), or keep them from writing the same file"
        case .removedFromStage(let step, let path):
            "\(step) removed \(path), which a step it needs installed; a step may add to and change the install tree, not take from it "
                + "(its result could not say so): change the step's commands, or merge the two steps"
        }
    }
    public var exitCode: Int32 {
        switch self {
        case .missingInput: ExitStatus.missingInput
        case .toolchainCannotRun: ExitStatus.usage
        case .noOutput: ExitStatus.process
        case .treeMismatch: ExitStatus.integrity
        case .unknownNeed: ExitStatus.usage
        case .stepsCollide, .removedFromStage: ExitStatus.process
        }
    }
}

/// Builds the static ttyd of one target from the lock's sources, step by step in the sandbox,
/// with each library's install tree cached in the store by the hash of everything that went in.
public struct TtydBuild: RecipeBuild {
    public typealias Options = RecipeBuildOptions

    /// What the build used and made: recorded next to the binary as `ttyd_linux.<arch>.json`.
    public struct Report: RecipeBuildReport, Codable {
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
        public var produced: (file: String, sha256: SHA256Digest)? { output.map { ($0.file, $0.sha256) } }
    }

    public static let name = "ttyd"
    public static let product = "ttyd"
    public let options: Options
    /// Zig, or musl.cc's GCC (x86_64 hosts only).
    public let toolchainKind: ToolchainKind
    public let resolver: InputResolver

    public init(options: Options, toolchain: ToolchainKind = .zig, resolver: InputResolver) {
        self.options = options
        self.toolchainKind = toolchain
        self.resolver = resolver
    }

    public var triple: String { options.target.ttydTriple }

    public func run(lock: Lockfile) throws -> Report {
        try runSteps(lock: lock) { space, outcome in
            var report = Report(
                triple: triple, toolchain: space.toolchain.identity, isolation: options.settings.isolation, sourceDateEpoch: options.settings.epoch(lock),
                sources: outcome.sources, patches: outcome.patches, steps: outcome.steps)
            if outcome.stoppedEarly { return report }
            report.output = try publish(StepResultTree("stage", in: space.work, madeBy: "the ttyd step"), report: report)
            return report
        }
    }

    /// Copies the binary (`bin/ttyd` of the stage: a regular file reached through real
    /// directories) to the output directory, whole or not at all, with the report beside it.
    func publish(_ stage: StepResultTree, report: Report) throws -> Report.Output {
        let name = "ttyd_linux.\(options.target.arch.rawValue).bin"
        let (digest, size) = try publish("bin/ttyd", of: stage, as: name)
        var report = report
        report.output = .init(file: name, sha256: digest, size: size)
        try writeReport(report, to: options.outputDirectory + "/ttyd_linux.\(options.target.arch.rawValue).json")
        return report.output!
    }
}
