import Build
import Foundation
import KrnativeBase
import Lock
import Testing
import Verify

/// A build request decides the build key, is what the manifest records, what a `--check` run
/// reads from its request file and what `verify` rebuilds, all without code for each field: the
/// xz preset, added with no code here or in the key, manifest, check or verify, follows everywhere.
@Suite("Build request", .timeLimit(.minutes(60)))
struct BuildRequestTests {
    let directory = TemporaryDirectory("krnative-build-request")
    let lock = Lockfile(sourceDateEpoch: 0)

    init() {
        _ = directory.file("krnative", "the krnative executable")
        _ = directory.file("patches/ttyd/10-version.json", "{}")
    }

    static let policy = try? JSONDecoder().decode(AuditPolicy.self, from: Data(#"{"formatVersion": 1, "policies": {}}"#.utf8))

    var request: BuildRequest {
        BuildRequest(
            choices: .init(
                target: .musllinuxAarch64, toolchain: .zig, runtime: .source, auditMode: .report, packageVersion: "5.0.1", volumeVersion: 3,
                auditPolicy: Self.policy),
            locations: .init(lockPath: directory.path + "/krnative.lock.json", patchesDirectory: directory.path + "/patches"))
    }

    func parts(_ request: BuildRequest) throws -> [String: String] {
        try BuildKey.parts(of: request, lock: lock, executable: directory.path + "/krnative")
    }

    @Test func everyChoiceIsANamedPartAndNoPathIs() throws {
        let parts = try parts(request)
        #expect(parts["target"] == "musllinux-aarch64" && parts["runtime"] == "source" && parts["audit mode"] == "report")
        #expect(parts["package version"] == "5.0.1" && parts["volume version"] == "3")
        #expect(parts["audit policy"]?.hasPrefix("sha256:") == true)
        #expect(Set(parts.keys).isSuperset(of: ["krnative executable", "lock", "patch ttyd/10-version.json"]))
        // Unset, a later field leaves the key as it was.
        #expect(parts["xz preset"] == nil)
        #expect(!parts.values.contains { $0.contains(directory.path) })
        var moved = request
        moved.locations = .init(lockPath: "/elsewhere/krnative.lock.json", patchesDirectory: directory.path + "/patches")
        #expect(BuildKey.digest(of: try self.parts(moved)) == BuildKey.digest(of: parts))
    }

    @Test func thePresetChangesTheKeyByName() throws {
        var six = request, nine = request
        (six.xzPreset, nine.xzPreset) = (6, 9)
        let (before, after) = (try parts(six), try parts(nine))
        #expect(BuildKey.digest(of: before) != BuildKey.digest(of: after))
        #expect(BuildKey.differences(from: before, to: after) == ["xz preset 6 → 9"])
        #expect(BuildKey.differences(from: try parts(request), to: after) == ["xz preset added"])
    }

    /// Issue #23's probe: `--source-date-epoch` is a choice like the preset — a named key part
    /// when given, none when not (every key made before stays as it was), and the manifest
    /// records the epoch the build used and the request that asked for it.
    @Test func theEpochIsAChoiceThatOverridesTheLocksByName() throws {
        var earlier = request
        earlier.sourceDateEpoch = 1_600_000_000
        #expect(try parts(request)["source date epoch"] == nil)
        #expect(BuildKey.differences(from: try parts(request), to: try parts(earlier)) == ["source date epoch added"])
        #expect(request.epoch(of: lock) == lock.sourceDateEpoch && earlier.epoch(of: lock) == 1_600_000_000)
        let manifest = BuildManifest(
            request: earlier.choices, toolVersion: "0", lock: lock, key: try parts(earlier), inputs: [], patches: [], outputs: [], volume: [])
        let read = try JSONDecoder().decode(BuildManifest.self, from: try manifest.encoded())
        #expect(read.sourceDateEpoch == 1_600_000_000 && read.lockSha256 == lock.digest)
        #expect(try BuildRequest(recordedIn: read, locations: earlier.locations) { nil } == earlier)
    }

    /// The manifest records the request; verify's request is the recorded one at its own locations.
    @Test func theManifestRecordsTheRequestAndVerifyRebuildsIt() throws {
        var original = request
        original.xzPreset = 9
        let manifest = BuildManifest(
            request: original.choices, toolVersion: "0", lock: lock, key: try parts(original), inputs: [], patches: [], outputs: [], volume: [])
        let read = try JSONDecoder().decode(BuildManifest.self, from: try manifest.encoded())
        #expect(read.request == original.choices)
        #expect(read.buildKeyParts?["xz preset"] == "9")
        #expect(read.target == .musllinuxAarch64 && read.runtime == .source && read.toolchain == .zig && read.volumeVersion == 3)
        let verified = try BuildRequest(recordedIn: read, locations: original.locations) { Issue.record("the policy is recorded"); return nil }
        #expect(verified == original)
    }

    /// A manifest older than the record: verify takes the request from its fields and the given policy.
    @Test func anOlderManifestGivesItsFields() throws {
        let manifest = BuildManifest(
            request: request.choices, toolVersion: "0", lock: lock, key: try parts(request), inputs: [], patches: [], outputs: [], volume: [])
        var object = try #require(try JSONSerialization.jsonObject(with: manifest.encoded()) as? [String: Any])
        object["request"] = nil
        object["audit"] = ["policy": "musllinux_1_2", "mode": "report", "elfFiles": 0, "violations": []]
        let older = try JSONDecoder().decode(BuildManifest.self, from: JSONSerialization.data(withJSONObject: object))
        #expect(try BuildRequest(recordedIn: older, locations: request.locations) { request.auditPolicy } == request)
    }

    /// What `ReproducibilityCheck` writes into a run's directory, `build --request` reads back whole.
    @Test func theRequestFileGivesTheRequestBack() throws {
        var original = request
        original.xzPreset = 0
        let file = directory.file("run/request.json", try original.encoded())
        #expect(try BuildRequest.load(from: file) == original)
        #expect(String(decoding: try original.encoded(), as: UTF8.self).contains(#""xzPreset" : 0"#))
    }
}
