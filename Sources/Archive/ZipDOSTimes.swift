#if canImport(Glibc)
    import Glibc
#endif

/// The DOS date and time fields of a finished zip, reached by walking its records: the end of
/// central directory record (zip64's where the plain one is full), each central directory header,
/// and the local file header that each names. Nothing else in the file changes; the "UT" extra
/// fields hold the epoch itself and need no correction.
struct ZipDOSTimes {
    struct Failure: Error { let reason: String }

    let path: String

    /// The DOS time and date (in that order, as both headers hold them) of `epoch` in UTC, packed
    /// little-endian; outside 1980–2107 the bounds libarchive writes.
    static func utc(_ epoch: Int64) -> UInt32 {
        var seconds = time_t(epoch)
        var broken = tm()
        gmtime_r(&seconds, &broken)
        if broken.tm_year < 1980 - 1900 { return 0x0021_0000 }
        if broken.tm_year > 2107 - 1900 { return 0xff9f_bf7d }
        let date = UInt32(broken.tm_year - 80) << 9 | UInt32(broken.tm_mon + 1) << 5 | UInt32(broken.tm_mday)
        let time = UInt32(broken.tm_hour) << 11 | UInt32(broken.tm_min) << 5 | UInt32(broken.tm_sec) >> 1
        return date << 16 | time
    }

    /// Writes `stamp` into every central directory header (offset 12) and local file header (offset 10).
    func stamp(_ stamp: UInt32) throws(Failure) {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        let directory = try centralDirectory(fd)
        var headers = try read(fd, at: directory.offset, count: directory.size)
        var localHeaders: [UInt64] = []
        var position = 0
        for _ in 0..<directory.entries {
            guard position + 46 <= headers.count, headers.uint32(at: position) == 0x0201_4b50 else {
                throw Failure(reason: "no central directory header at \(directory.offset + UInt64(position))")
            }
            let extra = position + 46 + Int(headers.uint16(at: position + 28))
            let next = extra + Int(headers.uint16(at: position + 30)) + Int(headers.uint16(at: position + 32))
            guard next <= headers.count else { throw Failure(reason: "a central directory header runs past the directory") }
            localHeaders.append(try localHeaderOffset(headers, header: position, extra: extra..<next))
            headers.replaceSubrange(position + 12..<position + 16, with: stamp.littleEndianBytes)
            position = next
        }
        for offset in localHeaders {
            guard try read(fd, at: offset, count: 4).uint32(at: 0) == 0x0403_4b50 else {
                throw Failure(reason: "no local file header at \(offset)")
            }
            try write(fd, stamp.littleEndianBytes, at: offset + 10)
        }
        try write(fd, headers, at: directory.offset)
    }

    /// Where the central directory starts, its length and how many headers it holds.
    private func centralDirectory(_ fd: Int32) throws(Failure) -> (offset: UInt64, size: Int, entries: Int) {
        var status = stat()
        guard fstat(fd, &status) == 0, status.st_size >= 22 else { throw Failure(reason: "too short for a zip") }
        let size = UInt64(status.st_size)
        // libarchive writes no archive comment: the end record is the last 22 bytes.
        let end = try read(fd, at: size - 22, count: 22)
        guard end.uint32(at: 0) == 0x0605_4b50 else { throw Failure(reason: "no end of central directory record") }
        var (entries, length, offset) = (UInt64(end.uint16(at: 10)), UInt64(end.uint32(at: 12)), UInt64(end.uint32(at: 16)))
        if entries == 0xffff || length == 0xffff_ffff || offset == 0xffff_ffff {
            // Zip64: the locator just before the end record names the zip64 end record.
            let locator = size >= 42 ? try read(fd, at: size - 42, count: 20) : []
            guard locator.count == 20, locator.uint32(at: 0) == 0x0706_4b50 else { throw Failure(reason: "no zip64 end of central directory locator") }
            let end64 = try read(fd, at: locator.uint64(at: 8), count: 56)
            guard end64.uint32(at: 0) == 0x0606_4b50 else { throw Failure(reason: "no zip64 end of central directory record") }
            (entries, length, offset) = (end64.uint64(at: 32), end64.uint64(at: 40), end64.uint64(at: 48))
        }
        guard offset + length <= size, entries <= length / 46 else { throw Failure(reason: "the central directory does not fit the file") }
        return (offset, Int(length), Int(entries))
    }

    /// A central directory header's local header offset; where its 32-bit field is full, from the
    /// zip64 extra field, which holds only the full fields' values, in the order of the header's.
    private func localHeaderOffset(_ headers: [UInt8], header: Int, extra: Range<Int>) throws(Failure) -> UInt64 {
        let offset = headers.uint32(at: header + 42)
        guard offset == 0xffff_ffff else { return UInt64(offset) }
        var field = extra.lowerBound
        while field + 4 <= extra.upperBound {
            let length = Int(headers.uint16(at: field + 2))
            if headers.uint16(at: field) == 0x0001 {
                var value = field + 4
                if headers.uint32(at: header + 24) == 0xffff_ffff { value += 8 }
                if headers.uint32(at: header + 20) == 0xffff_ffff { value += 8 }
                guard value + 8 <= min(field + 4 + length, extra.upperBound) else { break }
                return headers.uint64(at: value)
            }
            field += 4 + length
        }
        throw Failure(reason: "the central directory header at \(header) has no zip64 local header offset")
    }

    private func read(_ fd: Int32, at offset: UInt64, count: Int) throws(Failure) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, count - done, off_t(offset) + off_t(done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw Failure(reason: n == 0 ? "the file ends before \(offset + UInt64(count))" : String(cString: strerror(errno))) }
            done += n
        }
        return bytes
    }

    private func write(_ fd: Int32, _ bytes: [UInt8], at offset: UInt64) throws(Failure) {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw Failure(reason: String(cString: strerror(errno))) }
            done += n
        }
    }
}

extension [UInt8] {
    fileprivate func uint16(at index: Int) -> UInt16 { UInt16(self[index]) | UInt16(self[index + 1]) << 8 }
    fileprivate func uint32(at index: Int) -> UInt32 { UInt32(uint16(at: index)) | UInt32(uint16(at: index + 2)) << 16 }
    fileprivate func uint64(at index: Int) -> UInt64 { UInt64(uint32(at: index)) | UInt64(uint32(at: index + 4)) << 32 }
}

extension UInt32 {
    fileprivate var littleEndianBytes: [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: self >> ($0 * 8)) } }
}
