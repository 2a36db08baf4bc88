import ArgumentParser
import Build
import Fetch
import Foundation
import KrnativeBase
import Lock
import Sandbox
import Store
import Toolchain

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
    @OptionGroup var network: NetworkOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        try perform("build") {
            let started = Date()
            let toolchain = toolchain ?? Toolchain.defaultKind(for: .current)
            let lock = try Lockfile.load(from: inputs.lockPath)
            _ = try fetchInputs(
                VolumeBuild.inputs(of: target, in: lock, host: .current, toolchain: toolchain), inputs: inputs, network: network, json: false)
            var options = VolumeBuild.Options(
                target: target, config: try KrunnerConfig.load(from: config), outputDirectory: out, patchesDirectory: patches,
                entryExecutable: currentExecutable)
            options.toolchain = toolchain
            options.isolation = Isolation.chosen(sandbox)
            options.lockPath = inputs.lockPath
            options.toolVersion = KrnativeVersion.current
            let manifest = try VolumeBuild(options: options, resolver: InputResolver(store: try Store(root: inputs.storePath))).run(lock: lock)
            if output.json { return printJSON(manifest) }
            for file in manifest.outputs { print("\(file.sha256)  \(out)/\(file.file)  (\(file.size) bytes)") }
            print("built \(target.rawValue) in \(String(format: "%.0f", Date().timeIntervalSince(started))) s")
        }
    }
}
