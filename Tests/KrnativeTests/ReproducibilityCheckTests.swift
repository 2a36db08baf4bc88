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
@Suite("Reproducibility check", .tags(.process))
struct ReproducibilityCheckTests {
    let work = TemporaryDirectory("krnative-check")

    /// A file of `target` standing for its volume (text, not an archive the comparison opens)
    /// holding `contents`, and its manifest listing it, in `directory`.
    func writeOutputs(of target: Target, _ contents: String, into directory: String) throws {
        try FileSystem.createDirectory(directory)
        let volume = "krunner-env.\(target.distro).\(target.arch.rawValue).txt"
        let data = Data(contents.utf8)
        try data.write(to: URL(fileURLWithPath: directory + "/" + volume))
        let choices = BuildRequest.Choices(target: target, toolchain: .zig, packageVersion: "4.1.0", volumeVersion: 15)
        let manifest = BuildManifest(
            request: choices, toolVersion: "0", lock: Lockfile(sourceDateEpoch: 0), key: [:], inputs: [], patches: [],
            outputs: [try JSONDecoder().decode(BuildManifest.Output.self, from: Data(#"{"file":"\#(volume)","sha256":"\#(SHA256Digest.of(data).hex)","size":\#(data.count)}"#.utf8))],
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
    /// every target's manifest: an identical run was reported DIFFERENT.
    @Test(.timeLimit(.minutes(1))) func theCheckComparesOnlyItsTargetsOutputs() throws {
        let reference = work.path + "/out"
        try writeOutputs(of: .manylinuxX86_64, "same", into: reference)
        for target in [Target.musllinuxX86_64, .manylinuxAarch64, .musllinuxAarch64] {
            try writeOutputs(of: target, "another target", into: reference)
        }

        let identical = try check(against: reference, runWrites: "same")
        #expect(identical.referenceOutputs.keys.sorted() == ["krunner-env.\(Target.manylinuxX86_64.distro).x86_64.txt"])
        #expect(identical.reproducible, "\(identical.runs.map(\.differences))")

        let different = try check(against: reference, runWrites: "other")
        #expect(!different.reproducible)
        #expect(different.runs.first?.differences.map(\.path).contains("krunner-env.\(Target.manylinuxX86_64.distro).x86_64.txt") == true)
    }
}
