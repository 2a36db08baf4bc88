import CSystemCalls
import Foundation
import SystemPackage

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A file operation that failed, with the path and the system's reason.
public enum FileSystemError: KrnativeError {
    case cannotOpen(path: String, errno: Int32)
    case cannotRead(path: String, reason: String)
    case cannotWrite(path: String, errno: Int32)
    case cannotRename(from: String, to: String, errno: Int32)
    case cannotCreateDirectory(path: String, reason: String)
    /// A file to read that is a FIFO, device, socket or directory: reading it could block or never end.
    case notARegularFile(path: String, kind: String)
    /// An output path held by something krnative does not replace (a device, FIFO, socket, directory).
    case refusedDestination(path: String, kind: String)

    public var description: String {
        switch self {
        case .cannotOpen(let path, let code):
            "cannot open \(path): \(String(cString: strerror(code)))"
        case .cannotRead(let path, let reason):
            "cannot read \(path): \(reason)"
        case .cannotWrite(let path, let code):
            "cannot write \(path): \(String(cString: strerror(code))); check free disk space and permissions"
        case .cannotRename(let from, let to, let code):
            "cannot move \(from) to \(to): \(String(cString: strerror(code)))"
        case .cannotCreateDirectory(let path, let reason):
            "cannot create directory \(path): \(reason)"
        case .notARegularFile(let path, let kind):
            "cannot read \(path): it is a \(kind), not a regular file; krnative reads only regular files "
                + "(a FIFO or device could block or never end), so it was not opened for reading: name the file itself"
        case .refusedDestination(let path, let kind):
            "will not write \(path): it is a \(kind), and krnative replaces only regular files (and directories it made); "
                + "nothing was changed there: choose another output path"
        }
    }
    public var exitCode: Int32 {
        switch self {
        case .notARegularFile, .refusedDestination: ExitStatus.usage
        default: ExitStatus.store
        }
    }
}

/// Small, careful file operations: every output appears whole or not at all.
public enum FileSystem {
    /// Creates `path` and its parents.
    public static func createDirectory(_ path: String) throws(FileSystemError) {
        // mkdir -p, one level at a time, so that a failure says the system's reason for the level
        // that failed (Foundation said "The file doesn't exist." for a parent that cannot be written).
        var made = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            made += "/" + component
            if mkdir(made, 0o755) == 0 { continue }
            let code = errno
            var info = stat()
            if code == EEXIST, stat(made, &info) == 0, info.st_mode & S_IFMT == S_IFDIR { continue }
            let level = made == "./" + path || made == path ? "" : " (at \(made))"
            throw .cannotCreateDirectory(path: path, reason: String(cString: strerror(code)) + level)
        }
    }

    /// A system call's or Foundation's file error in the system's words: the POSIX error under it, which says what
    /// went wrong (Foundation's own text says "The file doesn't exist." for a path that exists but
    /// cannot be read), else its description.
    public static func reason(_ error: any Error) -> String {
        if let errno = error as? Errno { return String(cString: strerror(errno.rawValue)) }
        let error = error as NSError
        if error.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(error.code))) }
        if let underlying = error.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
            return String(cString: strerror(Int32(underlying.code)))
        }
        return error.localizedDescription
    }

    /// Flushes a file's bytes to disk.
    public static func fsync(path: String) throws(FileSystemError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .cannotOpen(path: path, errno: errno) }
        defer { close(fd) }
        guard Glibc.fsync(fd) == 0 else { throw .cannotWrite(path: path, errno: errno) }
    }

    /// Reads `fd` from where it stands to its end, 1 MiB at a time, handing each block to `body`
    /// (swift-system's read, which retries on EINTR); the number of bytes read. A read that fails
    /// throws its `Errno`; what `body` throws ends the reading too.
    @discardableResult
    public static func readBlocks(_ fd: Int32, _ body: (UnsafeRawBufferPointer) throws -> Void) throws -> Int64 {
        let descriptor = FileDescriptor(rawValue: fd)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        var total: Int64 = 0
        while case let count = try descriptor.read(into: buffer), count > 0 {
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
            total += Int64(count)
        }
        return total
    }

    /// Writes every byte of `bytes` to `fd`, at `offset` or else where the descriptor stands:
    /// swift-system's `writeAll`, which goes on after a short write and retries on EINTR. Nil, or
    /// the errno that stopped it.
    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int64? = nil) -> Int32? {
        let descriptor = FileDescriptor(rawValue: fd)
        do {
            if let offset { try descriptor.writeAll(toAbsoluteOffset: offset, bytes) } else { try descriptor.writeAll(bytes) }
            return nil
        } catch { return (error as? Errno)?.rawValue ?? EIO }
    }

    /// Starts writing `length` bytes of `fd` from `offset` to disk and returns at once
    /// (`sync_file_range`). A large file written block by block, each block started this way,
    /// finds little left to flush by the fsync that admits it: the disk wrote while the next
    /// blocks arrived (a 300 MB download's fsync took 0.13 s of its 0.55 s without). A file system
    /// that cannot is no error: the fsync does it all then.
    public static func startWriteback(_ fd: Int32, offset: Int64, length: Int) {
        _ = krn_start_writeback(fd, offset, Int64(length))
    }

    /// Renames within one file system and flushes the directory, so the rename survives a crash.
    /// `to` may be absent, a regular file or a symbolic link (replaced, not followed), or a
    /// directory when `from` is one; anything else (a device, FIFO, socket) is refused, not replaced.
    public static func rename(_ from: String, to: String) throws(FileSystemError) {
        var source = stat()
        try requireReplaceable(to, byDirectory: lstat(from, &source) == 0 && (source.st_mode & S_IFMT) == S_IFDIR)
        guard Glibc.rename(from, to) == 0 else { throw .cannotRename(from: from, to: to, errno: errno) }
        let directory = (to as NSString).deletingLastPathComponent
        try? fsync(path: directory.isEmpty ? "." : directory)
    }

    /// Writes `data` to `path` atomically: a temp file beside it, fsync, rename.
    public static func writeAtomically(_ data: Data, to path: String, mode: mode_t = 0o644) throws(FileSystemError) {
        let directory = (path as NSString).deletingLastPathComponent
        let temp = (directory.isEmpty ? "." : directory) + "/.\((path as NSString).lastPathComponent).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw .cannotWrite(path: path, errno: errno) }
        var failure = data.withUnsafeBytes { writeAll(fd, $0) } ?? 0
        if failure == 0, Glibc.fsync(fd) != 0 { failure = errno }
        fchmod(fd, mode)
        close(fd)
        if failure != 0 {
            unlink(temp)
            throw .cannotWrite(path: path, errno: failure)
        }
        do { try rename(temp, to: path) } catch {
            unlink(temp)
            throw error
        }
    }

    /// Refuses an output path that holds something krnative must not replace: anything but a regular
    /// file or symbolic link, or a directory when a directory takes its place. Commands call it before
    /// they start, so a long pack does not end in a refusal; `rename` calls it again.
    public static func requireReplaceable(_ path: String, byDirectory: Bool = false) throws(FileSystemError) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        switch info.st_mode & S_IFMT {
        case S_IFREG, S_IFLNK: return
        case S_IFDIR where byDirectory: return
        default: throw .refusedDestination(path: path, kind: kindName(info.st_mode))
        }
    }

    /// Opens `path` for reading when it is a regular file (a symbolic link to one included) and
    /// returns the descriptor; a FIFO, device, socket or directory is refused at once, never read.
    /// The open does not wait for a FIFO's writer (`O_NONBLOCK`, cleared once the file is known regular).
    public static func openRegularFile(_ path: String) throws(FileSystemError) -> Int32 {
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        var info = stat()
        guard fd >= 0 else {
            let code = errno
            if code == ENXIO, stat(path, &info) == 0 { throw .notARegularFile(path: path, kind: kindName(info.st_mode)) }
            throw .cannotOpen(path: path, errno: code)
        }
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw .notARegularFile(path: path, kind: kindName(info.st_mode))
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        return fd
    }

    /// The bytes of the regular file `path` (a config, a lock, a manifest): a FIFO, device or
    /// directory is refused without a read, and a file beyond `limit` bytes is refused too.
    public static func readRegularFile(_ path: String, limit: Int = 256 << 20) throws(FileSystemError) -> Data {
        let handle = FileHandle(fileDescriptor: try openRegularFile(path), closeOnDealloc: true)
        defer { try? handle.close() }
        let data: Data
        do { data = try handle.read(upToCount: limit + 1) ?? Data() } catch {
            throw .cannotRead(path: path, reason: reason(error))
        }
        guard data.count <= limit else { throw .cannotRead(path: path, reason: "it is larger than \(limit) bytes") }
        return data
    }

    /// "FIFO (named pipe)", "character device", …: the file type in `mode`, in words.
    public static func kindName(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFREG: "regular file"
        case S_IFDIR: "directory"
        case S_IFLNK: "symbolic link"
        case S_IFCHR: "character device"
        case S_IFBLK: "block device"
        case S_IFIFO: "FIFO (named pipe)"
        case S_IFSOCK: "socket"
        default: "special file"
        }
    }

    public static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }

    /// What changes when anything in the tree at `path` is written, replaced, renamed or has its
    /// mode changed — each entry's path, device, inode, mode, size, modification and change times,
    /// links not followed — without reading a byte of content: whether a tree checked before is
    /// still the one that was checked. A directory's own times are left out (marking a store item
    /// used touches them); its entries' are in. Nil when `path` is gone.
    public static func stamp(of path: String) -> SHA256Digest? {
        var hasher = StreamingSHA256()
        let found = walkStamps(path) { relative, line in hasher.update(Data("\(relative)\0\(line)\n".utf8)) }
        return found ? hasher.finalize() : nil
    }

    /// `stamp(of:)` entry by entry: each entry's path relative to `path` ("" for itself) and what
    /// changes when it is written, replaced or has its mode changed. Directories' entries only
    /// while they are real directories: no link is followed.
    public static func entryStamps(of path: String) -> [String: String] {
        var stamps: [String: String] = [:]
        _ = walkStamps(path) { relative, line in stamps[relative] = line }
        return stamps
    }

    /// Visits `path` and, below its real directories, every entry in sorted order with its
    /// stamp line (`relative` starts with "/" below `path`); false when `path` is gone.
    private static func walkStamps(_ path: String, _ visit: (String, String) -> Void) -> Bool {
        func add(_ relative: String) -> Bool {
            var info = stat()
            guard lstat(path + relative, &info) == 0 else { return false }
            let directory = info.st_mode & S_IFMT == S_IFDIR
            let times = directory && relative.isEmpty ? "" : " \(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec) \(info.st_ctim.tv_sec).\(info.st_ctim.tv_nsec)"
            visit(relative, "\(info.st_dev) \(info.st_ino) \(info.st_mode) \(info.st_size)\(times)")
            if directory {
                for name in ((try? FileManager.default.contentsOfDirectory(atPath: path + relative)) ?? []).sorted() { _ = add(relative + "/" + name) }
            }
            return true
        }
        return add("")
    }

    /// Whether `path` is a directory (following symlinks).
    public static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// The size of a regular file, or nil when there is none.
    public static func size(of path: String) -> Int64? {
        var info = stat()
        guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return nil }
        return Int64(info.st_size)
    }

    /// Free bytes on the file system holding `path`.
    public static func freeBytes(at path: String) -> Int64? {
        var info = statvfs()
        guard statvfs(path, &info) == 0 else { return nil }
        return Int64(info.f_bavail) * Int64(info.f_frsize)
    }

    /// The file type (`S_IFMT` bits) of `relative` below `root` when every directory on the way
    /// is a real one and `relative` itself no symbolic link; nil otherwise. For trees whose links
    /// point wherever their makers chose (a root file system from a mirror).
    public static func kind(of relative: String, beneath root: String) -> mode_t? {
        let names = relative.split(separator: "/").filter { $0 != "." }
        guard !names.isEmpty, !names.contains("..") else { return nil }
        var path = root, info = stat()
        for (index, name) in names.enumerated() {
            path += "/" + name
            guard lstat(path, &info) == 0 else { return nil }
            let kind = info.st_mode & S_IFMT
            if index == names.count - 1 { return kind == S_IFLNK ? nil : kind }
            guard kind == S_IFDIR else { return nil }
        }
        return nil
    }

    /// Why a file cannot be read, in words for people ("no such file", "it is a directory", …),
    /// rather than Foundation's error domain texts.
    public static func whyUnreadable(_ path: String) -> String {
        var info = stat()
        guard stat(path, &info) == 0 else { return errno == ENOENT ? "no such file" : String(cString: strerror(errno)) }
        if (info.st_mode & S_IFMT) == S_IFDIR { return "it is a directory, not a file" }
        if (info.st_mode & S_IFMT) != S_IFREG { return "it is a \(kindName(info.st_mode)), not a regular file, so it was not read" }
        if access(path, R_OK) != 0 { return "permission denied" }
        return "not readable"
    }

    /// Removes a file or a whole tree; quiet when it does not exist. What Foundation cannot remove
    /// (a tree deeper than PATH_MAX, directories without write permission) goes through `removeTree`.
    public static func remove(_ path: String) {
        if (try? FileManager.default.removeItem(atPath: path)) == nil { removeTree(path) }
    }

    /// Removes `path` and everything below it however deep, one descriptor open at a time and by
    /// names relative to it (no path grows past PATH_MAX), giving its directories owner
    /// permissions on the way (step snapshots are read-only); links are removed, never followed.
    /// Returns whether `path` is gone.
    @discardableResult
    public static func removeTree(_ path: String) -> Bool {
        var info = stat()
        guard lstat(path, &info) == 0 else { return errno == ENOENT }
        guard (info.st_mode & S_IFMT) == S_IFDIR else { return unlink(path) == 0 }
        chmod(path, 0o700)
        var fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return false }
        // Each level: the directory's name in its parent, and its subdirectories still to empty.
        var levels: [(name: String, pending: [String])] = [("", subdirectoriesAfterUnlinking(fd))]
        while var level = levels.popLast() {
            if let child = level.pending.popLast() {
                levels.append(level)
                _ = fchmodat(fd, child, 0o700, 0)
                let inner = openat(fd, child, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                guard inner >= 0 else { continue }  // left in place; rmdir of its parent fails below
                close(fd)
                fd = inner
                levels.append((child, subdirectoriesAfterUnlinking(fd)))
                continue
            }
            guard !levels.isEmpty else { break }
            let parent = openat(fd, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            close(fd)
            guard parent >= 0 else { return false }
            fd = parent
            _ = unlinkat(fd, level.name, AT_REMOVEDIR)
        }
        close(fd)
        return rmdir(path) == 0 || errno == ENOENT
    }

    /// Unlinks every entry of the directory `fd` that is not a directory; returns the names of
    /// those that are.
    private static func subdirectoriesAfterUnlinking(_ fd: Int32) -> [String] {
        let copy = dup(fd)
        guard copy >= 0, let stream = fdopendir(copy) else { return [] }
        defer { closedir(stream) }
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name == "." || name == ".." { continue }
            names.append(name)
        }
        return names.filter { unlinkat(fd, $0, 0) != 0 && (errno == EISDIR || errno == EPERM) }
    }
}

/// An advisory lock on a file (`flock`), held until `unlock` or deinit.
///
/// `flock` locks belong to the open file description, so two krnative processes — or two
/// threads of one that opened the file separately — exclude each other.
public final class FileLock: @unchecked Sendable {
    private var fd: Int32
    public let path: String

    /// Blocks until the exclusive lock on `path` (created if absent) is held. When another process
    /// holds it, `waiting` is told first (as cargo says "Blocking waiting for file lock"): a wait
    /// of minutes is not silence. The holder writes its pid into the file, so the notice names it,
    /// and clears it when it lets go; a pid no process has (a holder that was killed) is not named.
    /// A signal that cancels the run ends the wait (`cannotOpen` with `EINTR`).
    public init(path: String, waiting: (String) -> Void = Reporting.note) throws(FileSystemError) {
        self.path = path
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .cannotOpen(path: path, errno: errno) }
        let code = Self.lockExclusively(fd) { [self] in
            waiting("waiting for \(path): another krnative process\(holder.map { " (pid \($0))" } ?? "") holds its lock")
        }
        guard code == 0 else {
            close(fd)
            throw .cannotOpen(path: path, errno: code)
        }
        let pid = Array("\(getpid())\n".utf8)
        if ftruncate(fd, 0) == 0 { _ = pwrite(fd, pid, pid.count, 0) }
    }

    private init(holding fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    /// What trying the lock of an existing file once, without waiting, found.
    public enum Attempt {
        /// No such file: nobody made the lock (or a cleaner removed it).
        case absent
        /// Another open file holds it: its owner is alive.
        case heldElsewhere
        /// Nobody held it; now this process does.
        case taken(FileLock)
    }

    /// Tries the exclusive lock on `path` once, neither creating the file nor waiting nor writing
    /// a pid into it: how a cleaner tells a living owner's lock from an abandoned one.
    public static func attempt(_ path: String) -> Attempt {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return .absent }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            return .heldElsewhere
        }
        return .taken(FileLock(holding: fd, path: path))
    }

    /// Takes the exclusive `flock` on `fd`, telling `waiting` once when another has held it for
    /// 0.2 s (time for a holder that just took it to write its pid); 0, or the errno that stopped
    /// it (`EINTR` when a signal cancels the run). It polls rather than blocks: the thread that
    /// waits is seldom the one a signal interrupts, and a cancelled run must not wait for
    /// another's lock before it notices.
    static func lockExclusively(_ fd: Int32, waiting: () -> Void) -> Int32 {
        var busyPolls = 0
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            guard code == EWOULDBLOCK || code == EINTR else { return code }
            if Cancellation.requested { return EINTR }
            if code == EWOULDBLOCK {
                busyPolls += 1
                if busyPolls == 4 { waiting() }
            }
            usleep(50_000)
        }
        return 0
    }

    /// The pid the lock's holder wrote into the file, if it is there and a process has it.
    private var holder: Int32? {
        var bytes = [UInt8](repeating: 0, count: 16)
        let count = pread(fd, &bytes, bytes.count, 0)
        guard count > 0,
            let pid = Int32(String(decoding: bytes[..<count], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0,
            kill(pid, 0) == 0 || errno == EPERM
        else { return nil }
        return pid
    }

    public func unlock() {
        guard fd >= 0 else { return }
        _ = ftruncate(fd, 0)  // the pid goes with the lock: the next waiter must not name this process
        flock(fd, LOCK_UN)
        close(fd)
        fd = -1
    }

    deinit { unlock() }
}
