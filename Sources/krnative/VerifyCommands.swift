import ArgumentParser
import Foundation
import KrnativeBase
import Verify

/// `krnative diff A B`: two volumes, output directories, tar.xz files or wheels, entry by entry.
struct DiffCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "Compare two volumes, output directories, tar archives or wheels, entry by entry.",
        discussion: """
            Reports added and removed entries, and for the rest type, mode, size, content hash, link \
            target and, for ELF files, the sections that differ. Archives that differ inside two \
            directories are opened and compared too. Exit status 0 when identical, 1 when not.
            """)
    @Argument(help: "A directory, .tar.xz/.tar or .whl.") var left: String
    @Argument(help: "The same kind of thing to compare with.") var right: String
    @OptionGroup var output: OutputOptions

    func run() throws {
        var identical = true
        try perform("diff") {
            let report = try DiffReport.compare(left, right)
            identical = report.identical
            if output.json { printJSON(report) } else { print(report.text, terminator: "") }
        }
        if !identical { throw ExitCode(1) }
    }
}

/// `krnative audit`: a volume against its target's portability policy.
struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Check every ELF file of a volume against the target's policy (machine, loader, libraries, symbol versions).",
        discussion: """
            The policy is sysroots/audit-policy.json: auditwheel's manylinux2014 rules for glibc \
            targets, musllinux_1_2 for musl. A needed library is also fine when the volume carries it. \
            bin/ttyd must be static and stripped. Exit status 0 when the volume passes, 76 when not.
            """)
    @Argument(help: "The volume: a directory or krunner-env.*.tar.xz.") var volume: String
    @Option(help: "The volume's target.") var target: Target
    @Option(help: "The policy file. Default: ./sysroots/audit-policy.json.") var policy = AuditPolicy.defaultPath
    @OptionGroup var output: OutputOptions

    func run() throws {
        try perform("audit") {
            let report = try VolumeAudit(target: target, policy: try AuditPolicy.load(from: policy)).audit(try Listing.of(volume))
            if output.json { printJSON(report) }
            guard report.passed else { throw AuditFailed(location: volume, report: report) }
            if !output.json { print("\(volume): \(report.elfFiles) ELF files pass \(report.policy) for \(target.rawValue)") }
        }
    }
}
