import ArgumentParser
import KrnativeBase

struct TargetsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "targets", abstract: "List the four targets with distro, arch and the triples they build.",
        discussion: helpText(examples: "krnative targets", "krnative targets --json"))

    @OptionGroup var output: OutputOptions

    struct Row: Encodable {
        var target, distro, arch, package, module, pythonBuildStandaloneTriple, ttydTriple: String
    }

    func run() throws {
        let rows = Target.allCases.map {
            Row(
                target: $0.rawValue, distro: $0.distro, arch: $0.arch.rawValue, package: $0.packageName,
                module: "ai.backend.krunner.\($0.moduleName)", pythonBuildStandaloneTriple: $0.pythonBuildStandaloneTriple,
                ttydTriple: $0.ttydTriple)
        }
        if output.json { return printJSON(rows) }
        let header = ["TARGET", "DISTRO", "ARCH", "PYTHON-BUILD-STANDALONE", "TTYD"]
        let table = [header] + rows.map { [$0.target, $0.distro, $0.arch, $0.pythonBuildStandaloneTriple, $0.ttydTriple] }
        let widths = header.indices.map { column in table.map { $0[column].count }.max()! }
        for line in table {
            print(line.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  "))
        }
    }
}
