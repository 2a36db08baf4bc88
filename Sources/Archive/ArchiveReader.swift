import CArchive
import Foundation
import KrnativeBase

/// An archive that cannot be read or holds something krnative refuses, naming the archive and entry.
public enum ArchiveError: KrnativeError {
    case cannotOpen(archive: String, reason: String)
    case corrupt(archive: String, entry: String?, reason: String)
    case rejectedEntry(archive: String, entry: String, reason: String)
    case cannotWrite(archive: String, reason: String)
    /// A link that leads outside the destination or that krnative does not create, with its target.
    case refusedLink(archive: String, entry: String, target: String, reason: String)
    /// Unpacking would pass a limit of `SafeExtractor.Limits`; `variable` raises it.
    case exceedsLimit(archive: String, entry: String, limit: String, variable: String)
    case interrupted(archive: String)

    public var description: String {
        switch self {
        case .cannotOpen(let archive, let reason):
            "cannot open archive \(archive): \(reason)"
        case .corrupt(let archive, let entry, let reason):
            "archive \(archive) is damaged" + (entry.map { " at entry '\($0)'" } ?? "") + ": \(reason)"
        case .rejectedEntry(let archive, let entry, let reason):
            "archive \(archive): entry '\(entry)' rejected: \(reason)"
        case .cannotWrite(let archive, let reason):
            "cannot write archive \(archive): \(reason)"
        case .refusedLink(let archive, let entry, let target, let reason):
            "archive \(archive): link '\(entry)' -> '\(target)' refused: \(reason)"
        case .exceedsLimit(let archive, let entry, let limit, let variable):
            "archive \(archive): entry '\(entry)' takes it past \(limit); nothing of it was kept. "
                + "If the archive is trusted, raise the limit: \(variable)=N"
        case .interrupted(let archive):
            "interrupted by a signal while working on \(archive)"
        }
    }
    public var exitCode: Int32 {
        switch self {
        case .interrupted: ExitStatus.interrupted
        // An archive krnative writes that cannot be written is an I/O failure, as the README's table says.
        case .cannotWrite: ExitStatus.store
        default: ExitStatus.archive
        }
    }
}

/// One entry's header, as the archive states it.
public struct ArchiveEntry: Sendable {
    public enum Kind: Sendable, Equatable {
        case directory, regular, symlink, hardlink, other(mode: UInt32)
    }
    public var path: String
    public var kind: Kind
    /// Permission bits (0o7777).
    public var permissions: UInt32
    public var size: Int64
    /// Symlink target, or for a hard link the path of the entry it links to.
    public var linkTarget: String?
}

/// Streams the entries of a tar (gzip, bzip2, xz, lzma or zstd) or a zip: what krnative's inputs
/// and outputs are. Nothing else libarchive could take is tried: a text file is not an mtree
/// listing, any file not raw data, and the filters that run an external program (lrzip, lzop,
/// grzip) are not enabled.
public final class ArchiveReader {
    private let handle: OpaquePointer
    private let fd: Int32
    public let archivePath: String

    /// Opens the archive at `path`, which must be a regular file: a FIFO or device is refused before any read.
    public init(path: String) throws(ArchiveError) {
        archivePath = path
        let fd: Int32
        do { fd = try FileSystem.openRegularFile(path) } catch { throw .cannotOpen(archive: path, reason: error.description) }
        guard let handle = archive_read_new() else {
            close(fd)
            throw .cannotOpen(archive: path, reason: "out of memory")
        }
        self.fd = fd
        self.handle = handle
        for filter in [archive_read_support_filter_gzip, archive_read_support_filter_bzip2, archive_read_support_filter_xz, archive_read_support_filter_lzma, archive_read_support_filter_zstd] {
            _ = filter(handle)
        }
        archive_read_support_format_tar(handle)
        archive_read_support_format_zip(handle)
        // On failure deinit frees the handle and closes the file (it runs: every stored property is set).
        guard archive_read_open_fd(handle, fd, 1 << 16) == ARCHIVE_OK else {
            throw .cannotOpen(archive: path, reason: Self.message(handle))
        }
    }

    deinit {
        archive_read_free(handle)
        close(fd)
    }

    static func message(_ handle: OpaquePointer) -> String {
        archive_error_string(handle).map { String(cString: $0) } ?? "unknown libarchive error"
    }

    /// The next entry's header, or nil at the end of the archive.
    public func next() throws(ArchiveError) -> ArchiveEntry? {
        if Cancellation.requested { throw .interrupted(archive: archivePath) }
        var entry: OpaquePointer?
        let status = archive_read_next_header(handle, &entry)
        if status == ARCHIVE_EOF { return nil }
        guard status == ARCHIVE_OK || status == ARCHIVE_WARN, let entry else {
            throw .corrupt(archive: archivePath, entry: nil, reason: Self.message(handle))
        }
        let path =
            archive_entry_pathname_utf8(entry).map { String(cString: $0) }
            ?? archive_entry_pathname(entry).map { String(cString: $0) } ?? ""
        let mode = UInt32(archive_entry_mode(entry))
        let hardlink = archive_entry_hardlink(entry).map { String(cString: $0) }
        let kind: ArchiveEntry.Kind
        if hardlink != nil {
            kind = .hardlink
        } else {
            switch mode & 0o170000 {
            case 0o040000: kind = .directory
            case 0o100000: kind = .regular
            case 0o120000: kind = .symlink
            default: kind = .other(mode: mode & 0o170000)
            }
        }
        let symlink = archive_entry_symlink(entry).map { String(cString: $0) }
        return ArchiveEntry(
            path: path, kind: kind, permissions: mode & 0o7777, size: archive_entry_size(entry),
            linkTarget: hardlink ?? symlink)
    }

    /// Reads the current entry's data in chunks, calling `body` with each.
    public func readData(entry: String, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            if Cancellation.requested { throw ArchiveError.interrupted(archive: archivePath) }
            let count = archive_read_data(handle, buffer.baseAddress, buffer.count)
            if count == 0 { return }
            guard count > 0 else {
                throw ArchiveError.corrupt(archive: archivePath, entry: entry, reason: Self.message(handle))
            }
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
    }
}

extension ArchiveReader {
    /// Reads the current entry's data as the archive stores it: blocks with their offsets in the
    /// file, so the holes of a sparse file are the gaps between them.
    public func readBlocks(entry: String, _ body: (UnsafeRawBufferPointer, Int64) throws -> Void) throws {
        while true {
            var block: UnsafeRawPointer?
            var size = 0
            var offset: la_int64_t = 0
            let status = archive_read_data_block(handle, &block, &size, &offset)
            if status == ARCHIVE_EOF { return }
            guard status == ARCHIVE_OK || status == ARCHIVE_WARN else {
                throw ArchiveError.corrupt(archive: archivePath, entry: entry, reason: Self.message(handle))
            }
            try body(UnsafeRawBufferPointer(start: block, count: size), Int64(offset))
        }
    }

    /// Reads the current entry's whole content in order, the holes of a sparse file as zeros, up
    /// to its stated `size`.
    public func readContent(entry: String, size: Int64, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        let zeros = [UInt8](repeating: 0, count: 1 << 16)
        var position: Int64 = 0
        func fill(to end: Int64) throws {
            while position < end {
                let count = Int(min(end - position, Int64(zeros.count)))
                try zeros.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
                position += Int64(count)
            }
        }
        try readBlocks(entry: entry) { block, offset in
            guard offset >= position else {
                throw ArchiveError.corrupt(archive: archivePath, entry: entry, reason: "data blocks out of order")
            }
            try fill(to: offset)
            try body(block)
            position += Int64(block.count)
        }
        try fill(to: size)
    }
}
