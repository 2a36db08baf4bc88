import ArgumentParser
import Build
import Compile
import Foundation
import Inputs
import KrnativeBase
import Lock
import Sandbox
import Store
import Toolchain

extension ToolchainKind: ExpressibleByArgument {}
extension Architecture: ExpressibleByArgument {}

/// The options of the commands that build one target from a recipe's steps (build-ttyd,
/// build-runtime), and what they do with them.
struct RecipeBuildArguments: ParsableArguments {
    @OptionGroup var inputs: InputOptions
    @Option(name: .customLong("out"), help: "Where the output and its report go. Default: the project's out/.") var outOption: String?
    @Option(name: .customLong("patches"), help: "The patches directory. Default: the project's patches/, else those krnative was built with.") var patchesOption: String?
    @Option(help: "The recipes directory (recipes/<name>.json: each native build's steps as data). Default: the project's recipes/, else those krnative was built with.") var recipes: String?
    @Option(help: "namespaces, or none to build without isolation. Default: namespaces; env KRNATIVE_SANDBOX.") var sandbox: Isolation?
    @Option(parsing: .unconditional, help: "Parallel compile jobs. Default: the number of CPUs.") var jobs: Int?
    @Option(parsing: .unconditional, help: "How many steps that need nothing of one another compile at once, each with --jobs. Default: 2.")
    var concurrentSteps: Int?
    @Option(
        parsing: .unconditional,
        help: ArgumentHelp("The SOURCE_DATE_EPOCH every step gets (in each step's key), in seconds since 1970. Default: the lock's sourceDateEpoch.", valueName: "seconds"))
    var sourceDateEpoch: Int64?
    @Option(help: "Build in this directory instead of a temporary one (kept).") var workdir: String?
    @OptionGroup var limits: StepLimitOptions
    @Flag(help: "Compile every step, and warm Zig's cache, even when the step cache holds their results.") var rebuild = false
    @Flag(help: "Print the report as JSON on stdout.") var json = false
    @Flag(help: "Unpack and patch the sources into --workdir, and compile nothing.") var prepareOnly = false
    @Flag(help: "Build nothing: print the recipe's commands as a plain bash script for --workdir (prepared by --sandbox none --prepare-only).")
    var printScript = false

    var out: String { inputs.project.file(outOption, default: "out") }
    var patches: String { inputs.project.patches(patchesOption) }

    func validate() throws {
        try requirePositive(["--jobs": jobs, "--concurrent-steps": concurrentSteps])
        try BuildCommand.validateEpoch(sourceDateEpoch)
        if prepareOnly && printScript { throw ValidationError("--prepare-only and --print-script contradict each other: prepare first, then print the script") }
        if prepareOnly && workdir == nil { throw ValidationError("--prepare-only needs --workdir DIR, where the sources are left") }
        if printScript && workdir == nil {
            throw ValidationError("--print-script needs --workdir DIR, the directory a --sandbox none --prepare-only run prepared")
        }
    }

    /// What these options ask of a build of `target`.
    func options(for target: Target) throws -> RecipeBuildOptions {
        var settings = StepRunner.Settings(entryExecutable: currentExecutable, patchesDirectory: patches)
        settings.recipesDirectory = inputs.project.recipes(recipes)
        settings.sourceDateEpoch = sourceDateEpoch
        settings.isolation = try Isolation.chosen(sandbox)
        if let jobs { settings.jobs = jobs }
        if let concurrentSteps { settings.concurrentSteps = concurrentSteps }
        settings.workDirectory = workdir
        settings.rebuild = rebuild
        settings.rewarmZig = rebuild
        settings.prepareOnly = prepareOnly
        settings.lockPath = inputs.lockPath
        settings.stepLimits = try limits.chosen()
        return RecipeBuildOptions(target: target, outputDirectory: out, settings: settings)
    }

    /// Builds, prepares or prints the script, as the options say, with the build `make` returns.
    func run<Build: RecipeBuild>(target: Target, _ make: (RecipeBuildOptions, InputResolver) throws -> Build) throws {
        try perform("build-\(Build.name)") {
            let lock = try Lockfile.load(from: inputs.lockPath)
            let started = Date()
            let build = try make(try options(for: target), InputResolver(store: try Store(root: inputs.storePath)))
            if printScript { return print(try build.plainScript(lock: lock, epoch: sourceDateEpoch ?? lock.sourceDateEpoch), terminator: "") }
            let report = try build.run(lock: lock)
            if prepareOnly { return print("prepared \(report.sources.count) sources in \(workdir ?? "")") }
            if json { return printJSON(report) }
            if let produced = report.produced {
                let size = FileSystem.size(of: out + "/" + produced.file).map { "\($0) bytes, " } ?? ""
                print("\(out)/\(produced.file): \(size)sha256 \(produced.sha256), \(String(format: "%.0f", Date().timeIntervalSince(started))) s")
            }
        }
    }
}

struct BuildTtydCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build-ttyd",
        abstract: "Cross-compile the static ttyd of a target from the lock's sources (leaves ttyd_linux.<arch>.bin).",
        discussion: helpText(examples: "krnative build-ttyd --target musllinux-aarch64 --out ttyd-out"))

    @Option(help: "The target whose ttyd to build.") var target: Target
    @Option(help: "zig or musl-cross (x86_64 hosts only). Default: zig.") var toolchain: ToolchainKind?
    @OptionGroup var build: RecipeBuildArguments

    func run() throws {
        try build.run(target: target) { TtydBuild(options: $0, toolchain: toolchain ?? Toolchain.defaultKind(for: .current), resolver: $1) }
    }
}

struct BuildRuntimeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build-runtime",
        abstract: "Compile a target's CPython and its libraries from the lock's sources with Zig "
            + "(leaves cpython-<version>-<triple>-krnative-install_only_stripped.tar.xz and its .json report).",
        discussion: helpText(
            "The runtime that `krnative build --runtime source` lays out, built alone. With --sandbox none --prepare-only --workdir W "
                + "it unpacks and patches the sources (the recipe's edits too); --print-script then prints the steps' commands as a plain "
                + "bash script for W.",
            examples: "krnative build-runtime --target musllinux-x86_64 --out runtime-out"))

    @Option(help: "The target whose runtime to build.") var target: Target
    @OptionGroup var build: RecipeBuildArguments

    func run() throws {
        try build.run(target: target) { RuntimeBuild(options: $0, resolver: $1) }
    }
}

struct BuildRecipeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build-recipe",
        abstract: "Build any recipe under recipes/ that names its outputs, for a target, with Zig (leaves its outputs and <recipe>.<arch>.json).",
        discussion: helpText(
            "A recipe is a file: recipes/NAME.json, its steps as data and the files it leaves (`outputs`: a file name and its path in the "
                + "install tree). A new native component needs a recipe file, its sources in the lock, and no code.",
            examples: "krnative build-recipe ttyd --target musllinux-aarch64 --out ttyd-out"))

    @Argument(help: "The recipe: recipes/NAME.json.") var name: String
    @Option(help: "The target to build for.") var target: Target
    @OptionGroup var build: RecipeBuildArguments

    func run() throws {
        try build.run(target: target) { try GenericRecipeBuild(recipe: name, options: $0, resolver: $1) }
    }
}

struct BuildRunnerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build-runner",
        abstract: "Build the agent's runner binaries for an architecture (ttyd_linux, dropbearmulti, sftp-server, tmux: <name>.<arch>.bin) "
            + "with their manifest and SBOM.",
        discussion: helpText(
            """
            Each binary is built by its recipe (recipes/ttyd.json, dropbear.json, sftp-server.json, tmux.json) with Zig for static \
            musl, in the sandbox, each step cached, under the file name lablup/backend.ai's src/ai/backend/runner/ uses. Beside \
            them: krnative-runner-manifest.<arch>.json (every binary's sha256, recipe, sources and patches) and \
            krnative-runner-sbom.<arch>.spdx.json. --check then builds the set again with every step compiled afresh, in a \
            directory of its own, and compares: exit status 0 when every binary has the same bytes, 1 when not (the second build \
            is kept then). `krnative verify --manifest krnative-runner-manifest.<arch>.json` rebuilds a published set the same way.
            """,
            examples: "krnative build-runner --arch aarch64", "krnative build-runner --arch x86_64 --only dropbear,sftp-server --check",
            "krnative build-runner --arch aarch64 --offline"))

    @Option(help: "x86_64 or aarch64.") var arch: Architecture
    @Option(help: ArgumentHelp("Build only these recipes (comma-separated). Default: \(RunnerSet.recipes.joined(separator: ",")).", valueName: "recipes"))
    var only: String?
    @Flag(help: "Build the set a second time, every step compiled afresh, and compare the bytes.") var check = false
    @Flag(help: "Open no socket and run no pip: take every input from the store, naming what it lacks. Default: off; env KRNATIVE_OFFLINE (1, true, yes, on).")
    var offline = false
    @OptionGroup var build: RecipeBuildArguments

    func validate() throws {
        if build.prepareOnly || build.printScript { throw ValidationError("--prepare-only and --print-script take one recipe: use build-recipe NAME") }
        if build.workdir != nil { throw ValidationError("--workdir takes one recipe's build: use build-recipe NAME --workdir DIR") }
    }

    func run() throws {
        var identical = true
        try perform("build-runner") {
            let lock = try Lockfile.load(from: build.inputs.lockPath)
            let resolver = InputResolver(store: try Store(root: build.inputs.storePath))
            let recipes = only.map { $0.split(separator: ",").map(String.init) } ?? RunnerSet.recipes
            var set = try RunnerSet(arch: arch, only: recipes, options: try build.options(for: .musllinuxX86_64), resolver: resolver)
            set.toolVersion = KrnativeVersion.current
            try Self.fetchInputs(of: set, lock: lock, inputs: build.inputs, offline: offline)
            let manifest = try set.run(lock: lock)
            if !build.json { Self.show(manifest, in: build.out) }
            guard check else { return build.json ? printJSON(manifest) : () }
            let checkDirectory = build.out + "/check.\(arch.rawValue)"  // krnative's own: a stale one goes
            FileSystem.remove(checkDirectory)
            let again = try set.rebuilt(into: checkDirectory, lock: lock)
            identical = Self.compare(manifest, at: build.out, with: again, json: build.json)
            if identical { FileSystem.remove(again.directory) }
        }
        if !identical { throw ExitCode(1) }
    }

    /// What `set` is built from, fetched into the store first — or, `offline`, named with the
    /// `--runner` way to bring it when the store lacks it — before any step runs.
    static func fetchInputs(of set: RunnerSet, lock: Lockfile, inputs: InputOptions, offline: Bool) throws {
        _ = try krnative.fetchInputs(
            set.neededInputs(lock), for: "--target \(set.target.rawValue) --runner", inputs: inputs,
            network: try NetworkOptions.parse(offline ? ["--offline"] : []), json: false, summary: { Reporting.note($0) })
    }

    static func show(_ manifest: RunnerManifest, in directory: String) {
        for binary in manifest.binaries { print("\(directory)/\(binary.file): \(binary.size) bytes, sha256 \(binary.sha256)") }
        print("\(directory)/\(RunnerManifest.fileName(arch: manifest.arch)), \(RunnerManifest.sbomName(arch: manifest.arch))")
    }

    /// Prints whether `again` (built in its directory) made the same bytes as `published` (in `source`); whether it did.
    static func compare(_ published: RunnerManifest, at source: String, with again: (manifest: RunnerManifest, directory: String), json: Bool) -> Bool {
        let differing = published.differences(from: again.manifest)
        struct Verdict: Encodable { var identical: Bool, differing: [String], rebuild: String }
        if json {
            printJSON(Verdict(identical: differing.isEmpty, differing: differing, rebuild: again.directory))
        } else if differing.isEmpty {
            print("same bytes: every binary of \(source) (\(published.binaries.map(\.file).joined(separator: ", "))) built again, every step compiled afresh")
        } else {
            print("differ: \(differing.joined(separator: ", ")) (\(source) against \(again.directory), kept)")
        }
        return differing.isEmpty
    }
}
