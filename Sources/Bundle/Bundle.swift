import Archive
import Foundation
import Inputs
import KrnativeBase
import Lock
import Store

#if canImport(Glibc)
    import Glibc
#endif

/// A bundle that cannot be written or admitted, naming the file and entry.
public enum BundleError: KrnativeError {
    /// `selection`: the options that chose the bundle's targets, for the fetch to run first.
    case missingInputs(names: [String], lockPath: String, selection: String)
    case notABundle(file: String, reason: String)
    case badEntry(file: String, entry: String, reason: String)
    case incomplete(file: String, missing: [String])
    /// The bundle's lock is not the local lock: its entries cannot be trusted to be the ones pinned here.
    case lockDiffers(file: String, bundleLock: SHA256Digest, localLock: SHA256Digest, localPath: String, entries: [String])
    /// There is no local lock to check the bundle `file` against (whose own lock has sha256 `bundleLock`).
    case noLocalLock(path: String, file: String, bundleLock: SHA256Digest?)
    /// `--take-lock` would replace a lock that is not the bundle's.
    case lockExists(path: String, file: String, bundleLock: SHA256Digest, localLock: SHA256Digest)

    public var description: String {
        switch self {
        case .missingInputs(let names, let lockPath, let selection):
            "the store lacks \(counted(names.count, "input")) the bundle needs: \(names.joined(separator: ", ")); "
                + "run `krnative fetch --lock \(lockPath) \(selection)` first"
        case .notABundle(let file, let reason):
            "\(file) is not a krnative bundle: \(reason)"
        case .badEntry(let file, let entry, let reason):
            "bundle \(file): entry \(entry) refused: \(reason); nothing from the bundle was admitted"
        case .incomplete(let file, let missing):
            "bundle \(file) lists entries it does not hold: \(missing.joined(separator: ", ")); it was cut short, export it again"
        case .lockDiffers(let file, let bundleLock, let localLock, let localPath, let entries):
            "bundle \(file) was made from a lock with sha256 \(bundleLock), but \(localPath) has sha256 \(localLock)"
                + (entries.isEmpty ? "" : " (entries that differ: \(entries.joined(separator: ", ")))")
                + "; nothing was admitted. Export the bundle again from this lock, or import it with the lock it was made from."
        case .noLocalLock(let path, let file, let bundleLock):
            "bundle import checks every entry against the local lock, and \(path) does not exist; pass --lock FILE (env KRNATIVE_LOCK)"
                + (bundleLock.map {
                    ", or take the lock the bundle carries (sha256 \($0): compare it with the one `bundle export` printed): "
                        + "`krnative bundle import \(file) --take-lock` writes it to \(path)"
                } ?? "")
        case .lockExists(let path, let file, let bundleLock, let localLock):
            "--take-lock writes the lock of \(file) (sha256 \(bundleLock)) to \(path), which holds another lock (sha256 \(localLock)); "
                + "nothing was written. Move it away, or name another path with --lock"
        }
    }
    public var exitCode: Int32 {
        switch self {
        case .missingInputs, .noLocalLock: ExitStatus.missingInput
        case .lockExists: ExitStatus.usage
        default: ExitStatus.integrity
        }
    }
}

/// What a bundle holds: written first in the archive, read first on import.
public struct BundleManifest: Codable, Sendable, Equatable {
    public static let fileName = "krnative-bundle.json"
    public static let lockName = "krnative.lock.json"
    public var formatVersion = 1
    public var lockSha256: SHA256Digest
    public var targets: [Target]
    public var host: HostPlatform
    public var inputs: [LockedInput]
    /// The options of the build the inputs are for (`--target T --toolchain zig --runtime source`),
    /// which `bundle import` says to build with; absent in bundles of krnative 0.x before it.
    public var build: String?
}

/// The air gap (docs/design.md §2.3): one archive with the lock and every store entry a set of targets
/// needs; imported on the other side with every entry verified before it is admitted.
public enum AirGapBundle {
    /// Writes the bundle of `inputs`, the lock's entries the build `build` (its options, for
    /// `targets` on `host`) uses, to `file` (whole or not at all). `fetchOptions`: what fetches
    /// them, said when the store lacks one.
    public static func export(
        _ inputs: [LockedInput], to file: String, lock: Lockfile, lockPath: String, targets: [Target], host: HostPlatform, build: String,
        fetchOptions: String, resolver: InputResolver
    ) throws -> BundleManifest {
        try FileSystem.requireReplaceable(file)
        var inputs = inputs
        let missing = inputs.filter { resolver.located($0) == nil }.map(\.name)
        guard missing.isEmpty else { throw BundleError.missingInputs(names: missing, lockPath: lockPath, selection: fetchOptions) }
        var paths: [String] = []
        for index in inputs.indices {
            let digest = resolver.located(inputs[index])!
            inputs[index].sha256 = digest
            inputs[index].size = FileSystem.size(of: resolver.store.path(for: digest))
            paths.append(try resolver.store.verifiedPath(for: digest))
        }
        let manifest = BundleManifest(lockSha256: lock.digest, targets: targets, host: host, inputs: inputs, build: build)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let temp = file + ".partial"
        FileSystem.remove(temp)
        do {
            let writer = try TarWriter(path: temp, mtime: lock.sourceDateEpoch)
            try writer.add(BundleManifest.fileName, data: try encoder.encode(manifest))
            try writer.add(BundleManifest.lockName, data: lock.encoded())
            var written = Set<SHA256Digest>()
            for (input, path) in zip(inputs, paths) where written.insert(input.sha256!).inserted {
                try writer.add("sha256/\(input.sha256!.hex)", contentsOf: path)
            }
            try writer.close()
            try FileSystem.fsync(path: temp)
            try FileSystem.rename(temp, to: file)
        } catch {
            FileSystem.remove(temp)
            throw error
        }
        return manifest
    }

    /// The lock `file` carries (its bytes and as read), checked against the hash its manifest
    /// records; with `localPath`, a lock already there must be the same (a different one is never
    /// replaced). What it pins is the bundle's word: the caller says so, and writes it only once
    /// the bundle's entries have passed against it.
    public static func carriedLock(of file: String, replacing localPath: String) throws -> (lock: Lockfile, data: Data) {
        let reader = try ArchiveReader(path: file)
        let manifest = try readManifest(reader, file: file)
        let data = try readLock(reader, manifest: manifest, file: file)
        let lock = try Lockfile.parse(data, file: "\(file):\(BundleManifest.lockName)")
        if FileSystem.exists(localPath) {
            let local = try Lockfile.load(from: localPath)
            guard local.digest == lock.digest else {
                throw BundleError.lockExists(path: localPath, file: file, bundleLock: lock.digest, localLock: local.digest)
            }
        }
        return (lock, data)
    }

    /// The sha256 of the lock `file` carries, as its manifest records it; nil when that cannot be read.
    public static func lockSha256(of file: String) -> SHA256Digest? {
        guard let reader = try? ArchiveReader(path: file) else { return nil }
        return (try? readManifest(reader, file: file))?.lockSha256
    }

    public struct ImportReport: Sendable, Codable {
        public var admitted: [String] = []
        public var alreadyPresent: [String] = []
        public var lockSha256: SHA256Digest?
    }

    /// Verifies every member of the bundle `file` against its manifest and `lock` (the local lock,
    /// which the bundle's own lock must equal), then admits them all; any refusal admits nothing.
    public static func importBundle(
        from file: String, lock: Lockfile, lockPath: String, resolver: InputResolver
    ) throws -> (BundleManifest, ImportReport) {
        let reader = try ArchiveReader(path: file)
        let manifest = try readManifest(reader, file: file)
        try checkLock(reader, manifest: manifest, file: file, lock: lock, lockPath: lockPath)
        try checkInputs(manifest, file: file, against: lock)
        var staged = StagedMembers(resolver: resolver)
        defer { staged.discard() }
        var pending = Dictionary(grouping: manifest.inputs, by: { $0.sha256! })
        var seen = Set<String>()
        while let entry = try reader.next() {
            let inputs = try expectedInputs(of: entry, file: file, pending: &pending, seen: &seen)
            try checkSize(of: entry, file: file, for: inputs, against: lock)
            try staged.stage(entry, from: reader, file: file, for: inputs)
        }
        guard pending.isEmpty else {
            throw BundleError.incomplete(file: file, missing: pending.values.flatMap { $0.map(\.name) }.sorted())
        }
        var report = ImportReport(lockSha256: manifest.lockSha256)
        try staged.admitAll(into: &report)
        return (manifest, report)
    }

    private static func readManifest(_ reader: ArchiveReader, file: String) throws -> BundleManifest {
        guard let first = try reader.next(), first.path == BundleManifest.fileName, first.kind == .regular else {
            throw BundleError.notABundle(file: file, reason: "its first entry is not \(BundleManifest.fileName)")
        }
        let data = try readSmall(reader, entry: first, file: file)
        let manifest: BundleManifest
        do { manifest = try DuplicateJSONKey.decode(BundleManifest.self, from: data) } catch let duplicate as DuplicateJSONKey {
            throw BundleError.badEntry(file: file, entry: first.path, reason: duplicate.description)
        } catch {
            throw BundleError.notABundle(file: file, reason: "\(BundleManifest.fileName) cannot be read: \(error)")
        }
        guard manifest.formatVersion == 1 else {
            throw BundleError.notABundle(file: file, reason: "format version \(manifest.formatVersion); this krnative reads 1")
        }
        for input in manifest.inputs where input.sha256 == nil || (input.kind == .source && input.treeSha256 == nil) {
            throw BundleError.notABundle(file: file, reason: "its manifest gives \(input.name) no sha256 (or a source no tree hash)")
        }
        return manifest
    }

    /// The bundle's lock member must hash to what the manifest says and be the local lock, byte for byte as krnative writes it.
    private static func checkLock(_ reader: ArchiveReader, manifest: BundleManifest, file: String, lock: Lockfile, lockPath: String) throws {
        let data = try readLock(reader, manifest: manifest, file: file)
        let found = SHA256Digest.of(data)
        guard found == lock.digest else {
            let theirs = (try? Lockfile.parse(data, file: "\(file):\(BundleManifest.lockName)"))?.inputs ?? []
            let names = Set(theirs.map(\.name)).union(lock.inputs.map(\.name))
            let differing = names.filter { name in theirs.first { $0.name == name } != lock[name] }.sorted()
            throw BundleError.lockDiffers(file: file, bundleLock: found, localLock: lock.digest, localPath: lockPath, entries: differing)
        }
    }

    /// The bundle's second member, its lock, whose hash must be the one its manifest records.
    private static func readLock(_ reader: ArchiveReader, manifest: BundleManifest, file: String) throws -> Data {
        guard let entry = try reader.next(), entry.path == BundleManifest.lockName, entry.kind == .regular else {
            throw BundleError.notABundle(file: file, reason: "its second entry is not \(BundleManifest.lockName)")
        }
        let data = try readSmall(reader, entry: entry, file: file)
        let found = SHA256Digest.of(data)
        guard found == manifest.lockSha256 else {
            throw BundleError.badEntry(
                file: file, entry: entry.path, reason: "it hashes to \(found), but the manifest records the lock \(manifest.lockSha256)")
        }
        return data
    }

    /// Every input the manifest lists must be the local lock's entry of that name, pinned the same way.
    private static func checkInputs(_ manifest: BundleManifest, file: String, against lock: Lockfile) throws {
        for input in manifest.inputs {
            let entry = "\(BundleManifest.fileName): \(input.name)"
            guard let local = lock[input.name], local.kind == input.kind else {
                throw BundleError.badEntry(file: file, entry: entry, reason: "the local lock has no \(input.kind.rawValue) of that name")
            }
            if input.kind == .source, local.treeSha256 != input.treeSha256 {
                throw BundleError.badEntry(
                    file: file, entry: entry,
                    reason: "it pins tree \(input.treeSha256!), the local lock tree \(local.treeSha256.map(\.hex) ?? "none")")
            }
            if input.kind != .source, local.sha256 != input.sha256 {
                throw BundleError.badEntry(
                    file: file, entry: entry, reason: "it pins sha256 \(input.sha256!), the local lock \(local.sha256.map(\.hex) ?? "none")")
            }
        }
    }

    /// The inputs a member holds: a regular file named `sha256/<hex>` that the manifest lists, once.
    private static func expectedInputs(
        of entry: ArchiveEntry, file: String, pending: inout [SHA256Digest: [LockedInput]], seen: inout Set<String>
    ) throws -> [LockedInput] {
        let parts = entry.path.split(separator: "/", omittingEmptySubsequences: false)
        if entry.path.hasPrefix("/") || parts.contains("..") {
            throw BundleError.badEntry(file: file, entry: entry.path, reason: "its path is absolute or climbs out with '..'")
        }
        guard entry.kind == .regular else {
            throw BundleError.badEntry(file: file, entry: entry.path, reason: "it is not a regular file (\(entry.kind)); a bundle holds files only")
        }
        guard seen.insert(entry.path).inserted else {
            throw BundleError.badEntry(file: file, entry: entry.path, reason: "it appears twice")
        }
        guard parts.count == 2, parts[0] == "sha256", let digest = SHA256Digest(hex: String(parts[1])), digest.hex == parts[1],
            let inputs = pending.removeValue(forKey: digest)
        else {
            throw BundleError.badEntry(file: file, entry: entry.path, reason: "the manifest does not list it")
        }
        if let size = inputs[0].size, size != entry.size {
            throw BundleError.badEntry(file: file, entry: entry.path, reason: "it has \(entry.size) bytes, the manifest records \(size)")
        }
        return inputs
    }

    /// The most bytes a member may hold when the lock records no exact size: the fetch cap for such inputs.
    static let unpinnedSizeLimit: Int64 = 1 << 30

    /// The member's header size against the local lock (the manifest's sizes are the bundle's own word):
    /// the size the lock pins, at most twice a source's recorded size (its archive may be re-compressed),
    /// else `unpinnedSizeLimit`. Checked before a byte is written; reading stops at the header size.
    private static func checkSize(of entry: ArchiveEntry, file: String, for inputs: [LockedInput], against lock: Lockfile) throws {
        for input in inputs {
            let recorded = lock[input.name]?.size
            if let recorded, input.kind != .source, entry.size != recorded {
                throw BundleError.badEntry(
                    file: file, entry: entry.path, reason: "it has \(entry.size) bytes, the local lock pins \(recorded) for \(input.name)")
            }
            let limit = recorded.map { 2 * $0 } ?? unpinnedSizeLimit
            guard (0...limit).contains(entry.size) else {
                throw BundleError.badEntry(
                    file: file, entry: entry.path,
                    reason: "it has \(entry.size) bytes, more than the \(limit) the local lock allows for \(input.name)")
            }
        }
    }

    /// The bytes of a small member (manifest, lock): at most 64 MiB.
    private static func readSmall(_ reader: ArchiveReader, entry: ArchiveEntry, file: String) throws -> Data {
        guard entry.size <= 64 << 20 else {
            throw BundleError.badEntry(file: file, entry: entry.path, reason: "\(entry.size) bytes is too large for it")
        }
        var data = Data()
        try reader.readData(entry: entry.path) { data.append(contentsOf: $0) }
        return data
    }
}

/// Members verified and written to the store's `tmp/`, admitted together once every one has passed.
private struct StagedMembers {
    let resolver: InputResolver
    private var staged: [(temp: String?, digest: SHA256Digest, inputs: [LockedInput])] = []

    init(resolver: InputResolver) { self.resolver = resolver }

    /// Copies the member to a temp file (only hashes it when the store has it already) and checks it.
    mutating func stage(_ entry: ArchiveEntry, from reader: ArchiveReader, file: String, for inputs: [LockedInput]) throws {
        let digest = inputs[0].sha256!
        let present = inputs.allSatisfy { resolver.located($0) != nil }
        let temp = present ? nil : resolver.store.temporaryPath("bundle")
        staged.append((temp, digest, inputs))
        let output = try temp.map { path throws(BundleError) in
            guard FileManager.default.createFile(atPath: path, contents: nil), let handle = FileHandle(forWritingAtPath: path) else {
                throw BundleError.badEntry(file: file, entry: entry.path, reason: "cannot create \(path)")
            }
            return handle
        }
        var hasher = StreamingSHA256()
        var size: Int64 = 0
        do {
            try reader.readData(entry: entry.path) { chunk in
                size += Int64(chunk.count)
                guard size <= entry.size else { throw BundleError.badEntry(file: file, entry: entry.path, reason: "longer than its header says") }
                hasher.update(chunk)
                try output?.write(contentsOf: Data(chunk))
            }
            try output?.close()
        } catch {
            try? output?.close()
            throw error as? BundleError ?? BundleError.badEntry(file: file, entry: entry.path, reason: "\(error)")
        }
        let actual = hasher.finalize()
        guard actual == digest else {
            throw BundleError.badEntry(file: file, entry: entry.path, reason: "its content hashes to \(actual), not \(digest)")
        }
        guard let temp else { return }
        for input in inputs {
            guard case .accepted = resolver.check(file: temp, digest: actual, for: input) else {
                let what = input.kind == .source ? "its tree does not match \(input.treeSha256!)" : "its sha256 is \(actual)"
                throw BundleError.badEntry(file: file, entry: entry.path, reason: "\(what) (input \(input.name))")
            }
        }
    }

    /// Admits every staged member; the report names what was admitted and what the store had.
    mutating func admitAll(into report: inout AirGapBundle.ImportReport) throws {
        for (temp, digest, inputs) in staged {
            guard let temp else {
                report.alreadyPresent += inputs.map(\.name)
                continue
            }
            try resolver.admit(temporary: temp, digest: digest, for: inputs[0])
            for input in inputs.dropFirst() where input.kind == .source {
                try resolver.store.recordTree(input.treeSha256!, file: digest)
            }
            report.admitted += inputs.map(\.name)
        }
        staged = []
    }

    /// Removes the temp files of members not admitted.
    func discard() {
        for case let temp? in staged.map(\.temp) { FileSystem.remove(temp) }
    }
}
