import Archive
import Foundation
import KrnativeBase
import Store
import Testing

@Suite("Store", .timeLimit(.minutes(60)))
struct StoreTests {
    /// A wait for another process's lock is said, with the holder's pid, and ends when it lets go.
    @Test func waitingForAnEntrysLockSaysWhoHoldsIt() throws {
        let directory = TemporaryDirectory("krnative-lock-wait")
        let path = directory.path + "/entry.lock"
        let held = try FileLock(path: path)
        #expect(waitingNotice(at: path, releasing: held.unlock) == "waiting for \(path): another krnative process (pid \(getpid())) holds its lock")
    }

    /// Takes the lock at `path` on another thread while something else holds it: checks that it
    /// waits, returns what it said by then, and calls `release`, after which it must get the lock
    /// (and let it go).
    func waitingNotice(at path: String, releasing release: () -> Void) -> String {
        let said = Collected()
        let acquired = DispatchSemaphore(value: 0)
        Thread {
            let waiter = try? FileLock(path: path, waiting: { said.append(Data($0.utf8)) })
            waiter?.unlock()
            acquired.signal()
        }.start()
        #expect(acquired.wait(timeout: .now() + 0.5) == .timedOut, "the second lock did not wait")
        let text = said.text
        release()
        #expect(acquired.wait(timeout: .now() + 5) == .success)
        return text
    }

    /// Issue #27: the notice named the pid of a finished run (left in the file) while another
    /// process held the lock. A holder that wrote no pid is not named after a process that is gone,
    /// and a lock let go leaves no pid behind.
    @Test func aWaitNamesNoProcessThatIsGone() throws {
        let directory = TemporaryDirectory("krnative-lock-stale")
        let path = directory.file("entry.lock", "\(Self.goneProcess)\n")
        let other = open(path, O_RDWR | O_CLOEXEC)
        try #require(other >= 0 && flock(other, LOCK_EX) == 0)
        #expect(waitingNotice(at: path, releasing: { close(other) }) == "waiting for \(path): another krnative process holds its lock")
        #expect(FileSystem.size(of: path) == 0, "the pid stayed after the lock was let go")
    }

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
        let report = store.verifyEntries()
        #expect(report.checked == 2)
        #expect(report.problems.map(\.path) == ["sha256/\(bad.hex)"])
        #expect(store.contains(good) && !store.contains(bad))
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
        #expect(store.verifyEntries().problems.isEmpty)
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
                "zig-cache/new",
            ])
        #expect(plan.keep.contains { $0.name == "half.partial" && $0.reason == "a partial download a fetch resumes" })
        #expect(plan.keep.contains { $0.name == "ingest.\(getpid()).1.tmp" && $0.reason.contains("running process") })
        #expect(plan.remove.first { $0.name == "old" }?.reason.hasPrefix("last used 40 days ago") == true)
        store.collect(plan)
        #expect(!FileSystem.exists(store.item(.steps, "old")) && FileSystem.exists(store.item(.steps, "new")))
        #expect(!FileSystem.exists(store.treeHashRecord(.steps, "old")), "a tree-hash record goes with its item")
        #expect(!FileSystem.exists(store.partialPath(for: "empty")) && FileSystem.exists(store.partialPath(for: "half")))
    }

    /// Issue #23: gc removes a derived item under `Store.lock(_:_:)`, the lock its writers take
    /// (the step snapshot, the toolchain, the smoke root: StepCacheTests shows the writers): while
    /// a writer holds it, gc waits, and removes the item once it is let go.
    @Test(.timeLimit(.minutes(60))) func collectWaitsForTheWritersLockOfEachItem() throws {
        let work = TemporaryDirectory()
        let store = try Store(root: work.path + "/store")
        let items: [(Store.Area, String)] = [(.steps, "k"), (.toolchains, "z"), (.sysroots, "manylinux-x86_64-r")]
        var held: [FileLock] = []
        for (area, name) in items {
            try FileSystem.createDirectory(store.item(area, name))
            try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(-40 * 86_400)], ofItemAtPath: store.item(area, name))
            held.append(try store.lock(area, name))
        }
        let plan = store.planCollection(keepEntries: [], maxAge: 30 * 86_400)
        #expect(Set(plan.remove.map(\.name)) == Set(items.map(\.1)))
        let finished = DispatchSemaphore(value: 0)
        Thread {
            store.collect(plan)
            finished.signal()
        }.start()
        for ((area, name), lock) in zip(items, held) {
            #expect(finished.wait(timeout: .now() + 1) == .timedOut, "gc did not wait for the lock of \(area.rawValue)/\(name)")
            #expect(FileSystem.exists(store.item(area, name)), "gc removed \(area.rawValue)/\(name) under its writer")
            lock.unlock()
        }
        #expect(finished.wait(timeout: .now() + 10) == .success)
        for (area, name) in items { #expect(!FileSystem.exists(store.item(area, name))) }
    }

    // MARK: store verify, run as a user runs it

    /// A good item in every area: each is counted, derived items say how far they were checked,
    /// and a copy a running process is still writing is left alone.
    @Test(.tags(.process), .endToEnd) func verifyChecksEveryAreaOfAGoodStore() throws {
        let work = TemporaryDirectory()
        let store = try Store(root: work.path + "/store")
        let entry = try store.ingest(copying: work.file("source.tar.gz", randomData(2000))).digest
        try store.recordTree(SHA256Digest.of(Data("tree".utf8)), file: entry)
        try completeItem(in: store, .steps, "step", files: ["bin/ttyd": randomData(3000)])
        try completeItem(in: store, .packs, "packed", files: ["volume.tar.xz": randomData(3000), "entries.json": Data("[]".utf8)])
        makeTree(store.item(.toolchains, "unpacked-before-records"), files: ["bin/cc": randomData(100)])
        makeTree(store.item(.sysroots, "static-gnu-0123456789abcdef"), files: ["etc/os-release": Data("ID=debian\n".utf8)])
        makeTree(store.item(.steps, "next") + ".tmp-\(getpid())", files: ["lib/libz.a": randomData(100)])
        try store.lock(entry.hex).unlock()
        makeTree(store.directory(.tmp), files: ["resumable.partial": Data(count: 10)])

        let (result, report) = try verify(store)
        #expect(result.termination == .exited(0), "\(result.stderr)")
        #expect(report.corrupted == 0 && report.warnings == 0, "\(report.areas.flatMap(\.problems))")
        #expect(report.areas.map(\.area) == Store.Area.allCases)
        let checked = Dictionary(uniqueKeysWithValues: report.areas.map { ($0.area.rawValue, $0.checked) })
        #expect(
            checked == [
                "sha256": 1, "trees": 1, "steps": 1, "toolchains": 1, "zig-cache": 0, "sysroots": 1, "packs": 1, "bytecode": 0, "quarantine": 0, "tmp": 1,
                "locks": 1,
            ])
        let checks = Dictionary(uniqueKeysWithValues: report.areas.map { ($0.area, $0.checks) })
        #expect(checks[.steps] == "1 tree-hashed again against the record made with it")
        #expect(checks[.packs] == "1 tree-hashed again against the record made with it")
        #expect(checks[.toolchains] == "1 complete, not verified by hash: nothing recorded")
        #expect(checks[.sysroots] == "1 complete, not verified by hash: nothing recorded")
    }

    /// Unfinished copies of processes that are gone, a record without its item, stale temp files
    /// and quarantined files are warnings (exit 0), each with its size and a fix that holds: the
    /// gc it names removes them.
    @Test(.tags(.process), .endToEnd) func verifyReportsLeftoversWithTheGcThatRemovesThem() throws {
        let work = TemporaryDirectory()
        let store = try Store(root: work.path + "/store")
        let gone = Self.goneProcess
        makeTree(store.item(.steps, "a1") + ".tmp-\(gone)", files: ["lib/libz.a": Data(count: 1000)])
        makeTree(store.item(.sysroots, "static-gnu-0123456789abcdef") + ".partial-\(gone)", files: ["etc/os-release": Data(count: 100)])
        makeTree(store.directory(.toolchains), files: ["collected.tree-sha256": Data(count: 65)])
        makeTree(store.directory(.tmp), files: ["empty.partial": Data(), "ingest.\(gone).1.tmp": Data(count: 5)])
        makeTree(store.directory(.quarantine), files: ["w.whl.found-ab.1700000000": Data(count: 7)])
        // A Zig cache that the steps of builds shared, before each build had its own (#22).
        makeTree(store.item(.zigCache, "0.14.1-aarch64-linux-musl"), files: ["o/abc/libc.a": Data(count: 100)])

        let (result, report) = try verify(store)
        #expect(result.termination == .exited(0), "\(result.stderr)")
        #expect(report.corrupted == 0)
        let problems = Dictionary(uniqueKeysWithValues: report.areas.flatMap(\.problems).map { ($0.path, $0) })
        let leftovers: Set = [
            "steps/a1.tmp-\(gone)", "sysroots/static-gnu-0123456789abcdef.partial-\(gone)", "toolchains/collected.tree-sha256",
            "tmp/empty.partial", "tmp/ingest.\(gone).1.tmp", "zig-cache/0.14.1-aarch64-linux-musl",
        ]
        #expect(Set(problems.keys) == leftovers.union(["quarantine/w.whl.found-ab.1700000000"]))
        #expect(problems.values.allSatisfy { $0.severity == .warning })
        #expect(leftovers.allSatisfy { problems[$0]?.fix.hasPrefix("`krnative store gc` removes it") == true })
        #expect(problems["steps/a1.tmp-\(gone)"]?.bytes == 1000)
        #expect(problems["steps/a1.tmp-\(gone)"]?.finding == "an unfinished copy left by process \(gone), which is gone")
        #expect(problems["zig-cache/0.14.1-aarch64-linux-musl"]?.finding.hasPrefix("a Zig cache that the steps of earlier builds shared") == true)
        #expect(problems["quarantine/w.whl.found-ab.1700000000"]?.bytes == 7)
        #expect(problems["quarantine/w.whl.found-ab.1700000000"]?.fix.contains("--max-age") == true)

        let plan = store.planCollection(keepEntries: [], maxAge: 30 * 86_400)
        #expect(Set(plan.remove.map { "\($0.area.rawValue)/\($0.name)" }) == leftovers)

        let text = krnative(["store", "verify", "--store", store.root])
        #expect(text.termination == .exited(0))
        #expect(text.stdout.contains("\(store.root): 0 corrupted, 7 warnings\n"))
        #expect(
            text.stdout.contains(
                "\nwarning steps/a1.tmp-\(gone) (1.0 kB): an unfinished copy left by process \(gone), which is gone; fix: `krnative store gc` removes it"))
    }

    /// A corrupted entry and a tampered step result (with a read-only directory, as snapshots
    /// have) are moved to quarantine and fail the run with 76; a good toolchain stays, and the next
    /// run finds only the quarantined copies.
    @Test(.tags(.process), .endToEnd) func verifyQuarantinesCorruptedEntriesAndDerivedItems() throws {
        let work = TemporaryDirectory()
        let store = try Store(root: work.path + "/store")
        let bad = try store.ingest(copying: work.file("b", randomData(5000))).digest
        chmod(store.path(for: bad), 0o644)
        try Data("tampered".utf8).write(to: URL(fileURLWithPath: store.path(for: bad)))
        let recorded = try completeItem(in: store, .steps, "s1", files: ["bin/ttyd": randomData(3000), "lib/libz.a": randomData(100)])
        try Data("tampered".utf8).write(to: URL(fileURLWithPath: store.item(.steps, "s1") + "/bin/ttyd"))
        for directory in ["/lib", ""] { chmod(store.item(.steps, "s1") + directory, 0o555) }
        try completeItem(in: store, .toolchains, "t1", files: ["bin/cc": randomData(100)])

        let (result, report) = try verify(store)
        #expect(result.termination == .exited(ExitStatus.integrity))
        #expect(result.stderr.contains("found 2 corrupted items"))
        #expect(report.corrupted == 2)
        #expect(report.warnings == 0, "what this run quarantined, and the step's record, are not reported again")
        #expect(report.areas.first { $0.area == .quarantine }?.checks == "each reported, with its size, but what this run moved there")
        let problems = Dictionary(uniqueKeysWithValues: report.areas.flatMap(\.problems).map { ($0.path, $0) })
        #expect(problems["sha256/\(bad.hex)"]?.severity == .corrupted)
        #expect(problems["sha256/\(bad.hex)"]?.finding.hasPrefix("found sha256 \(SHA256Digest.of(Data("tampered".utf8)))") == true)
        #expect(problems["steps/s1"]?.severity == .corrupted)
        #expect(problems["steps/s1"]?.finding.contains("where \(recorded) was recorded") == true)
        #expect(problems["steps/s1"]?.movedTo?.hasPrefix("quarantine/s1.found-tree-") == true)
        #expect(!FileSystem.exists(store.item(.steps, "s1")) && !FileSystem.exists(store.treeHashRecord(.steps, "s1")))
        #expect(FileSystem.exists(store.item(.toolchains, "t1")))
        let quarantined = try FileManager.default.contentsOfDirectory(atPath: store.directory(.quarantine))
        let quarantinedStep = try #require(quarantined.first { $0.hasPrefix("s1.found-tree-") })
        var info = stat()
        stat(store.directory(.quarantine) + "/" + quarantinedStep + "/lib", &info)
        #expect(info.st_mode & S_IWUSR != 0, "a quarantined tree's directories are writable, so `rm -r` removes it")

        let (again, report2) = try verify(store)
        #expect(again.termination == .exited(0))
        #expect(report2.corrupted == 0 && report2.warnings == 2)
    }

    /// A step or toolchain is used only while it hashes to the tree recorded when it was made:
    /// a changed one, or one without a record, goes to quarantine and the caller makes it again.
    @Test func derivedItemsAreCheckedWhenUsed() throws {
        let work = TemporaryDirectory()
        let store = try Store(root: work.path + "/store")
        try completeItem(in: store, .steps, "good", files: ["lib/libz.a": randomData(200)])
        try completeItem(in: store, .steps, "changed", files: ["bin/ttyd": randomData(300)])
        try Data("tampered".utf8).write(to: URL(fileURLWithPath: store.item(.steps, "changed") + "/bin/ttyd"))
        try completeItem(in: store, .toolchains, "unrecorded", files: ["bin/cc": randomData(100)])
        unlink(store.treeHashRecord(.toolchains, "unrecorded"))
        var lines: [String] = []
        let use = { (area: Store.Area, name: String) in store.intactItem(area, name, log: { lines.append($0) }) }

        #expect(use(.steps, "good") == store.item(.steps, "good"))
        #expect(use(.steps, "changed") == nil)
        #expect(use(.toolchains, "unrecorded") == nil)
        #expect(use(.steps, "absent") == nil)
        #expect(!FileManager.default.fileExists(atPath: store.item(.steps, "changed")))
        #expect(!FileManager.default.fileExists(atPath: store.treeHashRecord(.steps, "changed")))
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.directory(.quarantine)).count == 2)
        #expect(lines.count == 2 && lines[0].contains("no longer hashes to its recorded tree") && lines[1].contains("has no tree-hash record"), "\(lines)")
    }

    /// Issue #26: an item is hashed once per process while nothing in it changes — a second use,
    /// through another `Store` value too, takes its stamp alone. A touched file (same bytes) is
    /// hashed again and still intact; a rewritten one (same size) is hashed again and quarantined.
    @Test func anItemIsHashedOncePerProcessUntilItChanges() throws {
        let work = TemporaryDirectory()
        let store = try Store(root: work.path + "/store")
        try completeItem(in: store, .toolchains, "zig", files: ["bin/zig": randomData(4000), "lib/std.zig": randomData(300)])
        var hashed = 0
        func use(_ store: Store) -> String? {
            store.intactItem(.toolchains, "zig", treeHash: { path throws(FileSystemError) in
                hashed += 1
                return try TreeHash.ofDirectory(at: path)
            }, log: { _ in })
        }
        let path = store.item(.toolchains, "zig")
        #expect(use(store) == path && hashed == 1)
        #expect(use(store) == path && hashed == 1, "hashed again though nothing changed")
        #expect(use(try Store(root: store.root)) == path && hashed == 1, "another Store value of the same root")

        #expect(utimensat(AT_FDCWD, path + "/lib/std.zig", nil, 0) == 0)
        #expect(use(store) == path && hashed == 2, "a touched file is hashed again, and its bytes are as recorded")
        #expect(use(store) == path && hashed == 2)

        let file = path + "/bin/zig"
        chmod(file, 0o644)
        try randomData(4000).write(to: URL(fileURLWithPath: file))
        #expect(use(store) == nil && hashed == 3, "a rewritten file of the same size was not hashed again")
        #expect(!FileSystem.exists(path))

        // The executable's digest in every key: read once, and again when the file is replaced.
        let executable = work.file("krnative", "krnative one\n")
        let first = try SHA256Digest.ofExecutable(at: executable)
        #expect(try SHA256Digest.ofExecutable(at: executable) == first)
        _ = work.file("krnative", "krnative two\n")
        #expect(try SHA256Digest.ofExecutable(at: executable) == SHA256Digest.of(fileAt: executable).digest)
        #expect(try SHA256Digest.ofExecutable(at: executable) != first, "the same size written over the same path")
    }

    @Test func defaultRootFollowsEnvironment() {
        #expect(Store.defaultRoot(environment: ["KRNATIVE_STORE": "/s", "HOME": "/h"]) == "/s")
        #expect(Store.defaultRoot(environment: ["XDG_CACHE_HOME": "/c", "HOME": "/h"]) == "/c/krnative/store")
        #expect(Store.defaultRoot(environment: ["HOME": "/h"]) == "/h/.cache/krnative/store")
    }
}

/// Runs `krnative store verify --json` on `store`; returns the run and its report.
private func verify(_ store: Store) throws -> (ChildProcess.Result, Store.Verification) {
    let result = krnative(["store", "verify", "--store", store.root, "--json"])
    return (result, try JSONDecoder().decode(Store.Verification.self, from: Data(result.stdout.utf8)))
}

/// A directory at `path` holding `files` (relative path → contents).
private func makeTree(_ path: String, files: [String: Data]) {
    for (name, contents) in files {
        let file = path + "/" + name
        try? FileManager.default.createDirectory(atPath: (file as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: file, contents: contents)
    }
}

/// A derived item made as the build makes one: staged beside its place, then completed with its
/// tree hash recorded. Returns the recorded hash.
@discardableResult
private func completeItem(in store: Store, _ area: Store.Area, _ name: String, files: [String: Data]) throws -> SHA256Digest {
    let staging = store.item(area, name) + ".tmp-\(getpid())"
    makeTree(staging, files: files)
    try store.complete(area, name, from: staging)
    return try #require(store.recordedTreeHash(area, name))
}
