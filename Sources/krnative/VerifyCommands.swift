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
import Toolchain
import Verify

/// `krnative diff A B`: two volumes, output directories, tar.xz files or wheels, entry by entry.
struct DiffCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "Compare two volumes, output directories, tar archives or wheels, entry by entry.",
        discussion: helpText(
            """
            Reports added and removed entries, and for the rest type, mode, size, content hash, link \
            target and, for ELF files, the sections that differ. Archives that differ inside two \
            directories are opened and compared too. Exit status 0 when identical, 1 when not.
            """,
            examples: "krnative diff out/krunner-env.static-gnu.x86_64.tar.xz\nci/krunner-env.static-gnu.x86_64.tar.xz", "krnative diff out/ ci/ --json"))
    @Argument(help: "A directory, .tar.xz/.tar or .whl.") var left: String
    @Argument(help: "The same kind of thing to compare with.") var right: String
    @OptionGroup var output: OutputOptions

    func run() throws {
        var identical = true
        try perform("diff") { identical = show(try DiffReport.compare(left, right), json: output.json) }
        if !identical { throw ExitCode(1) }
    }
}

/// Prints a comparison (the per-file report, or JSON) and says whether it found no difference.
func show(_ report: DiffReport, json: Bool) -> Bool {
    if json { printJSON(report) } else { print(report.text, terminator: "") }
    return report.identical
}

/// `krnative audit`: a volume against its target's portability policy.
struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Check every ELF file of a volume against the target's policy (machine, loader, libraries, symbol versions).",
        discussion: helpText(
            """
            The policy is sysroots/audit-policy.json: auditwheel's manylinux_2_17 rules (PEP 600's name for manylinux2014) for glibc \
            targets, musllinux_1_2 for musl. A needed library is also fine when the volume carries it. \
            bin/ttyd must be static and stripped. Exit status 0 when the volume passes, 81 when not.
            """,
            examples: "krnative audit out/krunner-env.static-gnu.x86_64.tar.xz\n--target manylinux-x86_64"))
    @Argument(help: "The volume: a directory or krunner-env.*.tar.xz.") var volume: String
    @Option(help: "The volume's target.") var target: Target
    @Option(name: .customLong("policy"), help: "The policy file. Default: the project's sysroots/audit-policy.json.") var policyOption: String?
    var policy: String { Project.discover(lock: nil).file(policyOption, default: AuditPolicy.defaultPath) }
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

/// `krnative verify --manifest M`: rebuild offline and compare with a manifest from elsewhere.
struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Rebuild offline what a manifest describes and compare every output and volume entry with it.",
        discussion: helpText(
            """
            The manifest may come from another machine: the rebuild makes the request it records (target, \
            versions, toolchain, audit policy, …) from this machine's lock, which must be the one \
            the manifest names (by sha256), and patches. How it runs is this machine's: the sandbox and \
            the audit mode come from --sandbox and --audit, never from the manifest (a manifest built \
            without the sandbox is refused unless --sandbox is given). \
            Exit status 0 when every output hashes the same, 1 when not; the rebuild is kept then.
            """,
            examples: "krnative verify --manifest ci/krnative-manifest.static-gnu.x86_64.json"))
    @OptionGroup var inputs: InputOptions
    @Option(help: "The published krnative-manifest.{distro}.{arch}.json.") var manifest: String
    @Option(name: .customLong("out"), help: "Where the rebuild goes. Default: the project's verify.out/.") var outOption: String?
    @Option(name: .customLong("patches"), help: "The patches directory. Default: the project's patches/, else those krnative was built with.") var patchesOption: String?
    @Option(help: "The recipes directory (recipes/<name>.json: each native build's steps as data). Default: the project's recipes/, else those krnative was built with.") var recipes: String?
    @Option(
        name: .customLong("policy"),
        help: "The audit policy, for a manifest older than its recorded request. Default: the project's sysroots/audit-policy.json.")
    var policyOption: String?
    var out: String { inputs.project.file(outOption, default: "verify.out") }
    var patches: String { inputs.project.patches(patchesOption) }
    var policy: String { inputs.project.file(policyOption, default: AuditPolicy.defaultPath) }
    @Flag(help: "Keep the rebuild even when it matches.") var keep = false
    @Option(help: "namespaces, or none to rebuild without isolation; never taken from the manifest. Default: namespaces; env KRNATIVE_SANDBOX.")
    var sandbox: Isolation?
    @Option(help: "enforce: a volume that breaks its target's policy fails the rebuild; report: print it. Never taken from the manifest. Default: enforce.")
    var audit: AuditMode?
    @OptionGroup var output: OutputOptions

    func run() throws {
        var identical = true
        try perform("verify") {
            if RunnerManifest.isNamed(manifest) { return identical = try verifyRunnerSet() }
            let published = try ManifestComparison.load(manifest)
            let lock = try lock(builtFrom: published.lockSha256)
            let locations = BuildRequest.Locations(lockPath: inputs.lockPath, patchesDirectory: patches, recipesDirectory: inputs.project.recipes(recipes))
            let request = try BuildRequest(recordedIn: published, locations: locations) {
                try AuditPolicy.load(from: policy)
            }.underLocalPolicy(try LocalPolicy.chosen(sandbox: sandbox, audit: audit), source: manifest, field: published.request == nil ? "" : "request")
            var settings = VolumeBuild.Settings(outputDirectory: out, entryExecutable: currentExecutable)
            settings.toolVersion = KrnativeVersion.current
            settings.reuseDerivedOutputs = false  // verify makes every stage itself: its outputs are what it checks
            let build = try VolumeBuild(request: request, lock: lock, settings: settings, resolver: InputResolver(store: try Store(root: inputs.storePath)))
            let offline = try NetworkOptions.parse(["--offline"])
            let rebuilt = try build.make { needed in
                _ = try fetchInputs(needed, for: "--target \(request.target.rawValue)", inputs: inputs, network: offline, json: false, summary: Reporting.note)
            }
            identical = show(ManifestComparison.compare(published, at: manifest, with: rebuilt, at: out), json: output.json)
            if identical && !keep {
                for name in build.plan.outputNames { FileSystem.remove(out + "/" + name) }
                rmdir(out)
            }
        }
        if !identical { throw ExitCode(1) }
    }

    /// This machine's lock, which must be the one the manifest was built from.
    func lock(builtFrom digest: SHA256Digest) throws -> Lockfile {
        let lock = try Lockfile.load(from: inputs.lockPath)
        guard lock.digest == digest else {
            throw UsageError(
                "\(manifest) was built from a lock with sha256 \(digest); \(inputs.lockPath) has \(lock.digest). "
                    + "Check out the lock it was built from, or pass it with --lock")
        }
        return lock
    }

    /// A runner set's manifest (`build-runner`): the same recipes built again for its arch and
    /// epoch, every step compiled afresh, into --out; whether every binary has the same bytes.
    func verifyRunnerSet() throws -> Bool {
        let published = try RunnerManifest.load(from: manifest)
        let lock = try lock(builtFrom: published.lockSha256)
        var settings = StepRunner.Settings(entryExecutable: currentExecutable, patchesDirectory: patches)
        settings.recipesDirectory = inputs.project.recipes(recipes)
        settings.sourceDateEpoch = published.sourceDateEpoch
        settings.isolation = try Isolation.chosen(sandbox)
        settings.lockPath = inputs.lockPath
        var set = try RunnerSet(
            arch: published.arch, only: published.binaries.map(\.recipe),
            options: RecipeBuildOptions(target: .musllinuxX86_64, outputDirectory: out, settings: settings),
            resolver: InputResolver(store: try Store(root: inputs.storePath)))
        set.toolVersion = KrnativeVersion.current
        try BuildRunnerCommand.fetchInputs(of: set, lock: lock, inputs: inputs, offline: true)
        let again = try set.rebuilt(into: out, lock: lock)
        let identical = BuildRunnerCommand.compare(published, at: manifest, with: again, json: output.json)
        // What the rebuild wrote goes, by name; the directory only if nothing else is in it.
        if identical && !keep {
            for name in again.manifest.files { FileSystem.remove(out + "/" + name) }
            rmdir(out)
        }
        return identical
    }
}

/// `krnative smoke --target T`: the volume on a minimal system, without Docker.
struct SmokeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "smoke",
        abstract: "Run the volume on a minimal Debian root file system of its target, in the sandbox (qemu for another arch).",
        discussion: helpText(
            """
            The root file system is described in sysroots/smoke.json (the Debian release per libc), \
            made once with mmdebstrap from the Debian archive of this machine's apt sources and kept in \
            the store. The volume is mounted read-only at /opt/backend.ai, as the agent mounts it; its \
            Python imports what the kernel runner needs and finds the root's CA certificates through \
            ssl's default context, and its ttyd prints its version. The output names the Debian release \
            it ran on. Exit status 0 when every check passes, 78 when not.
            """,
            examples: "krnative smoke --target manylinux-x86_64", "krnative smoke --target musllinux-aarch64\n--volume out/krunner-env.musllinux_1_2.aarch64.tar.xz"))
    @OptionGroup var inputs: InputOptions
    @Option(help: "The volume's target.") var target: Target
    @Option(help: "The volume: a directory or tar.xz. Default: the project's out/krunner-env.{distro}.{arch}.tar.xz.") var volume: String?
    @Option(name: .customLong("sysroot"), help: "The smoke description. Default: the project's sysroots/smoke.json.") var sysrootOption: String?
    var sysroot: String { inputs.project.file(sysrootOption, default: SmokeDescription.defaultPath) }
    @Option(
        help: ArgumentHelp(
            "Also start the kernel runner as the agent does, with the agent's ai/backend/kernel and ai/backend/helpers from this directory, and ask its main loop for its status.",
            valueName: "dir")) var kernelRunner: String?
    @OptionGroup var output: OutputOptions

    func run() throws {
        try perform("smoke") {
            let volume = inputs.project.file(volume, default: "out/krunner-env.\(target.defaultFlavour.distro).\(target.arch.rawValue).tar.xz")
            var test = SmokeTest(
                target: target, description: try SmokeDescription.load(from: sysroot), store: try Store(root: inputs.storePath),
                runner: SandboxRunner(entryExecutable: currentExecutable))
            test.kernelRunner = kernelRunner
            let report = try test.run(volume: volume)
            if output.json { printJSON(report) }
            let failures = report.checks.filter { !$0.passed }
            guard failures.isEmpty else { throw SmokeFailed(volume: volume, failures: failures) }
            if !output.json {
                for check in report.checks { print("ok  \(SmokeTest.shown(check.argv))\n    \(check.output.trimmingCharacters(in: .whitespacesAndNewlines))") }
                print("\(volume) runs on \(report.release ?? "Debian"): \(report.rootFilesystem)")
            }
        }
    }
}
