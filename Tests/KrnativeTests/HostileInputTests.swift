import Fetch
import Foundation
import KrnativeBase
import Lock
import Store
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A hostile mirror, run against the krnative binary (so a crash shows as a signal, not a dead test
/// runner): downloads beyond the pinned size, redirects to blocked URLs, junk instead of an archive,
/// the network under --offline, a lock that reads differently in two JSON parsers.
@Suite("Hostile inputs", .timeLimit(.minutes(60)), .tags(.network, .process), .endToEnd, .serialized)
struct HostileInputTests {
    let server: FaultServer
    let work = TemporaryDirectory()
    var store: String { work.path + "/store" }

    init() throws { server = try FaultServer() }

    func fetch(_ lock: String, store: String? = nil, _ extra: [String] = []) -> ChildProcess.Result {
        krnative(["fetch", "--lock", lock, "--store", store ?? self.store, "--all", "--retry-delay", "0.05"] + extra)
    }

    func files(in directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: store + "/" + directory)) ?? []).sorted()
    }

    @Test func downloadStopsNearThePinnedSizeAndTheNextMirrorServes() throws {
        let pinned = 1_000_000
        let digest = server.serve("big.whl", randomData(pinned))
        for route in ["endless", "huge"] {
            let lock = try work.lock([
                wheelInput("big", sha256: digest, urls: [server.url("\(route)/big.whl"), server.url("files/big.whl")], size: Int64(pinned))
            ])
            let result = fetch(lock, store: work.path + "/\(route)")
            #expect(result.termination == .exited(0), "\(route): \(result.stderr)")
            #expect(result.stderr.contains("the lock pins \(pinned) bytes"), "\(route): \(result.stderr)")
            let sent = server.requests().filter { $0.path == "/\(route)/big.whl" }.map(\.bytes).reduce(0, +)
            // The server would send 4 GiB; what it wrote beyond the pinned size fits in socket buffers.
            #expect(sent < pinned + 32 << 20, "\(route): the server sent \(sent) bytes")
            #expect(route == "huge" || sent > pinned, "\(route): the server sent \(sent) bytes")
            #expect(try SHA256Digest.of(fileAt: work.path + "/\(route)/sha256/\(digest.hex)").digest == digest)
        }
        // Alone, the endless mirror fails with the URL, the pinned size and the bytes seen; no partial
        // is kept; the status is integrity's (it sent another file than the pinned one), not a network failure's.
        let lock = try work.lock([wheelInput("big", sha256: digest, urls: [server.url("endless/big.whl")], size: Int64(pinned))])
        let alone = fetch(lock)
        #expect(alone.termination == .exited(ExitStatus.integrity), "\(alone.stderr)")
        #expect(alone.stderr.contains("\(server.url("endless/big.whl")) sent more than the input's size: the lock pins \(pinned) bytes"))
        #expect(alone.stderr.contains("the server offered"))
        #expect(files(in: "tmp").isEmpty)
        #expect(files(in: "sha256").isEmpty)
    }

    @Test func aResumedPartialCountsTowardThePinnedSize() throws {
        let data = randomData(2_000_000)
        server.serve("grown.whl", data)
        let pinnedPart = data.prefix(1_000_000)
        let digest = SHA256Digest.of(pinnedPart)
        let lock = try work.lock([wheelInput("grown", sha256: digest, urls: [server.url("files/grown.whl")], size: 1_000_000)])
        _ = try Store(root: store)
        FileManager.default.createFile(atPath: "\(store)/tmp/\(digest.hex).partial", contents: data.prefix(900_000))
        let result = fetch(lock, ["--retries", "1"])
        #expect(result.termination == .exited(ExitStatus.integrity), "\(result.stderr)")
        #expect(result.stderr.contains("the lock pins 1000000 bytes, the server offered 2000000 bytes"), "\(result.stderr)")
        #expect(server.requests().first?.range == "bytes=900000-")
        #expect(files(in: "tmp").isEmpty)
    }

    @Test func aRedirectToABlockedPrefixIsRefused() throws {
        let digest = server.serve("r.whl", randomData(50_000))
        let mirrors = work.file("mirrors.conf", "block \(server.url("files/"))\n")
        let lock = try work.lock([wheelInput("r", sha256: digest, urls: [server.url("redirect/files/r.whl")])])
        let result = fetch(lock, ["--mirrors", mirrors])
        #expect(result.termination == .exited(75), "\(result.stderr)")
        #expect(result.stderr.contains("\(server.url("redirect/files/r.whl")) redirected to \(server.url("files/r.whl"))"), "\(result.stderr)")
        #expect(result.stderr.contains("rule `block \(server.url("files/"))`"))
        #expect(!server.requests().contains { $0.path == "/files/r.whl" })
        #expect(files(in: "sha256").isEmpty)

        // Other schemes are not followed either; without the rule the redirect is followed.
        let scheme = try work.lock([wheelInput("r", sha256: digest, urls: [server.url("redirect/r?to=file:///etc/passwd")])], name: "s.json")
        let refused = fetch(scheme)
        #expect(refused.stderr.contains("redirected to file:///etc/passwd; only http and https"), "\(refused.stderr)")
        let followed = fetch(lock)
        #expect(followed.termination == .exited(0), "\(followed.stderr)")
        #expect(server.requests().suffix(2).map(\.path) == ["/redirect/files/r.whl", "/files/r.whl"])
    }

    @Test func aResumeThroughARedirectWorks() throws {
        let data = randomData(300_000)
        let digest = server.serve("h.whl", data)
        let lock = try work.lock([wheelInput("h", sha256: digest, urls: [server.url("redirect/files/h.whl")], size: 300_000)])
        _ = try Store(root: store)
        FileManager.default.createFile(atPath: "\(store)/tmp/\(digest.hex).partial", contents: data.prefix(100_000))
        let result = fetch(lock)
        #expect(result.termination == .exited(0), "\(result.stderr)")
        #expect(server.requests().last.map { "\($0.path) \($0.range ?? "")" } == "/files/h.whl bytes=100000-")
    }

    @Test func lockAddUnderOfflineOpensNoSocket() throws {
        server.serve("t.tgz", randomData(1000))
        let lock = work.path + "/new.lock.json"
        let arguments = [
            "lock", "add", "--offline", "--lock", lock, "--store", store, "--name", "t", "--kind", "toolchain",
            "--upstream-version", "1", "--url", server.url("files/t.tgz"),
        ]
        let result = krnative(arguments)
        #expect(result.termination == .exited(66), "\(result.stderr)")
        #expect(result.stderr.contains("--offline forbids downloading \(server.url("files/t.tgz"))"), "\(result.stderr)")
        #expect(server.requests().isEmpty)
        #expect(!FileManager.default.fileExists(atPath: lock))
        // KRNATIVE_OFFLINE=1 is the same; a local --file needs no network.
        #expect(krnative(Array(arguments.filter { $0 != "--offline" }), environment: ["KRNATIVE_OFFLINE": "1"]).termination == .exited(66))
        let file = work.file("t.tgz", randomData(1000))
        #expect(krnative(arguments + ["--file", file]).succeeded)
        #expect(server.requests().isEmpty)
    }

    @Test func aLockWithADuplicatedKeyIsRefused() throws {
        let first = SHA256Digest.of(Data("first".utf8)), last = SHA256Digest.of(Data("last".utf8))
        let lock = work.file(
            "dup.lock.json",
            """
            {"version": 1, "sourceDateEpoch": 0, "inputs": [
              {"name": "attrs", "kind": "wheel", "version": "1", "filename": "attrs.whl",
               "sha256": "\(first)",
               "urls": ["http://x/a.whl"],
               "sha256": "\(last)"}
            ]}
            """)
        let result = krnative(["lock", "check", "--lock", lock])
        #expect(result.termination == .exited(65))
        for needle in ["inputs[0] (attrs).sha256", "twice", "line 3", "line 5", first.hex, last.hex] {
            #expect(result.stderr.contains(needle), "\(needle) missing from: \(result.stderr)")
        }
    }

    /// A source archive of a small tree, with its tree hash.
    func sourceArchive() throws -> (Data, SHA256Digest) {
        let tree = TemporaryDirectory()
        _ = tree.file("lib-1.0/src/a.c", "int a;\n")
        try ChildProcess.check(["tar", "-czf", "lib.tar.gz", "lib-1.0"], directory: tree.path)
        let archive = try Data(contentsOf: URL(fileURLWithPath: tree.path + "/lib.tar.gz"))
        return (archive, try TreeHashProbe.directory(tree.path + "/lib-1.0"))
    }

    /// Issue #27: `fetch` hashes what the store holds again before it says "already in the store"
    /// (an offline fetch of a corrupted entry said so and exited 0): offline, the entry is
    /// quarantined and the run exits 76; online, it is quarantined and fetched again.
    @Test func aCorruptedStoreEntryIsNotAlreadyThere() throws {
        let digest = server.serve("c.whl", randomData(20_000))
        let lock = try work.lock([wheelInput("c", sha256: digest, urls: [server.url("files/c.whl")])])
        try #require(fetch(lock).succeeded)
        let entry = store + "/sha256/" + digest.hex
        chmod(entry, 0o644)
        try Data("flipped".utf8).write(to: URL(fileURLWithPath: entry))
        let offline = fetch(lock, ["--offline"])
        #expect(offline.termination == .exited(ExitStatus.integrity), "\(offline.stderr)")
        #expect(offline.stderr.contains(entry) && !offline.stdout.contains("1 already in the store"), "\(offline.stdout)\n\(offline.stderr)")
        #expect(files(in: "quarantine").count == 1)
        try Data("flipped again".utf8).write(to: URL(fileURLWithPath: entry))
        let online = fetch(lock)
        #expect(online.succeeded, "\(online.stderr)")
        #expect(online.stdout.contains("1 fetched"), "\(online.stdout)")
        #expect(try SHA256Digest.of(fileAt: entry).digest == digest)
    }

    /// Issue #27: a file whose sha256 is not the pinned one, from the only mirror, exits with
    /// integrity's status (76), as the README's table says; it was reported as a fetch failure (75),
    /// which a script would retry. A mirror that cannot be reached stays 75 (ExitStatusTests).
    @Test func aHashMismatchFromTheOnlyMirrorIsAnIntegrityFailure() throws {
        let served = server.serve("w.whl", randomData(10_000))
        let pinned = SHA256Digest.of(Data("another file".utf8))
        let lock = try work.lock([wheelInput("w", sha256: pinned, urls: [server.url("files/w.whl")])])
        let result = fetch(lock, ["--retries", "1"])
        #expect(result.termination == .exited(ExitStatus.integrity), "\(result.stderr)")
        #expect(result.stderr.contains("whose sha256 is \(served), but the lock pins \(pinned)"), "\(result.stderr)")
        #expect(files(in: "sha256").isEmpty)
        // A source that sent nothing leaves no empty partial behind (issue #27: a killed fetch left them).
        let nothing = try work.lock([wheelInput("n", sha256: pinned, urls: [server.url("missing/n.whl")])], name: "nothing.json")
        #expect(fetch(nothing, ["--retries", "1"]).termination == .exited(ExitStatus.fetch))
        #expect(files(in: "tmp").isEmpty, "\(files(in: "tmp"))")
    }

    @Test func aJunkMirrorIsQuarantinedAndTheNextOneServes() throws {
        let (archive, tree) = try sourceArchive()
        let good = server.serve("lib.tar.gz", archive)
        let junk = SHA256Digest.of(Data(String(repeating: "not an archive\n", count: archive.count / 15 + 1).utf8).prefix(archive.count))
        let source = LockedInput(
            name: "lib", kind: .source, version: "1.0", filename: "lib-1.0.tar.gz", treeSha256: tree,
            urls: [server.url("junk/lib.tar.gz"), server.url("files/lib.tar.gz")])
        let lock = try work.lock([source])
        let result = fetch(lock)
        #expect(result.termination == .exited(0), "\(result.stderr)")
        #expect(result.stderr.contains("is not a readable archive"))
        #expect(files(in: "sha256") == [good.hex])
        #expect(files(in: "quarantine").count == 1)
        #expect(files(in: "quarantine").first?.contains("found-sha256-\(junk.hex)") == true, "\(files(in: "quarantine"))")
        #expect(files(in: "tmp").isEmpty)
        let again = fetch(lock)
        #expect(again.termination == .exited(0), "\(again.stderr)")
        #expect(again.stdout.contains("1 already in the store"))

        // A junk-only mirror fails cleanly, twice: the bad partial is not resumed. Wrong bytes from
        // the only source exit with integrity's status, as the README's table says (issue #27: it was 75).
        var junkOnly = source
        junkOnly.urls = [server.url("junk/lib.tar.gz")]
        let onlyJunk = try work.lock([junkOnly], name: "junk.json")
        for _ in 0..<2 {
            let failed = fetch(onlyJunk, store: work.path + "/other")
            #expect(failed.termination == .exited(ExitStatus.integrity), "\(failed.stderr)")
        }
        #expect(server.requests().filter { $0.path == "/junk/lib.tar.gz" }.allSatisfy { $0.range == nil })
    }

    @Test func aJunkPartialFromAnEarlierRunIsDiscarded() throws {
        let (archive, tree) = try sourceArchive()
        server.serve("lib.tar.gz", archive)
        let lock = try work.lock([
            LockedInput(
                name: "lib", kind: .source, version: "1.0", filename: "lib-1.0.tar.gz", treeSha256: tree,
                urls: [server.url("files/lib.tar.gz")])
        ])
        _ = try Store(root: store)
        FileManager.default.createFile(atPath: "\(store)/tmp/tree-\(tree.hex).partial", contents: Data("junk junk junk".utf8))
        let result = fetch(lock)
        #expect(result.termination == .exited(0), "\(result.stderr)")
        // A resume from the junk, then the whole file (the server's log is in the order its
        // handlers end, which for two connections in a row is not always the order they began).
        #expect(server.requests().map { $0.range ?? "" }.sorted() == ["", "bytes=14-"])
        #expect(files(in: "quarantine").count == 1)
        #expect(files(in: "tmp").isEmpty)
    }
}
