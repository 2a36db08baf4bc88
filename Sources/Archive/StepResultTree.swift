import Foundation
import KrnativeBase

#if canImport(Glibc)
    import Glibc
#endif

/// What a build step left that the host refuses to follow, read or keep.
public enum StepResultError: KrnativeError {
    /// A directory krnative made for the steps (`/build/src`, `/build/logs`, …) is no longer one.
    case replacedDirectory(maker: String, path: String, inside: String, found: String)
    /// The result, or a directory on the way to it or in it, is not a real directory.
    case notADirectory(maker: String, path: String, found: String)
    /// The result, or the file taken from it, is not there.
    case missing(maker: String, path: String)
    /// A symbolic link that leads outside the result or loops, or any link where a file is taken.
    case refusedLink(maker: String, path: String, target: String, reason: String)
    /// A FIFO, a socket, a device node (or a directory where a file is taken).
    case refusedFile(maker: String, path: String, kind: String)
    case cannotCopy(path: String, reason: String)

    public var description: String {
        switch self {
        case .replacedDirectory(let maker, let path, let inside, let found):
            "\(maker) replaced \(inside == path ? path : "\(inside) (\(path))") with \(found); krnative follows no link a step made, so the build stops here. "
                + "The step's source is hostile or broken: read its log, and remove the work directory before building in it again"
        case .notADirectory(let maker, let path, let found):
            "\(maker) left \(path) as \(found) where its result must be a real directory; krnative follows no link a step made"
        case .missing(let maker, let path):
            "\(maker) left no \(path)"
        case .refusedLink(let maker, let path, let target, let reason):
            "\(maker) left \(path) as a symbolic link to '\(target)', which \(reason); krnative follows no link a step made "
                + "and keeps a link of a step's result only when it resolves inside it"
        case .refusedFile(let maker, let path, let kind):
            "\(maker) left \(path), \(kind); a step's result may hold regular files, directories and links that stay inside it, nothing else"
        case .cannotCopy(let path, let reason):
            "cannot copy \(path): \(reason); check free disk space and permissions"
        }
    }

    public var exitCode: Int32 {
        switch self {
        case .missing: ExitStatus.process
        case .cannotCopy: ExitStatus.store
        case .replacedDirectory, .notADirectory, .refusedLink, .refusedFile: ExitStatus.archive
        }
    }
}

/// A directory tree a build step wrote (its install tree, a runtime's `make install` tree, the
/// volume after the `.pyc` step), which the host takes as untrusted input (docs/design.md §5).
///
/// The tree is reached from `base`, a directory krnative made, through real directories only, and
/// walked through directory descriptors with `O_NOFOLLOW`, never by path: no link a step made is
/// followed. A symbolic link in the tree is kept only when it resolves inside it (the extractor's
/// rule, `SafeExtractor.resolve`); a FIFO, socket or device node is refused. Each refusal names
/// the step, the path and what it is or points to.
public struct StepResultTree: Sendable {
    /// A directory krnative made and no step could replace (the work directory, a staging directory).
    public var base: String
    /// The tree's path below `base`; every component must be a real directory.
    public var relative: String
    /// Who wrote it, for messages: "the zlib step".
    public var maker: String
    /// Where the steps saw the tree (`/build/stage` in the sandbox): an absolute link whose target
    /// lies below it points into the tree (make install's `ln -s /build/stage/deps/bin/bzdiff`),
    /// and is resolved there; any other absolute link points outside.
    public var seenAs: String?

    public init(_ relative: String, in base: String, madeBy maker: String, seenAs: String? = nil) {
        self.base = base
        self.relative = relative
        self.maker = maker
        self.seenAs = seenAs
    }

    /// The tree at `path`, whose parent directories krnative trusts (it made or was given them).
    public init(root path: String, madeBy maker: String) {
        let parent = (path as NSString).deletingLastPathComponent
        self.init((path as NSString).lastPathComponent, in: parent.isEmpty ? "." : parent, madeBy: maker)
    }

    public var path: String { components.isEmpty ? base : base + "/" + components.joined(separator: "/") }

    var components: [String] { relative.split(separator: "/").map(String.init).filter { $0 != "." } }

    /// Refuses the tree unless every link in it resolves inside it and it holds no special file.
    public func check() throws(StepResultError) {
        let root = try openRoot()
        defer { close(root) }
        var none = Found()
        try walk(root, [], root: root, purpose: .check, into: -1, found: &none)
    }

    /// Copies the tree into `destination` (which must not exist; its parent is krnative's): the
    /// regular files with their content and permission bits (setuid and setgid dropped),
    /// directories with their modes and times, links that resolve inside the tree as links.
    /// Whatever it refuses, `destination` is removed and the error names it.
    public func copy(to destination: String) throws(StepResultError) {
        let root = try openRoot()
        defer { close(root) }
        var info = stat()
        guard fstat(root, &info) == 0 else { throw .cannotCopy(path: path, reason: Self.errorText()) }
        guard mkdir(destination, 0o700) == 0 else { throw .cannotCopy(path: destination, reason: Self.errorText()) }
        do throws(StepResultError) {
            let copy = open(destination, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard copy >= 0 else { throw .cannotCopy(path: destination, reason: Self.errorText()) }
            defer { close(copy) }
            var none = Found()
            try walk(root, [], root: root, purpose: .copy, into: copy, found: &none)
            Self.finishDirectory(copy, like: info)
        } catch {
            FileSystem.remove(destination)
            throw error
        }
    }

    /// Copies the regular file `file` of the tree, reached through real directories and itself
    /// no link, to `destination` (whatever is there is replaced, never followed) with `mode`: only
    /// krnative's copy is ever given a mode.
    public func copyFile(_ file: String, to destination: String, mode: mode_t) throws(StepResultError) {
        let root = try openRoot()
        defer { close(root) }
        var names = file.split(separator: "/").map(String.init).filter { $0 != "." }
        guard let name = names.popLast() else { throw .missing(maker: maker, path: path + "/" + file) }
        let shown = path + "/" + file
        let parent = try SafeExtractor.openDirectory(root, names, create: false) { _ in notADirectory(components + names) }
        defer { if parent != root { close(parent) } }
        var info = stat()
        guard fstatat(parent, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else {
            throw errno == ENOENT ? .missing(maker: maker, path: shown) : .cannotCopy(path: shown, reason: Self.errorText())
        }
        switch info.st_mode & S_IFMT {
        case S_IFREG:
            break
        case S_IFLNK:
            throw .refusedLink(
                maker: maker, path: shown, target: SafeExtractor.readLink(parent, name) ?? "", reason: "stands where krnative takes a regular file")
        default:
            throw .refusedFile(maker: maker, path: shown, kind: Self.kind(of: info.st_mode) + " where krnative takes a regular file")
        }
        let directory = (destination as NSString).deletingLastPathComponent
        let target = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard target >= 0 else { throw .cannotCopy(path: destination, reason: Self.errorText()) }
        defer { close(target) }
        let targetName = (destination as NSString).lastPathComponent
        unlinkat(target, targetName, 0)
        try Self.copyRegularFile(name, in: parent, shownAs: shown, to: target, as: targetName, shownAs: destination, mode: mode)
    }

    /// Every regular file of the tree as (path relative to it, contents), sorted by path. Nothing
    /// is read through a link: a link anywhere in the tree, or a special file, is refused.
    public func regularFiles() throws(StepResultError) -> [(path: String, data: Data)] {
        let root = try openRoot()
        defer { close(root) }
        var found = Found()
        try walk(root, [], root: root, purpose: .read, into: -1, found: &found)
        return found.files.sorted { $0.path < $1.path }
    }

    /// What is at `path`, not following it, in words: "a symbolic link to '/etc'", "a regular file", "nothing".
    public static func describe(_ path: String) -> String {
        var info = stat()
        guard lstat(path, &info) == 0 else { return "nothing (it was removed)" }
        if info.st_mode & S_IFMT == S_IFLNK {
            let parent = (path as NSString).deletingLastPathComponent
            let directory = open(parent.isEmpty ? "." : parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            defer { if directory >= 0 { close(directory) } }
            let target = directory >= 0 ? SafeExtractor.readLink(directory, (path as NSString).lastPathComponent) : nil
            return "a symbolic link to '\(target ?? "?")'"
        }
        return kind(of: info.st_mode)
    }

    /// Copies the tree into the directory `destination` (krnative's), over what is there: a
    /// directory of the tree goes into one of the same name, a file or link replaces what stands at
    /// its name (never followed; a directory there is refused). Returns every file and link written,
    /// relative to the tree, and whether it replaced one: the composed stage of a step graph.
    public func merge(into destination: String) throws(StepResultError) -> [(path: String, replaced: Bool)] {
        let root = try openRoot()
        defer { close(root) }
        let target = open(destination, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard target >= 0 else { throw .cannotCopy(path: destination, reason: Self.errorText()) }
        defer { close(target) }
        var found = Found()
        try walk(root, [], root: root, purpose: .merge, into: target, found: &found)
        return found.merged
    }

    // MARK: Walking

    private enum Purpose { case check, copy, merge, read }

    /// What a walk collects: the files read (`read`), the entries written over (`merge`).
    private struct Found {
        var files: [(path: String, data: Data)] = []
        var merged: [(path: String, replaced: Bool)] = []
    }

    /// Opens the tree's root through `base`'s real directories only.
    private func openRoot() throws(StepResultError) -> Int32 {
        let top = open(base, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard top >= 0 else { throw .cannotCopy(path: base, reason: Self.errorText()) }
        guard !components.isEmpty else { return top }
        defer { close(top) }
        return try SafeExtractor.openDirectory(top, components, create: false) { _ in notADirectory(components) }
    }

    /// Why the directories `names` below `base` could not be opened: the first that is missing or no real directory.
    private func notADirectory(_ names: [String]) -> StepResultError {
        for count in 0..<names.count {
            let relative = names.prefix(count + 1).joined(separator: "/")
            guard FileSystem.kind(of: relative, beneath: base) != S_IFDIR else { continue }
            let full = base + "/" + relative
            return FileSystem.exists(full) ? .notADirectory(maker: maker, path: full, found: Self.describe(full)) : .missing(maker: maker, path: full)
        }
        return .cannotCopy(path: path, reason: Self.errorText())
    }

    /// Visits the directory open at `directory`, `relative` below the tree's root (open at `root`):
    /// checks it, copies it into the directory open at `destination`, or reads its files into `files`.
    private func walk(
        _ directory: Int32, _ relative: [String], root: Int32, purpose: Purpose, into destination: Int32, found: inout Found
    ) throws(StepResultError) {
        for name in try names(in: directory, relative) {
            let inner = relative + [name]
            let shown = path + "/" + inner.joined(separator: "/")
            var info = stat()
            guard fstatat(directory, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else { throw .cannotCopy(path: shown, reason: Self.errorText()) }
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                let source = openat(directory, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                guard source >= 0 else { throw .cannotCopy(path: shown, reason: Self.errorText()) }
                defer { close(source) }
                var copy: Int32 = -1
                if purpose == .copy || purpose == .merge {
                    // Merging, the directory may be there already: then it must be a real one.
                    guard mkdirat(destination, name, 0o700) == 0 || (purpose == .merge && errno == EEXIST) else {
                        throw .cannotCopy(path: shown, reason: Self.errorText())
                    }
                    copy = openat(destination, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                    guard copy >= 0 else { throw .cannotCopy(path: shown, reason: "where it goes stands no directory (\(Self.errorText()))") }
                }
                defer { if copy >= 0 { close(copy) } }
                try walk(source, inner, root: root, purpose: purpose, into: copy, found: &found)
                if copy >= 0 { Self.finishDirectory(copy, like: info) }
            case S_IFREG:
                switch purpose {
                case .check: break
                case .copy:
                    try Self.copyRegularFile(name, in: directory, shownAs: shown, to: destination, as: name, shownAs: shown, mode: info.st_mode & 0o777)
                case .merge:
                    found.merged.append((inner.joined(separator: "/"), try Self.clear(name, in: destination, shownAs: shown)))
                    try Self.copyRegularFile(name, in: directory, shownAs: shown, to: destination, as: name, shownAs: shown, mode: info.st_mode & 0o777)
                case .read: found.files.append((inner.joined(separator: "/"), try Self.read(name, in: directory, shownAs: shown)))
                }
            case S_IFLNK:
                let target = SafeExtractor.readLink(directory, name) ?? ""
                if purpose == .read {
                    throw .refusedLink(maker: maker, path: shown, target: target, reason: "is a link where krnative reads regular files only")
                }
                if let problem = SafeExtractor.resolve(inner, root: root, seenAs: seenAs) {
                    throw .refusedLink(maker: maker, path: shown, target: target, reason: "\(problem) \(path)")
                }
                if purpose == .merge { found.merged.append((inner.joined(separator: "/"), try Self.clear(name, in: destination, shownAs: shown))) }
                if purpose == .copy || purpose == .merge, symlinkat(target, destination, name) != 0 {
                    throw .cannotCopy(path: shown, reason: Self.errorText())
                }
            default:
                throw .refusedFile(maker: maker, path: shown, kind: Self.kind(of: info.st_mode))
            }
        }
    }

    /// Removes the file or link at `name` in `directory` (not a directory); whether there was one.
    private static func clear(_ name: String, in directory: Int32, shownAs shown: String) throws(StepResultError) -> Bool {
        if unlinkat(directory, name, 0) == 0 { return true }
        guard errno == ENOENT else { throw .cannotCopy(path: shown, reason: "what stands where it goes cannot be replaced (\(errorText()))") }
        return false
    }

    /// The names in the directory open at `directory`, sorted (so the first refusal is the same on every run).
    private func names(in directory: Int32, _ relative: [String]) throws(StepResultError) -> [String] {
        let listing = openat(directory, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard listing >= 0, let stream = fdopendir(listing) else {
            if listing >= 0 { close(listing) }
            throw .cannotCopy(path: ([path] + relative).joined(separator: "/"), reason: Self.errorText())
        }
        defer { closedir(stream) }
        var names: [String] = []
        while let item = readdir(stream) {
            let name = withUnsafeBytes(of: item.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Copies a regular file, opened without following a link, into a file created new.
    private static func copyRegularFile(
        _ name: String, in directory: Int32, shownAs shown: String, to destination: Int32, as copyName: String, shownAs copyShown: String,
        mode: mode_t
    ) throws(StepResultError) {
        let (source, size) = try openRegular(name, in: directory, shownAs: shown)
        defer { close(source) }
        let copy = openat(destination, copyName, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard copy >= 0 else { throw .cannotCopy(path: copyShown, reason: errorText()) }
        defer { close(copy) }
        // Sized to the file (at most 1 MiB) and not zeroed: a stage has thousands of small files.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(min(max(size, 1), 1 << 20)), alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let count = Glibc.read(source, buffer.baseAddress, buffer.count)
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { throw .cannotCopy(path: shown, reason: errorText()) }
            if count == 0 { break }
            if let failure = FileSystem.writeAll(copy, UnsafeRawBufferPointer(rebasing: buffer[0..<count])) {
                throw .cannotCopy(path: copyShown, reason: String(cString: strerror(failure)))
            }
        }
        guard fchmod(copy, mode) == 0 else { throw .cannotCopy(path: copyShown, reason: errorText()) }
    }

    /// The contents of a regular file, opened without following a link.
    private static func read(_ name: String, in directory: Int32, shownAs shown: String) throws(StepResultError) -> Data {
        let source = try openRegular(name, in: directory, shownAs: shown).fd
        let handle = FileHandle(fileDescriptor: source, closeOnDealloc: true)
        do { return try handle.readToEnd() ?? Data() } catch { throw .cannotCopy(path: shown, reason: FileSystem.reason(error)) }
    }

    /// A regular file opened without following a link, and its size.
    private static func openRegular(_ name: String, in directory: Int32, shownAs shown: String) throws(StepResultError) -> (fd: Int32, size: Int64) {
        // O_NONBLOCK: a FIFO put in the file's place would otherwise block the open.
        let fd = openat(directory, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw .cannotCopy(path: shown, reason: errorText()) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            close(fd)
            throw .cannotCopy(path: shown, reason: "it is no longer a regular file")
        }
        return (fd, Int64(info.st_size))
    }

    /// A copied directory gets its source's mode and times once its entries are in, as Foundation's copy gives it.
    private static func finishDirectory(_ fd: Int32, like info: stat) {
        fchmod(fd, info.st_mode & 0o7777)
        var times = [info.st_atim, info.st_mtim]
        futimens(fd, &times)
    }

    private static func kind(of mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFREG: "a regular file"
        case S_IFDIR: "a directory"
        default: "a " + SafeExtractor.specialFileKind(UInt32(mode & S_IFMT))
        }
    }

    static func errorText() -> String { String(cString: strerror(errno)) }
}
