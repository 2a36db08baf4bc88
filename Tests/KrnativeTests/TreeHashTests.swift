import Archive
import Foundation
import KrnativeBase
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Tree hash", .timeLimit(.minutes(60)))
struct TreeHashTests {
    func tar(_ arguments: [String], in directory: String) throws {
        try ChildProcess.check(["tar"] + arguments, directory: directory)
    }

    @Test func archiveAndDirectoryAgreeAcrossCompressions() throws {
        let work = TemporaryDirectory()
        let top = work.sourceTree("project-1.0")
        try tar(["--owner=1000", "-czf", "a.tar.gz", "project-1.0"], in: work.path)
        try tar(["--sort=name", "--mtime=@0", "-cJf", "b.tar.xz", "project-1.0"], in: work.path)
        let fromDirectory = try TreeHash.ofDirectory(at: top)
        let fromGzip = try TreeHash.ofArchive(at: work.path + "/a.tar.gz")
        let fromXz = try TreeHash.ofArchive(at: work.path + "/b.tar.xz")
        #expect(fromGzip == fromDirectory)
        #expect(fromXz == fromDirectory)
        #expect(try SHA256Digest.of(fileAt: work.path + "/a.tar.gz").digest != SHA256Digest.of(fileAt: work.path + "/b.tar.xz").digest)
    }

    @Test func zipAgreesWithTar() throws {
        let work = TemporaryDirectory()
        _ = work.file("p/a.txt", "a\n")
        _ = work.file("p/d/b.txt", "b\n")
        try ChildProcess.check(
            ["python3", "-c", "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], 'w'); z.write('p/a.txt'); z.write('p/d/b.txt'); z.close()", "p.zip"],
            directory: work.path)
        #expect(try TreeHash.ofArchive(at: work.path + "/p.zip") == TreeHash.ofDirectory(at: work.path + "/p"))
    }

    @Test func contentModeAndLinkTargetEachChangeTheHash() throws {
        let work = TemporaryDirectory()
        let top = work.sourceTree("project-1.0")
        let original = try TreeHash.ofDirectory(at: top)
        chmod(top + "/README", 0o755)
        let executable = try TreeHash.ofDirectory(at: top)
        #expect(executable != original)
        chmod(top + "/README", 0o644)
        #expect(try TreeHash.ofDirectory(at: top) == original)
        unlink(top + "/LICENSE")
        try FileManager.default.createSymbolicLink(atPath: top + "/LICENSE", withDestinationPath: "src/main.c")
        #expect(try TreeHash.ofDirectory(at: top) != original)
        // An empty directory does not count (git cannot hold one).
        unlink(top + "/LICENSE")
        try FileManager.default.createSymbolicLink(atPath: top + "/LICENSE", withDestinationPath: "README")
        try FileManager.default.createDirectory(atPath: top + "/empty", withIntermediateDirectories: false)
        #expect(try TreeHash.ofDirectory(at: top) == original)
    }

    @Test func climbingEntryIsRejectedNamingArchiveAndEntry() throws {
        let work = TemporaryDirectory()
        try ChildProcess.check(
            [
                "python3", "-c",
                "import io, sys, tarfile\nt = tarfile.open(sys.argv[1], 'w:gz')\ni = tarfile.TarInfo('top/../../evil')\ni.size = 1\nt.addfile(i, io.BytesIO(b'x'))\nt.close()",
                "evil.tar.gz",
            ], directory: work.path)
        do {
            _ = try TreeHash.ofArchive(at: work.path + "/evil.tar.gz")
            Issue.record("a '..' entry was accepted")
        } catch {
            #expect(error.description.contains("evil.tar.gz"))
            #expect(error.description.contains("top/../../evil"))
        }
    }

    /// A file with holes hashes as its full content, in the archive as on disk.
    @Test func sparseFileHashesTheSameAsArchiveAndDirectory() throws {
        let work = TemporaryDirectory()
        let file = work.file("s-1/holes", "start")
        let fd = open(file, O_WRONLY)
        _ = "end".withCString { pwrite(fd, $0, 3, 3 << 20) }
        ftruncate(fd, 4 << 20)
        close(fd)
        truncate(work.file("s-1/all-hole", ""), 1 << 20)
        try tar(["--sparse", "-cf", "s.tar", "s-1"], in: work.path)
        try tar(["--sparse", "--format=posix", "-cJf", "s.tar.xz", "s-1"], in: work.path)
        let directory = try TreeHash.ofDirectory(at: work.path + "/s-1")
        #expect(try TreeHash.ofArchive(at: work.path + "/s.tar") == directory)
        #expect(try TreeHash.ofArchive(at: work.path + "/s.tar.xz") == directory)
    }

    @Test func hardLinkToASymlinkIsRejected() throws {
        let work = TemporaryDirectory()
        try ChildProcess.check(
            [
                "python3", "-c",
                "import sys, tarfile\nt = tarfile.open(sys.argv[1], 'w')\nfor kind, name, target in ((tarfile.SYMTYPE, 'top/l', 'x'), (tarfile.LNKTYPE, 'top/h', 'top/l')):\n    i = tarfile.TarInfo(name); i.type = kind; i.linkname = target; t.addfile(i)\nt.close()",
                "h.tar",
            ], directory: work.path)
        do {
            _ = try TreeHash.ofArchive(at: work.path + "/h.tar")
            Issue.record("a hard link to a symlink was hashed")
        } catch {
            #expect(error.description.contains("'top/h'"), "\(error)")
            #expect(error.description.contains("not a regular file"), "\(error)")
        }
    }

    /// The published algorithm, computed independently (docs/tree-hash.md), must match.
    @Test func matchesTheDocumentedAlgorithm() throws {
        let work = TemporaryDirectory()
        let top = work.sourceTree("project-1.0")
        let reference = """
            import hashlib, os, sys
            root = sys.argv[1]; records = []
            for d, dirs, files in os.walk(root):
                for n in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
                    p = os.path.join(d, n); rel = os.path.relpath(p, root).encode()
                    if os.path.islink(p): t, h = 'l', hashlib.sha256(os.readlink(p).encode()).hexdigest()
                    else: t, h = ('x' if os.stat(p).st_mode & 0o111 else 'f'), hashlib.sha256(open(p, 'rb').read()).hexdigest()
                    records.append((rel, t, h))
            m = hashlib.sha256()
            for rel, t, h in sorted(records): m.update(t.encode() + b' ' + h.encode() + b' ' + rel + b'\\0')
            print(m.hexdigest())
            """
        let result = try ChildProcess.check(["python3", "-c", reference, top])
        #expect(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == (try TreeHash.ofDirectory(at: top)).hex)
    }
}
