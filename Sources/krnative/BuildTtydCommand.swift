import ArgumentParser
import Compile
import Foundation
import Inputs
import KrnativeBase
import Lock
import Sandbox
import Store
import Toolchain

extension ToolchainKind: ExpressibleByArgument {}

struct BuildTtydCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build-ttyd",
        abstract: "Cross-compile the static ttyd of a target from the lock's sources (leaves ttyd_linux.<arch>.bin).",
        discussion: helpText(examples: "krnative build-ttyd --target musllinux-aarch64 --out /tmp/ttyd"))

    @OptionGroup var inputs: InputOptions
    @Option(help: "The target whose ttyd to build.") var target: Target
    @Option(help: "zig or musl-cross (x86_64 hosts only). Default: zig.") var toolchain: ToolchainKind?
    @Option(name: .customLong("out"), help: "Where ttyd_linux.<arch>.bin and its report go. Default: the project's out/.") var outOption: String?
    @Option(name: .customLong("patches"), help: "The patches directory. Default: the project's patches/.") var patchesOption: String?
    @Option(help: "namespaces, or none to build without isolation. Default: namespaces; env KRNATIVE_SANDBOX.") var sandbox: Isolation?
    @Option(parsing: .unconditional, help: "Parallel compile jobs. Default: the number of CPUs.") var jobs: Int?
    @Option(help: "Build in this directory instead of a temporary one (kept).") var workdir: String?
    @Flag(help: "Compile every step even when the step cache holds its result.") var rebuild = false
    @Flag(help: "Print the report as JSON on stdout.") var json = false
    @Flag(help: "Unpack and patch the sources into --workdir, and compile nothing.") var prepareOnly = false
    @Flag(help: "Build nothing: print the recipe's commands as a plain bash script for --workdir (prepared by a --sandbox none build).")
    var printScript = false

    var out: String { inputs.project.file(outOption, default: "out") }
    var patches: String { inputs.project.file(patchesOption, default: "patches") }

    func validate() throws { try requirePositive(["--jobs": jobs]) }

    func run() throws {
        try perform("build-ttyd") {
            let lock = try Lockfile.load(from: inputs.lockPath)
            var options = TtydBuild.Options(
                target: target, outputDirectory: out,
                settings: StepRunner.Settings(entryExecutable: currentExecutable, patchesDirectory: patches))
            options.toolchain = toolchain ?? Toolchain.defaultKind(for: .current)
            options.settings.isolation = try Isolation.chosen(sandbox)
            if let jobs { options.settings.jobs = max(1, jobs) }
            options.settings.workDirectory = workdir
            options.settings.rebuild = rebuild
            options.settings.prepareOnly = prepareOnly
            if prepareOnly && workdir == nil { throw UsageError("--prepare-only needs --workdir DIR") }
            options.settings.lockPath = inputs.lockPath
            let started = Date()
            let build = TtydBuild(options: options, resolver: InputResolver(store: try Store(root: inputs.storePath)))
            if printScript { return print(try build.plainScript(lock: lock, epoch: lock.sourceDateEpoch), terminator: "") }
            let report = try build.run(lock: lock)
            if prepareOnly { return print("prepared \(report.sources.count) sources in \(workdir ?? "")") }
            if json { return printJSON(report) }
            if let output = report.output {
                print("\(out)/\(output.file): \(output.size) bytes, sha256 \(output.sha256), \(String(format: "%.0f", Date().timeIntervalSince(started))) s")
            }
        }
    }
}
