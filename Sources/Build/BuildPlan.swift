import Compile
import Foundation
import KrnativeBase
import Lock
import Toolchain

/// A build request resolved once against a lock: the recipes it compiles (read here, once), the
/// lock's inputs it uses, its build key and the key's parts, the epoch every step gets and every
/// output is clamped to, its steps and its output names. `VolumeBuild` runs a plan; `build` (each
/// build of `--all`, each `--check` run through `build --request`), `verify` and the check's
/// seeded stores take theirs from here, so that none of these is derived twice or two ways, and a
/// recipe edited while a build runs cannot make its key disagree with the steps that ran.
public struct BuildPlan: Sendable {
    public let request: BuildRequest
    public let lock: Lockfile
    /// The recipes the build compiles, by name: ttyd's, and the runtime's when it is built here.
    public let recipes: [String: RecipeFile]
    /// The lock's inputs the build uses (`VolumeBuild.inputs(of:in:host:toolchain:runtime:sources:)`).
    public let inputs: [LockedInput]
    /// Everything that decides the outputs, by name (`BuildKey.parts`), and their digest.
    public let keyParts: [String: String]
    public let key: SHA256Digest
    /// The SOURCE_DATE_EPOCH of every step and every output's times: the request's, else the lock's.
    public let sourceDateEpoch: Int64
    /// How many steps ttyd's recipe has, and the runtime's when it is compiled here (for `[k/n]`).
    public let recipeSteps: (ttyd: Int, runtime: Int)

    /// The plan of `request` from `lock` on `host`, with `executable` the krnative that runs in
    /// the sandbox (in the key by its hash).
    public init(request: BuildRequest, lock: Lockfile, executable: String, host: HostPlatform = .current) throws {
        self.request = request
        self.lock = lock
        let directory = request.locations.recipesDirectory
        var recipes = [TtydBuild.name: try RecipeFile.load(TtydBuild.name, from: directory)]
        if request.runtime == .source { recipes[RuntimeBuild.name] = try RecipeFile.load(RuntimeBuild.name, from: directory) }
        self.recipes = recipes
        inputs = VolumeBuild.inputs(
            of: request.target, in: lock, host: host, toolchain: request.toolchain, runtime: request.runtime,
            sources: Set(recipes.values.flatMap(\.components)))
        keyParts = try BuildKey.parts(of: request, lock: lock, executable: executable)
        key = BuildKey.digest(of: keyParts)
        sourceDateEpoch = request.epoch(of: lock)
        let context = RecipeFile.Context(
            layout: .sandboxed, target: request.target, buildArch: host.arch, triple: request.target.ttydTriple, jobs: 1, versions: [:])
        recipeSteps = (
            try recipes[TtydBuild.name]!.recipe(for: context).steps.count,
            try recipes[RuntimeBuild.name]?.recipe(for: context).steps.count ?? 0
        )
    }

    /// The file name of `output` for this build's target, flavour and package version.
    public func name(_ output: BuildOutput) -> String {
        VolumeBuild.name(output, target: request.target, flavour: request.chosenFlavour, packageVersion: request.packageVersion)
    }

    /// The file names of the outputs, in the order the manifest lists them.
    public var outputNames: [String] { BuildOutput.allCases.map(name) }
}
