import Archive
import Foundation
import Inputs
import KrnativeBase
import Lock
import Store
import Toolchain

/// What a build of one target from a recipe is asked (ttyd's, the runtime's): the target, where
/// its output goes, how its steps run.
public struct RecipeBuildOptions: Sendable {
    public var target: Target
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

/// A build of one target from a recipe, `TtydBuild` or `RuntimeBuild`: the toolchain, the work
/// directory, the steps (`recipes/<name>.json`), and the recipe's commands as a plain script.
public protocol RecipeBuild: Sendable {
    associatedtype Report: RecipeBuildReport
    /// Names the recipe (`recipes/<name>.json`) and the work directory (`<name>-<triple>`);
    /// `krnative build-<name>` runs the build.
    static var name: String { get }
    /// The recipe this build reads (`Self.name`, unless the build runs any recipe).
    var recipeName: String { get }
    /// What the build makes, for the plain script's title.
    static var product: String { get }
    var options: RecipeBuildOptions { get }
    var resolver: InputResolver { get }
    var toolchainKind: ToolchainKind { get }
    /// The toolchain's target triple.
    var triple: String { get }
    /// The build machine's triple, when the recipe also compiles for it (`build-cc`, …).
    var buildTriple: String? { get }
    /// Builds (or, with `prepareOnly`, prepares) and leaves the output and its report in the output directory.
    func run(lock: Lockfile) throws -> Report
}

/// What a recipe build's report tells whoever ran it.
public protocol RecipeBuildReport: Sendable, Encodable {
    var sources: [StepRunner.Source] { get }
    /// The file the build left in the output directory, and its hash; nil when it stopped early.
    var produced: (file: String, sha256: SHA256Digest)? { get }
}

extension RecipeBuild {
    public var buildTriple: String? { nil }

    /// Zig's triple for the build machine `host` (glibc: the tools a build runs there).
    public static func buildMachineTriple(host: HostPlatform) -> String { "\(host.arch.rawValue)-linux-gnu" }
    public var recipeName: String { Self.name }

    var store: Store { resolver.store }

    var stepRunner: StepRunner { StepRunner(settings: options.settings, resolver: resolver) }

    /// The recipe's steps for this build: `recipes/<name>.json` of the settings' recipes directory
    /// (as the settings hold it already read, if they do), for the target, this machine, the
    /// toolchain's triple, the jobs and the lock's versions.
    public func recipe(lock: Lockfile, layout: BuildLayout) throws -> RenderedRecipe {
        let settings = options.settings
        let file = try settings.recipes[recipeName] ?? RecipeFile.load(recipeName, from: settings.recipesDirectory)
        let versions = Dictionary(uniqueKeysWithValues: file.components.compactMap { name in lock[name].map { (name, $0.version) } })
        let context = RecipeFile.Context(
            layout: layout, target: options.target, buildArch: options.settings.host.arch, triple: triple, jobs: options.settings.jobs,
            versions: versions)
        return try file.recipe(for: context)
    }

    /// The toolchain, unpacked into the store, when it runs on this machine.
    func toolchain(lock: Lockfile) throws -> Toolchain {
        let host = options.settings.host
        guard Toolchain.runs(toolchainKind, on: host) else { throw CompileError.toolchainCannotRun(toolchainKind, host: host) }
        return try stepRunner.unpackToolchain(toolchainKind, host: host, lock: lock, triple: triple)
    }

    /// Runs the recipe's steps in the work directory; `finish` makes the result from the
    /// workspace and what the steps did (also when they stopped early, which `outcome` tells).
    func runSteps<Result>(lock: Lockfile, _ finish: (StepRunner.Workspace, StepRunner.Outcome) throws -> Result) throws -> Result {
        let runner = stepRunner
        let toolchain = try toolchain(lock: lock)
        let settings = options.settings
        return try runner.withWorkDirectory(settings.workDirectory, name: "\(recipeName)-\(triple)", keep: settings.keepWork) { work in
            let space = try runner.prepare(toolchain, work: work, buildTriple: buildTriple)
            return try finish(space, try runner.run(try recipe(lock: lock, layout: space.layout), lock: lock, in: space))
        }
    }

    /// The recipe's commands as a plain bash script for a work directory that a
    /// `build-<name> --sandbox none --prepare-only --workdir W` left with patched sources and the
    /// wrappers: the baseline the benchmark runs against the steps themselves.
    public func plainScript(lock: Lockfile, epoch: Int64) throws -> String {
        guard let work = options.settings.workDirectory else {
            throw UsageError("--print-script needs --workdir, the directory a --sandbox none --prepare-only build prepared")
        }
        let toolchain = try toolchain(lock: lock)
        let layout = BuildLayout(build: work, toolchain: toolchain.hostRoot, zigCache: BuildLayout.zigCache(inWork: work))
        return StepRunner.plainScript(
            try recipe(lock: lock, layout: layout), layout: layout,
            title: "\(Self.product) for \(triple), the recipe's commands without krnative (written by krnative build-\(Self.name) --print-script)"
                .replacingOccurrences(of: "build-recipe", with: "build-recipe \(recipeName)"),
            epoch: epoch)
    }

    /// Copies `relative` of the install tree (a regular file reached through real directories) to
    /// the output directory as `name`, executable, whole or not at all; its digest and size.
    func publish(_ relative: String, of stage: StepResultTree, as name: String) throws -> (SHA256Digest, Int64) {
        try FileSystem.createDirectory(options.outputDirectory)
        let temp = options.outputDirectory + "/.\(name).partial"
        FileSystem.remove(temp)
        try stage.copyFile(relative, to: temp, mode: 0o755)
        let (digest, size) = try SHA256Digest.of(fileAt: temp)
        try FileSystem.rename(temp, to: options.outputDirectory + "/" + name)
        return (digest, size)
    }

    /// Writes a report as sorted, indented JSON, whole or not at all.
    func writeReport(_ report: some Encodable, to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try FileSystem.writeAtomically(try encoder.encode(report), to: path)
    }
}
