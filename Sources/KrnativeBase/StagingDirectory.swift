import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A run's private directory beside its outputs, `<parent>/.krnative-staging-<pid>`, with a lock
/// file `<…>.lock` held (flock) for as long as the run lives. Creating one first removes the
/// staging directories whose lock nobody holds: those of runs that were killed.
///
/// With another `prefix` and `unique`, the same for directories a process has several of at once
/// (`<parent>/<prefix><pid>-<random>`: the sandbox's scratch directories).
public final class StagingDirectory: @unchecked Sendable {
    public static let prefix = ".krnative-staging-"
    public let path: String
    private var lockDescriptor: Int32

    /// Creates the directory (and `parent`) with `mode`; throws when it cannot.
    public init(in parent: String, prefix: String = StagingDirectory.prefix, unique: Bool = false, mode: mode_t = 0o755) throws(FileSystemError) {
        try FileSystem.createDirectory(parent)
        Self.removeAbandoned(in: parent, prefix: prefix)
        path = parent + "/" + prefix + "\(getpid())" + (unique ? "-\(UInt64.random(in: 0...UInt64.max))" : "")
        lockDescriptor = try Self.acquire(path + ".lock")
        FileSystem.remove(path)
        guard mkdir(path, mode) == 0 else {
            let code = errno
            unlink(path + ".lock")
            close(lockDescriptor)
            throw .cannotOpen(path: path, errno: code)
        }
    }

    deinit { remove() }

    /// Removes the directory, then releases and removes its lock.
    public func remove() {
        guard lockDescriptor >= 0 else { return }
        FileSystem.remove(path)
        unlink(path + ".lock")
        close(lockDescriptor)
        lockDescriptor = -1
    }

    /// Whether `path` is a staging directory (or its lock) that a living run holds.
    public static func isHeld(_ path: String) -> Bool {
        let lockPath = path.hasSuffix(".lock") ? path : path + ".lock"
        if case .heldElsewhere = FileLock.attempt(lockPath) { return true }
        return false
    }

    /// Removes the staging directories in `parent` whose owner is gone: no lock file (the lock is
    /// made before the directory) or a lock file nobody holds. Returns the paths removed.
    @discardableResult
    public static func removeAbandoned(in parent: String, prefix: String = StagingDirectory.prefix) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? []
        var removed: [String] = []
        for name in names where name.hasPrefix(prefix) && !name.hasSuffix(".lock") {
            let staging = parent + "/" + name
            switch FileLock.attempt(staging + ".lock") {
            case .heldElsewhere: continue
            case .absent: FileSystem.remove(staging)
            case .taken(let lock):
                FileSystem.remove(staging)
                unlink(staging + ".lock")
                lock.unlock()
            }
            removed.append(staging)
        }
        for name in names where name.hasPrefix(prefix) && name.hasSuffix(".lock") && !names.contains(String(name.dropLast(5))) {
            if case .taken(let lock) = FileLock.attempt(parent + "/" + name) {
                unlink(parent + "/" + name)
                lock.unlock()
            }
        }
        return removed
    }

    /// Opens and locks `lockPath`; retries when a cleaner unlinked it while this run waited.
    private static func acquire(_ lockPath: String) throws(FileSystemError) -> Int32 {
        while true {
            let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw .cannotOpen(path: lockPath, errno: errno) }
            let code = FileLock.lockExclusively(fd) {}
            guard code == 0 else {
                close(fd)
                throw .cannotOpen(path: lockPath, errno: code)
            }
            var held = stat(), named = stat()
            if fstat(fd, &held) == 0, stat(lockPath, &named) == 0, held.st_ino == named.st_ino, held.st_dev == named.st_dev {
                return fd
            }
            close(fd)
        }
    }
}
