import CArchive
import CLZMA
import Foundation
import KrnativeBase

#if canImport(Glibc)
    import Glibc
#endif

/// Packs a directory as a deterministic `tar.xz` (docs/design.md §2.10): entries `./…` in bytewise
/// order, mtimes clamped to SOURCE_DATE_EPOCH, uid/gid 0 without names, modes normalised
/// (0755 for directories and anything executable, 0644 otherwise), hard links by first path,
/// no xattrs, atime or ctime; compressed by liblzma's multithreaded encoder with a fixed block
/// size, so the bytes are the same with 1 or N threads. Memory does not grow with the volume.
public struct DeterministicTarXz: Sendable {
    public var sourceDateEpoch: Int64
    public var threads: Int
    /// Input bytes per xz block; fixed so the output does not depend on the thread count.
    public var blockSize: UInt64 = 16 << 20
    public var preset: UInt32 = 6

    public init(sourceDateEpoch: Int64, threads: Int = ProcessInfo.processInfo.activeProcessorCount) {
        self.sourceDateEpoch = sourceDateEpoch
        self.threads = max(1, threads)
    }

    public struct Entry: Sendable, Equatable, Codable {
        public enum Kind: String, Sendable, Codable { case directory, file, symlink, hardlink }
        /// `./bin/python3`, as in the archive.
        public var path: String
        public var kind: Kind
        public var mode: UInt32
        public var size: Int64
        /// Symlink target, or the path a hard link points to.
        public var target: String?
        /// A regular file's content digest, computed while it was packed.
        public var sha256: SHA256Digest?
    }

    /// Writes the archive of `directory` to `output` (a temp file beside it, then rename) and
    /// returns the entries in archive order.
    @discardableResult
    public func pack(_ directory: String, to output: String) throws(ArchiveError) -> [Entry] {
        do { try FileSystem.requireReplaceable(output) } catch { throw .cannotWrite(archive: output, reason: error.description) }
        let temp = output + ".partial"
        FileSystem.remove(temp)
        let sink: XzFileSink
        do { sink = try XzFileSink(path: temp, threads: threads, blockSize: blockSize, preset: preset) } catch {
            throw .cannotWrite(archive: output, reason: "\(error)")
        }
        var entries: [Entry] = []
        do {
            let listing = try Self.list(directory)
            entries = try write(listing, from: directory, into: sink, name: output)
            try sink.finish()
            try FileSystem.fsync(path: temp)
            if Cancellation.requested { throw ArchiveError.interrupted(archive: output) }
            try FileSystem.rename(temp, to: output)
        } catch let error as ArchiveError {
            sink.abandon()
            FileSystem.remove(temp)
            throw error
        } catch {
            sink.abandon()
            FileSystem.remove(temp)
            throw .cannotWrite(archive: output, reason: "\(error)")
        }
        return entries
    }

    /// What decides the bytes `pack` would write for `directory`, without compressing anything:
    /// the format and its settings (epoch, preset, block size), then every entry as `describe`
    /// normalises its header (path, kind, mode, clamped mtime, size, link target) with each
    /// regular file's sha256. Equal keys, equal archives — from the same packer: a cache of
    /// packed archives adds the packer's own identity (the krnative executable).
    public func contentKey(of directory: String) throws(ArchiveError) -> SHA256Digest {
        contentKey(of: try contentRecords(of: directory))
    }

    /// The key of `records` (`contentRecords`), as `contentKey(of:)` makes it.
    public func contentKey(of records: [ContentRecord]) -> SHA256Digest {
        var data = Data("krnative deterministic tar.xz v1\nepoch \(sourceDateEpoch) preset \(preset) block \(blockSize)\n".utf8)
        for record in records { data += Data((record.line + "\n").utf8) }
        return SHA256Digest.of(data)
    }

    /// One entry of a tree as it decides the archive's bytes: its archive path, and its header
    /// and content in one line.
    public struct ContentRecord: Sendable, Equatable {
        public var path: String
        public var line: String
    }

    /// Every entry of `directory` in archive order, as `contentKey` hashes it.
    public func contentRecords(of directory: String) throws(ArchiveError) -> [ContentRecord] {
        do {
            var firstPathOfInode: [String: String] = [:]
            return try Self.list(directory).map { item in
                let header = archive_entry_new()
                defer { archive_entry_free(header) }
                var entry = try describe(item, as: header, root: directory, name: directory, firstPathOfInode: &firstPathOfInode)
                if entry.kind == .file { entry.sha256 = try SHA256Digest.of(fileAt: directory + "/" + item.relative).digest }
                let mtime = min(Int64(item.info.st_mtim.tv_sec), sourceDateEpoch)
                let fields = "\(entry.kind.rawValue) \(String(entry.mode, radix: 8)) \(mtime) \(entry.size) \(entry.sha256?.hex ?? "-") \(entry.target ?? "")"
                return ContentRecord(path: entry.path, line: fields + "\0" + entry.path + "\0")
            }
        } catch let error as ArchiveError {
            throw error
        } catch {
            throw .cannotOpen(archive: directory, reason: "\(error)")
        }
    }

    struct Listed {
        var relative: String
        var info: stat
    }

    /// Every path below `root`, sorted bytewise by its archive name.
    static func list(_ root: String) throws -> [Listed] {
        var result: [Listed] = []
        func walk(_ relative: String) throws {
            let directory = relative.isEmpty ? root : root + "/" + relative
            for name in try FileManager.default.contentsOfDirectory(atPath: directory) {
                let path = relative.isEmpty ? name : relative + "/" + name
                var info = stat()
                guard lstat(root + "/" + path, &info) == 0 else { throw FileSystemError.cannotOpen(path: root + "/" + path, errno: errno) }
                result.append(Listed(relative: path, info: info))
                if (info.st_mode & S_IFMT) == S_IFDIR { try walk(path) }
            }
        }
        try walk("")
        return result.sorted { Array(("./" + $0.relative).utf8).lexicographicallyPrecedes(Array(("./" + $1.relative).utf8)) }
    }

    /// Writes the tar stream of `listing` into `sink`, hashing each regular file as it goes.
    private func write(_ listing: [Listed], from root: String, into sink: XzFileSink, name: String) throws -> [Entry] {
        let archive = try Self.openTar(into: sink, name: name)
        defer { archive_write_free(archive) }
        var entries: [Entry] = []
        var firstPathOfInode: [String: String] = [:]
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        for item in listing {
            if Cancellation.requested { throw ArchiveError.interrupted(archive: name) }
            let entry = archive_entry_new()
            defer { archive_entry_free(entry) }
            var record = try describe(item, as: entry, root: root, name: name, firstPathOfInode: &firstPathOfInode)
            guard archive_write_header(archive, entry) == ARCHIVE_OK else {
                throw ArchiveError.cannotWrite(archive: name, reason: "\(record.path): \(ArchiveReader.message(archive))")
            }
            if record.kind == .file {
                record.sha256 = try Self.copyContents(of: root + "/" + item.relative, as: record.path, into: archive, buffer: buffer, name: name)
            }
            entries.append(record)
        }
        guard archive_write_close(archive) == ARCHIVE_OK else {
            throw ArchiveError.cannotWrite(archive: name, reason: ArchiveReader.message(archive))
        }
        return entries
    }

    /// A GNU tar writer with 10 KiB blocks and no padding after the last, writing into `sink`.
    private static func openTar(into sink: XzFileSink, name: String) throws -> OpaquePointer {
        guard let archive = archive_write_new() else { throw ArchiveError.cannotWrite(archive: name, reason: "out of memory") }
        archive_write_set_format_gnutar(archive)
        archive_write_add_filter_none(archive)
        archive_write_set_bytes_per_block(archive, 10240)
        archive_write_set_bytes_in_last_block(archive, 1)
        let context = Unmanaged.passUnretained(sink).toOpaque()
        let opened = archive_write_open(archive, context, nil, { _, context, buffer, length in
            let sink = Unmanaged<XzFileSink>.fromOpaque(context!).takeUnretainedValue()
            return sink.write(UnsafeRawBufferPointer(start: buffer, count: length)) ? length : -1
        }, nil)
        guard opened == ARCHIVE_OK else {
            let reason = ArchiveReader.message(archive)
            archive_write_free(archive)
            throw ArchiveError.cannotWrite(archive: name, reason: reason)
        }
        return archive
    }

    /// Fills `entry`'s header for `item` as the format normalises it (owner 0, clamped mtime,
    /// 0755 or 0644, a later path of a multiply linked file as a hard link to the first), and
    /// returns its record, without the digest.
    private func describe(
        _ item: Listed, as entry: OpaquePointer?, root: String, name: String, firstPathOfInode: inout [String: String]
    ) throws -> Entry {
        let path = "./" + item.relative
        let mode: UInt32 = item.info.st_mode & 0o111 != 0 ? 0o755 : 0o644
        let inode = "\(item.info.st_dev):\(item.info.st_ino)"
        archive_entry_set_pathname_utf8(entry, path)
        archive_entry_set_uid(entry, 0)
        archive_entry_set_gid(entry, 0)
        archive_entry_set_mtime(entry, time_t(min(Int64(item.info.st_mtim.tv_sec), sourceDateEpoch)), 0)
        switch item.info.st_mode & S_IFMT {
        case S_IFDIR:
            archive_entry_set_filetype(entry, 0o040000)
            archive_entry_set_perm(entry, 0o755)
            return Entry(path: path, kind: .directory, mode: 0o755, size: 0)
        case S_IFLNK:
            let target = try FileManager.default.destinationOfSymbolicLink(atPath: root + "/" + item.relative)
            archive_entry_set_filetype(entry, 0o120000)
            archive_entry_set_perm(entry, 0o777)
            archive_entry_set_symlink_utf8(entry, target)
            return Entry(path: path, kind: .symlink, mode: 0o777, size: 0, target: target)
        case S_IFREG where item.info.st_nlink > 1 && firstPathOfInode[inode] != nil:
            let first = firstPathOfInode[inode]!
            archive_entry_set_filetype(entry, 0o100000)
            archive_entry_set_perm(entry, mode_t(mode))
            archive_entry_set_hardlink_utf8(entry, first)
            archive_entry_set_size(entry, 0)
            return Entry(path: path, kind: .hardlink, mode: mode, size: 0, target: first)
        case S_IFREG:
            if item.info.st_nlink > 1 { firstPathOfInode[inode] = path }
            archive_entry_set_filetype(entry, 0o100000)
            archive_entry_set_perm(entry, mode_t(mode))
            archive_entry_set_size(entry, Int64(item.info.st_size))
            return Entry(path: path, kind: .file, mode: mode, size: Int64(item.info.st_size))
        default:
            throw ArchiveError.rejectedEntry(archive: name, entry: path, reason: "special files have no place in a volume")
        }
    }

    /// Copies the file at `file` into the archive as the data of the entry just written; returns its sha256.
    private static func copyContents(
        of file: String, as path: String, into archive: OpaquePointer, buffer: UnsafeMutableRawBufferPointer, name: String
    ) throws -> SHA256Digest {
        let fd = open(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw FileSystemError.cannotOpen(path: file, errno: errno) }
        defer { close(fd) }
        var hasher = StreamingSHA256()
        while true {
            if Cancellation.requested { throw ArchiveError.interrupted(archive: name) }
            let count = read(fd, buffer.baseAddress, buffer.count)
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { throw FileSystemError.cannotRead(path: file, reason: String(cString: strerror(errno))) }
            if count == 0 { break }
            guard archive_write_data(archive, buffer.baseAddress, count) == count else {
                throw ArchiveError.cannotWrite(archive: name, reason: "\(path): \(ArchiveReader.message(archive))")
            }
            hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
        return hasher.finalize()
    }
}

/// Compresses what is written to it with liblzma's multithreaded encoder into a file.
final class XzFileSink {
    private var stream = lzma_stream()
    private let fd: Int32
    private let output = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
    private(set) var failure: String?

    init(path: String, threads: Int, blockSize: UInt64, preset: UInt32) throws {
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw FileSystemError.cannotOpen(path: path, errno: errno) }
        var options = lzma_mt()
        options.flags = 0
        options.threads = UInt32(threads)
        options.block_size = blockSize
        // lzma_code returns every 200 ms even while a block is compressing, so a signal is
        // noticed at once; it does not change the bytes.
        options.timeout = 200
        options.preset = preset
        options.check = LZMA_CHECK_CRC64
        let status = lzma_stream_encoder_mt(&stream, &options)
        // On failure deinit ends the stream and closes the file (it runs: every property is set).
        guard status == LZMA_OK else {
            throw ArchiveError.cannotWrite(archive: path, reason: "liblzma could not start its encoder (\(status.rawValue))")
        }
    }

    deinit {
        lzma_end(&stream)
        output.deallocate()
        close(fd)
    }

    func write(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard failure == nil else { return false }
        stream.next_in = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self)
        stream.avail_in = bytes.count
        while stream.avail_in > 0 {
            if Cancellation.requested { failure = failure ?? "interrupted" }
            guard failure == nil, run(LZMA_RUN) != nil else { return false }
        }
        return true
    }

    func finish() throws {
        while true {
            if Cancellation.requested { throw ArchiveError.interrupted(archive: "xz") }
            guard let status = run(LZMA_FINISH) else { throw ArchiveError.cannotWrite(archive: "xz", reason: failure ?? "liblzma failed") }
            if status == LZMA_STREAM_END { break }
        }
    }

    func abandon() { failure = failure ?? "abandoned" }

    /// One `lzma_code` call, writing whatever output it made; nil on failure.
    private func run(_ action: lzma_action) -> lzma_ret? {
        stream.next_out = output.baseAddress!.assumingMemoryBound(to: UInt8.self)
        stream.avail_out = output.count
        let status = lzma_code(&stream, action)
        guard status == LZMA_OK || status == LZMA_STREAM_END else {
            failure = "liblzma error \(status.rawValue)"
            return nil
        }
        let produced = output.count - stream.avail_out
        if let code = FileSystem.writeAll(fd, UnsafeRawBufferPointer(rebasing: output[0..<produced])) {
            failure = String(cString: strerror(code))
            return nil
        }
        return status
    }
}
