import ArgumentParser
import Build
import Compile
import Fetch
import Foundation
import Inputs
import KrnativeBase
import Lock
import Sandbox
import Store
import Synchronization
import Toolchain
import Verify

struct BuildCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Build the volume and plugin wheel of a target.",
        discussion: helpText(
            """
            Fetches what the target needs (or, with --offline, takes it from the store), builds ttyd \
            in the sandbox, lays out and packs the volume, writes the plugin wheel, the manifest and \
            the SBOM into the output directory, whole or not at all.
            """,
            examples: "krnative build --target manylinux-x86_64", "krnative build --target musllinux-aarch64 --offline --out arm-out", "krnative build --target manylinux-x86_64 --check --variations all",
            "krnative build --all --remote-cache https://cache.internal:8080\n--remote-cache-upload"))

    @OptionGroup var inputs: InputOptions
    @OptionGroup var asked: BuildChoiceOptions
    @Option(name: .customLong("out"), help: "Where the outputs go. Default: the project's out/.") var outOption: String?
    @OptionGroup var choices: InputChoiceOptions
    @Option(help: "The volume ledger (the tree hash each volume number holds), or none to not check. Default: krunner-volumes.json beside --config.")
    var ledger: String?
    @Flag(
        inversion: .prefixedNo,
        help:
            "Record the volume in the ledger when its number is not there yet (the default; a recorded number is never changed). --no-record-volume: an unrecorded number is an error, as a release wants."
    )
    var recordVolume: Bool?
    @Option(
        help: "namespaces, or none to build without isolation (recorded in the manifest; with --request, instead of the file's). Default: namespaces; env KRNATIVE_SANDBOX."
    )
    var sandbox: Isolation?
    @OptionGroup var limits: StepLimitOptions
    @Option(
        help: "enforce: a volume that breaks its target's policy fails the build; report: print and record it in the manifest (with --request, instead of the file's). Default: enforce."
    )
    var audit: AuditMode?
    @Option(
        name: .customLong("request"),
        help: "A build request file, as --check writes for its runs: the target, lock, patches and everything that decides the bytes, instead of those options.")
    var requestFile: String?
    @Flag(help: "Build even when the output directory already holds this build's outputs, and compile the .pyc and pack the volume again rather than copy what the store kept from the same content.") var force = false
    @Option(parsing: .unconditional, help: "Parallel compile jobs (make -j). Default: the number of CPUs.") var compileJobs: Int?
    @Option(parsing: .unconditional, help: "How many steps that need nothing of one another compile at once, each with --compile-jobs. Default: 2.")
    var concurrentSteps: Int?
    @Option(parsing: .unconditional, help: "xz compression threads; the bytes are the same for any number. Default: the number of CPUs.")
    var packThreads: Int?
    @Flag(help: "Then build again elsewhere with the circumstances varied, offline, and compare every output (exit 1 when they differ).")
    var check = false
    @Option(
        help: ArgumentHelp(
            "With --check: one run per listed variation (a+b: one run with both), or all, instead of one run with the cheap ones together.",
            discussion: "Variations: \(Variation.allCases.map(\.rawValue).joined(separator: ", ")).", valueName: "list"))
    var variations: String?
    @Flag(help: "With --check: every run starts from an empty step cache (compiles ttyd again).") var freshSteps = false
    @Flag(help: "With --check: keep the runs' directories even when identical.") var keep = false
    @Option(help: "With --check: the ordinary user the user variation builds as.") var checkUser = "nobody"
    @OptionGroup var network: NetworkOptions
    @OptionGroup var output: OutputOptions

    func validate() throws {
        try requirePositive(["--compile-jobs": compileJobs, "--pack-threads": packThreads, "--concurrent-steps": concurrentSteps])
        if let xzPreset = asked.xzPreset, !(0...9).contains(xzPreset) { throw ValidationError("--xz-preset takes a whole number from 0 to 9 (got \(xzPreset))") }
        try Self.validateEpoch(asked.sourceDateEpoch)
        if requestFile != nil {
            let given = optionsTheRequestHolds
            guard given.isEmpty else { throw ValidationError("--request FILE holds the target and what decides the bytes: drop \(given.joined(separator: ", "))") }
            return
        }
        // No target at all is said in run(): ArgumentParser reports an option it does not know
        // (`--targt`, with the nearest name) only after validate() has passed.
        if asked.all && !asked.target.isEmpty {
            throw ValidationError("--all and --target \(asked.target.map(\.rawValue).joined(separator: ", ")) contradict each other: give one or the other")
        }
        if check && chosenTargets.count > 1 { throw ValidationError("--check compares the builds of one target: give one --target") }
    }

    /// The options given that a request file holds instead: those of the two groups of what a
    /// build makes, and the lock.
    var optionsTheRequestHolds: [String] {
        (inputs.lock != nil ? ["--lock"] : []) + CommandLineValues.given(in: asked) + CommandLineValues.given(in: choices)
    }

    /// The targets asked for, each once, in the order given.
    var chosenTargets: [Target] {
        asked.all ? Target.allCases : asked.target.reduce(into: []) { chosen, target in if !chosen.contains(target) { chosen.append(target) } }
    }

    func run() throws {
        try perform("build") {
            guard requestFile != nil || !chosenTargets.isEmpty else { throw UsageError("name a --target (repeatable), or --all") }
            // A request file records its choices; the sandbox and the audit mode are this command line's.
            let request = try requestFile.map {
                try BuildRequest.load(from: $0).underLocalPolicy(try LocalPolicy.chosen(sandbox: sandbox, audit: audit), source: $0, field: "choices")
            }
            let lock = try Lockfile.load(from: request?.locations.lockPath ?? inputs.lockPath)
            let store = try Store(root: inputs.storePath)
            let remoteCache = try network.remoteCache(store: store)
            if let request { return try build(request, lock: lock, store: store, remoteCache: remoteCache) }
            let requests = try chosenRequests()
            if check && requests.count > 1 {
                let flavours = requests.map(\.chosenFlavour.rawValue).joined(separator: " and ")
                throw UsageError("--check compares the builds of one volume; \(requests[0].target.rawValue) ships as \(flavours): name one with --flavour")
            }
            guard requests.count > 1 else { return try build(requests[0], lock: lock, store: store, remoteCache: remoteCache) }
            var rows: [TargetRow] = []
            for request in requests {
                let started = Date()
                let steps = StepCounts()
                do {
                    try build(request, lock: lock, store: store, remoteCache: remoteCache, steps: steps)
                    rows.append(TargetRow(request: request, started: started, steps: steps, outputs: out))
                } catch {
                    if Cancellation.requested { throw error }
                    Reporting.error("krnative: build of \(request.target.rawValue) (\(request.chosenFlavour.rawValue)) failed: \(error.text)")
                    rows.append(TargetRow(request: request, started: started, steps: steps, error: error))
                }
            }
            if output.json { printJSON(rows) } else { print(TargetRow.table(rows), terminator: "") }
            if let failed = rows.first(where: { $0.error != nil }) { throw ExitCode(failed.exitCode) }
        }
    }

    /// Every build the options ask for: each target as each of its flavours asked for (--flavour,
    /// else krunner.json's, else those it numbers), in the order given.
    func chosenRequests() throws -> [BuildRequest] {
        let krunner = try KrunnerConfig.load(from: config)
        return try chosenTargets.flatMap { target in
            let flavours = asked.flavour.isEmpty ? try krunner.flavours(of: target) : asked.flavour.filter { target.flavours.contains($0) }
            guard !flavours.isEmpty else {
                throw UsageError(
                    "\(target.rawValue) volumes ship as \(target.flavours.map(\.rawValue).joined(separator: " or ")); "
                        + "--flavour \(asked.flavour.map(\.rawValue).joined(separator: ", ")) names none of them")
            }
            return try flavours.map { try request(for: target, flavour: $0, config: krunner) }
        }
    }

    /// What the options ask to build of `target` as `flavour`.
    func request(for target: Target, flavour: Flavour, config krunner: KrunnerConfig) throws -> BuildRequest {
        var chosen = try BuildRequest.Choices(
            target: target, flavour: flavour, config: krunner, toolchain: choices.toolchain(for: .current),
            runtime: choices.runtime, isolation: try Isolation.chosen(sandbox), auditMode: audit ?? .enforce, auditPolicy: try AuditPolicy.load(from: policy))
        chosen.xzPreset = asked.xzPreset
        chosen.sourceDateEpoch = asked.sourceDateEpoch
        return BuildRequest(
            choices: chosen, locations: .init(lockPath: inputs.lockPath, patchesDirectory: patches, recipesDirectory: inputs.project.recipes(choices.recipes)))
    }

    /// How the options ask to run a build (none of it changes the bytes).
    func settings(remoteCache: RemoteCache?, steps: StepCounts?) throws -> VolumeBuild.Settings {
        var settings = VolumeBuild.Settings(outputDirectory: out, entryExecutable: currentExecutable)
        settings.toolVersion = KrnativeVersion.current
        settings.ledger = try ledgerCheck()
        if let compileJobs { settings.jobs = max(1, compileJobs) }
        if let concurrentSteps { settings.concurrentSteps = concurrentSteps }
        if let packThreads { settings.packThreads = max(1, packThreads) }
        settings.reuseDerivedOutputs = !force
        settings.remoteCache = remoteCache
        settings.stepLimits = try limits.chosen()
        if let steps { settings.onTtydSteps = steps.record }
        return settings
    }

    /// One request: the no-op check, else the build, and with --check the variations. With
    /// `steps`, one of several: its JSON goes into the table, not out on its own.
    func build(_ request: BuildRequest, lock: Lockfile, store: Store, remoteCache: RemoteCache?, steps: StepCounts? = nil) throws {
        let build = try VolumeBuild(
            request: request, lock: lock, settings: try settings(remoteCache: remoteCache, steps: steps), resolver: InputResolver(store: store))
        let runs = try checkRuns()
        let manifest: BuildManifest
        let verdict = force ? nil : try build.upToDate()
        let rebuildReasons = verdict?.reasons ?? ["forced (--force)"]
        if case .upToDate(let existing) = verdict {
            manifest = existing
            for file in manifest.outputs { say("\(file.sha256)  \(out)/\(file.file)  (\(file.size) bytes)") }
            say("\(request.target.rawValue) is up to date in \(out) (same build key, outputs as the manifest lists them)")
        } else {
            manifest = try make(build, remoteCache: remoteCache, verdict: verdict, reasons: rebuildReasons)
        }
        guard let runs else {
            return output.json && steps == nil ? printJSON(BuildReport(manifest: manifest, rebuildReasons: rebuildReasons)) : ()
        }
        try check(request, runs: runs, settings: build.settings)
    }

    /// With --json, stdout holds the one JSON document; the lines for people go to stderr.
    func say(_ line: String) {
        if output.json { Reporting.note(line) } else { print(line) }
    }

    /// The build that has something to do (`VolumeBuild.make`), with what it did said.
    func make(_ build: VolumeBuild, remoteCache: RemoteCache?, verdict: UpToDateVerdict?, reasons: [String]) throws -> BuildManifest {
        let started = Date()
        let (target, log) = (build.request.target, build.settings.log)
        if case .noManifest = verdict { log("building \(target.rawValue) into \(out)") } else { log("rebuilding \(target.rawValue): " + reasons.joined(separator: "; ")) }
        let manifest = try build.make { needed in
            _ = try fetchInputs(
                needed, for: "--target \(target.rawValue)", inputs: inputs, network: network, json: false, remoteCache: remoteCache,
                lockPath: build.request.locations.lockPath, summary: say)
        }
        if let remoteCache {
            let counts = remoteCache.summary
            log("remote cache \(remoteCache.base): \(counts.hits) hits, \(counts.misses) misses, \(counts.rejected) rejected, \(counts.uploads) uploads")
        }
        for file in manifest.outputs { say("\(file.sha256)  \(out)/\(file.file)  (\(file.size) bytes)") }
        say("built \(target.rawValue) in \(String(format: "%.0f", Date().timeIntervalSince(started))) s")
        return manifest
    }

    /// --check: the runs, each building `request` from a file with its variations, against this build's outputs.
    func check(_ request: BuildRequest, runs: [[Variation]], settings: VolumeBuild.Settings) throws {
        var request = request
        request.locations = request.locations.absolute
        var checkOptions = ReproducibilityCheck.Options(
            request: request, executable: currentExecutable, reference: absolute(out), workDirectory: absolute(out) + ".check",
            store: absolute(inputs.storePath), runs: runs)
        checkOptions.freshSteps = freshSteps
        checkOptions.keep = keep
        checkOptions.user = checkUser
        checkOptions.compileJobs = settings.jobs
        checkOptions.packThreads = settings.packThreads
        let report = try ReproducibilityCheck(options: checkOptions).run()
        if output.json { printJSON(report) } else { print(ReproducibilityCheck.text(report), terminator: "") }
        if !report.reproducible { throw ExitCode(1) }
    }
}

/// The steps of ttyd a build compiled, took from the step cache, or from the remote cache.
final class StepCounts: Sendable {
    private let recorded = Mutex<(compiled: Int, cached: Int, remote: Int)?>(nil)
    var counts: (compiled: Int, cached: Int, remote: Int)? { recorded.withLock { $0 } }
    func record(_ report: TtydBuild.Report) { recorded.withLock { $0 = report.counts } }
}

/// A line of `build --all`'s table.
struct TargetRow: Encodable {
    var target: Target
    var flavour: Flavour
    var seconds: Double
    var compiled, cached, remote: Int?
    var volumeSha256: SHA256Digest?
    var error: String?
    var exitCode: Int32 = 0

    init(request: BuildRequest, started: Date, steps: StepCounts, outputs directory: String? = nil, error: (any Error)? = nil) {
        (target, flavour) = (request.target, request.chosenFlavour)
        seconds = Date().timeIntervalSince(started)
        (compiled, cached, remote) = (steps.counts?.compiled, steps.counts?.cached, steps.counts?.remote)
        if let directory, error == nil {
            let manifest = directory + "/" + BuildManifest.fileName(for: target, flavour: flavour)
            volumeSha256 = (try? FileSystem.readRegularFile(manifest))
                .flatMap { try? DuplicateJSONKey.decode(BuildManifest.self, from: $0) }?
                .outputs.first { $0.file.hasSuffix(".tar.xz") }?.sha256
        }
        if let error {
            self.error = error.text
            exitCode = (error as? any KrnativeError)?.exitCode ?? (error as? ExitCode)?.rawValue ?? 1
        }
    }

    static func table(_ rows: [TargetRow]) -> String {
        let header = ["TARGET", "FLAVOUR", "RESULT", "TIME", "TTYD STEPS (compiled/cached/remote)", "VOLUME SHA256"]
        let lines = rows.map { row in
            [
                row.target.rawValue, row.flavour.rawValue, row.error == nil ? "built" : "FAILED (exit \(row.exitCode))", String(format: "%.0f s", row.seconds),
                row.compiled.map { "\($0)/\(row.cached ?? 0)/\(row.remote ?? 0)" } ?? "-", row.volumeSha256?.hex ?? "-",
            ]
        }
        let table = [header] + lines
        let widths = header.indices.map { column in table.map { $0[column].count }.max()! }
        return table.map { line in
            line.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n") + "\n"
    }
}

extension Error {
    /// What krnative prints for the error: its own description, or the error as Swift shows it.
    var text: String { (self as? any KrnativeError)?.description ?? "\(self)" }
}

extension AuditMode: ExpressibleByArgument {}
extension RuntimeSource: ExpressibleByArgument {}
extension Flavour: ExpressibleByArgument {}

extension BuildCommand {
    /// A `--source-date-epoch` every output can record (the lock's range), else a usage error.
    static func validateEpoch(_ epoch: Int64?) throws {
        guard let epoch, !Lockfile.sourceDateEpochRange.contains(epoch) else { return }
        let range = Lockfile.sourceDateEpochRange
        throw ValidationError("--source-date-epoch \(epoch) is outside \(range.lowerBound)...\(range.upperBound): a zip records no time beyond 2106")
    }

    var out: String { inputs.project.file(outOption, default: "out") }
    var config: String { choices.configPath(in: inputs.project) }
    var patches: String { inputs.project.patches(asked.patches) }
    var policy: String { inputs.project.file(asked.policy, default: AuditPolicy.defaultPath) }
}

extension BuildCommand {
    /// The ledger check --ledger and --[no-]record-volume ask for (none: no check).
    func ledgerCheck() throws -> VolumeLedgerCheck? {
        let path = ledger ?? VolumeLedger.path(besideConfig: config)
        guard path != "none" else {
            if let recordVolume {
                throw UsageError("--\(recordVolume ? "" : "no-")record-volume is about a ledger; --ledger none names none: drop one of them")
            }
            return nil
        }
        return VolumeLedgerCheck(path: path, record: recordVolume ?? true)
    }

    /// The check's runs: nil without --check; one run with the cheap variations together; or one
    /// run per item listed, an item one variation or several joined by `+` (`path+user`: one cold
    /// build with both, where two would each compile everything).
    func checkRuns() throws -> [[Variation]]? {
        guard check else {
            if variations != nil || freshSteps || keep { throw UsageError("--variations, --fresh-steps and --keep go with --check") }
            return nil
        }
        guard let variations else { return [Variation.together] }
        if variations == "all" { return Variation.allCases.map { [$0] } }
        return try variations.split(separator: ",").map { item in
            try item.split(separator: "+").map { name in
                guard let variation = Variation(rawValue: String(name)) else {
                    throw UsageError("unknown variation '\(name)'; the variations are \(Variation.allCases.map(\.rawValue).joined(separator: ", ")), or all; join several with + for one run")
                }
                return variation
            }
        }
    }
}

/// `path` made absolute against the current directory.
func absolute(_ path: String) -> String {
    path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
}

/// What `build` is asked to make besides what `InputChoiceOptions` and the lock say: with those,
/// the options a request file holds instead (`--request FILE`). Which of them a command line gave
/// is read off their values (`CommandLineValues.given`), so an option added here is refused beside
/// `--request` with no list to keep; its default must say nothing (nil, empty, false), or every
/// `--request` would be refused.
struct BuildChoiceOptions: ParsableArguments {
    @Option(help: "A target to build (repeatable).") var target: [Target] = []
    @Flag(help: "Every target, one after another (sharing the store, toolchains, Zig's cache and the step cache), then a table.")
    var all = false
    @Option(
        help: ArgumentHelp(
            "The package a volume ships as (repeatable): static-gnu (glibc targets); alpine or static-musl (musl targets: static-musl is the one the agent selects for Alpine images). Default: krunner.json's flavours for the target, else every flavour of it that krunner.json numbers.",
            valueName: "flavour"))
    var flavour: [Flavour] = []
    @Option(help: "The patches directory. Default: the project's patches/, else those krnative was built with.") var patches: String?
    @Option(help: "The audit policy. Default: the project's sysroots/audit-policy.json.") var policy: String?
    @Option(help: "The xz preset the volume is compressed with, 0 to 9 (in the build key). Default: 6.") var xzPreset: Int?
    @Option(
        parsing: .unconditional,
        help: ArgumentHelp(
            "The SOURCE_DATE_EPOCH every step gets and every output's times are clamped to, in seconds since 1970 (in the build key and the manifest; verify and --check rebuild with it), e.g. $(git log -1 --format=%ct). Default: the lock's sourceDateEpoch.",
            valueName: "seconds"))
    var sourceDateEpoch: Int64?
}

/// What decides which of the lock's inputs a build uses besides its target: `build` and
/// `bundle export` (which carries exactly those inputs across an air gap) take them alike.
struct InputChoiceOptions: ParsableArguments {
    @Option(help: "Package and volume versions, and the runtime a build uses by default. Default: the project's krunner.json.")
    var config: String?
    @Option(help: "zig or musl-cross (x86_64 hosts only). Default: zig.") var toolchain: ToolchainKind?
    @Option(
        help:
            "pbs: python-build-standalone's archive from the lock; source: CPython compiled here from the lock's sources. Default: krunner.json's runtime, else pbs."
    )
    var runtime: RuntimeSource?
    @Option(help: "The recipes directory (recipes/<name>.json: each native build's steps as data). Default: the project's recipes/, else those krnative was built with.") var recipes: String?

    func configPath(in project: Project) -> String { project.file(config, default: KrunnerConfig.defaultFileName) }

    /// The toolchain asked for, else the one a build on `host` uses.
    func toolchain(for host: HostPlatform) -> ToolchainKind { toolchain ?? Toolchain.defaultKind(for: host) }

    /// The runtime asked for, else the one `krunner.json` (`config`) names, else python-build-standalone's.
    func runtime(in project: Project) throws -> RuntimeSource {
        if let runtime { return runtime }
        return try KrunnerConfig.load(from: configPath(in: project)).runtime ?? .pbs
    }

    /// Whether the choices narrow what a command takes to one build's inputs.
    var given: Bool { toolchain != nil || runtime != nil }

    /// The inputs the builds of `targets` on `host` with these choices use, and the options that
    /// name those builds on the machine that runs them (`--target T --toolchain zig --runtime pbs`).
    func buildInputs(of targets: [Target], host: HostPlatform, lock: Lockfile, project: Project) throws -> (inputs: [LockedInput], options: String) {
        try Self.buildInputs(
            of: targets, host: host, toolchain: toolchain(for: host), runtime: runtime(in: project), recipes: project.recipes(recipes), lock: lock)
    }

    static func buildInputs(
        of targets: [Target], host: HostPlatform, toolchain: ToolchainKind, runtime: RuntimeSource, recipes: String, lock: Lockfile
    ) throws -> (inputs: [LockedInput], options: String) {
        var inputs: [LockedInput] = []
        for target in targets {
            for input in try VolumeBuild.inputs(of: target, in: lock, host: host, toolchain: toolchain, runtime: runtime, recipes: recipes)
            where !inputs.contains(where: { $0.name == input.name }) {
                inputs.append(input)
            }
        }
        return (inputs, Target.options(for: targets) + " --toolchain \(toolchain.rawValue) --runtime \(runtime.rawValue)")
    }
}

/// `--runner` of `fetch` and `bundle export`: the inputs of `build-runner` instead of a volume's build.
struct RunnerChoice: ParsableArguments {
    @Flag(help: "The builds of the agent's runner binaries (build-runner, for the targets' arches) instead of the volumes'.") var runner = false

    /// The inputs the options name and the options that name them: build-runner's with --runner
    /// (`--target T --runner`), else the volume builds' when `choices` narrow to one; nil when nothing narrows.
    func buildInputs(
        of targets: [Target], host: HostPlatform, lock: Lockfile, project: Project, choices: InputChoiceOptions
    ) throws -> (inputs: [LockedInput], options: String)? {
        guard runner else { return choices.given ? try choices.buildInputs(of: targets, host: host, lock: lock, project: project) : nil }
        guard !choices.given else { throw UsageError("--runner builds the runner binaries, always with Zig and from sources: drop --toolchain and --runtime") }
        var inputs: [LockedInput] = []
        for arch in Architecture.allCases where targets.contains(where: { $0.arch == arch }) {
            for input in try RunnerSet.inputs(arch: arch, host: host, lock: lock, recipesDirectory: project.recipes(choices.recipes))
            where !inputs.contains(where: { $0.name == input.name }) {
                inputs.append(input)
            }
        }
        return (inputs, Target.options(for: targets) + " --runner")
    }
}
