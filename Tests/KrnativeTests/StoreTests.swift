import Foundation
import KrnativeBase
import Store
import Testing

@Suite("Store")
struct StoreTests {
    /// A process id no process has (pids stay below 2^22 on Linux).
    static let goneProcess: pid_t = 999_999_999

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
        let plan = store.planCollection(keepEntries: [keep], maxAge: 30 * 86_400)
        #expect(plan.remove.map(\.name) == [drop.hex])
        #expect(plan.keep.map(\.reason) == ["named by the lock"])
        #expect(store.entries().count == 2, "a plan removes nothing")
        store.collect(plan)
        #expect(store.entries().map(\.sha256) == [keep])
        #expect(store.file(forTree: SHA256Digest.of(Data("tree".utf8))) == nil)
    }

    /// Every area is seen by `usage`, and gc removes derived items unused for longer than the
    /// limit (read-only trees included, with their tree-hash records), empty partial downloads,
    /// and temp files and unfinished copies of dead processes whatever their age, and keeps the
    /// rest, saying why.
    @Test func collectGarbageCoversEveryArea() throws {
        let work = TemporaryDirectory()
        let store = try Store(root: work.path + "/store")
        let now = Date()
        for (area, name) in [(Store.Area.steps, "old"), (.steps, "new"), (.toolchains, "old"), (.zigCache, "new"), (.sysroots, "old")] {
            let item = store.item(area, name)
            try FileManager.default.createDirectory(atPath: item + "/lib", withIntermediateDirectories: true)
            FileManager.default.createFile(atPath: item + "/lib/libx.a", contents: Data(count: 1000))
            chmod(item + "/lib", 0o555)
            let when = name == "old" ? now.addingTimeInterval(-40 * 86_400) : now
            try FileManager.default.setAttributes([.modificationDate: when], ofItemAtPath: item)
        }
        _ = FileManager.default.createFile(atPath: store.treeHashRecord(.steps, "old"), contents: Data())
        try FileManager.default.createDirectory(atPath: store.item(.sysroots, "fresh") + ".partial-\(Self.goneProcess)", withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: store.partialPath(for: "empty"), contents: Data())
        FileManager.default.createFile(atPath: store.partialPath(for: "half"), contents: Data(count: 10))
        FileManager.default.createFile(atPath: store.directory(.tmp) + "/ingest.999999999.1.tmp", contents: Data(count: 5))
        FileManager.default.createFile(atPath: store.directory(.tmp) + "/ingest.\(getpid()).1.tmp", contents: Data(count: 5))

        let usage = Dictionary(uniqueKeysWithValues: store.usage().map { ($0.area, $0) })
        #expect(Set(usage.keys) == Set(Store.Area.allCases))
        #expect(usage[.steps]?.items == 2 && usage[.steps]?.bytes == 2000)
        #expect(usage[.tmp]?.bytes == 20)

        let plan = store.planCollection(keepEntries: [], maxAge: 30 * 86_400, now: now)
        let removed = Set(plan.remove.map { "\($0.area.rawValue)/\($0.name)" })
        #expect(
            removed == [
                "steps/old", "toolchains/old", "sysroots/old", "sysroots/fresh.partial-\(Self.goneProcess)", "tmp/empty.partial", "tmp/ingest.999999999.1.tmp",
            ])
        #expect(plan.keep.contains { $0.name == "half.partial" && $0.reason == "a partial download a fetch resumes" })
        #expect(plan.keep.contains { $0.name == "ingest.\(getpid()).1.tmp" && $0.reason.contains("running process") })
        #expect(plan.remove.first { $0.name == "old" }?.reason.hasPrefix("last used 40 days ago") == true)
        store.collect(plan)
        #expect(!FileSystem.exists(store.item(.steps, "old")) && FileSystem.exists(store.item(.steps, "new")))
        #expect(!FileSystem.exists(store.treeHashRecord(.steps, "old")), "a tree-hash record goes with its item")
        #expect(!FileSystem.exists(store.partialPath(for: "empty")) && FileSystem.exists(store.partialPath(for: "half")))
    }

    @Test func defaultRootFollowsEnvironment() {
        #expect(Store.defaultRoot(environment: ["KRNATIVE_STORE": "/s", "HOME": "/h"]) == "/s")
        #expect(Store.defaultRoot(environment: ["XDG_CACHE_HOME": "/c", "HOME": "/h"]) == "/c/krnative/store")
        #expect(Store.defaultRoot(environment: ["HOME": "/h"]) == "/h/.cache/krnative/store")
    }
}
