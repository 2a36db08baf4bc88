import Archive
import Foundation
import KrnativeBase
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Safe extraction")
struct ExtractTests {
    func makeTree(_ work: TemporaryDirectory) -> String {
        _ = work.file("pkg-1.0/README", "readme\n")
        _ = work.file("pkg-1.0/src/lib.c", "int f(void) { return 1; }\n")
        chmod(work.file("pkg-1.0/configure", "#!/bin/sh\n"), 0o755)
        try? FileManager.default.createSymbolicLink(atPath: work.path + "/pkg-1.0/COPYING", withDestinationPath: "README")
        return work.path + "/pkg-1.0"
    }

    @Test(arguments: ["tar", "tar.gz", "tar.xz", "tar.bz2", "tar.zst", "zip"])
    func everyFormatUnpacksToTheSameTree(format: String) throws {
        let work = TemporaryDirectory()
        let tree = makeTree(work)
        let archive = work.path + "/pkg.\(format)"
        switch format {
        case "zip":
            unlink(tree + "/COPYING")  // zipfile stores no symlinks
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
        #expect(!FileManager.default.fileExists(atPath: work.path + "/a/escaped"))
        #expect(!FileManager.default.fileExists(atPath: "/tmp/krnative-absolute-escape"))
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
}
