import Foundation
import KrnativeBase

/// The lock: one versioned file that pins every input krnative downloads (docs/design.md §2.1).
///
/// Format version 1 is JSON:
/// `{"version": 1, "sourceDateEpoch": N, "inputs": [LockedInput…]}`.
/// An unknown version, an unknown key, a missing or weak hash is an error naming the file and key.
public struct Lockfile: Sendable, Equatable {
    /// The lock format this krnative reads and writes.
    public static let formatVersion = 1
    /// The file name krnative looks for in the current directory.
    public static let defaultFileName = "krnative.lock.json"

    /// Build timestamp for every output (tar mtimes, zip times), in seconds since 1970.
    public var sourceDateEpoch: Int64
    public var inputs: [LockedInput]

    public init(sourceDateEpoch: Int64, inputs: [LockedInput] = []) {
        self.sourceDateEpoch = sourceDateEpoch
        self.inputs = inputs
    }

    public subscript(name: String) -> LockedInput? { inputs.first { $0.name == name } }

    /// Adds `input`, or replaces the entry of the same name in place.
    public mutating func upsert(_ input: LockedInput) {
        if let index = inputs.firstIndex(where: { $0.name == input.name }) {
            inputs[index] = input
        } else {
            inputs.append(input)
        }
    }

    /// The inputs a build of `targets` on `host` needs: the targets' runtimes and wheels, every
    /// source, and the toolchains that run on `host` and produce code for one of the targets.
    public func inputs(for targets: some Sequence<Target>, host: HostPlatform) -> [LockedInput] {
        let wanted = Set(targets)
        return inputs.filter { input in
            let forTarget = input.targets.isEmpty || !wanted.isDisjoint(with: input.targets)
            let onHost = input.host.map { $0 == host } ?? true
            return forTarget && onHost
        }
    }
}

/// One pinned input.
public struct LockedInput: Sendable, Equatable, Codable {
    public enum Kind: String, Sendable, Codable, CaseIterable {
        /// A python-build-standalone archive.
        case runtime
        /// A compiler toolchain archive or wheel (musl.cc, Zig).
        case toolchain
        /// An upstream source tarball, verified by its tree hash.
        case source
        /// A Python wheel that goes into the volume.
        case wheel
    }

    /// How pip finds a wheel: the exact requirement and the platform it is for.
    public struct PipQuery: Sendable, Equatable, Codable {
        /// `name==version`.
        public var requirement: String
        /// Platform tags given to `pip download --platform`; empty for pure-Python wheels.
        public var platforms: [String]
        public var pythonVersion: String?
        public var implementation: String?
        public var abi: String?

        public init(
            requirement: String, platforms: [String] = [], pythonVersion: String? = nil,
            implementation: String? = nil, abi: String? = nil
        ) {
            self.requirement = requirement
            self.platforms = platforms
            self.pythonVersion = pythonVersion
            self.implementation = implementation
            self.abi = abi
        }
    }

    /// Unique within the lock.
    public var name: String
    public var kind: Kind
    public var version: String
    /// The file name the input has upstream (wheels must keep theirs: it carries the tags).
    public var filename: String
    /// The sha256 of the file. Required for every kind but `source`, where it is recorded when
    /// the file is first seen (GitHub may re-compress an archive; the tree hash still holds).
    public var sha256: SHA256Digest?
    public var size: Int64?
    /// For sources: the tree hash v1 (docs/tree-hash.md) of the unpacked archive, top directory stripped.
    public var treeSha256: SHA256Digest?
    /// Mirrors, tried in order.
    public var urls: [String]
    /// The targets that need this input; empty means every target.
    public var targets: [Target]
    /// For toolchains: the machine it runs on.
    public var host: HostPlatform?
    /// For wheels (and the Zig wheel): fetched by `pip download` instead of a URL.
    public var pip: PipQuery?
    /// SPDX license expression, where known.
    public var license: String?

    public init(
        name: String, kind: Kind, version: String, filename: String, sha256: SHA256Digest? = nil,
        size: Int64? = nil, treeSha256: SHA256Digest? = nil, urls: [String] = [], targets: [Target] = [],
        host: HostPlatform? = nil, pip: PipQuery? = nil, license: String? = nil
    ) {
        self.name = name
        self.kind = kind
        self.version = version
        self.filename = filename
        self.sha256 = sha256
        self.size = size
        self.treeSha256 = treeSha256
        self.urls = urls
        self.targets = targets
        self.host = host
        self.pip = pip
        self.license = license
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, kind, version, filename, sha256, size, treeSha256, urls, targets, host, pip, license
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        name = try container.decode(String.self, forKey: .name)
        kind = try container.decode(Kind.self, forKey: .kind)
        version = try container.decode(String.self, forKey: .version)
        filename = try container.decode(String.self, forKey: .filename)
        sha256 = try container.decodeIfPresent(SHA256Digest.self, forKey: .sha256)
        size = try container.decodeIfPresent(Int64.self, forKey: .size)
        treeSha256 = try container.decodeIfPresent(SHA256Digest.self, forKey: .treeSha256)
        urls = try container.decodeIfPresent([String].self, forKey: .urls) ?? []
        targets = try container.decodeIfPresent([Target].self, forKey: .targets) ?? []
        host = try container.decodeIfPresent(HostPlatform.self, forKey: .host)
        pip = try container.decodeIfPresent(PipQuery.self, forKey: .pip)
        license = try container.decodeIfPresent(String.self, forKey: .license)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(name, forKey: .name)
        try container.encode(kind, forKey: .kind)
        try container.encode(version, forKey: .version)
        try container.encode(filename, forKey: .filename)
        try container.encodeIfPresent(sha256, forKey: .sha256)
        try container.encodeIfPresent(size, forKey: .size)
        try container.encodeIfPresent(treeSha256, forKey: .treeSha256)
        if !urls.isEmpty { try container.encode(urls, forKey: .urls) }
        if !targets.isEmpty { try container.encode(targets, forKey: .targets) }
        try container.encodeIfPresent(host, forKey: .host)
        try container.encodeIfPresent(pip, forKey: .pip)
        try container.encodeIfPresent(license, forKey: .license)
    }
}
