import Foundation
import KrnativeBase
import Testing

/// The README's table of exit statuses, each from a real run of the binary: a script can tell the
/// kinds of failure apart. Asserted elsewhere, where the run is already made: 78 (a smoke check
/// fails, VolumeTests), 80 (a patch that no longer applies, PatchTests), 130 (signals, RobustnessTests).
@Suite("Exit statuses", .timeLimit(.minutes(60)), .tags(.process), .endToEnd)
struct ExitStatusTests {
    struct Case: Sendable, CustomStringConvertible {
        var status: Int32
        var arguments: [String]
        var environment: [String: String] = [:]
        /// Files made in the run's directory first: name → contents ("" for a directory).
        var files: [String: String] = [:]
        var description: String { "\(status): krnative \(arguments.joined(separator: " "))" }
    }

    static let malformedLock = "{\"version\": 1, \"sourceDateEpoch\": 0, \"inputs\": [}"
    static let oneInputLock = """
        {"version": 1, "sourceDateEpoch": 0, "inputs": [{"name": "w", "kind": "wheel", "version": "1",
         "filename": "w-1-py3-none-any.whl", "sha256": "\(String(repeating: "ab", count: 32))", "urls": ["http://127.0.0.1:9/w.whl"]}]}
        """

    static let cases: [Case] = [
        Case(status: 0, arguments: ["targets"]),
        Case(status: 1, arguments: ["diff", "a", "b"], files: ["a/x": "1", "b/x": "2"]),
        Case(status: ExitStatus.usage, arguments: ["biuld"]),
        // Issue #27: a wheel against a volume was compared entry by entry without a word.
        Case(status: ExitStatus.usage, arguments: ["diff", "p.whl", "v"], files: ["p.whl": "PK", "v/x": "1"]),
        // Issue #27: a bad value is refused up front, by a command that would not read it too.
        Case(status: ExitStatus.usage, arguments: ["targets"], environment: ["KRNATIVE_REMOTE_CACHE_UPLOAD": "maybe"]),
        Case(status: ExitStatus.usage, arguments: ["targets"], environment: ["KRNATIVE_EXTRACT_MAX_BYTES": "abc"]),
        Case(status: ExitStatus.usage, arguments: ["pack", "tree", "out.tar.xz"], environment: ["SOURCE_DATE_EPOCH": "yesterday"], files: ["tree/a": "a"]),
        Case(status: ExitStatus.lock, arguments: ["lock", "check", "--lock", "bad.json"], files: ["bad.json": malformedLock]),
        Case(status: ExitStatus.missingInput, arguments: ["fetch", "--offline", "--all", "--lock", "one.json", "--store", "store"], files: ["one.json": oneInputLock]),
        Case(status: ExitStatus.store, arguments: ["store", "ls", "--store", "/proc/krnative-store"]),
        // Issue #27: an output that cannot be written is I/O (74), not an unreadable archive (it was 77).
        Case(status: ExitStatus.store, arguments: ["pack", "tree", "/proc/krnative-nowhere/out.tar.xz"], files: ["tree/a": "a"]),
        Case(status: ExitStatus.fetch, arguments: ["fetch", "--all", "--lock", "one.json", "--store", "store", "--retries", "1"], files: ["one.json": oneInputLock]),
        Case(
            status: ExitStatus.integrity, arguments: ["store", "verify", "--store", "store"],
            files: ["store/sha256/\(String(repeating: "ab", count: 32))": "not what the name says"]),
        Case(status: ExitStatus.archive, arguments: ["lock", "tree-hash", "junk.tar.gz"], files: ["junk.tar.gz": "this is not an archive"]),
        // Issue #27: libarchive read a text file as an mtree listing (an entry `garbage`) and exited 0.
        Case(status: ExitStatus.archive, arguments: ["lock", "tree-hash", "notes.txt"], files: ["notes.txt": "garbage\n"]),
        Case(status: ExitStatus.sandbox, arguments: ["sandbox", "run", "--", "true"], environment: ["PATH": "/nonexistent"]),
        Case(
            status: ExitStatus.policy, arguments: ["audit", "volume", "--target", "musllinux-aarch64", "--policy", Package.root + "/sysroots/audit-policy.json"],
            files: ["volume/bin/": ""]),
    ]

    @Test(arguments: cases)
    func statusFromARealRun(_ example: Case) throws {
        let work = TemporaryDirectory()
        for (name, contents) in example.files {
            if contents.isEmpty {
                try FileManager.default.createDirectory(atPath: work.path + "/" + name, withIntermediateDirectories: true)
            } else {
                _ = work.file(name, contents)
            }
        }
        if example.status == ExitStatus.policy {
            // An x86_64 glibc program where an aarch64 musl volume is wanted.
            try FileManager.default.copyItem(atPath: "/bin/ls", toPath: work.path + "/volume/bin/python3")
        }
        var environment = ProcessInfo.processInfo.environment
        environment.merge(example.environment) { $1 }
        let result = ChildProcess.run([Package.binary] + example.arguments, environment: environment, directory: work.path)
        #expect(result.termination == .exited(example.status), "\(example): \(result.termination)\n\(result.stderr.suffix(1500))")
        if example.status > 1 { #expect(!result.stderr.isEmpty, "a failure says why on stderr") }
    }
}
