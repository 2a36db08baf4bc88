import Archive
import Compile
import Foundation
import KrnativeBase
import Lock
import Patch
import Sandbox
import Toolchain
import Verify

/// Whether an audit violation fails the build (`enforce`) or is printed and recorded (`report`).
public enum AuditMode: String, Codable, Sendable, CaseIterable { case enforce, report }

/// What a build used and made (docs/design.md §1): written as `krnative-manifest.{distro}.{arch}.json`.
public struct BuildManifest: Codable, Sendable {
    /// The manifest's file name in an output directory, which may hold several targets' outputs.
    public static func fileName(for target: Target, flavour: Flavour? = nil) -> String {
        "krnative-manifest.\((flavour ?? target.defaultFlavour).distro).\(target.arch.rawValue).json"
    }

    public struct Tool: Codable, Sendable { public var name = "krnative"; public var version: String }
    public struct Input: Codable, Sendable {
        public var name: String
        public var kind: LockedInput.Kind
        public var version: String
        public var sha256: SHA256Digest
        public var treeSha256: SHA256Digest?
        public var license: String?
    }
    public struct Output: Codable, Sendable {
        public var file: String
        public var sha256: SHA256Digest
        public var size: Int64
    }
    public struct VolumeEntry: Codable, Sendable {
        public var path: String
        public var type: DeterministicTarXz.Entry.Kind
        public var mode: String
        public var size: Int64
        public var sha256: SHA256Digest?
        public var target: String?

        init(_ entry: DeterministicTarXz.Entry) {
            (path, type, mode, size, sha256, target) = (entry.path, entry.kind, String(entry.mode, radix: 8), entry.size, entry.sha256, entry.target)
        }
    }

    public struct Audit: Codable, Sendable {
        public var policy: String
        public var mode: AuditMode
        public var elfFiles: Int
        public var violations: [AuditViolation]
    }

    public var tool: Tool
    public var target: Target
    public var lockSha256: SHA256Digest
    public var sourceDateEpoch: Int64
    public var isolation: Isolation
    public var packageVersion: String
    public var volumeVersion: Int
    public var inputs: [Input]
    public var patches: [AppliedPatch]
    public var outputs: [Output]
    public var volume: [VolumeEntry]
    /// What decided these outputs (`BuildKey`): a build with the same key has nothing to do.
    public var buildKey: SHA256Digest?
    /// The parts the key hashes, by name (`VolumeBuild.buildKeyParts`): a build whose key differs
    /// names the parts that changed. Absent in older manifests (their key is of another format).
    public var buildKeyParts: [String: String]?
    /// The toolchain ttyd was compiled with (`krnative verify` rebuilds with the same).
    public var toolchain: ToolchainKind?
    public var audit: Audit?
    /// Where the Python runtime came from (absent in manifests older than the choice: pbs).
    public var runtime: RuntimeSource?
    /// What the build was asked to make (`krnative verify` rebuilds it). Absent in older
    /// manifests: `requestedChoices` reads it from the fields above then.
    public var request: BuildRequest.Choices?

    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self) + Data("\n".utf8)
    }
}

extension BuildManifest {
    /// The manifest of a build of `request` with the build key of `key` (its named parts); the
    /// fields that say the target, versions, isolation, toolchain and runtime are the request's.
    public init(
        request: BuildRequest.Choices, toolVersion: String, lock: Lockfile, key: [String: String], inputs: [Input], patches: [AppliedPatch],
        outputs: [Output], volume: [VolumeEntry]
    ) {
        self.init(
            tool: .init(version: toolVersion), target: request.target, lockSha256: lock.digest, sourceDateEpoch: request.sourceDateEpoch ?? lock.sourceDateEpoch,
            isolation: request.isolation, packageVersion: request.packageVersion, volumeVersion: request.volumeVersion, inputs: inputs,
            patches: patches, outputs: outputs, volume: volume, buildKey: BuildKey.digest(of: key), buildKeyParts: key,
            toolchain: request.toolchain, runtime: request.runtime, request: request)
    }

    /// What the build was asked to make: as recorded, or, in a manifest older than the record,
    /// from its fields, with the toolchain this machine defaults to and `policy`'s audit policy.
    public func requestedChoices(policy: () throws -> AuditPolicy?) rethrows -> BuildRequest.Choices {
        if let request { return request }
        return BuildRequest.Choices(
            target: target, toolchain: toolchain ?? Toolchain.defaultKind(for: .current), runtime: runtime ?? .pbs, isolation: isolation,
            auditMode: audit?.mode ?? .enforce, packageVersion: packageVersion, volumeVersion: volumeVersion, auditPolicy: try policy())
    }
}

/// An SPDX 2.3 JSON document listing every component that ships in the volume.
enum SBOM {
    static func document(for manifest: BuildManifest, name: String) throws -> Data {
        try document(
            inputs: manifest.inputs, lockSha256: manifest.lockSha256, sourceDateEpoch: manifest.sourceDateEpoch, toolVersion: manifest.tool.version,
            name: name)
    }

    /// The document named `name` for `inputs` (the toolchains left out: nothing of them ships).
    static func document(inputs: [BuildManifest.Input], lockSha256: SHA256Digest, sourceDateEpoch: Int64, toolVersion: String, name: String) throws -> Data {
        var packages: [[String: Any]] = []
        for (index, input) in inputs.enumerated() where input.kind != .toolchain {
            var package: [String: Any] = [
                "SPDXID": "SPDXRef-Package-\(index)", "name": input.name, "versionInfo": input.version,
                "downloadLocation": "NOASSERTION", "filesAnalyzed": false,
                "licenseConcluded": "NOASSERTION", "licenseDeclared": input.license ?? "NOASSERTION",
                "checksums": [["algorithm": "SHA256", "checksumValue": input.sha256.hex]],
            ]
            if let tree = input.treeSha256 { package["comment"] = "source tree hash (krnative tree hash v1): \(tree.hex)" }
            packages.append(package)
        }
        let document: [String: Any] = [
            "spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT", "name": name,
            "documentNamespace": "https://spdx.org/spdxdocs/krnative/\(lockSha256.hex)/\(name)",
            "creationInfo": [
                "created": ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: TimeInterval(sourceDateEpoch))),
                "creators": ["Tool: krnative-\(toolVersion)"],
            ],
            "packages": packages,
            "relationships": packages.map { ["spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": $0["SPDXID"]!] },
        ]
        return try JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]) + Data("\n".utf8)
    }
}
