import Compile
import Foundation
import KrnativeBase
import Lock
import Sandbox
import Toolchain
import Verify

/// What a build is asked to make: everything that decides its bytes (`Choices`), and where its
/// inputs are (`Locations`). The choices are the build key's named parts, the manifest's record of
/// the build, what a `--check` run builds from (`build --request FILE`) and what `verify` rebuilds;
/// a field added to them reaches all four with no other code.
///
/// How the build runs without changing its bytes (jobs, threads, the output directory, the caches,
/// the log) is `VolumeBuild.Settings`, not here.
@dynamicMemberLookup
public struct BuildRequest: Codable, Sendable, Equatable {
    /// Everything that decides the outputs' bytes, besides the lock, the patches and the krnative
    /// executable (which the key takes by content). Each field is a part of the build key, named
    /// by its words ("volumeVersion": "volume version"); a field that is a document (the audit
    /// policy) is there by its hash. A field added later is optional, nil meaning what builds did
    /// before it: older manifests and request files still decode, and keys stay as they were.
    public struct Choices: Codable, Sendable, Equatable {
        public var target: Target
        public var toolchain: ToolchainKind
        /// Where the Python runtime comes from.
        public var runtime: RuntimeSource
        public var isolation: Isolation
        /// Whether a violation of the audit policy fails the build or is recorded.
        public var auditMode: AuditMode
        /// The plugin wheel's version for the target's distro.
        public var packageVersion: String
        /// The volume's number for the target's distro (`krunner-version.{distro}.txt`).
        public var volumeVersion: Int
        /// The policy the volume is audited against (nil: not audited).
        public var auditPolicy: AuditPolicy?
        /// The xz preset (0–9) the volume is compressed with (nil: `DeterministicTarXz`'s, 6).
        public var xzPreset: Int?
        /// The package the volume ships as (nil: the target's default flavour, as every build
        /// before flavours; a default flavour is always recorded as nil, so its keys stay as they were).
        public var flavour: Flavour?
        /// The SOURCE_DATE_EPOCH every step gets and every output's times are clamped to (nil:
        /// the lock's `sourceDateEpoch`, as every build before this choice).
        public var sourceDateEpoch: Int64?

        /// The flavour this build makes.
        public var chosenFlavour: Flavour { flavour ?? target.defaultFlavour }

        public init(
            target: Target, toolchain: ToolchainKind, runtime: RuntimeSource = .pbs, isolation: Isolation = .namespaces,
            auditMode: AuditMode = .enforce, packageVersion: String, volumeVersion: Int, auditPolicy: AuditPolicy? = nil
        ) {
            self.target = target
            self.toolchain = toolchain
            self.runtime = runtime
            self.isolation = isolation
            self.auditMode = auditMode
            self.packageVersion = packageVersion
            self.volumeVersion = volumeVersion
            self.auditPolicy = auditPolicy
        }

        /// The versions of `target` as `flavour` (nil: its default) from `config`, the runtime it
        /// names unless `runtime` is given.
        public init(
            target: Target, flavour: Flavour? = nil, config: KrunnerConfig, toolchain: ToolchainKind, runtime: RuntimeSource? = nil,
            isolation: Isolation = .namespaces, auditMode: AuditMode = .enforce, auditPolicy: AuditPolicy? = nil
        ) throws(UsageError) {
            let chosen = flavour ?? target.defaultFlavour
            guard target.flavours.contains(chosen) else {
                throw UsageError(
                    "\(target.rawValue) volumes ship as \(target.flavours.map(\.rawValue).joined(separator: " or ")), not \(chosen.rawValue)")
            }
            self.init(
                target: target, toolchain: toolchain, runtime: runtime ?? config.runtime ?? .pbs, isolation: isolation, auditMode: auditMode,
                packageVersion: try config.packageVersion(for: chosen), volumeVersion: try config.volumeVersion(for: chosen),
                auditPolicy: auditPolicy)
            self.flavour = chosen == target.defaultFlavour ? nil : chosen
        }
    }

    /// Where the inputs are. Paths never enter the key (the `path` variation shows the outputs do
    /// not depend on them); the files enter it by their contents.
    public struct Locations: Codable, Sendable, Equatable {
        public var lockPath: String
        public var patchesDirectory: String
        /// The recipes (`recipes/<name>.json`); a request written before they were files has none: the built-in ones.
        public var recipesDirectory: String

        public init(lockPath: String = Lockfile.defaultFileName, patchesDirectory: String, recipesDirectory: String = RecipeFile.builtIn) {
            self.lockPath = lockPath
            self.patchesDirectory = patchesDirectory
            self.recipesDirectory = recipesDirectory
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            self.init(
                lockPath: try container.decode(String.self, forKey: .lockPath), patchesDirectory: try container.decode(String.self, forKey: .patchesDirectory),
                recipesDirectory: try container.decodeIfPresent(String.self, forKey: .recipesDirectory) ?? RecipeFile.builtIn)
        }

        /// The same locations, absolute against the current directory (for a child elsewhere).
        public var absolute: Locations {
            func absolute(_ path: String) -> String { path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path }
            return Locations(lockPath: absolute(lockPath), patchesDirectory: absolute(patchesDirectory), recipesDirectory: absolute(recipesDirectory))
        }
    }

    public var choices: Choices
    public var locations: Locations

    /// The epoch a build of this request from `lock` uses: the request's, else the lock's.
    public func epoch(of lock: Lockfile) -> Int64 { choices.sourceDateEpoch ?? lock.sourceDateEpoch }

    public init(choices: Choices, locations: Locations) {
        self.choices = choices
        self.locations = locations
    }

    /// What `manifest` records it was asked to make (`BuildManifest.requestedChoices`), from the
    /// inputs at `locations`: the request `krnative verify` rebuilds.
    public init(recordedIn manifest: BuildManifest, locations: Locations, policy: () throws -> AuditPolicy?) rethrows {
        self.init(choices: try manifest.requestedChoices(policy: policy), locations: locations)
    }

    public subscript<Value>(dynamicMember keyPath: WritableKeyPath<Choices, Value>) -> Value {
        get { choices[keyPath: keyPath] }
        set { choices[keyPath: keyPath] = newValue }
    }

    public subscript<Value>(dynamicMember keyPath: KeyPath<Choices, Value>) -> Value { choices[keyPath: keyPath] }

    /// The request as a file: what `ReproducibilityCheck` writes and `build --request` reads.
    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self) + Data("\n".utf8)
    }

    public static func load(from path: String) throws(UsageError) -> BuildRequest {
        guard let data = try? FileSystem.readRegularFile(path) else {
            throw UsageError("cannot read the build request \(path) (\(FileSystem.whyUnreadable(path))); it is the file `krnative build --check` writes for its runs")
        }
        do { return try DuplicateJSONKey.decode(BuildRequest.self, from: data) } catch {
            throw UsageError("\(path) is not a build request this krnative can read: \(error)")
        }
    }
}

/// How this machine lets a build run: the sandbox and the audit mode, from its own command line
/// and environment. A manifest or a request file may come from elsewhere; what it records of these
/// is its history, never an instruction (`BuildRequest.underLocalPolicy`).
public struct LocalPolicy: Sendable, Equatable {
    public var isolation: Isolation
    /// Whether `isolation` was asked for here (an option or `KRNATIVE_SANDBOX`), not the default.
    public var isolationAskedFor: Bool
    /// The audit mode asked for here; nil: enforce.
    public var auditMode: AuditMode?

    public init(isolation: Isolation, isolationAskedFor: Bool, auditMode: AuditMode?) {
        self.isolation = isolation
        self.isolationAskedFor = isolationAskedFor
        self.auditMode = auditMode
    }
}

extension BuildRequest {
    /// This request with `policy`'s isolation and audit mode in place of the recorded ones, for a
    /// request read from `source` (a manifest, a request file) whose choices sit at `field` in it
    /// ("request", "choices"; "" for the top level). A recorded `none` is refused unless this
    /// machine asked for an isolation itself: running a file's steps unsandboxed is this machine's
    /// call. Both stay parts of the build key, so a rebuild under another policy says so
    /// ("isolation none → namespaces") while its outputs are compared as they are.
    public func underLocalPolicy(
        _ policy: LocalPolicy, source: String, field: String, log: @Sendable (String) -> Void = Reporting.note
    ) throws(UsageError) -> BuildRequest {
        let prefix = field.isEmpty ? "" : field + "."
        if choices.isolation == .none && !policy.isolationAskedFor {
            throw UsageError(
                "\(source) records \"\(prefix)isolation\": \"none\" (built without the sandbox); krnative takes the sandbox from this "
                    + "machine's command line, never from a file. Rebuild it in the sandbox with --sandbox namespaces, or, to run its "
                    + "steps on this machine without isolation, say so with --sandbox none (or KRNATIVE_SANDBOX=none)")
        }
        var request = self
        request.choices.isolation = policy.isolation
        request.choices.auditMode = policy.auditMode ?? .enforce
        if choices.auditMode != request.auditMode && policy.auditMode == nil {
            log("\(source) records \"\(prefix)auditMode\": \"\(choices.auditMode.rawValue)\"; the audit is enforced here (give --audit report to record violations instead)")
        }
        if choices.isolation != request.isolation {
            log("\(source) records \"\(prefix)isolation\": \"\(choices.isolation.rawValue)\"; building with --sandbox \(request.isolation.rawValue) as this machine asks")
        }
        return request
    }
}

extension BuildRequest.Choices {
    /// The choices as the build key's named parts: each field by its words, a text or number as
    /// itself, a document by the hash of its JSON (sorted keys), an absent optional not at all.
    public func keyParts() throws -> [String: String] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        guard let fields = try JSONSerialization.jsonObject(with: encoder.encode(self)) as? [String: Any] else { return [:] }
        var parts: [String: String] = [:]
        for (name, value) in fields {
            let json = try JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .fragmentsAllowed])
            parts[Self.words(name)] =
                switch value {
                case let text as String: text
                case is [String: Any], is [Any]: BuildKey.contents(SHA256Digest.of(json))
                default: String(decoding: json, as: UTF8.self)
                }
        }
        return parts
    }

    /// A field's name as words: "auditPolicy" is "audit policy".
    static func words(_ name: String) -> String {
        name.reduce(into: "") { words, character in
            if character.isUppercase { words += " " + character.lowercased() } else { words.append(character) }
        }
    }
}
