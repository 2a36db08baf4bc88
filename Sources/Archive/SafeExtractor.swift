import Foundation
import KrnativeBase

#if canImport(Glibc)
    import Glibc
#endif

/// Unpacks archives without ever writing outside the destination (docs/design.md §2.4, §5).
///
/// All writes go through one directory fd with `openat`/`mkdirat`/`symlinkat` and `O_NOFOLLOW` on
/// every component, so a symlink planted by an earlier entry cannot redirect a later one. Refused,
/// each naming the archive and the entry: absolute paths, `..`, writing through a symlink, hard
/// links to anything but a regular file extracted before them, device nodes, FIFOs and sockets.
/// When every entry is down, each symlink of the finished tree is resolved component by component
/// through the tree's own links; one that leads outside (or loops) fails the extraction. Limits
/// on bytes and entries (`Limits`) stop archive bombs. A failed extraction removes the destination.
/// Sparse files unpack to their full size, holes as zeros. Owners are ignored (everything belongs
/// to the caller) and setuid, setgid and sticky bits are dropped.
public struct SafeExtractor: Sendable {
    /// Leading path components to remove (1 for a source archive's top directory).
    public var stripComponents: Int
    public var limits: Limits

    public init(stripComponents: Int = 0, limits: Limits = .forArchive(recordedSize: nil)) {
        self.stripComponents = stripComponents
        self.limits = limits
    }

    public struct Report: Sendable {
        public var files = 0
        public var directories = 0
        public var links = 0
        /// The regular files' logical sizes (holes included).
        public var bytes: Int64 = 0
    }

    /// How much one archive may unpack to.
    ///
    /// When the lock records the archive's size: 32 times that, and at least 64 MiB (real source,
    /// runtime and toolchain archives unpack to 2–8 times their size). Otherwise the default cap,
    /// 4 GiB. Entries: 200,000. `KRNATIVE_EXTRACT_MAX_BYTES` and `KRNATIVE_EXTRACT_MAX_ENTRIES`
    /// override both, for a trusted archive that needs more.
    public struct Limits: Sendable, Equatable {
        public var maxBytes: Int64
        public var maxEntries: Int
        /// Where `maxBytes` comes from, for the message that refuses an archive.
        public var basis: String

        public static let defaultMaxBytes: Int64 = 4 << 30
        public static let defaultMaxEntries = 200_000
        public static let expansionRatio: Int64 = 32
        public static let minimumFromRecordedSize: Int64 = 64 << 20
        public static let bytesVariable = "KRNATIVE_EXTRACT_MAX_BYTES"
        public static let entriesVariable = "KRNATIVE_EXTRACT_MAX_ENTRIES"

        public init(maxBytes: Int64, maxEntries: Int, basis: String = "the limit given") {
            self.maxBytes = maxBytes
            self.maxEntries = maxEntries
            self.basis = basis
        }

        /// The limits for an archive whose size the lock records as `recordedSize` (nil: none).
        public static func forArchive(
            recordedSize: Int64?, environment: [String: String] = ProcessInfo.processInfo.environment
        ) -> Limits {
            var limits =
                if let recordedSize, recordedSize > 0 {
                    Limits(
                        maxBytes: max(recordedSize.multipliedReportingOverflow(by: expansionRatio).partialValue, minimumFromRecordedSize),
                        maxEntries: defaultMaxEntries,
                        basis: "\(expansionRatio) × the \(recordedSize) bytes the lock records for it, at least \(minimumFromRecordedSize >> 20) MiB")
                } else {
                    Limits(maxBytes: defaultMaxBytes, maxEntries: defaultMaxEntries, basis: "the default cap for an archive the lock records no size for")
                }
            // A value that is not a number was refused before any work (the CLI reads every variable first).
            if let bytes = (try? EnvironmentSetting.positiveInteger(bytesVariable, in: environment)) ?? nil {
                limits.maxBytes = bytes
                limits.basis = "\(bytesVariable)"
            }
            if let entries = (try? EnvironmentSetting.positiveInteger(entriesVariable, in: environment)) ?? nil { limits.maxEntries = Int(entries) }
            return limits
        }
    }

    /// Extracts `archive` into `destination`, which must be absent or empty; on failure it is removed.
    @discardableResult
    public func extract(_ archive: String, into destination: String) throws(ArchiveError) -> Report {
        try Self.prepare(destination, for: archive)
        do throws(ArchiveError) {
            let root = open(destination, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard root >= 0 else { throw .cannotWrite(archive: archive, reason: "cannot open \(destination): \(Self.errorText())") }
            defer { close(root) }
            var symlinks: [String: String] = [:]
            let report = try unpack(archive, into: root, destination: destination, symlinks: &symlinks)
            try Self.checkLinks(root, relative: [], archive: archive, destination: destination, entries: symlinks)
            return report
        } catch {
            FileSystem.remove(destination)
            throw error
        }
    }

    static func prepare(_ destination: String, for archive: String) throws(ArchiveError) {
        if let names = try? FileManager.default.contentsOfDirectory(atPath: destination), !names.isEmpty {
            throw .cannotWrite(archive: archive, reason: "the destination \(destination) is not empty")
        }
        do { try FileSystem.createDirectory(destination) } catch {
            throw .cannotWrite(archive: archive, reason: error.description)
        }
    }

    /// Lays down every entry; `symlinks` maps each symlink's path in the tree to its entry's name.
    private func unpack(_ archive: String, into root: Int32, destination: String, symlinks: inout [String: String]) throws(ArchiveError) -> Report {
        let reader = try ArchiveReader(path: archive)
        var report = Report()
        var entries = 0
        while let entry = try reader.next() {
            entries += 1
            guard entries <= limits.maxEntries else {
                throw .exceedsLimit(
                    archive: archive, entry: entry.path, limit: "\(limits.maxEntries) entries", variable: Limits.entriesVariable)
            }
            guard let normalised = TreeHash.normalise(entry.path, strip: stripComponents) else { continue }
            guard let relative = normalised, !relative.isEmpty else {
                throw .rejectedEntry(archive: archive, entry: entry.path, reason: "absolute path or '..' would write outside \(destination)")
            }
            try place(entry, at: relative, from: reader, archive: archive, root: root, destination: destination, report: &report, symlinks: &symlinks)
        }
        return report
    }

    /// Lays down one entry at `relative`, its normalised path in the tree, and counts it in `report`.
    private func place(
        _ entry: ArchiveEntry, at relative: String, from reader: ArchiveReader, archive: String, root: Int32, destination: String,
        report: inout Report, symlinks: inout [String: String]
    ) throws(ArchiveError) {
        func reject(_ reason: String) -> ArchiveError { .rejectedEntry(archive: archive, entry: entry.path, reason: reason) }
        var components = relative.split(separator: "/").map(String.init)
        let name = components.removeLast()
        let parent = try Self.openDirectory(root, components, create: true, reject: reject)
        defer { if parent != root { close(parent) } }
        switch entry.kind {
        case .directory:
            try Self.makeDirectory(name, in: parent, permissions: entry.permissions, reject: reject)
            report.directories += 1
        case .regular:
            report.bytes = try writeFile(reader, entry, archive: archive, parent: parent, name: name, total: report.bytes, reject: reject)
            report.files += 1
        case .symlink:
            let target = entry.linkTarget ?? ""
            guard Self.staysInside(target, from: components) else {
                throw .refusedLink(archive: archive, entry: entry.path, target: target, reason: "points outside \(destination)")
            }
            unlinkat(parent, name, 0)
            guard symlinkat(target, parent, name) == 0 else { throw reject("cannot create symlink: \(Self.errorText())") }
            symlinks[relative] = entry.path
            report.links += 1
        case .hardlink:
            try hardLink(entry, archive: archive, root: root, parent: parent, name: name, destination: destination, reject: reject)
            report.links += 1
        case .other(let mode):
            throw reject("\(Self.specialFileKind(mode)) entries are refused")
        }
    }

    /// A directory, or one an earlier entry made, given the entry's permissions (and always the owner's rwx).
    private static func makeDirectory(_ name: String, in parent: Int32, permissions: UInt32, reject: (String) -> ArchiveError) throws(ArchiveError) {
        if mkdirat(parent, name, 0o755) != 0 && errno != EEXIST { throw reject("cannot create directory: \(errorText())") }
        let fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw reject("a non-directory is in the way (a symlink cannot be written through)") }
        fchmod(fd, mode_t(permissions & 0o777 | 0o700))
        close(fd)
    }

    /// What an entry of file type `mode` (tar's `S_IFMT` bits, the same as `stat`'s) is, for the
    /// message that refuses it.
    static func specialFileKind(_ mode: UInt32) -> String {
        switch mode {
        case 0o020000: "character device"
        case 0o060000: "block device"
        case 0o010000: "FIFO"
        case 0o140000: "socket"
        default: "special file"
        }
    }

    /// Writes a regular file block by block at the offsets libarchive gives (a sparse file's holes
    /// stay holes and read as zeros), charging its logical size to the byte limit; returns the new total.
    private func writeFile(
        _ reader: ArchiveReader, _ entry: ArchiveEntry, archive: String, parent: Int32, name: String, total: Int64,
        reject: (String) -> ArchiveError
    ) throws(ArchiveError) -> Int64 {
        let tooLarge = ArchiveError.exceedsLimit(
            archive: archive, entry: entry.path, limit: "\(limits.maxBytes) bytes (\(limits.basis))", variable: Limits.bytesVariable)
        let declared = max(entry.size, 0)
        guard total + declared <= limits.maxBytes else { throw tooLarge }
        unlinkat(parent, name, 0)
        let fd = openat(parent, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw reject("cannot create file: \(Self.errorText())") }
        defer { close(fd) }
        var end: Int64 = 0
        do {
            try reader.readBlocks(entry: entry.path) { buffer, offset in
                let blockEnd = offset + Int64(buffer.count)
                guard offset >= 0, total + max(declared, blockEnd) <= limits.maxBytes else { throw tooLarge }
                end = max(end, blockEnd)
                if let failure = FileSystem.writeAll(fd, buffer, at: offset) { throw reject("cannot write: \(String(cString: strerror(failure)))") }
            }
        } catch let error as ArchiveError {
            throw error
        } catch {
            throw reject("\(error)")
        }
        let size = max(declared, end)
        guard ftruncate(fd, off_t(size)) == 0 else { throw reject("cannot set the size: \(Self.errorText())") }
        fchmod(fd, mode_t(entry.permissions & 0o777))
        return total + size
    }

    /// A hard link, only to a regular file already extracted: a hard link to a symlink would move
    /// the link to where its relative target means something else.
    private func hardLink(
        _ entry: ArchiveEntry, archive: String, root: Int32, parent: Int32, name: String, destination: String, reject: (String) -> ArchiveError
    ) throws(ArchiveError) {
        let stated = entry.linkTarget ?? ""
        guard let targetPath = TreeHash.normalise(stated, strip: stripComponents) ?? nil, !targetPath.isEmpty else {
            throw .refusedLink(archive: archive, entry: entry.path, target: stated, reason: "hard link points outside \(destination)")
        }
        var targetComponents = targetPath.split(separator: "/").map(String.init)
        let targetName = targetComponents.removeLast()
        let targetParent = try Self.openDirectory(root, targetComponents, create: false, reject: reject)
        defer { if targetParent != root { close(targetParent) } }
        var info = stat()
        guard fstatat(targetParent, targetName, &info, AT_SYMLINK_NOFOLLOW) == 0, info.st_mode & S_IFMT == S_IFREG else {
            throw .refusedLink(
                archive: archive, entry: entry.path, target: targetPath,
                reason: "hard link to something that is not a regular file extracted before it")
        }
        unlinkat(parent, name, 0)
        guard linkat(targetParent, targetName, parent, name, 0) == 0 else {
            throw .refusedLink(archive: archive, entry: entry.path, target: targetPath, reason: "cannot create hard link: \(Self.errorText())")
        }
    }

    /// Opens (creating) each directory below `root` without following symlinks; the caller
    /// closes what it returns unless it is `root`.
    static func openDirectory<Failure: Error>(
        _ root: Int32, _ components: [String], create: Bool, reject: (String) -> Failure
    ) throws(Failure) -> Int32 {
        var current = root
        for component in components {
            if create { mkdirat(current, component, 0o755) }
            let next = openat(current, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            let failure = errno
            if current != root { close(current) }
            guard next >= 0 else {
                errno = failure
                throw reject(
                    failure == ELOOP || failure == ENOTDIR
                        ? "'\(component)' on its path is a symlink or a file; writing through it is refused"
                        : "cannot open directory '\(component)': \(Self.errorText())")
            }
            current = next
        }
        return current
    }

    /// Whether a symlink target, read as plain path names from the link's directory, stays inside.
    /// Only a first screen: links in the tree can change what `..` means, which `checkLinks`
    /// decides on the finished tree.
    static func staysInside(_ target: String, from directory: [String]) -> Bool {
        guard !target.hasPrefix("/") else { return false }
        var depth = directory.count
        for part in target.split(separator: "/") where part != "." {
            depth += part == ".." ? -1 : 1
            if depth < 0 { return false }
        }
        return true
    }

    static func errorText() -> String { String(cString: strerror(errno)) }
}

extension SafeExtractor {
    /// The most links one resolution may pass through before it counts as a loop.
    static let maximumLinkHops = 64

    /// Resolves every symlink below `relative` (a real directory of the tree) and refuses the
    /// first that leads outside the destination or loops. `entries` names each link's entry.
    static func checkLinks(
        _ root: Int32, relative: [String], archive: String, destination: String, entries: [String: String]
    ) throws(ArchiveError) {
        let path = relative.isEmpty ? "." : relative.joined(separator: "/")
        let fd = openat(root, path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0, let directory = fdopendir(fd) else {
            if fd >= 0 { close(fd) }
            throw .cannotWrite(archive: archive, reason: "cannot read back \(destination)/\(path): \(errorText())")
        }
        defer { closedir(directory) }
        while let item = readdir(directory) {
            let name = withUnsafeBytes(of: item.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            guard name != ".", name != ".." else { continue }
            var info = stat()
            guard fstatat(fd, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
            let link = relative + [name]
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                try checkLinks(root, relative: link, archive: archive, destination: destination, entries: entries)
            case S_IFLNK:
                guard let problem = resolve(link, root: root) else { continue }
                let joined = link.joined(separator: "/")
                throw .refusedLink(
                    archive: archive, entry: entries[joined] ?? joined, target: readLink(root, joined) ?? "",
                    reason: "\(problem) \(destination), through the other links of the unpacked tree")
            default:
                continue
            }
        }
    }

    /// Follows the symlink at `link` component by component from the destination's root, through
    /// the links it meets, as the kernel would: nil when it stays inside (or stops at a missing
    /// path or a file), else what is wrong. A missing component is taken as a plain directory, so
    /// a link that would climb out once something is created there is refused too.
    /// With `seenAs`, the path the tree had where its links were made, an absolute target below
    /// that path is followed from the tree's root; any other absolute target points outside.
    static func resolve(_ link: [String], root: Int32, seenAs: String? = nil) -> String? {
        let inside = seenAs.map { $0.split(separator: "/").map(String.init) }
        var directory = Array(link.dropLast())
        var pending = [link[link.count - 1]]
        var hops = 0
        while !pending.isEmpty {
            let part = pending.removeFirst()
            if part.isEmpty || part == "." { continue }
            if part == ".." {
                if directory.popLast() == nil { return "points outside" }
                continue
            }
            let path = (directory + [part]).joined(separator: "/")
            var info = stat()
            guard fstatat(root, path, &info, AT_SYMLINK_NOFOLLOW) == 0 else {
                directory.append(part)
                continue
            }
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                directory.append(part)
            case S_IFLNK:
                hops += 1
                guard hops <= maximumLinkHops else { return "loops (more than \(maximumLinkHops) links) inside" }
                guard let target = readLink(root, path) else { return "points outside" }
                var parts = target.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
                if target.hasPrefix("/") {
                    guard let inside, parts.starts(with: inside) else { return "points outside" }
                    parts.removeFirst(inside.count)
                    directory = []
                }
                pending = parts + pending
            default:
                return nil
            }
        }
        return nil
    }

    static func readLink(_ root: Int32, _ path: String) -> String? {
        var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = buffer.withUnsafeMutableBytes { readlinkat(root, path, $0.baseAddress!.assumingMemoryBound(to: CChar.self), Int(PATH_MAX)) }
        guard count >= 0 else { return nil }
        return String(decoding: buffer[0..<count], as: UTF8.self)
    }
}
