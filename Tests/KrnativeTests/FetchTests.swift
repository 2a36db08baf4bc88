import Archive
import Fetch
import Foundation
import Inputs
import KrnativeBase
import Lock
import Store
import Testing

@Suite("Fetch against a loopback server", .timeLimit(.minutes(60)), .tags(.network), .serialized)
struct FetchTests {
    let server: FaultServer
    let work = TemporaryDirectory()
    let store: Store
    let messages = MessageLog()

    init() throws {
        server = try FaultServer()
        store = try Store(root: work.path + "/store")
    }

    func fetcher(offline: Bool = false, stallTimeout: Int = 30, mirrors: MirrorConfig = MirrorConfig()) -> Fetcher {
        var options = FetchOptions()
        options.offline = offline
        options.retryDelay = 0.05
        options.transfer.stallTimeout = stallTimeout
        options.mirrors = mirrors
        let log = messages
        return Fetcher(
            resolver: InputResolver(store: store), options: options,
            progress: ProgressReporter(interactive: false, emit: { log.append($0) }))
    }

    @Test func fetchesAndAdmitsInParallel() throws {
        let inputs = (0..<6).map { index in
            let data = randomData(200_000 + index)
            return wheelInput("w\(index)", sha256: server.serve("w\(index).whl", data), urls: [server.url("files/w\(index).whl")])
        }
        let report = fetcher().fetch(inputs)
        #expect(report.items.map(\.status) == Array(repeating: .fetched, count: 6))
        #expect(Set(store.entries().map(\.sha256)) == Set(inputs.compactMap(\.sha256)))
        // A second run finds everything and opens no connection.
        let before = server.requests().count
        #expect(fetcher().fetch(inputs).items.allSatisfy { $0.status == .present })
        #expect(server.requests().count == before)
    }

    @Test func fallsBackToTheNextMirror() throws {
        let digest = server.serve("m.whl", randomData(50_000))
        let input = wheelInput("m", sha256: digest, urls: [server.url("status/404/m.whl"), server.url("files/m.whl")])
        let item = fetcher().fetch([input]).items[0]
        #expect(item.status == .fetched)
        #expect(item.from == server.url("files/m.whl"))
    }

    @Test func hashMismatchNamesURLAndBothHashesAndAdmitsNothing() throws {
        let data = randomData(40_000)
        let digest = server.serve("h.whl", data)
        let input = wheelInput("h", sha256: digest, urls: [server.url("wrong/h.whl")])
        let item = fetcher().fetch([input]).items[0]
        #expect(item.status == .failed)
        let error = try #require(item.error)
        #expect(error.contains(server.url("wrong/h.whl")))
        #expect(error.contains(digest.hex))
        var flipped = data
        flipped[flipped.count - 1] ^= 0xFF
        #expect(error.contains(SHA256Digest.of(flipped).hex))
        #expect(store.entries().isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.root + "/quarantine").count == 1)
        // With a good mirror after the bad one, the good one wins.
        let recovered = wheelInput("h", sha256: digest, urls: [server.url("wrong/h.whl"), server.url("files/h.whl")])
        #expect(fetcher().fetch([recovered]).items[0].status == .fetched)
    }

    @Test func retriesTransientErrorsWithBackoff() throws {
        let digest = server.serve("f.whl", randomData(10_000))
        let input = wheelInput("f", sha256: digest, urls: [server.url("flaky/2/f.whl")])
        #expect(fetcher().fetch([input]).items[0].status == .fetched)
        #expect(server.requests().filter { $0.path == "/flaky/2/f.whl" }.map(\.status) == [500, 500, 200])
        #expect(messages.text.contains("retrying"))
    }

    @Test func resumesATruncatedTransferWithRange() throws {
        let data = randomData(400_000)
        let digest = server.serve("t.whl", data)
        let input = wheelInput("t", sha256: digest, urls: [server.url("truncate/t.whl")])
        #expect(fetcher().fetch([input]).items[0].status == .fetched)
        let requests = server.requests().filter { $0.path == "/truncate/t.whl" }
        #expect(requests.count == 2)
        #expect(requests[1].range == "bytes=200000-")
        #expect(requests.map(\.bytes).reduce(0, +) == 400_000)
    }

    @Test func stalledTransferTimesOutAndResumes() throws {
        let digest = server.serve("s.whl", randomData(100_000))
        let input = wheelInput("s", sha256: digest, urls: [server.url("stall/s.whl")])
        #expect(fetcher(stallTimeout: 1).fetch([input]).items[0].status == .fetched)
        #expect(server.requests().filter { $0.path == "/stall/s.whl" }.last?.range == "bytes=50000-")
        #expect(messages.text.contains("stalled"))
    }

    @Test func serverIgnoringRangeRestartsFromZero() throws {
        let data = randomData(80_000)
        let digest = server.serve("n.whl", data)
        let input = wheelInput("n", sha256: digest, urls: [server.url("norange/n.whl")])
        // A partial file from an earlier, interrupted run.
        FileManager.default.createFile(atPath: store.partialPath(for: digest.hex), contents: data.prefix(30_000))
        #expect(fetcher().fetch([input]).items[0].status == .fetched)
        #expect(try store.verifiedPath(for: digest) == store.path(for: digest))
    }

    @Test func sourceVerifiesByTreeHashWhateverTheCompression() throws {
        let tree = TemporaryDirectory()
        _ = tree.file("lib-1.0/src/a.c", "int a;\n")
        _ = tree.file("lib-1.0/CMakeLists.txt", "project(lib C)\n")
        try ChildProcess.check(["tar", "-czf", "gz.tar.gz", "lib-1.0"], directory: tree.path)
        try ChildProcess.check(["tar", "--format=gnu", "-cJf", "xz.tar.gz", "lib-1.0"], directory: tree.path)
        let treeHash = try TreeHash.ofDirectory(at: tree.path + "/lib-1.0")
        let served = server.serve("lib.tar.gz", try Data(contentsOf: URL(fileURLWithPath: tree.path + "/xz.tar.gz")))
        let source = LockedInput(
            name: "lib", kind: .source, version: "1.0", filename: "lib-1.0.tar.gz",
            sha256: try SHA256Digest.of(fileAt: tree.path + "/gz.tar.gz").digest,  // recorded from another compression
            treeSha256: treeHash, urls: [server.url("files/lib.tar.gz")])
        let item = fetcher().fetch([source]).items[0]
        #expect(item.status == .fetched)
        #expect(item.sha256 == served)
        #expect(store.file(forTree: treeHash) == served)
        #expect(fetcher(offline: true).fetch([source]).items[0].status == .present)

        var wrong = source
        wrong.name = "other"
        wrong.treeSha256 = SHA256Digest.of(Data("not this tree".utf8))
        wrong.sha256 = nil
        let failed = fetcher().fetch([wrong]).items[0]
        #expect(failed.status == .failed)
        #expect(failed.error?.contains("unpacks to tree \(treeHash)") == true)
    }

    /// On a terminal, the progress line gives the total the lock pins, the share done and the time
    /// left (512 KiB/s from the slow path: about two seconds for these 1,000,000 bytes).
    @Test func progressGivesTheTotalTheShareAndTheTimeLeft() throws {
        let inputs = (0..<2).map { index in
            let data = randomData(500_000)
            return wheelInput("p\(index)", sha256: server.serve("p\(index).whl", data), urls: [server.url("slow/p\(index).whl")], size: 500_000)
        }
        let lines = Collected()
        let fetcher = Fetcher(
            resolver: InputResolver(store: store), options: FetchOptions(),
            progress: ProgressReporter(interactive: true, emit: { lines.append(Data($0.utf8)) }))
        #expect(fetcher.fetch(inputs).items.allSatisfy { $0.status == .fetched })
        let drawn = lines.text.components(separatedBy: "\r\u{1B}[K").filter { $0.hasPrefix("[") }
        #expect(drawn.first?.hasPrefix("[0/2] 0 B of 976.6 KiB (0%) at ") == true, "\(drawn.first ?? "nothing drawn")")
        #expect(drawn.contains { $0.contains("%) at ") && $0.contains(" s left") }, "\(drawn)")
        #expect(drawn.allSatisfy { $0.count < 80 }, "a line is wider than the terminal: \(drawn)")
    }

    @Test func offlineOpensNoConnectionAndSaysHowToImport() throws {
        let digest = server.serve("o.whl", randomData(1000))
        let input = wheelInput("o", sha256: digest, urls: [server.url("files/o.whl")])
        let item = fetcher(offline: true).fetch([input]).items[0]
        #expect(item.status == .missing)
        #expect(server.requests().isEmpty)
        let error = try #require(item.error)
        for needle in ["o 1.0", digest.hex, server.url("files/o.whl")] {
            #expect(error.contains(needle), "\(needle) missing from: \(error)")
        }
        // The advice comes once for all that is missing, naming what was asked for.
        let report = FetchReport.Failed([item], selection: "--target musllinux-aarch64").description
        for needle in ["o-1.0-py3-none-any.whl", digest.hex, "krnative bundle import", "krnative store import", "bundle export inputs.tar --lock krnative.lock.json --target musllinux-aarch64"] {
            #expect(report.contains(needle), "\(needle) missing from: \(report)")
        }
    }

    @Test func mirrorConfigRewritesRealURLsToLoopback() throws {
        let digest = server.serve("pkg.tar.gz", randomData(3000))
        let input = wheelInput(
            "pkg", sha256: digest, urls: ["https://github.com/example/pkg/releases/download/v1/pkg.tar.gz"])
        let mirrors = try MirrorConfig.parse(
            "# the release host, served locally\nrewrite https://github.com/example/pkg/releases/download/v1/ \(server.url("files/"))\nblock https://github.com/\n",
            file: "mirrors.conf")
        let item = fetcher(mirrors: mirrors).fetch([input]).items[0]
        #expect(item.status == .fetched)
        #expect(item.from == server.url("files/pkg.tar.gz"))
    }
}

@Suite("Mirror config", .timeLimit(.minutes(60)))
struct MirrorConfigTests {
    @Test func ordersRewritesFirstAndDropsBlocked() throws {
        let config = try MirrorConfig.parse("rewrite https://a/ http://m1/\nrewrite https://a/ http://m2/\nblock https://b/\n", file: "m")
        #expect(config.candidates(for: ["https://a/x", "https://b/y", "https://c/z"]) == ["http://m1/x", "http://m2/x", "https://a/x", "https://c/z"])
    }

    @Test func badLineNamesFileAndLine() {
        #expect(throws: UsageError.self) { try MirrorConfig.parse("rewrite only-one\n", file: "m.conf") }
        do { _ = try MirrorConfig.parse("\nfrobnicate x\n", file: "m.conf") } catch { #expect(error.description.hasPrefix("m.conf:2:")) }
    }
}

/// Collects progress lines written from several threads.
final class MessageLog: @unchecked Sendable {
    private let lock = NSLock()
    private var lines = ""
    func append(_ text: String) { lock.withLock { lines += text } }
    var text: String { lock.withLock { lines } }
}
