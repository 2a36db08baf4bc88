import Build
import Foundation
import KrnativeBase
import Lock
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `build --check` against an output directory that holds more than one target's outputs, as
/// `scripts/build --all` leaves `out/`. The runs' builds are a script that writes the outputs.
@Suite("Reproducibility check", .timeLimit(.minutes(60)), .tags(.process), .endToEnd)
struct ReproducibilityCheckTests {
    let work = TemporaryDirectory("krnative-check")

    /// A file of `target` standing for its volume (text, not an archive the comparison opens)
    /// holding `contents`, `versions.txt` (every target's build names it so) holding its distro,
    /// and its manifest listing both, in `directory`.
    func writeOutputs(of target: Target, _ contents: String, into directory: String) throws {
        try FileSystem.createDirectory(directory)
        var outputs: [BuildManifest.Output] = []
        for (file, text) in [("krunner-env.\(target.defaultFlavour.distro).\(target.arch.rawValue).txt", contents), ("versions.txt", target.defaultFlavour.distro + "\n")] {
            let data = Data(text.utf8)
            try data.write(to: URL(fileURLWithPath: directory + "/" + file))
            let output = #"{"file":"\#(file)","sha256":"\#(SHA256Digest.of(data).hex)","size":\#(data.count)}"#
            outputs.append(try JSONDecoder().decode(BuildManifest.Output.self, from: Data(output.utf8)))
        }
        let choices = BuildRequest.Choices(target: target, toolchain: .zig, packageVersion: "4.1.0", volumeVersion: 15)
        let manifest = BuildManifest(
            request: choices, toolVersion: "0", lock: Lockfile(sourceDateEpoch: 0), key: [:], inputs: [], patches: [], outputs: outputs,
            volume: [])
        try manifest.encoded().write(to: URL(fileURLWithPath: directory + "/" + BuildManifest.fileName(for: target)))
    }

    /// The check of manylinux-x86_64 against `reference`, its one run a script that writes
    /// manylinux-x86_64's outputs with `contents` into its `--out`.
    func check(against reference: String, runWrites contents: String) throws -> ReproducibilityCheck.Report {
        let made = work.path + "/made-\(contents)"
        try writeOutputs(of: .manylinuxX86_64, contents, into: made)
        let script = work.file(
            "fake-krnative-\(contents)",
            "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = --out ] && out=$2; shift; done\nmkdir -p \"$out\" && cp \(made)/* \"$out\"/\n")
        chmod(script, 0o755)
        let lock = work.path + "/krnative.lock.json"
        try Lockfile(sourceDateEpoch: 0).write(to: lock)
        let choices = BuildRequest.Choices(target: .manylinuxX86_64, toolchain: .zig, packageVersion: "4.1.0", volumeVersion: 15)
        let request = BuildRequest(choices: choices, locations: .init(lockPath: lock, patchesDirectory: work.path + "/patches"))
        var options = ReproducibilityCheck.Options(
            request: request, executable: script, reference: reference, workDirectory: work.path + "/runs-\(contents)",
            store: work.path + "/store", runs: [[.timezone]])
        options.log = { _ in }
        return try ReproducibilityCheck(options: options).run()
    }

    /// Issue #23: the check compares the target's own outputs, found by its manifest's name.
    /// Before, it took whichever `krnative-manifest.*` the directory listed first and compared
    /// every target's manifest: an identical run was reported DIFFERENT; so was it when a later
    /// target's build had replaced `versions.txt`, which every target names alike.
    @Test(.timeLimit(.minutes(60))) func theCheckComparesOnlyItsTargetsOutputs() throws {
        let reference = work.path + "/out"
        try writeOutputs(of: .manylinuxX86_64, "same", into: reference)
        for target in [Target.musllinuxX86_64, .manylinuxAarch64, .musllinuxAarch64] {
            try writeOutputs(of: target, "another target", into: reference)
        }

        let identical = try check(against: reference, runWrites: "same")
        #expect(identical.referenceOutputs.keys.sorted() == ["krunner-env.\(Target.manylinuxX86_64.defaultFlavour.distro).x86_64.txt", "versions.txt"])
        #expect(identical.reproducible, "\(identical.runs.map(\.differences))")

        let different = try check(against: reference, runWrites: "other")
        #expect(!different.reproducible)
        #expect(different.runs.first?.differences.map(\.path).contains("krunner-env.\(Target.manylinuxX86_64.defaultFlavour.distro).x86_64.txt") == true)
    }

    /// The check user reaches its run directory through the check's own directory, whatever the
    /// umask that made it (CI's run of 7c1af56: a umask of 077 left it closed, and the user
    /// variation was not applied). Nothing is built: the empty reference stops the check after.
    @Test(.timeLimit(.minutes(60))) func theCheckUserCanPassThroughTheChecksDirectory() throws {
        let lock = work.path + "/krnative.lock.json"
        try Lockfile(sourceDateEpoch: 0).write(to: lock)
        let choices = BuildRequest.Choices(target: .manylinuxX86_64, toolchain: .zig, packageVersion: "4.1.0", volumeVersion: 15)
        let request = BuildRequest(choices: choices, locations: .init(lockPath: lock, patchesDirectory: work.path + "/patches"))
        let runs = work.path + "/out.check"
        mkdir(runs, 0o700)
        try FileSystem.createDirectory(work.path + "/out")
        var options = ReproducibilityCheck.Options(
            request: request, executable: "/bin/false", reference: work.path + "/out", workDirectory: runs, store: work.path + "/store",
            runs: [[.timezone], [.user]])
        options.log = { _ in }
        #expect(throws: UsageError.self) { try ReproducibilityCheck(options: options).run() }
        var info = stat()
        #expect(stat(runs, &info) == 0)
        #expect(info.st_mode & 0o7777 == 0o711)

        // A link in its place (another user's, in a shared directory) is refused, its target's mode left.
        let elsewhere = work.path + "/elsewhere"
        mkdir(elsewhere, 0o700)
        let linked = work.path + "/linked.check"
        symlink(elsewhere, linked)
        options.workDirectory = linked
        let refusal = #expect(throws: UsageError.self) { try ReproducibilityCheck(options: options).run() }
        #expect(refusal?.description.contains("\(linked) cannot be opened for the check user: it is a symbolic link") == true, "\(String(describing: refusal))")
        #expect(stat(elsewhere, &info) == 0 && info.st_mode & 0o7777 == 0o700)
    }
}
