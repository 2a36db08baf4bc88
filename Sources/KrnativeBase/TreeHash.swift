import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The tree hash v1: a digest of an unpacked, normalised source tree (docs/tree-hash.md).
///
/// It depends only on each file's path, content, executable bit and each symlink's target, so
/// a re-compressed archive, a `git archive` of the same tag and the unpacked directory all agree
/// (a sparse file's content is its full logical size, holes as zeros, in both).
/// Here, below the store, which records the tree hash of every item it completes and checks it
/// before an item is used; reading an archive's tree (`ofArchive`) is Archive's, with libarchive.
public enum TreeHash {
    /// One normalised entry of a tree.
    public struct Record: Sendable, Equatable {
        public enum Kind: String, Sendable { case file = "f", executable = "x", symlink = "l" }
        public var path: String
        public var kind: Kind
        public var contentSha256: SHA256Digest

        public init(path: String, kind: Kind, contentSha256: SHA256Digest) {
            (self.path, self.kind, self.contentSha256) = (path, kind, contentSha256)
        }
    }

    /// The tree hash of `records` (each path once).
    public static func digest(of records: [Record]) -> SHA256Digest {
        var hasher = StreamingSHA256()
        for record in records.sorted(by: { Array($0.path.utf8).lexicographicallyPrecedes(Array($1.path.utf8)) }) {
            hasher.update(Data("\(record.kind.rawValue) \(record.contentSha256.hex) \(record.path)".utf8))
            hasher.update(Data([0]))
        }
        return hasher.finalize()
    }

    /// The tree hash of a directory on disk (its contents; the directory itself is the top).
    public static func ofDirectory(at root: String) throws(FileSystemError) -> SHA256Digest {
        var records: [Record] = []
        try walk(root, relative: "", into: &records)
        return digest(of: records)
    }

    private static func walk(_ root: String, relative: String, into records: inout [Record]) throws(FileSystemError) {
        let directory = relative.isEmpty ? root : root + "/" + relative
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
            throw .cannotRead(path: directory, reason: FileSystem.reason(error))
        }
        for name in names {
            let path = relative.isEmpty ? name : relative + "/" + name
            let full = root + "/" + path
            var info = stat()
            guard lstat(full, &info) == 0 else { throw .cannotOpen(path: full, errno: errno) }
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                try walk(root, relative: path, into: &records)
            case S_IFREG:
                let digest = try SHA256Digest.of(fileAt: full).digest
                records.append(Record(path: path, kind: info.st_mode & 0o111 != 0 ? .executable : .file, contentSha256: digest))
            case S_IFLNK:
                let target: String
                do { target = try FileManager.default.destinationOfSymbolicLink(atPath: full) } catch {
                    throw .cannotRead(path: full, reason: FileSystem.reason(error))
                }
                records.append(Record(path: path, kind: .symlink, contentSha256: .of(Data(target.utf8))))
            default:
                throw .cannotRead(path: full, reason: "special file; a source tree holds files, directories and symlinks only")
            }
        }
    }
}
