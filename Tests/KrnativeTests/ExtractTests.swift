import Archive
import Foundation
import KrnativeBase
import Layout
import Lock
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Safe extraction", .timeLimit(.minutes(60)))
struct ExtractTests {
    @Test(arguments: ["tar", "tar.gz", "tar.xz", "tar.bz2", "tar.zst", "zip"])
    func everyFormatUnpacksToTheSameTree(format: String) throws {
        let work = TemporaryDirectory()
        let tree = work.sourceTree("pkg-1.0")
        let archive = work.path + "/pkg.\(format)"
        switch format {
        case "zip":
            unlink(tree + "/LICENSE")  // zipfile stores no symlinks
            try ChildProcess.check(
                ["python3", "-c", "import os, sys, zipfile\nz = zipfile.ZipFile(sys.argv[1], 'w')\nfor d, _, fs in os.walk('pkg-1.0'):\n    for f in fs: z.write(os.path.join(d, f))\nz.close()", archive],
                directory: work.path)
        default:
            let flag = ["tar": "-cf", "tar.gz": "-czf", "tar.xz": "-cJf", "tar.bz2": "-cjf", "tar.zst": "--zstd"][format]!
            try ChildProcess.check(format == "tar.zst" ? ["tar", "--zstd", "-cf", archive, "pkg-1.0"] : ["tar", flag, archive, "pkg-1.0"], directory: work.path)
        }
        let destination = work.path + "/out"
        let report = try SafeExtractor(stripComponents: 1).extract(archive, into: destination)
        #expect(report.files == 3)
        #expect(try TreeHash.ofDirectory(at: destination) == TreeHash.ofDirectory(at: tree))
        #expect(try TreeHash.ofArchive(at: archive) == TreeHash.ofDirectory(at: destination))
    }

    /// Builds a tar with Python's tarfile from `spec` lines: "file NAME [MODE]", "dir NAME",
    /// "symlink NAME TARGET", "hardlink NAME TARGET", "chr NAME", "fifo NAME".
    func hostileTar(_ work: TemporaryDirectory, _ entries: [String]) throws -> String {
        let script = """
            import io, sys, tarfile
            t = tarfile.open(sys.argv[1], "w")
            for spec in sys.argv[2:]:
                kind, name, *rest = spec.split(" ")
                info = tarfile.TarInfo(name)
                info.uid, info.gid, info.uname, info.gname = 12345, 12345, "someone", "somegroup"
                data = None
                if kind == "file":
                    data = b"content of " + name.encode(); info.size = len(data)
                    info.mode = int(rest[0], 8) if rest else 0o644
                elif kind == "dir": info.type = tarfile.DIRTYPE; info.mode = 0o755
                elif kind == "symlink": info.type = tarfile.SYMTYPE; info.linkname = rest[0]
                elif kind == "hardlink": info.type = tarfile.LNKTYPE; info.linkname = rest[0]
                elif kind == "chr": info.type = tarfile.CHRTYPE; info.devmajor, info.devminor = 1, 3
                elif kind == "fifo": info.type = tarfile.FIFOTYPE
                t.addfile(info, io.BytesIO(data) if data is not None else None)
            t.close()
            """
        let path = work.path + "/hostile-\(UInt32.random(in: 0...UInt32.max)).tar"
        try ChildProcess.check(["python3", "-c", script, path] + entries)
        return path
    }

    @Test(arguments: [
        (["file top/../../escaped"], "top/../../escaped", "outside"),
        (["file /tmp/krnative-absolute-escape"], "/tmp/krnative-absolute-escape", "outside"),
        (["dir top", "symlink top/link ../../escaped-link"], "top/link", "points outside"),
        (["dir top", "symlink top/etc /etc"], "top/etc", "points outside"),
        (["dir top", "dir top/real", "symlink top/alias real", "file top/alias/through"], "top/alias/through", "symlink"),
        (["dir top", "hardlink top/passwd ../../etc/passwd"], "top/passwd", "outside"),
        (["dir top", "dir top/a", "symlink top/a/up ..", "symlink top/out a/up/../../x"], "top/out", "points outside"),
        (["dir top", "chr top/null"], "top/null", "character device"),
        (["dir top", "fifo top/pipe"], "top/pipe", "FIFO"),
    ])
    func hostileEntryIsRejectedNamingArchiveAndEntry(entries: [String], offender: String, reason: String) throws {
        let work = TemporaryDirectory()
        let archive = try hostileTar(work, entries)
        let destination = work.path + "/a/b/out"
        do {
            try SafeExtractor().extract(archive, into: destination)
            Issue.record("\(entries) was extracted")
        } catch {
            #expect(error.description.contains(archive))
            #expect(error.description.contains("'\(offender)'"), "\(error)")
            #expect(error.description.contains(reason), "\(error)")
        }
        #expect(everything(under: work.path, except: destination) == [archive], "something landed outside the destination")
        #expect(!FileManager.default.fileExists(atPath: "/tmp/krnative-absolute-escape"))
    }

    /// Every path below `root` but those inside `except` (which may be absent), without following links.
    func everything(under root: String, except: String) -> Set<String> {
        var found: Set<String> = []
        let enumerator = FileManager.default.enumerator(atPath: root)
        while let relative = enumerator?.nextObject() as? String {
            let full = root + "/" + relative
            if full == except || full.hasPrefix(except + "/") || except.hasPrefix(full + "/") { continue }
            found.insert(full)
        }
        return found
    }

    /// Links each harmless when created, which resolve outside once the tree is complete: a chain
    /// whose parts become links after it (`q -> .`), several levels of it, a chain from a
    /// subdirectory; and a loop, which cannot be decided.
    @Test(arguments: [
        (["symlink a q/q/../../victim", "symlink q ."], "a", "q/q/../../victim"),
        (["symlink a q/r/q/r/../../../../victim", "symlink q .", "symlink r q"], "a", "q/r/q/r/../../../../victim"),
        (["dir d", "symlink d/a ../q/q/../../victim", "symlink q ."], "d/a", "../q/q/../../victim"),
        (["symlink a q/q/q/../../../victim", "dir q", "symlink q/q ..", "symlink x q/q"], "a", "q/q/q/../../../victim"),
        (["symlink a a/x"], "a", "a/x"),
    ])
    func linkChainResolvingOutsideOrLoopingIsRefusedAndNothingIsLeft(entries: [String], offender: String, target: String) throws {
        let work = TemporaryDirectory()
        let archive = try hostileTar(work, entries)
        let destination = work.path + "/a/b/out"
        do {
            let report = try SafeExtractor().extract(archive, into: destination)
            Issue.record("\(entries) was extracted (\(report.links) links)")
        } catch {
            #expect(error.description.contains(archive), "\(error)")
            #expect(error.description.contains("'\(offender)'"), "\(error)")
            #expect(error.description.contains("'\(target)'"), "\(error)")
        }
        #expect(!FileManager.default.fileExists(atPath: destination), "the destination was left behind")
        #expect(everything(under: work.path, except: destination) == [archive])
    }

    @Test func hardLinkToASymlinkIsRefused() throws {
        let work = TemporaryDirectory()
        // d/e/l -> ../../victim stays inside from d/e; the hard link h is the same link at the top.
        let archive = try hostileTar(work, ["dir d", "dir d/e", "symlink d/e/l ../../victim", "hardlink h d/e/l"])
        let destination = work.path + "/a/b/out"
        do {
            try SafeExtractor().extract(archive, into: destination)
            Issue.record("a hard link to a symlink was extracted")
        } catch {
            #expect(error.description.contains(archive))
            #expect(error.description.contains("'h'"), "\(error)")
            #expect(error.description.contains("'d/e/l'"), "\(error)")
            #expect(error.description.contains("not a regular file"), "\(error)")
        }
        #expect(!FileManager.default.fileExists(atPath: destination))
    }

    @Test func hardLinkToADirectoryOrAMissingEntryIsRefused() throws {
        for entries in [["dir d", "hardlink h d"], ["hardlink h missing"]] {
            let work = TemporaryDirectory()
            let archive = try hostileTar(work, entries)
            #expect(throws: ArchiveError.self, "\(entries)") { try SafeExtractor().extract(archive, into: work.path + "/out") }
            #expect(!FileManager.default.fileExists(atPath: work.path + "/out"))
        }
    }

    /// The chain used as a directory to write a file through: refused while extracting.
    @Test func writingThroughALinkChainIsRefused() throws {
        let work = TemporaryDirectory()
        _ = work.file("a/victim/keep", "host\n")
        let archive = try hostileTar(work, ["symlink p q/q/../../victim", "symlink q .", "file p/planted", "file p/keep"])
        let destination = work.path + "/a/b/out"
        #expect(throws: ArchiveError.self) { try SafeExtractor().extract(archive, into: destination) }
        #expect(!FileManager.default.fileExists(atPath: work.path + "/a/victim/planted"))
        #expect(try String(contentsOfFile: work.path + "/a/victim/keep") == "host\n")
        #expect(!FileManager.default.fileExists(atPath: destination))
    }

    @Test func linksThatStayInsideAreKept() throws {
        let work = TemporaryDirectory()
        let archive = try hostileTar(
            work, ["dir d", "file d/f", "symlink q .", "symlink a q/q/d/../d/f", "symlink d/up ..", "symlink b d/up/d/f", "symlink dangling nowhere/x",
                "hardlink h d/f"])
        let destination = work.path + "/out"
        let report = try SafeExtractor().extract(archive, into: destination)
        #expect(report.links == 6)
        #expect(try String(contentsOfFile: destination + "/a") == "content of d/f")
        #expect(try String(contentsOfFile: destination + "/b") == "content of d/f")
    }

    /// A file with holes (GNU and pax sparse formats) unpacks to its full size with zeros in the
    /// holes, as GNU tar and Python's tarfile unpack it, and hashes the same as archive and directory.
    @Test(arguments: ["gnu", "posix"])
    func sparseFileUnpacksWhole(format: String) throws {
        let work = TemporaryDirectory()
        let file = work.file("p/big", "head")
        let fd = open(file, O_WRONLY)
        _ = "middle".withCString { pwrite(fd, $0, 6, 1 << 20) }
        ftruncate(fd, 5 << 20)
        close(fd)
        _ = work.file("p/small", "x\n")
        truncate(work.file("p/holes", ""), 2 << 20)  // all hole, no data block
        try ChildProcess.check(["tar", "--sparse", "--format=\(format)", "-cf", "sparse.tar", "p"], directory: work.path)
        let listing = try ChildProcess.check(["python3", "-c", "import sys, tarfile; t = tarfile.open(sys.argv[1]); print(t.getmember('p/big').issparse() and t.getmember('p/holes').issparse())", "sparse.tar"], directory: work.path)
        #expect(listing.stdout.hasPrefix("True"), "the test archive holds no sparse member")
        try ChildProcess.check(["python3", "-c", "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])", "sparse.tar", "python"], directory: work.path)

        let destination = work.path + "/out"
        try SafeExtractor(stripComponents: 1).extract(work.path + "/sparse.tar", into: destination)
        let original = try Data(contentsOf: URL(fileURLWithPath: file))
        #expect(FileSystem.size(of: destination + "/big") == 5 << 20)
        #expect(try Data(contentsOf: URL(fileURLWithPath: destination + "/big")) == original)
        #expect(try Data(contentsOf: URL(fileURLWithPath: work.path + "/python/p/big")) == original)
        #expect(FileSystem.size(of: destination + "/holes") == 2 << 20)
        #expect(try Data(contentsOf: URL(fileURLWithPath: destination + "/holes")) == Data(count: 2 << 20))
        #expect(FileSystem.size(of: work.path + "/python/p/holes") == 2 << 20)
        #expect(try TreeHash.ofDirectory(at: destination) == TreeHash.ofDirectory(at: work.path + "/p"))
        #expect(try TreeHash.ofArchive(at: work.path + "/sparse.tar") == TreeHash.ofDirectory(at: destination))
    }

    @Test func setuidIsDroppedAndOwnersIgnored() throws {
        let work = TemporaryDirectory()
        let archive = try hostileTar(work, ["dir top", "file top/tool 4755", "file top/group 2775", "hardlink top/same top/tool"])
        let destination = work.path + "/out"
        try SafeExtractor(stripComponents: 1).extract(archive, into: destination)
        var info = stat()
        stat(destination + "/tool", &info)
        #expect(info.st_mode & 0o7777 == 0o755)
        #expect(info.st_uid == getuid())
        stat(destination + "/group", &info)
        #expect(info.st_mode & 0o7777 == 0o775)
        stat(destination + "/same", &info)
        #expect(info.st_nlink == 2)
    }

    /// A .tar.xz of files of zeros (name, size), made with Python's tarfile without holding them in memory.
    static func writeZeros(_ archive: String, _ files: [(String, Int)]) throws {
        let script = """
            import json, sys, tarfile
            class Zeros:
                def __init__(self, n): self.left = n
                def read(self, k=-1):
                    k = self.left if k < 0 else min(k, self.left); self.left -= k; return bytes(k)
            with tarfile.open(sys.argv[1], "w:xz", preset=1) as t:
                for name, size in json.loads(sys.argv[2]):
                    info = tarfile.TarInfo(name); info.size = size
                    t.addfile(info, Zeros(size))
            """
        let list = String(decoding: try JSONSerialization.data(withJSONObject: files.map { [$0.0, $0.1] }), as: UTF8.self)
        try ChildProcess.check(["python3", "-c", script, archive, list])
    }

    /// An archive bomb: 64 MiB of zeros in about 10 KB of xz, unpacked with an 8 MiB limit.
    @Test func archiveBombStopsAtTheByteLimitAndLeavesNothing() throws {
        let work = TemporaryDirectory()
        let archive = work.path + "/bomb.tar.xz"
        try Self.writeZeros(archive, [("top/ok", 1000), ("top/zeros", 64 << 20)])
        #expect(FileSystem.size(of: archive)! < 1 << 20)
        let destination = work.path + "/out"
        let limits = SafeExtractor.Limits(maxBytes: 8 << 20, maxEntries: 100, basis: "a test's limit")
        do {
            try SafeExtractor(stripComponents: 1, limits: limits).extract(archive, into: destination)
            Issue.record("the bomb was extracted")
        } catch {
            #expect(error.description.contains(archive), "\(error)")
            #expect(error.description.contains("'top/zeros'"), "\(error)")
            #expect(error.description.contains("takes it past \(8 << 20) bytes (a test's limit)"), "\(error)")
            #expect(error.description.contains("KRNATIVE_EXTRACT_MAX_BYTES="), "\(error)")
            #expect(error.exitCode == ExitStatus.archive)
        }
        #expect(!FileManager.default.fileExists(atPath: destination))
        // The same archive within a limit it fits.
        let fits = SafeExtractor.Limits(maxBytes: (64 << 20) + 1000, maxEntries: 100)
        let report = try SafeExtractor(stripComponents: 1, limits: fits).extract(archive, into: destination)
        #expect(report.bytes == (64 << 20) + 1000)
    }

    @Test func entryCountLimitIsEnforced() throws {
        let work = TemporaryDirectory()
        let archive = try hostileTar(work, (0..<30).map { "file f\($0)" })
        let destination = work.path + "/out"
        do {
            try SafeExtractor(limits: .init(maxBytes: 1 << 20, maxEntries: 20)).extract(archive, into: destination)
            Issue.record("30 entries passed a limit of 20")
        } catch {
            #expect(error.description.contains("takes it past 20 entries"), "\(error)")
            #expect(error.description.contains("'f20'"), "\(error)")
            #expect(error.description.contains("KRNATIVE_EXTRACT_MAX_ENTRIES="), "\(error)")
        }
        #expect(!FileManager.default.fileExists(atPath: destination))
        #expect(try SafeExtractor(limits: .init(maxBytes: 1 << 20, maxEntries: 30)).extract(archive, into: destination).files == 30)
    }

    @Test func limitsFollowTheLockAndTheEnvironment() {
        let none = SafeExtractor.Limits.forArchive(recordedSize: nil, environment: [:])
        #expect(none.maxBytes == 4 << 30 && none.maxEntries == 200_000)
        #expect(SafeExtractor.Limits.forArchive(recordedSize: 1_500_000, environment: [:]).maxBytes == 64 << 20)
        #expect(SafeExtractor.Limits.forArchive(recordedSize: 30_000_000, environment: [:]).maxBytes == 960_000_000)
        let raised = SafeExtractor.Limits.forArchive(
            recordedSize: 1_500_000, environment: ["KRNATIVE_EXTRACT_MAX_BYTES": "9000000000", "KRNATIVE_EXTRACT_MAX_ENTRIES": "7"])
        #expect(raised.maxBytes == 9_000_000_000 && raised.maxEntries == 7)
    }

    /// A runtime archive with the chain where the wheels go (`lib/`): refused before the layout
    /// looks at it, so no wheel can be installed through it; the prefix is not left behind.
    @Test func runtimeWhoseLinksChainOutsideIsNotPlaced() throws {
        let work = TemporaryDirectory()
        _ = work.file("a/victim/keep", "host\n")
        let archive = try hostileTar(work, ["dir python", "dir python/bin", "symlink python/lib q/q/../../victim", "symlink python/q ."])
        let prefix = work.path + "/a/b/prefix"
        do {
            try VolumeLayout(target: .manylinuxX86_64).placeRuntime(archive, into: prefix, recordedSize: FileSystem.size(of: archive))
            Issue.record("the runtime was placed")
        } catch let error as ArchiveError {
            #expect(error.description.contains("link 'python/lib' -> 'q/q/../../victim' refused"), "\(error)")
        }
        #expect(!FileManager.default.fileExists(atPath: prefix))
        #expect(everything(under: work.path + "/a/victim", except: "/none") == [work.path + "/a/victim/keep"])
    }

    /// `krnative build --offline` of a lock whose one input is `archive` as the Zig toolchain, the
    /// first archive a build unpacks (into the store's `tmp/`, then `toolchains/`).
    func buildWithToolchain(_ archive: String, in work: TemporaryDirectory) throws -> (result: ChildProcess.Result, store: String) {
        let digest = try SHA256Digest.of(fileAt: archive).digest
        let store = work.path + "/store"
        try FileSystem.createDirectory(store + "/sha256")
        try FileManager.default.copyItem(atPath: archive, toPath: store + "/sha256/" + digest.hex)
        let lock = work.path + "/lock.json"
        let toolchain = LockedInput(
            name: "zig-\(HostPlatform.current.rawValue)", kind: .toolchain, version: "0.14.0", filename: "zig.whl", sha256: digest,
            size: FileSystem.size(of: archive), urls: ["https://example.invalid/zig.whl"], host: .current)
        try Lockfile(sourceDateEpoch: 1_700_000_000, inputs: [toolchain]).write(to: lock)
        let result = krnative([
            "build", "--offline", "--lock", lock, "--store", store, "--target", "manylinux-x86_64", "--out", work.path + "/out", "--toolchain", "zig",
            "--config", Package.root + "/krunner.json", "--policy", Package.root + "/sysroots/audit-policy.json", "--ledger", "none",
        ])
        return (result, store)
    }

    /// The symlink chain as the toolchain: before, the build chmod-ed a host file through it
    /// (`ziglang/zig`) and left links out of the store; now it fails with the archive error and
    /// nothing outside changes.
    @Test(.tags(.process), .endToEnd) func buildRefusesAToolchainWhoseLinksChainOutside() throws {
        let work = TemporaryDirectory()
        let victim = work.file("victim/zig", "host file\n")
        chmod(victim, 0o644)
        // The store's tmp/<name> and toolchains/<sha256> are both three levels below work.
        let archive = try hostileTar(work, ["symlink ziglang q/q/q/../../../victim", "symlink q ."])
        let (result, store) = try buildWithToolchain(archive, in: work)
        #expect(result.termination == .exited(ExitStatus.archive), "\(result.stderr)")
        #expect(result.stderr.contains("link 'ziglang' -> 'q/q/q/../../../victim' refused: points outside"), "\(result.stderr)")
        var info = stat()
        stat(victim, &info)
        #expect(info.st_mode & 0o7777 == 0o644, "the host file's mode was changed through the link")
        #expect(try String(contentsOfFile: victim) == "host file\n")
        #expect(everything(under: work.path + "/victim", except: "/none") == [victim])
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: store + "/toolchains")) ?? []).isEmpty)
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: store + "/tmp")) ?? []).allSatisfy { !$0.hasPrefix("toolchain") })
    }

    /// 100 MiB of zeros in a few KB of xz as the toolchain: the lock records its size, so it may
    /// unpack to 64 MiB (32 × its size, at least 64 MiB); before, all of it was written to the store.
    @Test(.tags(.process), .endToEnd) func buildRefusesAToolchainBombByTheLocksSize() throws {
        let work = TemporaryDirectory()
        let archive = work.path + "/bomb.tar.xz"
        try Self.writeZeros(archive, [("ziglang/zig", 100 << 20)])
        let (result, store) = try buildWithToolchain(archive, in: work)
        #expect(result.termination == .exited(ExitStatus.archive), "\(result.stderr)")
        #expect(result.stderr.contains("takes it past \(64 << 20) bytes (32 × the"), "\(result.stderr)")
        #expect(result.stderr.contains("entry 'ziglang/zig'"), "\(result.stderr)")
        #expect(result.stderr.contains("KRNATIVE_EXTRACT_MAX_BYTES=N"), "\(result.stderr)")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: store + "/toolchains")) ?? []).isEmpty)
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: store + "/tmp")) ?? []).allSatisfy { !$0.hasPrefix("toolchain") })
    }
}
