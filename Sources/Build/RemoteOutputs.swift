import Archive
import Fetch
import Foundation
import KrnativeBase
import Lock
import Store

/// Whole builds through the remote cache: `/ac/<build key>` holds the manifest of a build made
/// with that key, and `/cas/` each output it lists. A build whose key the cache knows takes the
/// outputs from there, each hashed against the manifest, the volume's tree checked against the
/// ledger as a local build's is; anything wrong, and the build runs here.
extension VolumeBuild {
    /// The most bytes one output may have when a manifest from the cache says so (a volume is
    /// tens of MB): the manifest is the cache's word, and bounds the downloads.
    static let largestRemoteOutput: Int64 = 4 << 30

    /// The outputs another machine built with this build key, published as a build would; nil on
    /// a miss or anything wrong (said by the cache).
    public func restoreFromRemoteCache(lock: Lockfile) throws -> BuildManifest? {
        guard let cache = settings.remoteCache else { return nil }
        let key = BuildKey.digest(of: try buildKeyParts(lock: lock))
        let what = "the \(request.target.rawValue) build \(key.hex.prefix(12))"
        guard let document = cache.actionResult(key, what: what) else { return nil }
        guard let manifest = try? DuplicateJSONKey.decode(BuildManifest.self, from: document), manifest.buildKey == key,
            manifest.outputs.map(\.file) == names(BuildOutput.listedInTheManifest),
            manifest.outputs.allSatisfy({ $0.size >= 0 && $0.size <= Self.largestRemoteOutput })
        else {
            cache.reject("\(cache.base)/ac/\(key.hex) (\(what)) is not the manifest of this build; ignored")
            return nil
        }
        let stagingDirectory = try StagingDirectory(in: settings.outputDirectory)
        defer { stagingDirectory.remove() }
        let staging = stagingDirectory.path
        for output in manifest.outputs {
            let file = staging + "/" + output.file
            guard cache.content(output.sha256, sizeCap: output.size, what: "\(what): \(output.file)", into: file) != nil else { return nil }
        }
        try FileSystem.writeAtomically(document, to: staging + "/" + name(.manifest))
        // The ledger holds the volume's tree, as for a volume built here.
        var ledgerEntry: VolumeLedger.Entry?
        if settings.ledger != nil {
            let volume = staging + "/volume"
            _ = try SafeExtractor().extract(staging + "/" + name(.volume), into: volume)
            ledgerEntry = try admitToLedger(volume, volume: request.volumeVersion)
            FileSystem.remove(volume)
        }
        try Self.publish(names(BuildOutput.listedInTheManifest), manifest: name(.manifest), from: staging, into: settings.outputDirectory)
        if let ledgerEntry { try record(ledgerEntry) }
        settings.log("\(request.target.rawValue): the outputs of build \(key.hex.prefix(12)) from the remote cache")
        return manifest
    }

    /// Gives the cache this build's outputs (those it lacks), then its manifest under the build
    /// key: the manifest last, so that no reader finds a manifest whose outputs are not there.
    public func uploadToRemoteCache(_ manifest: BuildManifest) throws {
        guard let cache = settings.remoteCache, cache.upload, let key = manifest.buildKey else { return }
        let what = "the \(request.target.rawValue) build \(key.hex.prefix(12))"
        for output in manifest.outputs {
            cache.ensure(file: settings.outputDirectory + "/" + output.file, digest: output.sha256, what: "\(what): \(output.file)")
        }
        guard let document = FileManager.default.contents(atPath: settings.outputDirectory + "/" + name(.manifest)) else { return }
        cache.put(actionResult: document, key: key, what: what)
    }
}
