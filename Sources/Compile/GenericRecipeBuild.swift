import Archive
import Foundation
import Inputs
import KrnativeBase
import Lock
import Patch
import Toolchain

/// Any recipe under `recipes/` that names its `outputs`, built for a target with Zig and left in
/// the output directory under those names, with a report (`<recipe>.<arch>.json`) beside them:
/// what `krnative build-recipe NAME` runs. A new native component is a recipe file, not code.
public struct GenericRecipeBuild: RecipeBuild {
    /// What the build used and made: the recipe and target, the toolchain (its triple and
    /// identity), the epoch, what its steps did, and the files it left.
    public struct Report: RecipeBuildReport, Codable {
        public var recipe: String
        public var target: Target
        public var toolchain: [String: String]
        public var sourceDateEpoch: Int64
        public var outcome: StepRunner.Outcome
        public var outputs: [TtydBuild.Report.Output] = []

        public var sources: [StepRunner.Source] { outcome.sources }
        public var produced: (file: String, sha256: SHA256Digest)? { outputs.first.map { ($0.file, $0.sha256) } }
    }

    public static let name = "recipe"
    public static let product = "a recipe's outputs"
    public let recipeName: String
    public let options: RecipeBuildOptions
    public let resolver: InputResolver
    public let triple: String
    let file: RecipeFile

    /// A build of `recipes/<recipe>.json`; a recipe that names no outputs is refused here.
    public init(recipe: String, options: RecipeBuildOptions, resolver: InputResolver) throws {
        file = try options.settings.recipes[recipe] ?? RecipeFile.load(recipe, from: options.settings.recipesDirectory)
        recipeName = recipe
        // Its steps are rendered from this reading of the file, not from a second one.
        var options = options
        options.settings.recipes[recipe] = file
        self.options = options
        self.resolver = resolver
        triple = try file.triple(for: options.target)
        let context = RecipeFile.Context(layout: .sandboxed, target: options.target, buildArch: options.settings.host.arch, triple: triple, jobs: 1, versions: [:])
        guard try !file.outputs(for: context).isEmpty else {
            throw RecipeError(path: file.path, field: "outputs", problem: "names no file for build-recipe to leave; add {\"file\": …, \"from\": …}")
        }
    }

    public var toolchainKind: ToolchainKind { .zig }
    public var buildTriple: String? { file.compilesForBuildMachine ? Self.buildMachineTriple(host: options.settings.host) : nil }

    public func run(lock: Lockfile) throws -> Report {
        try runSteps(lock: lock) { space, outcome in
            var report = Report(
                recipe: recipeName, target: options.target, toolchain: ["triple": triple, "identity": space.toolchain.identity],
                sourceDateEpoch: options.settings.epoch(lock), outcome: outcome)
            if outcome.stoppedEarly { return report }
            let context = RecipeFile.Context(
                layout: space.layout, target: options.target, buildArch: options.settings.host.arch, triple: triple, jobs: options.settings.jobs, versions: [:])
            let stage = StepResultTree("stage", in: space.work, madeBy: "the \(recipeName) recipe's steps", seenAs: space.layout.stage)
            for output in try file.outputs(for: context) {
                let (digest, size) = try publish(output.from, of: stage, as: output.file)
                report.outputs.append(.init(file: output.file, sha256: digest, size: size))
            }
            try writeReport(report, to: options.outputDirectory + "/\(recipeName).\(options.target.arch.rawValue).json")
            return report
        }
    }
}
