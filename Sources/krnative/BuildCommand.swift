import ArgumentParser
import Build
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
    @Option(help: "namespaces, or none to build without isolation (recorded in the manifest). Default: namespaces; env KRNATIVE_SANDBOX.")
    var sandbox: Isolation?
    @Option(help: "enforce: a volume that breaks its target's policy fails the build; report: print and record it in the manifest. Default: enforce.")
    var audit: AuditMode = .enforce
    @Option(help: "The audit policy. Default: ./sysroots/audit-policy.json.") var policy = AuditPolicy.defaultPath
    @Flag(help: "Build even when the output directory already holds this build's outputs.") var force = false
    @OptionGroup var network: NetworkOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        try perform("build") {
            let started = Date()
            let toolchain = toolchain ?? Toolchain.defaultKind(for: .current)
            let lock = try Lockfile.load(from: inputs.lockPath)
            var options = VolumeBuild.Options(
                target: target, config: try KrunnerConfig.load(from: config), outputDirectory: out, patchesDirectory: patches,
                entryExecutable: currentExecutable)
            options.toolchain = toolchain
            options.isolation = Isolation.chosen(sandbox)
            options.lockPath = inputs.lockPath
            options.toolVersion = KrnativeVersion.current
            options.auditPolicy = try AuditPolicy.load(from: policy)
            options.auditMode = audit
            let build = VolumeBuild(options: options, resolver: InputResolver(store: try Store(root: inputs.storePath)))
            if !force, let manifest = try build.upToDate(lock: lock) {
                if output.json { return printJSON(manifest) }
                for file in manifest.outputs { print("\(file.sha256)  \(out)/\(file.file)  (\(file.size) bytes)") }
                return print("\(target.rawValue) is up to date in \(out) (same build key, outputs as the manifest lists them)")
            }
            _ = try fetchInputs(
                VolumeBuild.inputs(of: target, in: lock, host: .current, toolchain: toolchain), inputs: inputs, network: network, json: false)
            let manifest = try build.run(lock: lock)
            if output.json { return printJSON(manifest) }
            for file in manifest.outputs { print("\(file.sha256)  \(out)/\(file.file)  (\(file.size) bytes)") }
            print("built \(target.rawValue) in \(String(format: "%.0f", Date().timeIntervalSince(started))) s")
        }
    }
}

extension AuditMode: ExpressibleByArgument {}
