import Archive
import Fetch
import Foundation
import KrnativeBase
import Store

/// Step results through a remote cache: `/ac/<step key>` holds a `Record` naming a deterministic
/// tar.xz of the step's install tree in `/cas/`. The record counts only when a trusted key signed
/// it for this step key (`RemoteCache.actionResult`; else a miss, reported); the archive is hashed
/// against the record and unpacked by the safe extractor, so a wrong or hostile entry is refused,
/// never half-used, and `steps/` holds nothing from it.
public struct RemoteSteps: Sendable {
    /// What `/ac/<step key>` holds.
    public struct Record: Codable, Sendable {
        public static let currentFormat = "krnative step v1"
        /// The most bytes a step's archive may have (ttyd's whole install tree packs to a few MB).
        public static let largest: Int64 = 1 << 30
        public var format = currentFormat
        public var sha256: SHA256Digest
        public var size: Int64

        public init(sha256: SHA256Digest, size: Int64) {
            self.sha256 = sha256
            self.size = size
        }
    }

    public let cache: RemoteCache
    public let store: Store
    public var log: @Sendable (String) -> Void = Reporting.note

    public init(cache: RemoteCache, store: Store, log: @escaping @Sendable (String) -> Void = Reporting.note) {
        self.cache = cache
        self.store = store
        self.log = log
    }

    /// Brings step `key`'s result from the cache into the step cache (`steps/<key>`, with its
    /// tree-hash record); false on a miss or anything wrong (said, and the step is compiled).
    public func restore(_ key: SHA256Digest, component: String) -> Bool {
        let what = "the \(component) step \(key.hex.prefix(12))"
        guard let document = cache.actionResult(key, what: what) else { return false }
        guard let record = try? DuplicateJSONKey.decode(Record.self, from: document), record.format == Record.currentFormat else {
            cache.reject("\(cache.base)/ac/\(key.hex) (\(what)) is not a krnative step record; ignored")
            return false
        }
        // The record bounds the download, within what a step can be.
        guard record.size > 0, record.size <= Record.largest else {
            cache.reject("\(cache.base)/ac/\(key.hex) (\(what)) claims \(record.size) bytes; a step result is at most \(Record.largest); ignored")
            return false
        }
        guard let archive = cache.content(record.sha256, sizeCap: record.size, what: what) else { return false }
        defer { FileSystem.remove(archive) }
        let unpacked = store.temporaryPath("remote-step")
        defer { FileSystem.remove(unpacked) }
        do {
            _ = try SafeExtractor(limits: .forArchive(recordedSize: record.size)).extract(archive, into: unpacked)
            try FileSystem.createDirectory(store.directory(.steps))
            let itemLock = try store.lock(.steps, key.hex)
            defer { itemLock.unlock() }
            try store.complete(.steps, key.hex, from: unpacked)
        } catch {
            cache.reject("\(cache.base)/cas/\(record.sha256.hex) (\(what)) could not be unpacked: \(error); ignored")
            return false
        }
        return true
    }

    /// The xz preset of a step's archive. A step result is unpacked and checked by its tree hash,
    /// never shipped, so its archive's size matters less than the seconds it costs the uploading
    /// build: preset 1 compresses a step tree about ten times faster than the volume's 6, for
    /// about a fifth more bytes (issue #26). Archives made at any preset restore alike.
    public static let uploadPreset: UInt32 = 1

    /// Puts a step's install tree into the cache when it takes uploads.
    public func upload(_ tree: String, key: SHA256Digest, component: String, epoch: Int64, threads: Int) {
        guard cache.upload else { return }
        let what = "the \(component) step \(key.hex.prefix(12))"
        let archive = store.temporaryPath("step-upload") + ".tar.xz"
        defer { FileSystem.remove(archive) }
        do {
            var packer = DeterministicTarXz(sourceDateEpoch: epoch, threads: threads)
            packer.preset = Self.uploadPreset
            _ = try packer.pack(tree, to: archive)
            let (digest, size) = try SHA256Digest.of(fileAt: archive)
            cache.put(file: archive, digest: digest, what: what)
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            cache.put(actionResult: try encoder.encode(Record(sha256: digest, size: size)), key: key, what: what)
        } catch {
            log("remote cache: cannot pack \(what) for upload: \(error)")
        }
    }
}
