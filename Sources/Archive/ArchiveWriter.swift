import CArchive
import Foundation
import KrnativeBase

/// Writes a plain (uncompressed) POSIX tar with fixed owners and times: the air-gap bundle's format.
public final class TarWriter {
    private let handle: OpaquePointer
    public let path: String
    private let mtime: Int64

    public init(path: String, mtime: Int64 = 0) throws(ArchiveError) {
        self.path = path
        self.mtime = mtime
        guard let handle = archive_write_new() else { throw .cannotWrite(archive: path, reason: "out of memory") }
        self.handle = handle
        archive_write_set_format_pax_restricted(handle)
        archive_write_add_filter_none(handle)
        archive_write_set_bytes_in_last_block(handle, 1)
        // On failure deinit frees the handle (it runs: every stored property is set).
        guard archive_write_open_filename(handle, path) == ARCHIVE_OK else {
            throw .cannotWrite(archive: path, reason: ArchiveReader.message(handle))
        }
    }

    deinit { archive_write_free(handle) }

    private func header(_ name: String, size: Int64) throws(ArchiveError) {
        let entry = archive_entry_new()
        defer { archive_entry_free(entry) }
        archive_entry_set_pathname_utf8(entry, name)
        archive_entry_set_filetype(entry, 0o100000)
        archive_entry_set_perm(entry, 0o644)
        archive_entry_set_size(entry, size)
        archive_entry_set_mtime(entry, time_t(mtime), 0)
        archive_entry_set_uid(entry, 0)
        archive_entry_set_gid(entry, 0)
        guard archive_write_header(handle, entry) == ARCHIVE_OK else {
            throw .cannotWrite(archive: path, reason: ArchiveReader.message(handle))
        }
    }

    private func write(_ data: Data) throws(ArchiveError) {
        if Cancellation.requested { throw .interrupted(archive: path) }
        guard !data.isEmpty else { return }
        let written = data.withUnsafeBytes { archive_write_data(handle, $0.baseAddress, $0.count) }
        guard written == data.count else {
            throw .cannotWrite(archive: path, reason: ArchiveReader.message(handle))
        }
    }

    /// Adds a regular file with `data` as its content.
    public func add(_ name: String, data: Data) throws(ArchiveError) {
        try header(name, size: Int64(data.count))
        try write(data)
    }

    /// Adds a regular file copied from `source`, streamed in chunks.
    public func add(_ name: String, contentsOf source: String) throws(ArchiveError) {
        guard let size = FileSystem.size(of: source), let input = FileHandle(forReadingAtPath: source) else {
            throw .cannotWrite(archive: path, reason: "cannot read \(source)")
        }
        defer { try? input.close() }
        try header(name, size: size)
        do {
            while let chunk = try input.read(upToCount: 1 << 20), !chunk.isEmpty {
                try write(chunk)
            }
        } catch let error as ArchiveError { throw error } catch {
            throw .cannotWrite(archive: path, reason: "reading \(source): \(FileSystem.reason(error))")
        }
    }

    /// Finishes the archive; without this call the file is incomplete.
    public func close() throws(ArchiveError) {
        guard archive_write_close(handle) == ARCHIVE_OK else {
            throw .cannotWrite(archive: path, reason: ArchiveReader.message(handle))
        }
    }
}
