import Archive
import Foundation
import KrnativeBase

/// `krunner-volumes.json`: what each volume number holds, per distro and arch — the tree hash
/// (docs/tree-hash.md) of the volume built under it. The agent unpacks a volume into
/// `backendai-krunner.v{N}.{arch}.{distro}` and skips the extraction when that directory exists,
/// so a number reused with other contents is never used on a host that has the old one.
public struct VolumeLedger: Codable, Sendable, Equatable {
    public struct Entry: Codable, Sendable, Equatable {
        public var distro: String
        public var arch: String
        public var volume: Int
        public var treeSha256: String

        public init(distro: String, arch: String, volume: Int, treeSha256: String) {
            self.distro = distro
            self.arch = arch
            self.volume = volume
            self.treeSha256 = treeSha256
        }
    }

    public var format = 1
    /// Per distro, the highest number the published packages used (Lablup's static-gnu 4.4.0: 14,
    /// alpine 5.4.0: 12): a number at or below it is taken, whatever it held.
    public var published: [String: Int]
    public var volumes: [Entry]

    public static let defaultFileName = "krunner-volumes.json"

    public init(published: [String: Int], volumes: [Entry] = []) {
        self.published = published
        self.volumes = volumes
    }

    /// The ledger beside a `krunner.json`.
    public static func path(besideConfig config: String) -> String {
        let directory = (config as NSString).deletingLastPathComponent
        return directory.isEmpty ? defaultFileName : directory + "/" + defaultFileName
    }

    public static func load(from path: String) throws(VolumeLedgerError) -> VolumeLedger {
        guard let data = try? FileSystem.readRegularFile(path) else { throw .unreadable(path: path, reason: FileSystem.whyUnreadable(path)) }
        let ledger: VolumeLedger
        do { ledger = try DuplicateJSONKey.decode(VolumeLedger.self, from: data) } catch { throw .unreadable(path: path, reason: "\(error)") }
        guard ledger.format == 1 else { throw .unreadable(path: path, reason: "format \(ledger.format); this krnative reads format 1") }
        return ledger
    }

    /// Writes the ledger whole (a temporary file renamed into place), entries in order.
    public func write(to path: String) throws {
        var sorted = self
        sorted.volumes.sort { ($0.distro, $0.arch, $0.volume) < ($1.distro, $1.arch, $1.volume) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try FileSystem.writeAtomically(try encoder.encode(sorted) + Data("\n".utf8), to: path)
    }

    public func entry(distro: String, arch: String, volume: Int) -> Entry? {
        volumes.first { $0.distro == distro && $0.arch == arch && $0.volume == volume }
    }

    /// The number after every number this distro has used, published or recorded.
    public func nextFree(distro: String) -> Int {
        max(published[distro] ?? 0, volumes.filter { $0.distro == distro }.map(\.volume).max() ?? 0) + 1
    }

    /// Before building: `volume` must be above the published numbers and recorded for `target`,
    /// or `record` asked for.
    public func preflight(target: Target, flavour: Flavour, volume: Int, record: Bool, path: String) throws(VolumeLedgerError) {
        let (distro, arch) = (flavour.distro, target.arch.rawValue)
        if let published = published[distro], volume <= published {
            throw .published(distro: distro, volume: volume, published: published, next: nextFree(distro: distro), path: path)
        }
        if !record, entry(distro: distro, arch: arch, volume: volume) == nil {
            throw .unrecorded(distro: distro, arch: arch, volume: volume, built: nil, path: path)
        }
    }

    /// Whether `target`'s volume numbered `volume` with tree hash `tree` may be built: it must
    /// pass `preflight`, and a recorded number must hold this tree. Returns the entry to add
    /// (nil when it is already there).
    public func admit(target: Target, flavour: Flavour, volume: Int, tree: SHA256Digest, record: Bool, path: String) throws(VolumeLedgerError) -> Entry? {
        let (distro, arch) = (flavour.distro, target.arch.rawValue)
        if let entry = entry(distro: distro, arch: arch, volume: volume) {
            guard entry.treeSha256 == tree.hex else {
                throw .reused(distro: distro, arch: arch, volume: volume, recorded: entry.treeSha256, built: tree.hex, next: nextFree(distro: distro), path: path)
            }
            return nil
        }
        do { try preflight(target: target, flavour: flavour, volume: volume, record: record, path: path) } catch .unrecorded {
            throw .unrecorded(distro: distro, arch: arch, volume: volume, built: tree.hex, path: path)
        }
        return Entry(distro: distro, arch: arch, volume: volume, treeSha256: tree.hex)
    }
}

/// Where and how the build checks its volume against the ledger.
public struct VolumeLedgerCheck: Sendable {
    public var path: String
    /// A number not yet in the ledger is added (an existing one is never changed); false
    /// (`--no-record-volume`): an unrecorded number is an error.
    public var record: Bool

    public init(path: String, record: Bool) {
        self.path = path
        self.record = record
    }
}

public enum VolumeLedgerError: KrnativeError {
    case unreadable(path: String, reason: String)
    case published(distro: String, volume: Int, published: Int, next: Int, path: String)
    case reused(distro: String, arch: String, volume: Int, recorded: String, built: String, next: Int, path: String)
    case unrecorded(distro: String, arch: String, volume: Int, built: String?, path: String)

    public var exitCode: Int32 {
        switch self {
        case .reused: ExitStatus.integrity
        case .unreadable, .published, .unrecorded: ExitStatus.lock
        }
    }

    public var description: String {
        switch self {
        case .unreadable(let path, let reason):
            return "the volume ledger \(path) is not valid: \(reason) (see the README, \"Volume numbers\"; --ledger FILE names another)"
        case .published(let distro, let volume, let published, let next, let path):
            return "volume \(distro) v\(volume) is taken: the published packages used \(distro) volumes up to v\(published) (\(path)). "
                + "Set volumeVersions[\"\(distro)\"] in krunner.json to \(next), then build again"
        case .reused(let distro, let arch, let volume, let recorded, let built, let next, let path):
            return "volume \(distro) v\(volume) (\(arch)) differs from the one \(path) records under that number: "
                + "recorded tree sha256 \(recorded), this build \(built). An agent that unpacked v\(volume) would keep the old one. "
                + "Bump volumeVersions[\"\(distro)\"] in krunner.json to \(next), then build again (the new number is recorded)"
        case .unrecorded(let distro, let arch, let volume, let built, let path):
            return "volume \(distro) v\(volume) (\(arch)) is not in \(path)\(built.map { " (this build's tree sha256 \($0))" } ?? ""). "
                + "With --no-record-volume the ledger is not changed: if v\(volume) is a new number for these contents, "
                + "build again without it to record the number"
        }
    }
}

extension VolumeBuild {
    /// The laid-out volume against the ledger (nothing without `settings.ledger`): returns the
    /// entry to record once the outputs are in place.
    func admitToLedger(_ prefix: String, volume: Int) throws -> VolumeLedger.Entry? {
        guard let check = settings.ledger else { return nil }
        let ledger = try VolumeLedger.load(from: check.path)
        let tree = try TreeHash.ofDirectory(at: prefix)
        settings.log("volume \(request.chosenFlavour.distro) v\(volume) (\(request.target.arch.rawValue)): tree sha256 \(tree.hex)")
        return try ledger.admit(target: request.target, flavour: request.chosenFlavour, volume: volume, tree: tree, record: check.record, path: check.path)
    }

    /// Adds `entry` to the ledger, read again so that an entry another build recorded meanwhile is kept.
    func record(_ entry: VolumeLedger.Entry) throws {
        guard let check = settings.ledger else { return }
        var ledger = try VolumeLedger.load(from: check.path)
        guard let digest = SHA256Digest(hex: entry.treeSha256),
            try ledger.admit(target: request.target, flavour: request.chosenFlavour, volume: entry.volume, tree: digest, record: true, path: check.path) != nil
        else { return }
        ledger.volumes.append(entry)
        try ledger.write(to: check.path)
        settings.log(
            "recorded volume \(entry.distro) v\(entry.volume) (\(entry.arch)) in \(check.path) (tree sha256 \(entry.treeSha256)): "
                + "a build of this number with other contents is now refused; --no-record-volume leaves the ledger as it is")
    }
}
