import CArchive
import Foundation
import KrnativeBase

#if canImport(Glibc)
    import Glibc
#endif

/// Writes a deterministic zip (for wheels): entries in the order given, every time stamp the
/// same, no owners, deflate. The caller sorts the entries.
public final class ZipWriter {
    private let handle: OpaquePointer
    public let path: String
    private let mtime: Int64

    /// `mtime` is clamped to 1980-01-01, the earliest time a zip can hold.
    public init(path: String, mtime: Int64) throws(ArchiveError) {
        self.path = path
        self.mtime = max(mtime, 315_532_800)
        guard let handle = archive_write_new() else { throw .cannotWrite(archive: path, reason: "out of memory") }
        self.handle = handle
        archive_write_set_format_zip(handle)
        // Its extra fields carry the (fixed) time and owner 0, so the bytes depend on the content only.
        archive_write_set_options(handle, "zip:compression=deflate")
        // On failure deinit frees the handle (it runs: every stored property is set).
        guard archive_write_open_filename(handle, path) == ARCHIVE_OK else {
            throw .cannotWrite(archive: path, reason: ArchiveReader.message(handle))
        }
    }

    deinit { archive_write_free(handle) }

    /// Adds a file; `executable` gives it mode 0755 (else 0644).
    public func add(_ name: String, data: Data, executable: Bool = false) throws(ArchiveError) {
        if Cancellation.requested { throw .interrupted(archive: path) }
        let entry = archive_entry_new()
        defer { archive_entry_free(entry) }
        archive_entry_set_pathname_utf8(entry, name)
        archive_entry_set_filetype(entry, 0o100000)
        archive_entry_set_perm(entry, executable ? 0o755 : 0o644)
        archive_entry_set_size(entry, Int64(data.count))
        archive_entry_set_mtime(entry, time_t(mtime), 0)
        guard archive_write_header(handle, entry) == ARCHIVE_OK else {
            throw .cannotWrite(archive: path, reason: "\(name): \(ArchiveReader.message(handle))")
        }
        let written = data.withUnsafeBytes { archive_write_data(handle, $0.baseAddress, $0.count) }
        guard written == data.count || data.isEmpty else {
            throw .cannotWrite(archive: path, reason: "\(name): \(ArchiveReader.message(handle))")
        }
    }

    /// Finishes the zip, then writes the UTC date and time over the local ones libarchive wrote
    /// (it takes them from TZ), so the bytes do not depend on the zone of the machine that builds.
    public func close() throws(ArchiveError) {
        guard archive_write_close(handle) == ARCHIVE_OK else {
            throw .cannotWrite(archive: path, reason: ArchiveReader.message(handle))
        }
        do {
            try ZipDOSTimes(path: path).stamp(ZipDOSTimes.utc(mtime))
        } catch {
            throw .cannotWrite(archive: path, reason: "setting the UTC times: \(error.reason)")
        }
    }
}
