import Foundation
import KrnativeBase

#if canImport(Glibc)
    import Glibc
#endif

/// Unpacks archives without ever writing outside the destination (docs/design.md §2.4).
///
/// All writes go through one directory fd with `openat`/`mkdirat`/`symlinkat` and `O_NOFOLLOW`, so
/// a symlink planted by an earlier entry cannot redirect a later one. Refused, each naming the
/// archive and the entry: absolute paths, `..`, symlinks and hard links that point outside,
/// writing through a symlink, device nodes, FIFOs and sockets. Owners are ignored (everything
/// belongs to the caller) and setuid, setgid and sticky bits are dropped.
public struct SafeExtractor: Sendable {
    /// Leading path components to remove (1 for a source archive's top directory).
    public var stripComponents: Int

    public init(stripComponents: Int = 0) { self.stripComponents = stripComponents }

    public struct Report: Sendable {
        public var files = 0
        public var directories = 0
        public var links = 0
        public var bytes: Int64 = 0
    }

    /// Extracts `archive` into `destination` (created if needed; it should be empty).
    @discardableResult
    public func extract(_ archive: String, into destination: String) throws(ArchiveError) -> Report {
        do { try FileSystem.createDirectory(destination) } catch {
            throw .cannotWrite(archive: archive, reason: error.description)
        }
        let root = open(destination, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard root >= 0 else { throw .cannotWrite(archive: archive, reason: "cannot open \(destination): \(Self.errorText())") }
        defer { close(root) }
        let reader = try ArchiveReader(path: archive)
        var report = Report()
        while let entry = try reader.next() {
            func reject(_ reason: String) -> ArchiveError { .rejectedEntry(archive: archive, entry: entry.path, reason: reason) }
            guard let normalised = TreeHash.normalise(entry.path, strip: stripComponents) else { continue }
            guard let relative = normalised, !relative.isEmpty else {
                throw reject("absolute path or '..' would write outside \(destination)")
            }
            var components = relative.split(separator: "/").map(String.init)
            let name = components.removeLast()
            let parent = try openDirectory(root, components, create: true, reject: reject)
            defer { if parent != root { close(parent) } }
            switch entry.kind {
            case .directory:
                if mkdirat(parent, name, 0o755) != 0 && errno != EEXIST { throw reject("cannot create directory: \(Self.errorText())") }
                let fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                guard fd >= 0 else { throw reject("a non-directory is in the way (a symlink cannot be written through)") }
                fchmod(fd, mode_t(entry.permissions & 0o777 | 0o700))
                close(fd)
                report.directories += 1
            case .regular:
                unlinkat(parent, name, 0)
                let fd = openat(parent, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
                guard fd >= 0 else { throw reject("cannot create file: \(Self.errorText())") }
                do {
                    try reader.readData(entry: entry.path) { buffer in
                        var offset = 0
                        while offset < buffer.count {
                            let written = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                            if written < 0 {
                                if errno == EINTR { continue }
                                throw reject("cannot write: \(Self.errorText())")
                            }
                            offset += written
                        }
                    }
                } catch let error as ArchiveError {
                    close(fd)
                    throw error
                } catch {
                    close(fd)
                    throw reject("\(error)")
                }
                fchmod(fd, mode_t(entry.permissions & 0o777))
                close(fd)
                report.files += 1
                report.bytes += entry.size
            case .symlink:
                let target = entry.linkTarget ?? ""
                guard !target.hasPrefix("/"), Self.staysInside(target, from: components, root: root) else {
                    throw reject("symlink to '\(target)' points outside \(destination)")
                }
                unlinkat(parent, name, 0)
                guard symlinkat(target, parent, name) == 0 else { throw reject("cannot create symlink: \(Self.errorText())") }
                report.links += 1
            case .hardlink:
                guard let targetPath = entry.linkTarget.flatMap({ TreeHash.normalise($0, strip: stripComponents) ?? nil }),
                    !targetPath.isEmpty
                else {
                    throw reject("hard link to '\(entry.linkTarget ?? "")' points outside \(destination)")
                }
                var targetComponents = targetPath.split(separator: "/").map(String.init)
                let targetName = targetComponents.removeLast()
                let targetParent = try openDirectory(root, targetComponents, create: false, reject: reject)
                defer { if targetParent != root { close(targetParent) } }
                unlinkat(parent, name, 0)
                guard linkat(targetParent, targetName, parent, name, 0) == 0 else {
                    throw reject("hard link to '\(targetPath)', which is not in the archive before it: \(Self.errorText())")
                }
                report.links += 1
            case .other(let mode):
                let kind =
                    switch mode {
                    case 0o020000: "character device"
                    case 0o060000: "block device"
                    case 0o010000: "FIFO"
                    case 0o140000: "socket"
                    default: "special file"
                    }
                throw reject("\(kind) entries are refused")
            }
        }
        return report
    }

    /// Opens (creating) each directory below `root` without following symlinks.
    private func openDirectory(
        _ root: Int32, _ components: [String], create: Bool, reject: (String) -> ArchiveError
    ) throws(ArchiveError) -> Int32 {
        var current = root
        for component in components {
            if create { mkdirat(current, component, 0o755) }
            let next = openat(current, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if current != root { close(current) }
            guard next >= 0 else {
                throw reject(
                    errno == ELOOP || errno == ENOTDIR
                        ? "'\(component)' on its path is a symlink or a file; writing through it is refused"
                        : "cannot open directory '\(component)': \(Self.errorText())")
            }
            current = next
        }
        return current
    }

    /// Whether a relative symlink target, resolved from the link's directory, stays inside. A `..`
    /// that would step back out of a symlink already in the tree is refused too: through a link,
    /// `..` is not the lexical parent.
    static func staysInside(_ target: String, from directory: [String], root: Int32) -> Bool {
        var path = directory
        for part in target.split(separator: "/") where part != "." {
            if part == ".." {
                guard let last = path.popLast() else { return false }
                var info = stat()
                let full = (path + [last]).joined(separator: "/")
                if fstatat(root, full, &info, AT_SYMLINK_NOFOLLOW) == 0, (info.st_mode & S_IFMT) == S_IFLNK { return false }
            } else {
                path.append(String(part))
            }
        }
        return true
    }

    static func errorText() -> String { String(cString: strerror(errno)) }
}
