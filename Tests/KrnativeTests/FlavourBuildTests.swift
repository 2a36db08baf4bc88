import Build
import Foundation
import KrnativeBase
import Testing

/// Issue #24: a musl target's build makes both flavours by default — the alpine package as
/// published, and static-musl, the one the agent selects for Alpine images — from one volume tree,
/// each with its own names, number and ledger entry; `--flavour` (or krunner.json's `flavours`) picks.
@Suite("Flavours: a musl volume as alpine and as static-musl", .timeLimit(.minutes(60)), .tags(.process, .namespaces), .endToEnd, .serialized, .needsNamespaces)
struct FlavourBuildTests {
    let target: Target = HostPlatform.current.arch == .x86_64 ? .musllinuxX86_64 : .musllinuxAarch64
    var glibcTwin: Target { HostPlatform.current.arch == .x86_64 ? .manylinuxX86_64 : .manylinuxAarch64 }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs the host's /usr/bin/python3"))
    func aMuslBuildMakesBothFlavoursFromOneVolume() throws {
        let work = TemporaryDirectory("krnative-flavours")
        let inputs = try ShellRecipeInputs(work)
        try inputs.addTtydSources()
        // The musl runtime's .pyc are compiled by the glibc runtime of this machine's arch.
        try inputs.addHostPythonRuntime(for: target)
        try inputs.addHostPythonRuntime(for: glibcTwin)
        try inputs.writeLock()
        let ledger = work.path + "/krunner-volumes.json"
        try FileManager.default.copyItem(atPath: Package.root + "/krunner-volumes.json", toPath: ledger)
        let out = work.path + "/out"
        let arguments = [
            "build", "--target", target.rawValue, "--lock", inputs.lock, "--store", inputs.store, "--out", out, "--patches", inputs.patches,
            "--config", Package.root + "/krunner.json", "--policy", Package.root + "/sysroots/audit-policy.json", "--audit", "report",
            "--ledger", ledger, "--compile-jobs", "1", "--pack-threads", "1",
        ]
        let built = krnative(arguments)
        try #require(built.succeeded, "\(built.stderr.suffix(3000))")
        #expect(built.stdout.contains("\(target.rawValue)  alpine") && built.stdout.contains("\(target.rawValue)  static-musl"), "\(built.stdout)")

        let arch = target.arch.rawValue
        func manifest(_ flavour: Flavour) throws -> BuildManifest {
            try DuplicateJSONKey.decode(BuildManifest.self, from: try FileSystem.readRegularFile(out + "/" + BuildManifest.fileName(for: target, flavour: flavour)))
        }
        let (alpine, staticMusl) = (try manifest(.alpine), try manifest(.staticMusl))
        func sha(_ manifest: BuildManifest, _ file: String) -> SHA256Digest? { manifest.outputs.first { $0.file == file }?.sha256 }
        // One volume tree, packed alike: the same bytes under each flavour's name.
        #expect(sha(alpine, "krunner-env.musllinux_1_2.\(arch).tar.xz") != nil)
        #expect(sha(alpine, "krunner-env.musllinux_1_2.\(arch).tar.xz") == sha(staticMusl, "krunner-env.static-musl.\(arch).tar.xz"))
        #expect(try String(contentsOfFile: out + "/krunner-version.static-musl.txt", encoding: .utf8) == "1\n")
        #expect(try String(contentsOfFile: out + "/krunner-python.static-musl.txt", encoding: .utf8) == "3.13\n")
        let wheel = try #require(staticMusl.outputs.first { $0.file.hasSuffix(".whl") }?.file)
        #expect(wheel.hasPrefix("backend_ai_krunner_static_musl-1.0.0-py3-none-"), "\(wheel)")
        let entryPoints = try ChildProcess.check([
            "python3", "-c", "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); print(z.read('backend_ai_krunner_static_musl-1.0.0.dist-info/entry_points.txt').decode(), z.read('ai/backend/krunner/static_musl/versions.txt').decode())",
            out + "/" + wheel,
        ]).stdout
        #expect(entryPoints.contains("static_musl = ai.backend.krunner.static_musl.plugin") && entryPoints.contains("static-musl\n"), "\(entryPoints)")
        // The alpine flavour's build key is the one every build before flavours made: nothing in its request names one.
        #expect(alpine.request?.flavour == nil && staticMusl.request?.flavour == .staticMusl)
        #expect(alpine.buildKey != staticMusl.buildKey)
        let recorded = try VolumeLedger.load(from: ledger).volumes.filter { $0.arch == arch }.map { "\($0.distro) v\($0.volume)" }.sorted()
        #expect(recorded == ["musllinux_1_2 v13", "static-musl v1"], "\(recorded)")

        // Each flavour's files have names of their own: built again, both are up to date (with one
        // `versions.txt` in the output directory, each build replaced the other's and both rebuilt).
        #expect(try String(contentsOfFile: out + "/versions.static-musl.txt", encoding: .utf8) == "static-musl\n")
        #expect(try String(contentsOfFile: out + "/versions.musllinux_1_2.txt", encoding: .utf8) == "musllinux_1_2\n")
        let again = krnative(arguments)
        try #require(again.succeeded, "\(again.stderr.suffix(2000))")
        #expect(again.stdout.components(separatedBy: "is up to date in").count == 3, "\(again.stdout)\(again.stderr)")

        // --flavour picks one; a flavour the target has not is said so.
        let one = krnative(arguments.map { $0 == out ? work.path + "/one" : $0 } + ["--flavour", "static-musl"])
        try #require(one.succeeded, "\(one.stderr.suffix(2000))")
        #expect(!FileSystem.exists(work.path + "/one/" + BuildManifest.fileName(for: target, flavour: .alpine)))
        let wrong = krnative(arguments + ["--flavour", "static-gnu"])
        #expect(wrong.termination == .exited(ExitStatus.usage), "\(wrong.stderr)")
        #expect(wrong.stderr.contains("\(target.rawValue) volumes ship as alpine or static-musl; --flavour static-gnu names none of them"), "\(wrong.stderr)")
    }
}
