import Archive
import Foundation
import KrnativeBase
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Deterministic tar.xz and zip", .timeLimit(.minutes(60)))
struct PackTests {
    /// A small volume-like tree, made in the given order with the modes the given umask gives and
    /// the given times. The modes are set entry by entry: the process's umask is shared with the
    /// tests running beside this one and the children they start (two of these changing and
    /// restoring it at once left it at 077, and a volume build's check user found its run
    /// directory closed).
    func makeVolume(_ root: String, reversed: Bool = false, umask mask: mode_t = 0o022) throws {
        var directories = [root + "/bin", root + "/lib/python3.13/site-packages/ai/backend/kernel", root + "/lib/python3.13/site-packages/ai/backend/helpers"]
        if reversed { directories.reverse() }
        for directory in directories { try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true) }
        let library = Data((0..<3_000_000).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13) })
        #expect(FileManager.default.createFile(atPath: root + "/lib/libpython3.13.so.1.0", contents: library))
        FileManager.default.createFile(atPath: root + "/bin/python3.13", contents: Data("#!python\n".utf8))
        try FileManager.default.createSymbolicLink(atPath: root + "/bin/python3", withDestinationPath: "python3.13")
        link(root + "/bin/python3.13", root + "/bin/python3.13-hardlink")
        FileManager.default.createFile(atPath: root + "/lib/Z-last", contents: Data("z".utf8))
        FileManager.default.createFile(atPath: root + "/lib/a-first", contents: Data("a".utf8))
        for relative in FileManager.default.subpaths(atPath: root) ?? [] {
            var info = stat()
            guard lstat(root + "/" + relative, &info) == 0, info.st_mode & S_IFMT != S_IFLNK else { continue }
            chmod(root + "/" + relative, (info.st_mode & S_IFMT == S_IFDIR ? 0o777 : 0o666) & ~mask)
        }
        chmod(root, 0o777 & ~mask)
        chmod(root + "/bin/python3.13", 0o700)
        var times = [timespec(tv_sec: 4_000_000_000, tv_nsec: 5), timespec(tv_sec: 4_000_000_000, tv_nsec: 5)]
        utimensat(AT_FDCWD, root + "/lib/a-first", &times, 0)
    }

    @Test func sameBytesWhateverThreadsOrderUmaskOrTimes() throws {
        let work = TemporaryDirectory()
        try makeVolume(work.path + "/one")
        try makeVolume(work.path + "/two", reversed: true, umask: 0o077)
        let epoch: Int64 = 1_786_665_600
        let a = work.path + "/a.tar.xz", b = work.path + "/b.tar.xz", c = work.path + "/c.tar.xz"
        try DeterministicTarXz(sourceDateEpoch: epoch, threads: 1).pack(work.path + "/one", to: a)
        try DeterministicTarXz(sourceDateEpoch: epoch, threads: 2).pack(work.path + "/one", to: b)
        try DeterministicTarXz(sourceDateEpoch: epoch, threads: 2).pack(work.path + "/two", to: c)
        let digest = try SHA256Digest.of(fileAt: a).digest
        #expect(try SHA256Digest.of(fileAt: b).digest == digest)
        #expect(try SHA256Digest.of(fileAt: c).digest == digest)
        #expect(!FileManager.default.fileExists(atPath: a + ".partial"))
    }

    @Test func entriesAreWhatTarAndPythonExpect() throws {
        let work = TemporaryDirectory()
        try makeVolume(work.path + "/v")
        let archive = work.path + "/v.tar.xz"
        let entries = try DeterministicTarXz(sourceDateEpoch: 1_700_000_000, threads: 2).pack(work.path + "/v", to: archive)
        #expect(entries.map(\.path) == entries.map(\.path).sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) })
        for entry in entries where entry.kind == .file {
            #expect(entry.sha256 == (try SHA256Digest.of(fileAt: work.path + "/v/" + entry.path.dropFirst(2))).digest, "\(entry.path)")
        }
        #expect(entries.first { $0.path == "./bin/python3.13-hardlink" }?.kind == .hardlink)
        #expect(entries.first { $0.path == "./bin/python3.13-hardlink" }?.target == "./bin/python3.13")
        let script = """
            import sys, tarfile
            with tarfile.open(sys.argv[1], "r:xz") as t:
                for m in t.getmembers():
                    print(m.name, oct(m.mode), m.uid, m.gid, repr(m.uname), repr(m.gname), m.mtime, m.type.decode() if m.type else "0")
            """
        let listing = try ChildProcess.check(["python3", "-c", script, archive]).stdout.split(separator: "\n").map(String.init)
        #expect(listing.allSatisfy { $0.hasPrefix("./") })
        #expect(listing.allSatisfy { $0.contains(" 0 0 '' '' ") }, "owners: \(listing)")
        #expect(listing.first { $0.hasPrefix("./bin/python3.13 ") }?.contains("0o755") == true)
        #expect(listing.first { $0.hasPrefix("./lib/a-first ") }?.contains(" 1700000000 ") == true, "mtime is clamped")
        #expect(listing.first { $0.hasPrefix("./lib/Z-last ") }?.contains("0o644") == true)
        #expect(ChildProcess.run(["xz", "-t", archive]).succeeded)
        let out = work.path + "/unpacked"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try ChildProcess.check(["tar", "xJf", archive, "-C", out])
        #expect(try TreeHash.ofDirectory(at: out) == TreeHash.ofDirectory(at: work.path + "/v"))
        // xz blocks: more than one for 3 MB with a small block size, the same bytes with 1 or 2 threads.
        var small = DeterministicTarXz(sourceDateEpoch: 1_700_000_000, threads: 1)
        small.blockSize = 1 << 20
        try small.pack(work.path + "/v", to: work.path + "/s1.tar.xz")
        small.threads = 2
        try small.pack(work.path + "/v", to: work.path + "/s2.tar.xz")
        #expect(try SHA256Digest.of(fileAt: work.path + "/s1.tar.xz").digest == SHA256Digest.of(fileAt: work.path + "/s2.tar.xz").digest)
        let blocks = try ChildProcess.check(["xz", "--robot", "--list", work.path + "/s1.tar.xz"]).stdout
        #expect(blocks.contains("\nfile\t1\t3\t") || blocks.contains("\nfile\t1\t4\t"), "\(blocks)")
    }

    /// libarchive takes a zip's DOS date and time from the local zone: ZipWriter writes the UTC ones
    /// whatever TZ is, and leaves TZ alone (the children krnative starts inherit it). TZ belongs to
    /// the whole process: the zips are written in a process of their own (an exit test), so the
    /// tests running beside this one, and the children they start, never see it changed.
    @Test func zipBytesAreTheUTCOnesWhateverTheTimeZone() async throws {
        let work = TemporaryDirectory()
        // 1_700_000_000 is 2023-11-14 22:13:20 UTC: the 15th at UTC+14, 12:13 at UTC-10. POSIX zones need no tzdata.
        await #expect(processExitsWith: .success, "ZipWriter failed or changed TZ") { [directory = work.path as String] in
            for (index, zone) in ["UTC", "<+14>-14", "<-10>10"].enumerated() {
                setenv("TZ", zone, 1)
                tzset()
                let zip = try ZipWriter(path: directory + "/\(index).whl", mtime: 1_700_000_000)
                try zip.add("pkg/__init__.py", data: Data("x = 1\n".utf8))
                try zip.add("pkg/tool.bin", data: Data((0..<200_000).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13) }), executable: true)
                try zip.close()
                if getenv("TZ").map({ String(cString: $0) }) != zone { exit(3) }
            }
        }
        let digests = try (0..<3).map { try SHA256Digest.of(fileAt: work.path + "/\($0).whl").digest }
        #expect(Set(digests).count == 1, "the zip's bytes depend on TZ: \(digests)")
        let script = """
            import sys, zipfile
            for i in zipfile.ZipFile(sys.argv[1]).infolist(): print(i.filename, i.date_time)
            """
        let listing = try ChildProcess.check(["python3", "-c", script, work.path + "/1.whl"]).stdout
        #expect(listing == "pkg/__init__.py (2023, 11, 14, 22, 13, 20)\npkg/tool.bin (2023, 11, 14, 22, 13, 20)\n")
    }
}
