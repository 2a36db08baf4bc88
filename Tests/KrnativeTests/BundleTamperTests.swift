import Foundation
import KrnativeBase
import Lock
import Store
import Testing

/// Tampered bundles through the krnative binary: each is refused with exit 76 and leaves the store
/// exactly as it was, even when the tampered member comes after good ones.
@Suite("Bundle tampering", .timeLimit(.minutes(60)), .tags(.process), .endToEnd, .serialized)
struct BundleTamperTests {
    let work = TemporaryDirectory()
    let lock: String
    let bundle: String
    let digests: [SHA256Digest]
    var target: String { work.path + "/target" }

    /// Three inputs in a store, their lock, and a good bundle of them; the target store already holds the first.
    init() throws {
        let source = try Store(root: work.path + "/source")
        var inputs: [LockedInput] = []
        var digests: [SHA256Digest] = []
        for name in ["a", "b", "c"] {
            let (digest, size) = try source.ingest(copying: work.file(name, randomData(40_000)))
            digests.append(digest)
            inputs.append(
                LockedInput(name: name, kind: .runtime, version: "1", filename: "\(name).tar.gz", sha256: digest, size: size, urls: ["http://unused.invalid/\(name)"]))
        }
        self.digests = digests
        lock = work.path + "/krnative.lock.json"
        try Lockfile(sourceDateEpoch: 1_700_000_000, inputs: inputs).write(to: lock)
        bundle = work.path + "/inputs.tar"
        let export = krnative(["bundle", "export", bundle, "--lock", lock, "--store", source.root, "--all"])
        guard export.succeeded else { throw UsageError("bundle export failed: \(export.stderr)") }
        try Store(root: work.path + "/target").ingest(copying: work.path + "/a")
    }

    /// Every file under the store, with its digest: what "unchanged" is checked against.
    func snapshot() throws -> [String: SHA256Digest] {
        var result: [String: SHA256Digest] = [:]
        let enumerator = FileManager.default.enumerator(atPath: target)
        while let path = enumerator?.nextObject() as? String {
            var isDirectory: ObjCBool = false
            FileManager.default.fileExists(atPath: target + "/" + path, isDirectory: &isDirectory)
            if !isDirectory.boolValue { result[path] = try SHA256Digest.of(fileAt: target + "/" + path).digest }
        }
        return result
    }

    func tampered(_ mode: String, _ extra: [String] = []) throws -> String {
        let output = work.path + "/\(mode).tar"
        try ChildProcess.check(["python3", Package.supportDirectory + "/tamper_bundle.py", bundle, output, mode] + extra)
        return output
    }

    func expectRefused(_ file: String, _ needles: [String], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let before = try snapshot()
        let result = krnative(["bundle", "import", file, "--lock", lock, "--store", target])
        #expect(result.termination == .exited(76), "\(result.stderr)", sourceLocation: sourceLocation)
        for needle in needles {
            #expect(result.stderr.contains(needle), "\(needle) missing from: \(result.stderr)", sourceLocation: sourceLocation)
        }
        #expect(try snapshot() == before, "the store changed", sourceLocation: sourceLocation)
    }

    /// The build options a bundle names are printed as the command to run after the import: from
    /// a bundle's (unauthenticated) manifest, only options krnative writes are said, never more.
    @Test func aBundlesBuildOptionsAreNotPrintedAsACommandUnlessKrnativeWroteThem() throws {
        let honest = krnative(["bundle", "import", bundle, "--lock", lock, "--store", work.path + "/honest"])
        #expect(honest.stdout.contains("build them with: krnative build --all --toolchain zig --runtime pbs --lock \(lock) --store \(work.path)/honest --offline"), "\(honest.stdout)")
        let forged = krnative(["bundle", "import", try tampered("build-command"), "--lock", lock, "--store", work.path + "/forged"])
        #expect(forged.succeeded, "\(forged.stderr)")
        #expect(!forged.stdout.contains("build them with"), "\(forged.stdout)")
        #expect(forged.stdout.contains("the bundle's build options are not ones krnative writes; not shown"), "\(forged.stdout)")
    }

    @Test func anAlteredMemberAfterGoodOnesAdmitsNothing() throws {
        let flipped = try tampered("alter-last")
        try expectRefused(flipped, ["sha256/\(digests[2].hex) refused", "hashes to", "not \(digests[2].hex)"])
        #expect(!FileManager.default.fileExists(atPath: "\(target)/sha256/\(digests[1].hex)"))
    }

    @Test func unknownAndEscapingMembersAreRefused() throws {
        try expectRefused(try tampered("unknown"), ["notes.txt refused", "the manifest does not list it"])
        try expectRefused(try tampered("dotdot"), ["../escape.txt refused", "'..'"])
        try expectRefused(try tampered("symlink"), ["sha256/\(digests[2].hex) refused", "not a regular file"])
        #expect(!FileManager.default.fileExists(atPath: work.path + "/escape.txt"))
    }

    @Test func aReplacedLockIsRefusedWithBothDigests() throws {
        let evil = work.file("evil", Data("#!/bin/sh\necho owned\n".utf8))
        let local = try Lockfile.load(from: lock).digest
        try expectRefused(try tampered("replace-lock", [evil]), ["made from a lock with sha256", "has sha256 \(local)", "entries that differ: c"])
    }

    @Test func aManifestWithADuplicatedKeyIsRefused() throws {
        try expectRefused(try tampered("duplicate-key"), ["krnative-bundle.json refused", "lockSha256 is written twice"])
    }

    @Test func theUntamperedBundleIsAdmittedWhole() throws {
        let result = krnative(["bundle", "import", bundle, "--lock", lock, "--store", target])
        #expect(result.succeeded, "\(result.stderr)")
        #expect(result.stdout.contains("admitted 2 inputs, 1 already present"))
        #expect(try Store(root: target).entries().map(\.sha256) == digests.sorted())
        // Without the local lock there is nothing to check it against.
        let missing = krnative(["bundle", "import", bundle, "--lock", work.path + "/absent.json", "--store", target])
        #expect(missing.termination == .exited(66))
        #expect(missing.stderr.contains("absent.json does not exist"))
    }
}
