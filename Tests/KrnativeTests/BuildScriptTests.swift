import Foundation
import KrnativeBase
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `scripts/build` as it is, run in a copy of the project whose `scripts/setup`, `swift`,
/// `scripts/standin-lock` and krnative are stand-ins: krnative's fetch fails (no route to the
/// upstream files), so the script takes its stand-in path; its build records its arguments.
@Suite("scripts/build", .timeLimit(.minutes(60)), .tags(.process), .endToEnd)
struct BuildScriptTests {
    let project = TemporaryDirectory("krnative-script")

    init() throws {
        let script = try String(contentsOfFile: Package.root + "/scripts/build", encoding: .utf8)
        let stubs = [
            "scripts/build": script,
            "scripts/setup": "#!/bin/sh\nexit 0\n",
            "scripts/standin-lock": "#!/bin/sh\nmkdir -p \"$1\" && echo \"$1/krnative.lock.json\"\n",
            "bin/swift": "#!/bin/sh\nexit 0\n",
            ".build/release/krnative": "#!/bin/sh\n[ \"$1\" = build ] || exit 1\necho \"$@\" > built-with\n",
        ]
        for (path, text) in stubs { chmod(project.file(path, text), 0o755) }
        _ = project.file("krunner-volumes.json", "the published ledger\n")
    }

    func runBuild() -> ChildProcess.Result {
        let path = project.path + "/bin:" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
        return ChildProcess.run([project.path + "/scripts/build", "--target", "musllinux-x86_64"], environment: ["PATH": path])
    }

    /// Issue #23: the stand-in ledger is the published one copied once; a later run keeps the
    /// stand-in volumes other targets' builds recorded in it. Before, every run copied the
    /// published ledger over it.
    @Test(.timeLimit(.minutes(60))) func theStandInLedgerKeepsWhatEarlierBuildsRecorded() throws {
        let ledger = project.path + "/standin/krunner-volumes.json"
        let first = runBuild()
        try #require(first.succeeded, "\(first.stderr)")
        #expect(try String(contentsOfFile: ledger, encoding: .utf8) == "the published ledger\n")
        #expect(try String(contentsOfFile: project.path + "/built-with", encoding: .utf8).contains("--ledger standin/krunner-volumes.json "))

        try Data("the published ledger, and manylinux-x86_64's stand-in volume\n".utf8).write(to: URL(fileURLWithPath: ledger))
        let second = runBuild()
        try #require(second.succeeded, "\(second.stderr)")
        #expect(try String(contentsOfFile: ledger, encoding: .utf8) == "the published ledger, and manylinux-x86_64's stand-in volume\n")
    }
}
