import Archive
import Build
import Compile
import Foundation
import KrnativeBase
import Store
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Issue #26: a rebuild whose volume tree is unchanged copies the packed volume from the store
/// instead of compressing the tree again. The key is what decides the archive's bytes.
@Suite("Packed volumes and .pyc: the same tree is compiled and packed once", .timeLimit(.minutes(60)))
struct PackedVolumeTests {
    let epoch: Int64 = 1_786_665_600

    func key(_ directory: String, epoch: Int64? = nil, preset: UInt32 = 6, threads: Int = 1) throws -> SHA256Digest {
        var packer = DeterministicTarXz(sourceDateEpoch: epoch ?? self.epoch, threads: threads)
        packer.preset = preset
        return try packer.contentKey(of: directory)
    }

    /// Trees made in another order, umask or place, packed with other threads, have one key and
    /// one archive; every change that changes the archive changes the key.
    @Test func theKeyFollowsWhatDecidesTheBytes() throws {
        let work = TemporaryDirectory()
        let (one, two) = (work.path + "/one", work.path + "/two")
        try PackTests().makeVolume(one)
        try PackTests().makeVolume(two, reversed: true, umask: 0o077)
        let base = try key(one)
        #expect(try key(two, threads: 2) == base)
        let (a, b) = (work.path + "/a.tar.xz", work.path + "/b.tar.xz")
        try DeterministicTarXz(sourceDateEpoch: epoch, threads: 1).pack(one, to: a)
        try DeterministicTarXz(sourceDateEpoch: epoch, threads: 2).pack(two, to: b)
        #expect(try SHA256Digest.of(fileAt: a).digest == SHA256Digest.of(fileAt: b).digest)

        #expect(try key(one, epoch: epoch + 1) != base, "the epoch is every entry's mtime")
        #expect(try key(one, preset: 9) != base, "the preset decides the compressed bytes")
        let changes: [(String, () throws -> Void)] = [
            ("a byte of a file", { try Data("b".utf8).write(to: URL(fileURLWithPath: two + "/lib/a-first")) }),
            ("the execute bit", { chmod(two + "/lib/Z-last", 0o755) }),
            ("a link's target", {
                unlink(two + "/bin/python3")
                symlink("python3.13-hardlink", two + "/bin/python3")
            }),
            ("an empty directory", { mkdir(two + "/lib/empty", 0o755) }),
            ("a hard link made a copy", {
                unlink(two + "/bin/python3.13-hardlink")
                FileManager.default.createFile(atPath: two + "/bin/python3.13-hardlink", contents: Data("#!python\n".utf8))
                chmod(two + "/bin/python3.13-hardlink", 0o700)
            }),
            ("an mtime before the epoch", {
                var times = [timespec(tv_sec: 1_000, tv_nsec: 0), timespec(tv_sec: 1_000, tv_nsec: 0)]
                utimensat(AT_FDCWD, two + "/lib/Z-last", &times, AT_SYMLINK_NOFOLLOW)
            }),
        ]
        var seen: Set<SHA256Digest> = [base]
        for (what, change) in changes {
            try change()
            let changed = try key(two)
            #expect(!seen.contains(changed), "changing \(what) left the key as it was")
            seen.insert(changed)
            try DeterministicTarXz(sourceDateEpoch: epoch, threads: 1).pack(two, to: b)
            #expect(try SHA256Digest.of(fileAt: b).digest != SHA256Digest.of(fileAt: a).digest, "\(what) changed the key, not the archive")
            try FileManager.default.copyItem(atPath: b, toPath: a + ".next")
            FileSystem.remove(a)
            try FileSystem.rename(a + ".next", to: a)
        }
    }

    /// Kept, restored whole with its entries; an item altered in the store is quarantined and
    /// missed, never copied out.
    @Test func aKeptPackingComesBackAndAnAlteredOneIsAMiss() throws {
        let work = TemporaryDirectory()
        try PackTests().makeVolume(work.path + "/tree")
        let store = try Store(root: work.path + "/store")
        let packs = PackedArchives(store: store, log: { _ in })
        let packer = DeterministicTarXz(sourceDateEpoch: epoch, threads: 1)
        let archive = work.path + "/volume.tar.xz"
        let entries = try packer.pack(work.path + "/tree", to: archive)
        let executable = work.file("krnative", "stand-in executable\n")
        let key = try PackedArchives.key(of: work.path + "/tree", packer: packer, executable: executable)
        #expect(try packs.restore(key, to: work.path + "/miss.tar.xz") == nil)
        #expect(!FileSystem.exists(work.path + "/miss.tar.xz"))
        packs.keep(archive, entries: entries, as: key)

        let restored = work.path + "/restored.tar.xz"
        #expect(try packs.restore(key, to: restored) == entries)
        #expect(try SHA256Digest.of(fileAt: restored).digest == SHA256Digest.of(fileAt: archive).digest)
        #expect(!FileSystem.exists(restored + ".partial"))

        _ = work.file("krnative", "another krnative\n")
        #expect(try PackedArchives.key(of: work.path + "/tree", packer: packer, executable: executable) != key, "another packer, another key")

        let kept = store.item(.packs, key.hex) + "/" + PackedArchives.archiveName
        chmod(kept, 0o644)
        let handle = try #require(FileHandle(forWritingAtPath: kept))
        try handle.seek(toOffset: 100)
        handle.write(Data([0x42]))
        try handle.close()
        let notes = MessageLog()
        let noting = PackedArchives(store: store, log: { notes.append($0 + "\n") })
        #expect(try noting.restore(key, to: work.path + "/altered.tar.xz") == nil)
        #expect(!FileSystem.exists(work.path + "/altered.tar.xz"))
        #expect(!FileSystem.exists(store.item(.packs, key.hex)), "the altered item stayed in place")
        #expect(notes.text.contains("packs/\(key.hex.prefix(12))") && notes.text.contains("quarantine"), "\(notes.text)")
    }

    /// `pack` compresses a tree once: the same content again (the runtime a rebuild takes from
    /// cached steps, the volume) is copied with the same bytes; `reuse: false` (`--force`,
    /// `--rebuild`, the check runs) packs again; another tree is another key.
    @Test func packingTheSameTreeAgainCopiesTheArchive() throws {
        let work = TemporaryDirectory()
        try PackTests().makeVolume(work.path + "/tree")
        let packs = PackedArchives(store: try Store(root: work.path + "/store"), log: { _ in })
        let packer = DeterministicTarXz(sourceDateEpoch: epoch, threads: 1)
        let executable = work.file("krnative", "stand-in executable\n")
        let first = try packs.pack(work.path + "/tree", with: packer, to: work.path + "/first.tar.xz", executable: executable, reuse: true)
        #expect(!first.copied)
        let again = try packs.pack(work.path + "/tree", with: packer, to: work.path + "/again.tar.xz", executable: executable, reuse: true)
        #expect(again.copied && again.key == first.key && again.entries == first.entries)
        #expect(try SHA256Digest.of(fileAt: work.path + "/again.tar.xz").digest == SHA256Digest.of(fileAt: work.path + "/first.tar.xz").digest)
        let forced = try packs.pack(work.path + "/tree", with: packer, to: work.path + "/forced.tar.xz", executable: executable, reuse: false)
        #expect(!forced.copied)
        #expect(try SHA256Digest.of(fileAt: work.path + "/forced.tar.xz").digest == SHA256Digest.of(fileAt: work.path + "/first.tar.xz").digest)
        _ = work.file("tree/added.txt", "one more file\n")
        let other = try packs.pack(work.path + "/tree", with: packer, to: work.path + "/other.tar.xz", executable: executable, reuse: true)
        #expect(!other.copied && other.key != first.key)
    }

    /// Kept `.pyc` go only into real directories of the tree, all or none: where a directory on
    /// the way is a link (into the tree or out of it) or a file is already there, nothing is
    /// written — not even the entries before it — and the stage compiles instead.
    @Test func keptBytecodeIsNeverWrittenThroughALinkAndComesBackWholeOrNotAtAll() throws {
        let work = TemporaryDirectory()
        let store = try Store(root: work.path + "/store")
        let kept = CompiledBytecode(store: store, log: { _ in })
        let key = SHA256Digest.of(Data("bytecode".utf8))
        _ = work.file("made/lib/a/__pycache__/a.cpython-313.pyc", "a\n")
        _ = work.file("made/lib/pkg/__pycache__/p.cpython-313.pyc", "p\n")
        let added = try DeterministicTarXz(sourceDateEpoch: epoch, threads: 1).contentRecords(of: work.path + "/made")
            .filter { $0.path.contains("__pycache__") }
        kept.keep(added, from: work.path + "/made", as: key)

        func tree(_ name: String, pkg: (String) throws -> Void) throws -> String {
            let root = work.path + "/" + name
            _ = work.file(name + "/lib/a/a.py", "a = 1\n")
            try FileManager.default.createDirectory(atPath: root + "/lib/real", withIntermediateDirectories: true)
            try pkg(root + "/lib/pkg")
            return root
        }
        let outside = work.path + "/outside"
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        let trees = [
            try tree("out") { try FileManager.default.createSymbolicLink(atPath: $0, withDestinationPath: outside) },
            try tree("in") { try FileManager.default.createSymbolicLink(atPath: $0, withDestinationPath: "real") },
            try tree("taken") { _ = work.file(String($0.dropFirst(work.path.count + 1)) + "/__pycache__/p.cpython-313.pyc", "mine\n") },
        ]
        for root in trees {
            #expect(try !kept.restore(key, into: root), "\(root)")
            #expect(!FileSystem.exists(root + "/lib/a/__pycache__"), "\(root): an entry before the refused one was written")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: outside).isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: work.path + "/in/lib/real").isEmpty)
        #expect(try String(contentsOfFile: work.path + "/taken/lib/pkg/__pycache__/p.cpython-313.pyc", encoding: .utf8) == "mine\n")

        let honest = try tree("honest") { try FileManager.default.createDirectory(atPath: $0, withIntermediateDirectories: true) }
        #expect(try kept.restore(key, into: honest))
        #expect(try String(contentsOfFile: honest + "/lib/pkg/__pycache__/p.cpython-313.pyc", encoding: .utf8) == "p\n")
        #expect(try String(contentsOfFile: honest + "/lib/a/__pycache__/a.cpython-313.pyc", encoding: .utf8) == "a\n")
    }

    /// The `.pyc` a stage added are kept and come back into a tree with the same content, giving
    /// the tree the stage made; a stage that changed anything else is not kept.
    @Test func compiledBytecodeIsKeptOnlyWhenTheStageOnlyAddedIt() throws {
        let work = TemporaryDirectory()
        let records = DeterministicTarXz(sourceDateEpoch: epoch, threads: 1)
        for name in ["compiled", "again"] {
            try PackTests().makeVolume(work.path + "/" + name)
            _ = work.file(name + "/lib/python3.13/site-packages/ai/backend/kernel/x.py", "x = 1\n")
        }
        let before = try records.contentRecords(of: work.path + "/compiled")
        _ = work.file("compiled/lib/python3.13/site-packages/ai/backend/kernel/__pycache__/x.cpython-313.pyc", "bytecode\n")
        let after = try records.contentRecords(of: work.path + "/compiled")
        let added = try #require(CompiledBytecode.added(before: before, after: after))
        #expect(added.map(\.path) == ["./lib/python3.13/site-packages/ai/backend/kernel/__pycache__", "./lib/python3.13/site-packages/ai/backend/kernel/__pycache__/x.cpython-313.pyc"])

        let store = try Store(root: work.path + "/store")
        let kept = CompiledBytecode(store: store, log: { _ in })
        let executable = work.file("krnative", "stand-in executable\n")
        let key = try CompiledBytecode.key(before: records.contentKey(of: before), compiler: "test", executable: executable)
        #expect(try !kept.restore(key, into: work.path + "/again"))
        kept.keep(added, from: work.path + "/compiled", as: key)
        #expect(try kept.restore(key, into: work.path + "/again"))
        #expect(try records.contentRecords(of: work.path + "/again") == after)
        #expect(try CompiledBytecode.key(before: records.contentKey(of: before), compiler: "another", executable: executable) != key)

        var changed = after
        changed[0].line += "x"
        #expect(CompiledBytecode.added(before: before, after: changed) == nil, "an entry that was there changed")
        #expect(CompiledBytecode.added(before: before, after: Array(after.dropFirst())) == nil, "an entry that was there is gone")
        _ = work.file("compiled/lib/python3.13/site-packages/ai/backend/kernel/planted.py", "import os\n")
        #expect(CompiledBytecode.added(before: before, after: try records.contentRecords(of: work.path + "/compiled")) == nil, "a file that is no .pyc was added")
    }
}

@Suite("Packed volumes through the real binary", .timeLimit(.minutes(60)), .tags(.process, .namespaces), .endToEnd, .serialized, .needsNamespaces)
struct PackedVolumeBuildTests {
    /// A second build of the same target into an empty output directory (what CI and a second
    /// checkout see) copies the `.pyc` and the volume the first compiled and packed: the same
    /// bytes, said on stderr. `--force` makes them again, and so do the `--check` runs (they pass it).
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs the host's /usr/bin/python3"))
    func aRebuildOfTheSameTreeCopiesItsBytecodeAndPackingAndForceMakesThemAgain() throws {
        let work = TemporaryDirectory("krnative-packs")
        let airGap = AirGapTests()
        let a = try airGap.machineA(work)
        func build(_ out: String, _ extra: [String] = []) throws -> (log: String, volume: SHA256Digest) {
            let result = krnative(airGap.buildArguments(lock: a.lock, store: a.store, out: work.path + "/" + out, patches: a.patches) + extra)
            try #require(result.succeeded, "\(result.stderr.suffix(2000))")
            let volume = try #require(
                try FileManager.default.contentsOfDirectory(atPath: work.path + "/" + out).first { $0.hasPrefix("krunner-env.") && $0.hasSuffix(".tar.xz") })
            return (result.stderr, try SHA256Digest.of(fileAt: work.path + "/" + out + "/" + volume).digest)
        }
        let first = try build("first")
        #expect(first.log.contains("] packing krunner-env.") && first.log.contains("\npacked "), "\(first.log)")
        #expect(first.log.contains("] compiling .pyc with the volume's own runtime") && !first.log.contains("copied the .pyc"), "\(first.log)")
        let second = try build("second")
        #expect(second.log.contains("copied the .pyc (this tree was compiled before by the same interpreter: bytecode/"), "\(second.log)")
        #expect(second.log.contains("copied (this tree was packed before: packs/"), "\(second.log)")
        #expect(second.volume == first.volume)
        let forced = try build("second", ["--force"])
        #expect(forced.log.contains("\npacked ") && !forced.log.contains("copied ("), "\(forced.log)")
        #expect(forced.volume == first.volume)
    }
}
