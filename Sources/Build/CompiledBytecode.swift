import Archive
import Compile
import Foundation
import KrnativeBase
import Store

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
