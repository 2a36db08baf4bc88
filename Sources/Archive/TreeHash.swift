import Foundation
import KrnativeBase

#if canImport(Glibc)
    import Glibc
#endif

/// The tree hash v1: a digest of an unpacked, normalised source tree (docs/tree-hash.md).
///
/// It depends only on each file's path, content, executable bit and each symlink's target, so
/// a re-compressed archive, a `git archive` of the same tag and the unpacked directory all agree
/// (a sparse file's content is its full logical size, holes as zeros, in both).
public enum TreeHash {
    /// One normalised entry of a tree.
    public struct Record: Sendable, Equatable {
        public enum Kind: String, Sendable { case file = "f", executable = "x", symlink = "l" }
        public var path: String
        public var kind: Kind
        public var contentSha256: SHA256Digest
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

    /// Normalises an entry path and removes its first `strip` components; nil when nothing is left.
    /// A path that climbs out (`..`) or is absolute is refused.
    static func normalise(_ path: String, strip: Int) -> String?? {
        if path.hasPrefix("/") { return .some(nil) }
        var parts = path.split(separator: "/", omittingEmptySubsequences: true).filter { $0 != "." }
        if parts.contains("..") { return .some(nil) }
        guard parts.count > strip else { return .none }
        parts.removeFirst(strip)
        return .some(parts.joined(separator: "/"))
    }

    /// The tree hash of an archive's contents after stripping `strip` leading path components.
    public static func ofArchive(at path: String, strip: Int = 1) throws(ArchiveError) -> SHA256Digest {
        let reader = try ArchiveReader(path: path)
        var records: [String: Record] = [:]
        while let entry = try reader.next() {
            guard let normalised = normalise(entry.path, strip: strip) else { continue }
            guard let relative = normalised else {
                throw .rejectedEntry(archive: path, entry: entry.path, reason: "absolute or climbs out with '..'")
            }
            switch entry.kind {
            case .directory:
                continue
            case .regular:
                var hasher = StreamingSHA256()
                do { try reader.readContent(entry: entry.path, size: entry.size) { hasher.update($0) } } catch let error as ArchiveError {
                    throw error
                } catch { throw .corrupt(archive: path, entry: entry.path, reason: "\(error)") }
                records[relative] = Record(
                    path: relative, kind: entry.permissions & 0o111 != 0 ? .executable : .file,
                    contentSha256: hasher.finalize())
            case .symlink:
                records[relative] = Record(
                    path: relative, kind: .symlink, contentSha256: .of(Data((entry.linkTarget ?? "").utf8)))
            case .hardlink:
                guard let targetPath = entry.linkTarget.flatMap({ normalise($0, strip: strip) ?? nil }),
                    let target = records[targetPath], target.kind != .symlink
                else {
                    throw .refusedLink(
                        archive: path, entry: entry.path, target: entry.linkTarget ?? "",
                        reason: "hard link to something that is not a regular file seen before it")
                }
                records[relative] = Record(
                    path: relative, kind: entry.permissions & 0o111 != 0 ? .executable : .file,
                    contentSha256: target.contentSha256)
            case .other(let mode):
                throw .rejectedEntry(
                    archive: path, entry: entry.path, reason: "special file (mode \(String(mode, radix: 8))) has no place in a source tree")
            }
        }
        return digest(of: Array(records.values))
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

/// Paths inside archives.
public enum ArchivePath {
    /// The path normalised (`.` and empty components dropped) when it stays inside the
    /// destination; nil when it is absolute, climbs out with `..`, or is empty.
    public static func contained(_ path: String) -> String? {
        guard case .some(.some(let normalised)) = TreeHash.normalise(path, strip: 0), !normalised.isEmpty else { return nil }
        return normalised
    }
}
