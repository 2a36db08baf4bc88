import Archive
import Foundation
import KrnativeBase
import Store

/// What a build derives from cached things and keeps in a store area by what decides it (a key
/// that covers every byte of it), so that a rebuild copies it instead of making it again. An item
/// is used only while it hashes to the tree hash recorded when it was kept (`Store.intactItem`);
/// keeping one is best effort: a store that cannot take it is reported and the build goes on.
struct KeptItems: Sendable {
    let store: Store
    let area: Store.Area
    let log: @Sendable (String) -> Void

    /// `use(item)` of the item kept under `key`, under its lock; nil when there is none (or one
    /// that no longer hashes as recorded, which is quarantined) or when `use` finds it unusable.
    func restore<T>(_ key: SHA256Digest, _ use: (String) throws -> T?) throws -> T? {
        guard FileSystem.exists(store.item(area, key.hex)) else { return nil }
        let itemLock = try store.lock(area, key.hex)
        defer { itemLock.unlock() }
        guard let item = store.intactItem(area, key.hex, log: log) else { return nil }
        return try use(item)
    }

    /// Keeps what `fill` writes into a new directory as `area/<key>`, whole or not at all.
    func keep(_ key: SHA256Digest, what: String, _ fill: (String) throws -> Void) {
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
    static func key(_ what: String, executable: String) throws -> SHA256Digest {
        SHA256Digest.of(Data("\(what)krnative \(try SHA256Digest.ofExecutable(at: executable).hex)\n".utf8))
    }

    /// Copies `source` to `destination` through a `.partial` beside it: whole or not at all.
    static func copy(_ source: String, to destination: String) throws {
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

/// The store's packed volumes (`packs/<key>`: `volume.tar.xz` and `entries.json`), by what decides
/// the archive's bytes: the volume tree's content key (`DeterministicTarXz.contentKey`: every
/// entry's normalised header and content, the epoch, the preset) and the krnative executable that
/// packs. Packing is deterministic, so a rebuild whose tree has that key copies the archive
/// instead of compressing the tree again — the longest stage of a rebuild whose steps are cached.
public struct PackedVolumes: Sendable {
    let kept: KeptItems

    public static let archiveName = "volume.tar.xz"
    static let entriesName = "entries.json"

    public init(store: Store, log: @escaping @Sendable (String) -> Void = Reporting.note) {
        kept = KeptItems(store: store, area: .packs, log: log)
    }

    /// The key of a tree with `content` key, as the krnative at `executable` packs it.
    public static func key(content: SHA256Digest, executable: String) throws -> SHA256Digest {
        try KeptItems.key("packed volume v1\ncontent \(content.hex)\n", executable: executable)
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

    /// Keeps `archive` and its `entries` as `packs/<key>`.
    public func keep(_ archive: String, entries: [DeterministicTarXz.Entry], as key: SHA256Digest) {
        kept.keep(key, what: "the packed volume") { temp in
            _ = try Store.copyHashing(from: archive, to: temp + "/" + Self.archiveName)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            try FileSystem.writeAtomically(try encoder.encode(entries), to: temp + "/" + Self.entriesName)
        }
    }
}

/// The `.pyc` a volume's bytecode stage added (`bytecode/<key>/tree`: the `__pycache__` files at
/// their paths), by what decides them: the tree before the stage (its content key), the
/// interpreter that compiles (`identity`), the epoch (in the content key) and the krnative
/// executable, which holds the compile command. Kept only when the stage added `__pycache__`
/// directories and `.pyc` files in them and changed nothing else (a wheel's `.pth` runs in it).
public struct CompiledBytecode: Sendable {
    let kept: KeptItems

    public init(store: Store, log: @escaping @Sendable (String) -> Void = Reporting.note) {
        kept = KeptItems(store: store, area: .bytecode, log: log)
    }

    public static func key(before: SHA256Digest, compiler identity: String, executable: String) throws -> SHA256Digest {
        try KeptItems.key("compiled bytecode v1\nbefore \(before.hex)\ncompiler \(identity)\n", executable: executable)
    }

    /// What the stage added, going from `before` to `after` — when that is all it did: only new
    /// `__pycache__` directories and `.pyc` files in them, every earlier entry as it was; else nil.
    public static func added(before: [DeterministicTarXz.ContentRecord], after: [DeterministicTarXz.ContentRecord]) -> [DeterministicTarXz.ContentRecord]? {
        let earlier = Dictionary(before.map { ($0.path, $0.line) }, uniquingKeysWith: { first, _ in first })
        var added: [DeterministicTarXz.ContentRecord] = []
        for record in after {
            if let line = earlier[record.path] {
                guard line == record.line else { return nil }
                continue
            }
            let path = record.path as NSString
            let isCacheDirectory = path.lastPathComponent == "__pycache__" && record.line.hasPrefix("directory ")
            let isBytecode = (path.deletingLastPathComponent as NSString).lastPathComponent == "__pycache__" && path.pathExtension == "pyc"
                && record.line.hasPrefix("file ")
            guard isCacheDirectory || isBytecode else { return nil }
            added.append(record)
        }
        return before.count + added.count == after.count ? added : nil
    }

    /// Copies the `.pyc` kept under `key` into `prefix`, all or none; false when there are none
    /// kept, or when one would not land as a new file in a real directory of the tree: a link on
    /// the way (`lib64 -> lib`, or one that leads out) is never written through, and the `.pyc`
    /// are compiled instead.
    public func restore(_ key: SHA256Digest, into prefix: String) throws -> Bool {
        try kept.restore(key) { item -> Bool? in
            let tree = item + "/tree"
            let entries = (FileManager.default.enumerator(atPath: tree)?.allObjects as? [String] ?? []).sorted()
                .map { (relative: $0, isDirectory: FileSystem.isDirectory(tree + "/" + $0)) }
            var made: Set<String> = []
            for entry in entries {
                let parent = (entry.relative as NSString).deletingLastPathComponent
                guard parent.isEmpty || made.contains(parent) || FileSystem.kind(of: parent, beneath: prefix) == S_IFDIR else { return nil }
                switch FileSystem.kind(of: entry.relative, beneath: prefix) {
                case nil where !FileSystem.exists(prefix + "/" + entry.relative): if entry.isDirectory { made.insert(entry.relative) }
                case S_IFDIR? where entry.isDirectory: continue
                default: return nil
                }
            }
            for entry in entries where !(entry.isDirectory && !made.contains(entry.relative)) {
                let destination = prefix + "/" + entry.relative
                if entry.isDirectory { try FileSystem.createDirectory(destination) } else { try KeptItems.copy(tree + "/" + entry.relative, to: destination) }
            }
            return true
        } ?? false
    }

    /// Keeps the files of `added` (from `prefix`) as `bytecode/<key>`.
    public func keep(_ added: [DeterministicTarXz.ContentRecord], from prefix: String, as key: SHA256Digest) {
        kept.keep(key, what: "the compiled .pyc") { temp in
            for record in added {
                let relative = String(record.path.dropFirst(2))
                if record.line.hasPrefix("directory ") {
                    try FileSystem.createDirectory(temp + "/tree/" + relative)
                } else {
                    _ = try Store.copyHashing(from: prefix + "/" + relative, to: temp + "/tree/" + relative)
                }
            }
        }
    }
}
