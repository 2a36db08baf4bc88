import Archive
import Fetch
import Foundation
import KrnativeBase
import Lock
import Store
import Verify

/// Whole builds through the remote cache: `/ac/<build key>` holds a `RemoteBuildRecord` naming
/// the manifest of a build made with that key by its sha256 and size (signed by a trusted key, or
/// it is a miss), and `/cas/` the manifest and each output it lists. A
/// build whose key the cache knows takes the outputs from there, checked whole before anything is
/// published: each hashed against the manifest, the volume's entries against the manifest's
/// listing, the wheel's payload against the outputs, the volume's tree against the ledger as a
/// local build's is; anything wrong is reported, and the build runs here.
extension VolumeBuild {
    /// The most bytes one output may have when a manifest from the cache says so (a volume is
    /// tens of MB): the manifest is the cache's word, and bounds the downloads.
    static let largestRemoteOutput: Int64 = 4 << 30

    /// What `/ac/<build key>` holds: the manifest's place in `/cas/`. The manifest itself grows
    /// with the volume (1.1 MB for a real 4,708-entry volume), so the record only points to it.
    struct RemoteBuildRecord: Codable {
        var manifest: BuildManifest.Output
    }

    /// The outputs another machine built with this build key, published as a build would; nil on
    /// a miss or anything wrong (said by the cache).
    public func restoreFromRemoteCache() throws -> BuildManifest? {
        guard let cache = settings.remoteCache else { return nil }
        let (parts, key) = (plan.keyParts, plan.key)
        let what = "the \(request.target.rawValue) build \(key.hex.prefix(12))"
        guard let recorded = cache.actionResult(key, what: what) else { return nil }
        guard let pointer = try? DuplicateJSONKey.decode(RemoteBuildRecord.self, from: recorded),
            pointer.manifest.size >= 0 && pointer.manifest.size <= Self.largestRemoteOutput
        else {
            cache.reject("\(cache.base)/ac/\(key.hex) (\(what)) is not a record of a build's manifest; ignored")
            return nil
        }
        let stagingDirectory = try StagingDirectory(in: settings.outputDirectory)
        defer { stagingDirectory.remove() }
        let staging = stagingDirectory.path
        let manifestFile = staging + "/" + name(.manifest)
        guard cache.content(pointer.manifest.sha256, sizeCap: pointer.manifest.size, what: "\(what): its manifest", into: manifestFile) != nil,
            let document = try? FileSystem.readRegularFile(manifestFile)
        else { return nil }
        guard let manifest = try? DuplicateJSONKey.decode(BuildManifest.self, from: document), manifest.buildKey == key,
            manifest.buildKeyParts == nil || manifest.buildKeyParts == parts, manifest.request == nil || manifest.request == request.choices,
            manifest.outputs.map(\.file) == names(BuildOutput.listedInTheManifest),
            manifest.outputs.allSatisfy({ $0.size >= 0 && $0.size <= Self.largestRemoteOutput })
        else {
            cache.reject("\(cache.base)/cas/\(pointer.manifest.sha256.hex) (\(what)) is not the manifest of this build; ignored")
            return nil
        }
        for output in manifest.outputs {
            let file = staging + "/" + output.file
            guard cache.content(output.sha256, sizeCap: output.size, what: "\(what): \(output.file)", into: file) != nil else { return nil }
        }
        let ledgerEntry: VolumeLedger.Entry?
        do {
            if let problem = try disagreement(of: manifest, in: staging) {
                cache.reject("\(cache.base)/ac/\(key.hex) (\(what)): \(problem); nothing published, building here")
                return nil
            }
            // The ledger holds the volume's tree, as for a volume built here.
            ledgerEntry = try settings.ledger.flatMap { _ in
                let volume = staging + "/volume"
                defer { FileSystem.remove(volume) }
                _ = try SafeExtractor().extract(staging + "/" + name(.volume), into: volume)
                return try admitToLedger(volume, volume: request.volumeVersion)
            }
        } catch {
            if Cancellation.requested { throw error }
            cache.reject("\(cache.base)/ac/\(key.hex) (\(what)): \(error); nothing published, building here")
            return nil
        }
        try Self.publish(names(BuildOutput.listedInTheManifest), manifest: name(.manifest), from: staging, into: settings.outputDirectory)
        if let ledgerEntry { try record(ledgerEntry) }
        settings.log("\(request.target.rawValue): the outputs of build \(key.hex.prefix(12)) from the remote cache")
        return manifest
    }

    /// What in the outputs staged in `staging` disagrees with `manifest` (their hashes were checked
    /// as they arrived): the volume's entries against the manifest's listing, its ttyd and the
    /// wheel's payload against the outputs, the version files against the request. Nil when they agree.
    func disagreement(of manifest: BuildManifest, in staging: String) throws -> String? {
        struct Entry: Equatable, CustomStringConvertible {
            var kind: String, mode: String?, size: Int64?, sha256: SHA256Digest?, target: String?
            var description: String {
                [kind, mode.map { "mode " + $0 }, size.map { "\($0) bytes" }, sha256.map { "sha256 " + $0.hex }, target.map { "→ " + $0 }]
                    .compactMap { $0 }.joined(separator: ", ")
            }
        }
        // A link's mode is whatever the archive says of links; a hard link's target is a path in the archive.
        func entry(kind: String, mode: String, size: Int64, sha256: SHA256Digest?, target: String?) -> Entry {
            switch kind {
            case "file": Entry(kind: kind, mode: mode, size: size, sha256: sha256, target: nil)
            case "directory": Entry(kind: kind, mode: mode, size: nil, sha256: nil, target: nil)
            case "hardlink": Entry(kind: kind, mode: nil, size: nil, sha256: nil, target: target.map(Listing.normalized))
            default: Entry(kind: kind, mode: nil, size: nil, sha256: nil, target: target)
            }
        }
        var listed: [String: Entry] = [:]
        for item in manifest.volume where !Listing.normalized(item.path).isEmpty {
            listed[Listing.normalized(item.path)] = entry(kind: item.type.rawValue, mode: item.mode, size: item.size, sha256: item.sha256, target: item.target)
        }
        let volume = try Listing.ofArchive(staging + "/" + name(.volume))
        var found: [String: Entry] = [:]
        for (path, file) in volume.files {
            found[path] = entry(kind: file.kind.rawValue, mode: file.mode, size: file.size, sha256: file.sha256, target: file.linkTarget)
        }
        if found != listed {
            let extra = Set(found.keys).subtracting(listed.keys).sorted(), missing = Set(listed.keys).subtracting(found.keys).sorted()
            let changed = Set(found.keys).intersection(listed.keys).filter { found[$0] != listed[$0] }.sorted()
            var said = ["the volume has \(found.count) entries, the manifest lists \(listed.count)"]
            if let path = extra.first { said.append("not listed: \(path) (\(extra.count) in all)") }
            if let path = missing.first { said.append("missing: \(path) (\(missing.count) in all)") }
            if let path = changed.first { said.append("\(path) is \(found[path]!), listed as \(listed[path]!) (\(changed.count) differ)") }
            return said.joined(separator: "; ")
        }
        let hashes = Dictionary(uniqueKeysWithValues: manifest.outputs.map { ($0.file, $0.sha256) })
        // The volume carries ttyd as built (VolumeLayout.placeTtyd copies it).
        guard found["bin/ttyd"]?.sha256 == hashes[name(.ttyd)] else {
            return "the volume's bin/ttyd (sha256 \(found["bin/ttyd"]?.sha256?.hex ?? "-")) is not the \(name(.ttyd)) beside it"
        }
        let wheel = try Listing.ofArchive(staging + "/" + name(.wheel))
        for output in BuildOutput.inWheel {
            let (carried, inWheel) = (name(output), wheelName(output))
            let members = wheel.files.filter { $0.key.hasSuffix("/" + inWheel) }
            guard members.count == 1, let member = members.first else {
                return "the wheel holds \(members.count) files named \(inWheel), not one"
            }
            guard member.value.sha256 == hashes[carried] else {
                return "the wheel's \(member.key) (sha256 \(member.value.sha256?.hex ?? "-")) is not the \(carried) beside it (sha256 \(hashes[carried]?.hex ?? "-"))"
            }
        }
        let expected = [name(.volumeVersion): "\(request.volumeVersion)\n", name(.versions): "\(request.chosenFlavour.distro)\n"]
        for (file, text) in expected.sorted(by: { $0.key < $1.key }) where FileManager.default.contents(atPath: staging + "/" + file) != Data(text.utf8) {
            return "\(file) does not say \(text.trimmingCharacters(in: .newlines))"
        }
        return nil
    }

    /// Gives the cache this build's outputs and its manifest (those it lacks), then the record of
    /// the manifest under the build key: the record last, so that no reader finds a record whose
    /// files are not there.
    public func uploadToRemoteCache(_ manifest: BuildManifest) throws {
        guard let cache = settings.remoteCache, cache.upload, let key = manifest.buildKey else { return }
        let what = "the \(request.target.rawValue) build \(key.hex.prefix(12))"
        for output in manifest.outputs {
            cache.ensure(file: settings.outputDirectory + "/" + output.file, digest: output.sha256, what: "\(what): \(output.file)")
        }
        let manifestFile = settings.outputDirectory + "/" + name(.manifest)
        guard let document = try? FileSystem.readRegularFile(manifestFile) else { return }
        let listed = BuildManifest.Output(file: name(.manifest), sha256: SHA256Digest.of(document), size: Int64(document.count))
        cache.ensure(file: manifestFile, digest: listed.sha256, what: "\(what): its manifest")
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let record = try? encoder.encode(RemoteBuildRecord(manifest: listed)) else { return }
        cache.put(actionResult: record, key: key, what: what)
    }
}
