import Foundation
import KrnativeBase

#if canImport(Glibc)
    import Glibc
#endif

/// A store problem, with the entry and the fix.
public enum StoreError: KrnativeError {
    case corrupted(path: String, expected: SHA256Digest, actual: SHA256Digest, quarantinedAt: String)
    case sizeMismatch(path: String, expected: Int64, actual: Int64, quarantinedAt: String)
    case missing(digest: SHA256Digest)
    case io(FileSystemError)

    public var description: String {
        switch self {
        case .corrupted(let path, let expected, let actual, let quarantine):
            "store entry \(path) is corrupted: expected sha256 \(expected), found \(actual); "
                + "moved to \(quarantine). Run `krnative fetch` (or `krnative store import FILE`) to get it again."
        case .sizeMismatch(let path, let expected, let actual, let quarantine):
            "\(path) has \(actual) bytes where \(expected) were expected; moved to \(quarantine)"
        case .missing(let digest):
            "the store has no entry sha256 \(digest)"
        case .io(let error):
            error.description
        }
    }
    public var exitCode: Int32 {
        switch self {
        case .missing: ExitStatus.missingInput
        case .io: ExitStatus.store
        case .corrupted, .sizeMismatch: ExitStatus.integrity
        }
    }
}

/// The content-addressed input store (docs/design.md §2.2).
///
/// Layout under `root`:
/// - `sha256/<hex>`: admitted files, read-only, named by their digest;
/// - `trees/<tree-hex>`: for sources, the digest of the file whose unpacked tree has that tree hash;
/// - `tmp/`: ingests in progress and `<key>.partial` downloads that a later run resumes;
/// - `locks/<key>.lock`: per-entry `flock`s, so concurrent krnative processes never fetch or admit twice;
/// - `quarantine/`: files that failed verification, kept for inspection, named `<name>.found-<sha256>.<time>`;
/// - `steps/`, `toolchains/`, `zig-cache/`, `sysroots/`: derived from inputs (`Store.Area`); a step
///   result or unpacked toolchain has its tree hash beside it (`<item>.tree-sha256`, `treeHashRecord`).
///
/// Every admission writes a temp file while hashing it, verifies size and digest, fsyncs and renames.
public struct Store: Sendable {
    public let root: String

    /// Opens (creating if needed) the store at `root`.
    public init(root: String) throws(StoreError) {
        self.root = root
        for directory in ["sha256", "trees", "tmp", "locks", "quarantine"] {
            do { try FileSystem.createDirectory(root + "/" + directory) } catch { throw .io(error) }
        }
    }

    /// `--store`, else `KRNATIVE_STORE`, else `$XDG_CACHE_HOME/krnative/store`, else `~/.cache/krnative/store`.
    public static func defaultRoot(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let explicit = environment["KRNATIVE_STORE"], !explicit.isEmpty { return explicit }
        return cacheDirectory(environment: environment) + "/store"
    }

    /// krnative's own directory of this user's cache, `$XDG_CACHE_HOME/krnative`, else
    /// `~/.cache/krnative`: the default store is in it, and what is this machine's and not content
    /// (the remote cache's signing key).
    public static func cacheDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let cache = environment["XDG_CACHE_HOME"], cache.hasPrefix("/") { return cache + "/krnative" }
        let home = environment["HOME"] ?? NSHomeDirectory()
        return home + "/.cache/krnative"
    }

    public func path(for digest: SHA256Digest) -> String { "\(root)/sha256/\(digest.hex)" }
    public func contains(_ digest: SHA256Digest) -> Bool { FileSystem.exists(path(for: digest)) }

    /// The path of a partial download of `key` that a later run may resume.
    public func partialPath(for key: String) -> String { "\(root)/tmp/\(key).partial" }

    /// A new temp path inside the store's file system, so admission is a rename.
    public func temporaryPath(_ hint: String) -> String {
        "\(root)/tmp/\(hint).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).tmp"
    }

    /// Takes the exclusive lock for `key` (a digest or `tree-<hex>`), blocking while another holds it.
    public func lock(_ key: String) throws(StoreError) -> FileLock {
        do { return try FileLock(path: "\(root)/locks/\(key).lock") } catch { throw .io(error) }
    }

    /// The entry's path after hashing it again; a corrupted entry is quarantined and reported.
    public func verifiedPath(for digest: SHA256Digest) throws(StoreError) -> String {
        let path = path(for: digest)
        guard FileSystem.exists(path) else { throw .missing(digest: digest) }
        let actual: SHA256Digest
        do { actual = try SHA256Digest.of(fileAt: path).digest } catch { throw .io(error) }
        guard actual == digest else {
            let quarantined = quarantine(path, reason: "found-\(actual.hex)")
            throw .corrupted(path: path, expected: digest, actual: actual, quarantinedAt: quarantined)
        }
        return path
    }

    /// Moves a file or tree that failed verification out of the way; returns where it went. A
    /// tree's directories are made writable first (moving a directory rewrites its `..`, and it can
    /// then be removed by hand); the move is dated, so gc counts the quarantine's age from now.
    @discardableResult
    public func quarantine(_ path: String, reason: String) -> String {
        let destination = "\(root)/quarantine/\((path as NSString).lastPathComponent).\(reason).\(Int(Date().timeIntervalSince1970))"
        Self.makeDirectoriesWritable(path)
        if Glibc.rename(path, destination) == 0 {
            _ = utimensat(AT_FDCWD, destination, nil, AT_SYMLINK_NOFOLLOW)
        } else {
            FileSystem.removeTree(path)
        }
        return destination
    }

    /// Admits a complete temp file (inside `tmp/`) whose digest the caller computed while writing it.
    /// The file becomes read-only and appears under `sha256/` by rename; a concurrent copy already
    /// there wins and the temp file is dropped.
    @discardableResult
    public func admit(temporary: String, digest: SHA256Digest) throws(StoreError) -> String {
        let destination = path(for: digest)
        chmod(temporary, 0o444)
        do {
            try FileSystem.fsync(path: temporary)
            if FileSystem.exists(destination) {
                unlink(temporary)
            } else {
                try FileSystem.rename(temporary, to: destination)
            }
        } catch { throw .io(error) }
        return destination
    }

    /// Copies a file into the store, hashing while it copies, and admits it when the digest
    /// (and size, when given) match. A mismatch leaves nothing in the store.
    @discardableResult
    public func ingest(
        copying source: String, expected: SHA256Digest? = nil, expectedSize: Int64? = nil
    ) throws(StoreError) -> (digest: SHA256Digest, size: Int64) {
        let temp = temporaryPath("ingest")
        let (digest, size): (SHA256Digest, Int64)
        do { (digest, size) = try Self.copyHashing(from: source, to: temp) } catch {
            unlink(temp)
            throw .io(error)
        }
        if let expected, expected != digest {
            let quarantined = quarantine(temp, reason: "found-\(digest.hex)")
            throw .corrupted(path: source, expected: expected, actual: digest, quarantinedAt: quarantined)
        }
        if let expectedSize, expectedSize != size {
            let quarantined = quarantine(temp, reason: "size")
            throw .sizeMismatch(path: source, expected: expectedSize, actual: size, quarantinedAt: quarantined)
        }
        try admit(temporary: temp, digest: digest)
        return (digest, size)
    }

    /// Copies a file, hashing the bytes as they pass; returns digest and size.
    public static func copyHashing(from source: String, to destination: String) throws(FileSystemError) -> (SHA256Digest, Int64) {
        let input = try FileSystem.openRegularFile(source)
        defer { close(input) }
        let output = open(destination, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard output >= 0 else { throw .cannotOpen(path: destination, errno: errno) }
        defer { close(output) }
        var hasher = StreamingSHA256()
        do {
            let size = try FileSystem.readBlocks(input) { block in
                hasher.update(block)
                if let failed = FileSystem.writeAll(output, block) { throw FileSystemError.cannotWrite(path: destination, errno: failed) }
            }
            return (hasher.finalize(), size)
        } catch let error as FileSystemError {
            throw error
        } catch {
            throw .cannotRead(path: source, reason: FileSystem.reason(error))
        }
    }

    // MARK: Source tree index

    /// Records that the file `digest` unpacks to the tree `tree`.
    public func recordTree(_ tree: SHA256Digest, file digest: SHA256Digest) throws(StoreError) {
        do { try FileSystem.writeAtomically(Data((digest.hex + "\n").utf8), to: "\(root)/trees/\(tree.hex)") } catch {
            throw .io(error)
        }
    }

    /// The file known to unpack to `tree`, if the store has one.
    public func file(forTree tree: SHA256Digest) -> SHA256Digest? {
        guard let text = try? String(contentsOfFile: "\(root)/trees/\(tree.hex)", encoding: .utf8),
            let digest = SHA256Digest(hex: text.trimmingCharacters(in: .whitespacesAndNewlines)),
            contains(digest)
        else { return nil }
        return digest
    }

    // MARK: Listing

    public struct Entry: Sendable, Codable {
        public var sha256: SHA256Digest
        public var size: Int64
        /// Tree hashes recorded for this file (sources).
        public var trees: [SHA256Digest]
    }

    /// Every admitted entry, sorted by digest.
    public func entries() -> [Entry] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root + "/sha256")) ?? []
        var trees: [SHA256Digest: [SHA256Digest]] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: root + "/trees")) ?? [] {
            guard let tree = SHA256Digest(hex: name),
                let text = try? String(contentsOfFile: "\(root)/trees/\(name)", encoding: .utf8),
                let file = SHA256Digest(hex: text.trimmingCharacters(in: .whitespacesAndNewlines))
            else { continue }
            trees[file, default: []].append(tree)
        }
        return names.compactMap(SHA256Digest.init(hex:)).sorted().map { digest in
            Entry(sha256: digest, size: FileSystem.size(of: path(for: digest)) ?? 0, trees: (trees[digest] ?? []).sorted())
        }
    }
}
