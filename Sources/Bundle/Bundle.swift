import Archive
import Fetch
import Foundation
import KrnativeBase
import Lock
import Store

#if canImport(Glibc)
    import Glibc
#endif

/// A bundle that cannot be written or admitted, naming the file and entry.
public enum BundleError: KrnativeError {
    case missingInputs(names: [String], lockPath: String)
    case notABundle(file: String, reason: String)
    case badEntry(file: String, entry: String, reason: String)
    case incomplete(file: String, missing: [String])

    public var description: String {
        switch self {
        case .missingInputs(let names, let lockPath):
            "the store lacks \(names.count) input(s) the bundle needs: \(names.joined(separator: ", ")); "
                + "run `krnative fetch --lock \(lockPath) --target …` first"
        case .notABundle(let file, let reason):
            "\(file) is not a krnative bundle: \(reason)"
        case .badEntry(let file, let entry, let reason):
            "bundle \(file): entry \(entry) refused: \(reason); nothing was admitted for it"
        case .incomplete(let file, let missing):
            "bundle \(file) lists entries it does not hold: \(missing.joined(separator: ", ")); it was cut short, export it again"
        }
    }
    public var exitCode: Int32 {
        switch self {
        case .missingInputs: ExitStatus.missingInput
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
}

/// The air gap (docs/design.md §2.3): one archive with the lock and every store entry a set of targets
/// needs; imported on the other side with every entry verified before it is admitted.
public enum AirGapBundle {
    /// Writes the bundle for `targets` built on `host` to `file` (whole or not at all).
    public static func export(
        to file: String, lock: Lockfile, lockPath: String, targets: [Target], host: HostPlatform, resolver: InputResolver
    ) throws -> BundleManifest {
        var inputs = lock.inputs(for: targets, host: host)
        let missing = inputs.filter { resolver.located($0) == nil }.map(\.name)
        guard missing.isEmpty else { throw BundleError.missingInputs(names: missing, lockPath: lockPath) }
        var paths: [String] = []
        for index in inputs.indices {
            let digest = resolver.located(inputs[index])!
            inputs[index].sha256 = digest
            inputs[index].size = FileSystem.size(of: resolver.store.path(for: digest))
            paths.append(try resolver.store.verifiedPath(for: digest))
        }
        let manifest = BundleManifest(lockSha256: lock.digest, targets: targets, host: host, inputs: inputs)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let temp = file + ".partial"
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

    public struct ImportReport: Sendable, Codable {
        public var admitted: [String] = []
        public var alreadyPresent: [String] = []
        public var lockSha256: SHA256Digest?
    }

    /// Verifies and admits every entry of the bundle `file` into the store.
    public static func importBundle(from file: String, resolver: InputResolver) throws -> (BundleManifest, ImportReport) {
        let reader = try ArchiveReader(path: file)
        guard let first = try reader.next(), first.path == BundleManifest.fileName else {
            throw BundleError.notABundle(file: file, reason: "its first entry is not \(BundleManifest.fileName)")
        }
        var manifestData = Data()
        try reader.readData(entry: first.path) { manifestData.append(contentsOf: $0) }
        let manifest: BundleManifest
        do { manifest = try JSONDecoder().decode(BundleManifest.self, from: manifestData) } catch {
            throw BundleError.notABundle(file: file, reason: "\(BundleManifest.fileName) cannot be read: \(error)")
        }
        guard manifest.formatVersion == 1 else {
            throw BundleError.notABundle(file: file, reason: "format version \(manifest.formatVersion); this krnative reads 1")
        }
        for input in manifest.inputs where input.sha256 == nil || (input.kind == .source && input.treeSha256 == nil) {
            throw BundleError.notABundle(file: file, reason: "its manifest gives \(input.name) no sha256 (or a source no tree hash)")
        }
        var report = ImportReport(lockSha256: manifest.lockSha256)
        var pending = Dictionary(grouping: manifest.inputs, by: { $0.sha256! })
        while let entry = try reader.next() {
            guard entry.path.hasPrefix("sha256/") else { continue }
            guard let digest = SHA256Digest(hex: String(entry.path.dropFirst("sha256/".count))),
                let inputs = pending.removeValue(forKey: digest)
            else {
                throw BundleError.badEntry(file: file, entry: entry.path, reason: "the manifest does not list it")
            }
            if inputs.allSatisfy({ resolver.located($0) != nil }) {
                report.alreadyPresent += inputs.map(\.name)
                continue
            }
            let temp = resolver.store.temporaryPath("bundle")
            var hasher = StreamingSHA256()
            guard let output = FileHandle(forWritingAtPath: temp) ?? {
                FileManager.default.createFile(atPath: temp, contents: nil)
                return FileHandle(forWritingAtPath: temp)
            }() else {
                throw BundleError.badEntry(file: file, entry: entry.path, reason: "cannot create \(temp)")
            }
            do {
                try reader.readData(entry: entry.path) { chunk in
                    hasher.update(chunk)
                    try output.write(contentsOf: Data(chunk))
                }
                try output.close()
            } catch {
                try? output.close()
                FileSystem.remove(temp)
                throw BundleError.badEntry(file: file, entry: entry.path, reason: "\(error)")
            }
            let actual = hasher.finalize()
            guard actual == digest else {
                FileSystem.remove(temp)
                throw BundleError.badEntry(file: file, entry: entry.path, reason: "its content hashes to \(actual)")
            }
            for input in inputs {
                guard case .accepted = resolver.check(file: temp, digest: actual, for: input) else {
                    FileSystem.remove(temp)
                    let what = input.kind == .source ? "its tree does not match \(input.treeSha256!)" : "its sha256 is \(actual)"
                    throw BundleError.badEntry(file: file, entry: entry.path, reason: "\(what) (input \(input.name))")
                }
            }
            try resolver.admit(temporary: temp, digest: actual, for: inputs[0])
            for input in inputs.dropFirst() where input.kind == .source {
                try resolver.store.recordTree(input.treeSha256!, file: actual)
            }
            report.admitted += inputs.map(\.name)
        }
        guard pending.isEmpty else {
            throw BundleError.incomplete(file: file, missing: pending.values.flatMap { $0.map(\.name) }.sorted())
        }
        return (manifest, report)
    }
}
