import Archive
import Compile
import Fetch
import Foundation
import KrnativeBase
import Lock
import Store
import Testing

/// `--remote-cache` against nginx with WebDAV (Debian's nginx-light), the way a team serves
/// Bazel's HTTP cache protocol: one store uploads what it fetched, another store fetches it from
/// the cache alone; a cache that is stopped, serves wrong bytes or stalls costs a warning and the
/// lock's own URL, never a failed or different fetch.
@Suite("Remote cache", .timeLimit(.minutes(60)), .tags(.process, .network), .endToEnd, .serialized, .enabled(if: Machine.hasExecutable(WebDAVCache.nginx)))
struct RemoteCacheTests {
    let work = TemporaryDirectory("krnative-remote-cache")
    let server: FaultServer
    let cache: WebDAVCache
    let inputs: [(name: String, data: Data, digest: SHA256Digest)]
    let lock: String

    init() throws {
        server = try FaultServer()
        cache = try WebDAVCache()
        inputs = (0..<2).map { index in
            let data = randomData(300_000 + index)
            return ("r\(index)", data, SHA256Digest.of(data))
        }
        for input in inputs { server.serve("\(input.name).whl", input.data) }
        lock = work.path + "/krnative.lock.json"
        try Lockfile(
            sourceDateEpoch: 1_700_000_000,
            inputs: inputs.map { wheelInput($0.name, sha256: $0.digest, urls: [server.url("files/\($0.name).whl")], size: Int64($0.data.count)) }
        ).write(to: lock)
    }

    func fetch(_ store: String, _ extra: [String]) -> ChildProcess.Result {
        krnative(["fetch", "--lock", lock, "--store", work.path + "/" + store, "--all", "--retry-delay", "0"] + cache.keyOptions + extra)
    }

    func storeHasEveryInput(_ store: String) -> Bool {
        inputs.allSatisfy { (try? SHA256Digest.of(fileAt: "\(work.path)/\(store)/sha256/\($0.digest.hex)").digest) == $0.digest }
    }

    @Test func aSecondStoreGetsTheInputsFromTheCacheAlone() throws {
        let upload = fetch("a", ["--remote-cache", cache.url, "--remote-cache-upload"])
        #expect(upload.succeeded, "\(upload.stderr)")
        for input in inputs {
            #expect(FileManager.default.contents(atPath: "\(cache.data)/cas/\(input.digest.hex)") == input.data, "\(input.name) was not uploaded")
        }
        let fromOrigin = server.requests().count
        let second = fetch("b", ["--remote-cache", cache.url])
        #expect(second.succeeded, "\(second.stderr)")
        #expect(second.stderr.components(separatedBy: "from the remote cache").count == 3, "\(second.stderr)")
        #expect(server.requests().count == fromOrigin, "the second store went to the lock's URLs")
        #expect(storeHasEveryInput("b"))
        // The mirror config's `remote-cache` line does the same.
        let mirrors = work.file("mirrors.conf", "remote-cache \(cache.url)/\n")
        let third = fetch("c", ["--mirrors", mirrors])
        #expect(third.succeeded && third.stderr.contains("from the remote cache"), "\(third.stderr)")
        #expect(server.requests().count == fromOrigin)
    }

    /// A source pinned by its tree alone has no file hash to ask `/cas/` for: the uploader leaves
    /// `/ac/<tree key>` naming the archive, and the reader checks the archive against the tree.
    @Test func aSourcePinnedByItsTreeIsFoundThroughItsRecord() throws {
        let sourceLock = work.path + "/source.lock.json"
        try writeServedSourceLock(to: sourceLock, server: server)
        func fetch(_ store: String, _ extra: [String]) -> ChildProcess.Result {
            krnative(["fetch", "--lock", sourceLock, "--store", work.path + "/" + store, "--all"] + cache.keyOptions + extra)
        }
        #expect(fetch("a", ["--remote-cache", cache.url, "--remote-cache-upload"]).succeeded)
        let blocked = work.file("blocked.conf", "block \(server.url(""))\n")
        let second = fetch("b", ["--remote-cache", cache.url, "--mirrors", blocked])
        #expect(second.succeeded, "\(second.stderr)")
        #expect(second.stderr.contains("fetched lib 1.0 from the remote cache"), "\(second.stderr)")
        // Without the record, nothing names the archive: the blocked URL was all there was.
        try FileManager.default.removeItem(atPath: cache.data + "/ac")
        #expect(!fetch("c", ["--remote-cache", cache.url, "--mirrors", blocked]).succeeded)
    }

    @Test func wrongBytesAreRejectedAndTheLocksURLServes() throws {
        #expect(fetch("a", ["--remote-cache", cache.url, "--remote-cache-upload"]).succeeded)
        let entry = "\(cache.data)/cas/\(inputs[0].digest.hex)"
        try randomData(300_000).write(to: URL(fileURLWithPath: entry))
        let result = fetch("b", ["--remote-cache", cache.url])
        #expect(result.succeeded, "\(result.stderr)")
        #expect(result.stderr.contains("\(cache.url)/cas/\(inputs[0].digest.hex) (r0 1.0) has other bytes"), "\(result.stderr)")
        #expect(storeHasEveryInput("b"))
        let quarantined = try FileManager.default.contentsOfDirectory(atPath: work.path + "/b/quarantine")
        #expect(quarantined.count == 1, "\(quarantined)")
    }

    /// Wrong bytes under the right name are replaced by a run that uploads and rejected them: the
    /// fetch puts what it downloaded instead; `ensure` (a build's outputs) puts the file although
    /// the cache answers for the name.
    @Test func wrongBytesAreReplacedByARunThatUploads() throws {
        #expect(fetch("a", ["--remote-cache", cache.url, "--remote-cache-upload"]).succeeded)
        let (digest, entry) = (inputs[0].digest, "\(cache.data)/cas/\(inputs[0].digest.hex)")
        try randomData(300_000).write(to: URL(fileURLWithPath: entry))
        let result = fetch("b", ["--remote-cache", cache.url, "--remote-cache-upload"])
        #expect(result.succeeded && result.stderr.contains("has other bytes"), "\(result.stderr)")
        #expect(FileManager.default.contents(atPath: entry) == inputs[0].data, "the fetch left the wrong bytes")

        try randomData(300_000).write(to: URL(fileURLWithPath: entry))
        let remote = RemoteCache(url: cache.url, store: try Store(root: work.path + "/c"), signer: cache.signer, trust: cache.trust, note: { _ in })
        #expect(remote.content(digest, sizeCap: 1 << 20, what: "r0") == nil)
        remote.ensure(file: "\(work.path)/a/sha256/\(digest.hex)", digest: digest, what: "r0")
        #expect(FileManager.default.contents(atPath: entry) == inputs[0].data, "ensure left the wrong bytes")
        #expect(remote.summary.uploads == 1)
    }

    @Test func aStoppedCacheCostsOneWarning() throws {
        cache.stop()
        let result = fetch("a", ["--remote-cache", cache.url, "--remote-cache-upload", "--jobs", "1"])
        #expect(result.succeeded, "\(result.stderr)")
        #expect(result.stderr.components(separatedBy: "remote cache:").count == 2, "one warning expected: \(result.stderr)")
        #expect(result.stderr.contains("going on without it for this run"))
        #expect(storeHasEveryInput("a"))
    }

    @Test func aStallingCacheIsLeftAfterItsTimeout() throws {
        // The fault server's /stall/ sends half of a file, then nothing for a minute.
        for input in inputs { server.serve("cas/\(input.digest.hex)", input.data) }
        let started = Date()
        let result = fetch("a", ["--remote-cache", server.url("stall"), "--jobs", "1"])
        #expect(result.succeeded, "\(result.stderr)")
        #expect(result.stderr.contains("stalled"), "\(result.stderr)")
        #expect(storeHasEveryInput("a"))
        #expect(Date().timeIntervalSince(started) < 30, "the cache was waited for more than once")
    }

    /// A step's install tree goes up as a record and a deterministic archive and comes back whole
    /// into another store; a record or archive that is wrong or hostile is refused with a reason,
    /// and leaves no step behind (the step is then compiled).
    @Test func stepResultsComeBackWholeOrNotAtAll() throws {
        let tree = TemporaryDirectory("krnative-step-tree")
        _ = tree.file("lib/libz.a", randomData(50_000))
        _ = tree.file("include/zlib.h", "int deflate(void);\n")
        try FileManager.default.createSymbolicLink(atPath: tree.path + "/lib/libz.so", withDestinationPath: "libz.a")
        let key = SHA256Digest.of(Data("zlib step".utf8))
        let said = Collected()
        func steps(_ name: String, upload: Bool = false) throws -> RemoteSteps {
            let store = try Store(root: work.path + "/" + name)
            return RemoteSteps(
                cache: RemoteCache(
                    url: cache.url, store: store, signer: upload ? cache.signer : nil, trust: cache.trust, note: { said.append(Data(($0 + "\n").utf8)) }),
                store: store)
        }
        try steps("a", upload: true).upload(tree.path, key: key, component: "zlib", epoch: 1_700_000_000, threads: 1)
        let b = try steps("b")
        #expect(b.restore(key, component: "zlib"))
        #expect(try TreeHash.ofDirectory(at: b.store.item(.steps, key.hex)) == TreeHash.ofDirectory(at: tree.path))
        #expect(b.store.recordedTreeHash(.steps, key.hex) == (try TreeHash.ofDirectory(at: tree.path)))

        // Uploaded at the upload preset (issue #26: fast to make); one made at the volume's
        // preset 6, as earlier krnatives uploaded, restores alike.
        func packed(preset: UInt32) throws -> Data {
            var packer = DeterministicTarXz(sourceDateEpoch: 1_700_000_000, threads: 1)
            packer.preset = preset
            let archive = work.path + "/step-\(preset).tar.xz"
            _ = try packer.pack(tree.path, to: archive)
            return try Data(contentsOf: URL(fileURLWithPath: archive))
        }
        let uploaded = try packed(preset: RemoteSteps.uploadPreset)
        #expect(FileManager.default.fileExists(atPath: cache.data + "/cas/" + SHA256Digest.of(uploaded).hex), "not uploaded at preset \(RemoteSteps.uploadPreset)")
        let older = try packed(preset: 6)
        #expect(older != uploaded)
        try older.write(to: URL(fileURLWithPath: cache.data + "/cas/" + SHA256Digest.of(older).hex))
        let olderRecord = #"{"format":"krnative step v1","sha256":"\#(SHA256Digest.of(older).hex)","size":\#(older.count)}"#
        try cache.signer.sign(Data(olderRecord.utf8), key: key).write(to: URL(fileURLWithPath: cache.data + "/ac/" + key.hex))
        let c = try steps("c")
        #expect(c.restore(key, component: "zlib"))
        #expect(try TreeHash.ofDirectory(at: c.store.item(.steps, key.hex)) == TreeHash.ofDirectory(at: tree.path))

        let record = cache.data + "/ac/" + key.hex
        let escaping = TemporaryDirectory()
        try FileManager.default.createSymbolicLink(atPath: escaping.path + "/lib", withDestinationPath: "../../../etc")
        try ChildProcess.check(["tar", "-cJf", "escaping.tar.xz", "lib"], directory: escaping.path)
        let hostile: [(String, Data, Data?)] = [
            ("is not a krnative step record", Data("not json".utf8), nil),
            ("claims 4611686018427387904 bytes", Data(#"{"format":"krnative step v1","sha256":"\#(key.hex)","size":4611686018427387904}"#.utf8), nil),
            ("could not be unpacked", Data(), randomData(10_000)),
            ("could not be unpacked", Data(), try Data(contentsOf: URL(fileURLWithPath: escaping.path + "/escaping.tar.xz"))),
        ]
        for (index, (reason, document, blob)) in hostile.enumerated() {
            var document = document
            if let blob {
                let digest = SHA256Digest.of(blob)
                try blob.write(to: URL(fileURLWithPath: cache.data + "/cas/" + digest.hex))
                document = Data(#"{"format":"krnative step v1","sha256":"\#(digest.hex)","size":\#(blob.count)}"#.utf8)
            }
            // Signed by the trusted key: what is checked here is the record itself.
            try cache.signer.sign(document, key: key).write(to: URL(fileURLWithPath: record))
            let reader = try steps("hostile-\(index)")
            let before = said.text.count
            #expect(!reader.restore(key, component: "zlib"), "\(reason)")
            let now = String(said.text.dropFirst(before))
            #expect(now.contains(reason), "\(reason) not said: \(now)")
            #expect(!FileManager.default.fileExists(atPath: reader.store.item(.steps, key.hex)))
        }
    }

    @Test func doctorChecksTheCache() throws {
        func status() throws -> String? {
            let result = krnative(["doctor", "--json", "--remote-cache", cache.url])
            let checks = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as! [[String: String]]
            return checks.first { $0["name"] == "remote cache" }?["status"]
        }
        #expect(try status() == "ok")
        cache.stop()
        #expect(try status() == "warn")
    }

    @Test func offlineMeansNoCacheEither() throws {
        let before = cache.accessLog.count
        let result = fetch("a", ["--remote-cache", cache.url, "--offline"])
        #expect(result.termination == .exited(ExitStatus.missingInput), "\(result.stderr)")
        #expect(cache.accessLog.count == before)
    }
}
