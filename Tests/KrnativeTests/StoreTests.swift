import Foundation
import KrnativeBase
import Store
import Testing

@Suite("Store")
struct StoreTests {
    @Test func ingestVerifiesThenAdmitsReadOnly() throws {
        let work = TemporaryDirectory()
        let store = try Store(root: work.path + "/store")
        let data = randomData(300_000)
        let file = work.file("input.bin", data)
        let (digest, size) = try store.ingest(copying: file, expected: SHA256Digest.of(data), expectedSize: 300_000)
        #expect(size == 300_000)
        #expect(FileManager.default.contents(atPath: store.path(for: digest)) == data)
        var info = stat()
        stat(store.path(for: digest), &info)
        #expect(info.st_mode & 0o777 == 0o444)
        #expect(try store.verifiedPath(for: digest) == store.path(for: digest))
    }

    @Test func mismatchLeavesNothingAdmitted() throws {
        let work = TemporaryDirectory()
        let store = try Store(root: work.path + "/store")
        let file = work.file("input.bin", randomData(1000))
        let claimed = SHA256Digest.of(Data("something else".utf8))
        #expect(throws: StoreError.self) { try store.ingest(copying: file, expected: claimed) }
        #expect(store.entries().isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.root + "/quarantine").count == 1)
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.root + "/tmp").isEmpty)
    }

    @Test func corruptedEntryIsFoundAndQuarantined() throws {
        let work = TemporaryDirectory()
        let store = try Store(root: work.path + "/store")
        let good = try store.ingest(copying: work.file("a", randomData(5000))).digest
        let bad = try store.ingest(copying: work.file("b", randomData(5000))).digest
        let path = store.path(for: bad)
        chmod(path, 0o644)
        let handle = FileHandle(forUpdatingAtPath: path)!
        try handle.seek(toOffset: 100)
        try handle.write(contentsOf: Data([0, 1, 2, 3]))
        try handle.close()
        let report = store.verifyAll()
        #expect(report.verified == [good])
        #expect(report.quarantined.keys.sorted() == [bad.hex])
        #expect(!store.contains(bad))
        do {
            _ = try store.verifiedPath(for: bad)
            Issue.record("a missing entry verified")
        } catch { #expect(error.description.contains(bad.hex)) }
    }

    @Test func concurrentIngestsOfOneFileLeaveOneEntry() throws {
        let work = TemporaryDirectory()
        let store = try Store(root: work.path + "/store")
        let file = work.file("same", randomData(2_000_000))
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            _ = try? store.ingest(copying: file)
        }
        #expect(store.entries().count == 1)
        #expect(store.verifyAll().quarantined.isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.root + "/tmp").isEmpty)
    }

    @Test func collectGarbageKeepsWhatIsNamed() throws {
        let work = TemporaryDirectory()
        let store = try Store(root: work.path + "/store")
        let keep = try store.ingest(copying: work.file("a", randomData(100))).digest
        let drop = try store.ingest(copying: work.file("b", randomData(100))).digest
        try store.recordTree(SHA256Digest.of(Data("tree".utf8)), file: drop)
        let removed = store.collectGarbage(keep: [keep])
        #expect(removed.map(\.sha256) == [drop])
        #expect(store.entries().map(\.sha256) == [keep])
        #expect(store.file(forTree: SHA256Digest.of(Data("tree".utf8))) == nil)
    }

    @Test func defaultRootFollowsEnvironment() {
        #expect(Store.defaultRoot(environment: ["KRNATIVE_STORE": "/s", "HOME": "/h"]) == "/s")
        #expect(Store.defaultRoot(environment: ["XDG_CACHE_HOME": "/c", "HOME": "/h"]) == "/c/krnative/store")
        #expect(Store.defaultRoot(environment: ["HOME": "/h"]) == "/h/.cache/krnative/store")
    }
}
