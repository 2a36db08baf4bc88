import Archive
import Foundation
import KrnativeBase
import Lock
import Store

/// Maps lock entries to store entries and admits files for them, checking each the way its kind
/// is pinned: sha256 for everything, the tree hash for sources.
public struct InputResolver: Sendable {
    public let store: Store

    public init(store: Store) { self.store = store }

    /// The store entry holding `input`, if there is one.
    public func located(_ input: LockedInput) -> SHA256Digest? {
        if let digest = input.sha256, store.contains(digest) { return digest }
        if input.kind == .source, let tree = input.treeSha256 { return store.file(forTree: tree) }
        return nil
    }

    /// The verified path of `input`'s file (hashed again: the store is re-verified on use).
    public func path(of input: LockedInput) throws(StoreError) -> String? {
        guard let digest = located(input) else { return nil }
        return try store.verifiedPath(for: digest)
    }

    /// The store key for locks and partial files of `input`.
    public func key(for input: LockedInput) -> String {
        if let digest = input.sha256, input.kind != .source { return digest.hex }
        if let tree = input.treeSha256 { return "tree-\(tree.hex)" }
        return input.sha256?.hex ?? input.name
    }

    public enum Verdict: Sendable {
        case accepted
        case wrongFile(expected: SHA256Digest, actual: SHA256Digest)
        case wrongTree(expected: SHA256Digest, actual: SHA256Digest)
        case unreadable(String)
    }

    /// Checks a complete file (digest computed by the caller) against `input`.
    public func check(file path: String, digest: SHA256Digest, for input: LockedInput) -> Verdict {
        if input.kind == .source, let tree = input.treeSha256 {
            // A pinned file hash that matches saves reading the archive; a different file is
            // still the same source when its tree matches (re-compressed archives).
            if input.sha256 == digest, store.file(forTree: tree) == digest { return .accepted }
            do {
                let actual = try TreeHash.ofArchive(at: path)
                return actual == tree ? .accepted : .wrongTree(expected: tree, actual: actual)
            } catch {
                return .unreadable(error.description)
            }
        }
        guard let expected = input.sha256 else { return .unreadable("the lock pins no sha256") }
        return digest == expected ? .accepted : .wrongFile(expected: expected, actual: digest)
    }

    /// Admits a verified temp file (inside the store's `tmp/`) for `input`.
    public func admit(temporary: String, digest: SHA256Digest, for input: LockedInput) throws(StoreError) {
        try store.admit(temporary: temporary, digest: digest)
        if input.kind == .source, let tree = input.treeSha256 {
            try store.recordTree(tree, file: digest)
        }
    }

    /// Copies `file` into the store if it is what `input` pins; returns the verdict.
    public func importFile(_ file: String, for input: LockedInput) throws(StoreError) -> (Verdict, SHA256Digest) {
        let temp = store.temporaryPath("import")
        let digest: SHA256Digest
        do { digest = try Store.copyHashing(from: file, to: temp).0 } catch {
            FileSystem.remove(temp)
            throw .io(error)
        }
        let verdict = check(file: temp, digest: digest, for: input)
        if case .accepted = verdict {
            try admit(temporary: temp, digest: digest, for: input)
        } else {
            FileSystem.remove(temp)
        }
        return (verdict, digest)
    }

    /// The input of `inputs` that `file` is: by sha256, else (for sources) by tree hash.
    public func input(matching file: String, in inputs: [LockedInput]) throws -> (LockedInput?, SHA256Digest) {
        let digest = try SHA256Digest.of(fileAt: file).digest
        if let match = inputs.first(where: { $0.sha256 == digest }) { return (match, digest) }
        let sources = inputs.filter { $0.kind == .source }
        guard !sources.isEmpty, let tree = try? TreeHash.ofArchive(at: file) else { return (nil, digest) }
        return (sources.first { $0.treeSha256 == tree }, digest)
    }
}
