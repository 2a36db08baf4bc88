import Archive
import Foundation
import KrnativeBase
import Store

/// What a build derives from cached things and keeps in a store area by what decides it (a key
/// that covers every byte of it), so that a rebuild copies it instead of making it again. An item
/// is used only while it hashes to the tree hash recorded when it was kept (`Store.intactItem`);
/// keeping one is best effort: a store that cannot take it is reported and the build goes on.
public struct KeptItems: Sendable {
    let store: Store
    let area: Store.Area
    let log: @Sendable (String) -> Void

    public init(store: Store, area: Store.Area, log: @escaping @Sendable (String) -> Void) {
        (self.store, self.area, self.log) = (store, area, log)
    }

    /// `use(item)` of the item kept under `key`, under its lock; nil when there is none (or one
    /// that no longer hashes as recorded, which is quarantined) or when `use` finds it unusable.
    public func restore<T>(_ key: SHA256Digest, _ use: (String) throws -> T?) throws -> T? {
        guard FileSystem.exists(store.item(area, key.hex)) else { return nil }
        let itemLock = try store.lock(area, key.hex)
        defer { itemLock.unlock() }
        guard let item = store.intactItem(area, key.hex, log: log) else { return nil }
        return try use(item)
    }

    /// Keeps what `fill` writes into a new directory as `area/<key>`, whole or not at all.
    public func keep(_ key: SHA256Digest, what: String, _ fill: (String) throws -> Void) {
        let temp = store.item(area, key.hex) + ".tmp-\(getpid())"
        do {
            try FileSystem.createDirectory(store.directory(area))
            let itemLock = try store.lock(area, key.hex)
            defer { itemLock.unlock() }
            FileSystem.remove(temp)
            try FileSystem.createDirectory(temp)
            try fill(temp)
            try store.complete(area, key.hex, from: temp)
        } catch {
            FileSystem.remove(temp)
            log("\(what) was not kept in \(store.directory(area)) for later builds (\(error)); this build goes on")
        }
    }

    /// A key of `what` (its lines, naming what decides it) as the krnative at `executable` makes it.
    public static func key(_ what: String, executable: String) throws -> SHA256Digest {
        SHA256Digest.of(Data("\(what)krnative \(try SHA256Digest.ofExecutable(at: executable).hex)\n".utf8))
    }

    /// Copies `source` to `destination` through a `.partial` beside it: whole or not at all.
    public static func copy(_ source: String, to destination: String) throws {
        let partial = destination + ".partial"
        do {
            _ = try Store.copyHashing(from: source, to: partial)
            try FileSystem.rename(partial, to: destination)
        } catch {
            FileSystem.remove(partial)
            throw error
        }
    }
}

/// The store's packed archives (`packs/<key>`: `archive.tar.xz` and `entries.json`) — the volume,
/// and the runtime a build compiles — by what decides the archive's bytes: the tree's content key
/// (`DeterministicTarXz.contentKey`: every entry's normalised header and content, the epoch, the
/// preset) and the krnative executable that packs. Packing is deterministic, so a rebuild whose
/// tree has that key copies the archive instead of compressing the tree again — the longest
/// stages of a rebuild whose steps are cached.
public struct PackedArchives: Sendable {
    let kept: KeptItems

    public static let archiveName = "archive.tar.xz"
    static let entriesName = "entries.json"

    public init(store: Store, log: @escaping @Sendable (String) -> Void = Reporting.note) {
        kept = KeptItems(store: store, area: .packs, log: log)
    }

    /// The key of a tree with `content` key, as the krnative at `executable` packs it.
    public static func key(content: SHA256Digest, executable: String) throws -> SHA256Digest {
        try KeptItems.key("packed archive v2\ncontent \(content.hex)\n", executable: executable)
    }

    /// The key of `directory` packed by `packer`, as the krnative at `executable` packs it.
    public static func key(of directory: String, packer: DeterministicTarXz, executable: String) throws -> SHA256Digest {
        try key(content: try packer.contentKey(of: directory), executable: executable)
    }

    /// The archive kept under `key`, copied to `output`, and its entries; nil when there is none.
    public func restore(_ key: SHA256Digest, to output: String) throws -> [DeterministicTarXz.Entry]? {
        try kept.restore(key) { item in
            guard let entries = try? DuplicateJSONKey.decode([DeterministicTarXz.Entry].self, from: try FileSystem.readRegularFile(item + "/" + Self.entriesName))
            else { return nil }
            try KeptItems.copy(item + "/" + Self.archiveName, to: output)
            return entries
        }
    }

    /// `directory` packed by `packer` into `output` — copied from the archive kept for its content,
    /// when there is one and `reuse` allows — and its entries; whether it was copied.
    public func pack(
        _ directory: String, with packer: DeterministicTarXz, to output: String, executable: String, reuse: Bool,
        records: [DeterministicTarXz.ContentRecord]? = nil
    ) throws -> (entries: [DeterministicTarXz.Entry], copied: Bool, key: SHA256Digest) {
        let content = try records.map(packer.contentKey(of:)) ?? packer.contentKey(of: directory)
        let key = try Self.key(content: content, executable: executable)
        if reuse, let kept = try restore(key, to: output) { return (kept, true, key) }
        let entries = try packer.pack(directory, to: output)
        keep(output, entries: entries, as: key)
        return (entries, false, key)
    }

    /// Keeps `archive` and its `entries` as `packs/<key>`.
    public func keep(_ archive: String, entries: [DeterministicTarXz.Entry], as key: SHA256Digest) {
        kept.keep(key, what: "the packed archive") { temp in
            _ = try Store.copyHashing(from: archive, to: temp + "/" + Self.archiveName)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            try FileSystem.writeAtomically(try encoder.encode(entries), to: temp + "/" + Self.entriesName)
        }
    }
}
