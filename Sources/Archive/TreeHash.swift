import Foundation
import KrnativeBase

extension TreeHash {
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
