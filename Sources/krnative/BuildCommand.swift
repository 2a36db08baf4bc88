import ArgumentParser
import Build
import Compile
import Fetch
import Foundation
import KrnativeBase
import Lock
import Sandbox
import Store
import Toolchain
import Verify

struct BuildCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Build the volume and plugin wheel of a target.",
        discussion: """
            Fetches what the target needs (or, with --offline, takes it from the store), builds ttyd \
            in the sandbox, lays out and packs the volume, writes the plugin wheel, the manifest and \
            the SBOM into the output directory, whole or not at all.
            """)

    @OptionGroup var inputs: InputOptions
    @Option(help: "The target to build.") var target: Target
    @Option(help: "Where the outputs go. Default: ./out.") var out = "out"
    @Option(help: "Package and volume versions. Default: ./krunner.json.") var config = KrunnerConfig.defaultFileName
    @Option(help: "The patches directory. Default: ./patches.") var patches = "patches"
    @Option(help: "zig or musl-cross (x86_64 hosts only). Default: zig.") var toolchain: ToolchainKind?
    @Option(help: "pbs: python-build-standalone's archive from the lock; source: CPython compiled here from the lock's sources. Default: krunner.json's runtime, else pbs.")
    var runtime: RuntimeSource?
    @Option(help: "namespaces, or none to build without isolation (recorded in the manifest). Default: namespaces; env KRNATIVE_SANDBOX.")
    var sandbox: Isolation?
    @Option(help: "enforce: a volume that breaks its target's policy fails the build; report: print and record it in the manifest. Default: enforce.")
    var audit: AuditMode = .enforce
    @Option(help: "The audit policy. Default: ./sysroots/audit-policy.json.") var policy = AuditPolicy.defaultPath
    @Flag(help: "Build even when the output directory already holds this build's outputs.") var force = false
    @Option(help: "Parallel compile jobs (make -j). Default: the number of CPUs.") var compileJobs: Int?
    @Option(help: "xz compression threads; the bytes are the same for any number. Default: the number of CPUs.") var packThreads: Int?
    @Flag(help: "Then build again elsewhere with the circumstances varied, offline, and compare every output (exit 1 when they differ).")
    var check = false
    @Option(
        help: ArgumentHelp(
            "With --check: one run per listed variation, or all, instead of one run with the cheap ones together.",
            discussion: "Variations: \(Variation.allCases.map(\.rawValue).joined(separator: ", ")).", valueName: "list"))
    var variations: String?
    @Flag(help: "With --check: every run starts from an empty step cache (compiles ttyd again).") var freshSteps = false
    @Flag(help: "With --check: keep the runs' directories even when identical.") var keep = false
    @Option(help: "With --check: the ordinary user the user variation builds as. Default: nobody.") var checkUser = "nobody"
    @OptionGroup var network: NetworkOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        try perform("build") {
            let started = Date()
            let toolchain = toolchain ?? Toolchain.defaultKind(for: .current)
            let lock = try Lockfile.load(from: inputs.lockPath)
            let krunner = try KrunnerConfig.load(from: config)
            var options = VolumeBuild.Options(
                target: target, config: krunner, outputDirectory: out, patchesDirectory: patches, entryExecutable: currentExecutable)
            options.toolchain = toolchain
            options.runtime = runtime ?? krunner.runtime ?? .pbs
            options.isolation = Isolation.chosen(sandbox)
            options.lockPath = inputs.lockPath
            options.toolVersion = KrnativeVersion.current
            options.auditPolicy = try AuditPolicy.load(from: policy)
            options.auditMode = audit
            if let compileJobs { options.jobs = max(1, compileJobs) }
            if let packThreads { options.packThreads = max(1, packThreads) }
            let build = VolumeBuild(options: options, resolver: InputResolver(store: try Store(root: inputs.storePath)))
            let runs = try checkRuns()
            // With --json, stdout holds the one JSON document; the lines for people go to stderr.
            let say: (String) -> Void = { line in
                if output.json { FileHandle.standardError.write(Data((line + "\n").utf8)) } else { print(line) }
            }
            let manifest: BuildManifest
            if !force, let existing = try build.upToDate(lock: lock) {
                manifest = existing
                for file in manifest.outputs { say("\(file.sha256)  \(out)/\(file.file)  (\(file.size) bytes)") }
                say("\(target.rawValue) is up to date in \(out) (same build key, outputs as the manifest lists them)")
            } else {
                _ = try fetchInputs(
                    VolumeBuild.inputs(of: target, in: lock, host: .current, toolchain: toolchain, runtime: options.runtime), inputs: inputs, network: network, json: false,
                    summary: say)
                manifest = try build.run(lock: lock)
                for file in manifest.outputs { say("\(file.sha256)  \(out)/\(file.file)  (\(file.size) bytes)") }
                say("built \(target.rawValue) in \(String(format: "%.0f", Date().timeIntervalSince(started))) s")
            }
            guard let runs else { return output.json ? printJSON(manifest) : () }
            var checkOptions = ReproducibilityCheck.Options(
                target: target, executable: currentExecutable, reference: absolute(out), workDirectory: absolute(out) + ".check",
                buildArguments: [
                    "--lock", absolute(inputs.lockPath), "--config", absolute(config), "--patches", absolute(patches),
                    "--policy", absolute(policy), "--audit", audit.rawValue, "--toolchain", toolchain.rawValue,
                    "--sandbox", options.isolation.rawValue, "--runtime", options.runtime.rawValue,
                ],
                lockPath: absolute(inputs.lockPath), store: absolute(inputs.storePath), toolchain: toolchain, runs: runs)
            checkOptions.freshSteps = freshSteps
            checkOptions.keep = keep
            checkOptions.user = checkUser
            checkOptions.compileJobs = options.jobs
            checkOptions.packThreads = options.packThreads
            let report = try ReproducibilityCheck(options: checkOptions).run()
            if output.json { printJSON(report) } else { print(ReproducibilityCheck.text(report), terminator: "") }
            if !report.reproducible { throw ExitCode(1) }
        }
    }
}

extension AuditMode: ExpressibleByArgument {}
extension RuntimeSource: ExpressibleByArgument {}

extension BuildCommand {
    /// The check's runs: nil without --check; one run with the cheap variations together; or one
    /// run per variation listed.
    func checkRuns() throws -> [[Variation]]? {
        guard check else {
            if variations != nil || freshSteps || keep { throw UsageError("--variations, --fresh-steps and --keep go with --check") }
            return nil
        }
        guard let variations else { return [Variation.together] }
        if variations == "all" { return Variation.allCases.map { [$0] } }
        return try variations.split(separator: ",").map { name in
            guard let variation = Variation(rawValue: String(name)) else {
                throw UsageError("unknown variation '\(name)'; the variations are \(Variation.allCases.map(\.rawValue).joined(separator: ", ")), or all")
            }
            return [variation]
        }
    }
}

/// `path` made absolute against the current directory.
func absolute(_ path: String) -> String {
    path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
}
