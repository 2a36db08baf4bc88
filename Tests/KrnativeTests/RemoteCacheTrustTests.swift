import Archive
import Build
import Compile
import Fetch
import Foundation
import KrnativeBase
import Lock
import Packaging
import Store
import Testing

/// Issue #22, items 6 and 7: the sandbox and the audit mode are this machine's, never a file's;
/// what the remote cache says a key produced is used only when a trusted key signed it for that
/// key, and a whole build from the cache is checked whole before anything is published; plain
/// http:// only to this machine; the cache's token reaches no child.
@Suite("Remote cache trust and local policy", .timeLimit(.minutes(60)), .tags(.process), .endToEnd)
struct RemoteCacheTrustTests {
    let work = TemporaryDirectory("krnative-trust")

    /// A lock with nothing in it, and a manifest of it whose recorded request asks for no sandbox.
    func unsandboxedManifest() throws -> (lock: String, manifest: String, request: BuildRequest) {
        let lock = Lockfile(sourceDateEpoch: 0)
        let lockPath = work.path + "/krnative.lock.json"
        try lock.write(to: lockPath)
        _ = work.file("patches/ttyd/10-version.json", "{}")
        let choices = BuildRequest.Choices(
            target: .manylinuxX86_64, toolchain: .zig, isolation: .none, auditMode: .report, packageVersion: "4.1.0", volumeVersion: 15)
        let manifest = BuildManifest(
            request: choices, toolVersion: "0", lock: lock, key: ["isolation": "none"], inputs: [], patches: [], outputs: [], volume: [])
        let request = BuildRequest(choices: choices, locations: .init(lockPath: lockPath, patchesDirectory: work.path + "/patches"))
        return (lockPath, work.file("manifest.json", try manifest.encoded()), request)
    }

    /// Item 6: `verify` of a manifest from elsewhere that says `"isolation": "none"` runs no step
    /// on the host: refused, naming the field and both ways on; with --sandbox namespaces it goes
    /// on in the sandbox. `build --request` of a request file saying so is refused the same way.
    @Test(.timeLimit(.minutes(60))) func aRecordedNoSandboxIsRefused() throws {
        let (lock, manifest, request) = try unsandboxedManifest()
        let hostBuild = FileSystem.exists("/build/stage")
        let common = ["--lock", lock, "--store", work.path + "/store", "--out", work.path + "/verify", "--patches", work.path + "/patches"]
        let refused = krnative(["verify", "--manifest", manifest] + common, environment: ["KRNATIVE_SANDBOX": ""])
        #expect(refused.termination == .exited(ExitStatus.usage), "\(refused.stderr)")
        #expect(refused.stderr.contains(#"records "request.isolation": "none""#), "\(refused.stderr)")
        #expect(refused.stderr.contains("--sandbox namespaces") && refused.stderr.contains("--sandbox none"), "\(refused.stderr)")
        #expect(!FileSystem.exists(work.path + "/verify"), "verify started a rebuild")
        #expect(FileSystem.exists("/build/stage") == hostBuild, "a step wrote on the host")

        // Asked for here, the sandbox is used: the rebuild goes on (and stops at the empty lock's missing inputs).
        let sandboxed = krnative(["verify", "--manifest", manifest, "--sandbox", "namespaces"] + common)
        #expect(sandboxed.termination != .exited(ExitStatus.usage), "\(sandboxed.stderr)")
        #expect(sandboxed.stderr.contains("building with --sandbox namespaces as this machine asks"), "\(sandboxed.stderr)")
        #expect(sandboxed.stderr.contains("the audit is enforced here"), "\(sandboxed.stderr)")

        let requestFile = work.file("request.json", try request.encoded())
        let fromFile = krnative(["build", "--request", requestFile, "--store", work.path + "/store", "--out", work.path + "/out", "--offline"],
            environment: ["KRNATIVE_SANDBOX": ""])
        #expect(fromFile.termination == .exited(ExitStatus.usage), "\(fromFile.stderr)")
        #expect(fromFile.stderr.contains(#"records "choices.isolation": "none""#), "\(fromFile.stderr)")
        #expect(FileSystem.exists("/build/stage") == hostBuild)
    }

    /// The policy is replaced, not merged: a recorded `none` goes only with a local choice, and
    /// report mode only when asked for here.
    @Test(.timeLimit(.minutes(60))) func theLocalPolicyReplacesTheRecordedOne() throws {
        let (_, _, request) = try unsandboxedManifest()
        #expect(throws: UsageError.self) {
            try request.underLocalPolicy(LocalPolicy(isolation: .namespaces, isolationAskedFor: false, auditMode: nil), source: "m", field: "request")
        }
        let local = try request.underLocalPolicy(LocalPolicy(isolation: .namespaces, isolationAskedFor: true, auditMode: nil), source: "m", field: "request", log: { _ in })
        #expect(local.isolation == .namespaces && local.auditMode == .enforce)
        let none = try request.underLocalPolicy(LocalPolicy(isolation: .none, isolationAskedFor: true, auditMode: .report), source: "m", field: "request", log: { _ in })
        #expect(none.isolation == .none && none.auditMode == .report)
        var sandboxed = request
        sandboxed.choices.isolation = .namespaces
        let defaulted = try sandboxed.underLocalPolicy(LocalPolicy(isolation: .namespaces, isolationAskedFor: false, auditMode: nil), source: "m", field: "request", log: { _ in })
        #expect(defaulted.isolation == .namespaces && defaulted.auditMode == .enforce)
    }

    /// Plain http:// to another machine is a usage error before any connection (192.0.2.1 is
    /// TEST-NET-1: nothing is sent there); to this machine, or asked for by name, it is accepted.
    @Test(.timeLimit(.minutes(60))) func plainHTTPOnlyToThisMachine() throws {
        let lock = work.path + "/empty.lock.json"
        try Lockfile(sourceDateEpoch: 0).write(to: lock)
        let url = "http://192.0.2.1:8080/cache"
        let refused = krnative(["fetch", "--lock", lock, "--store", work.path + "/store", "--all", "--remote-cache", url])
        #expect(refused.termination == .exited(ExitStatus.usage), "\(refused.stderr)")
        #expect(refused.stderr.contains(url) && refused.stderr.contains("--remote-cache-allow-http"), "\(refused.stderr)")
        let fromEnvironment = krnative(["fetch", "--lock", lock, "--store", work.path + "/store", "--all"], environment: ["KRNATIVE_REMOTE_CACHE": url])
        #expect(fromEnvironment.termination == .exited(ExitStatus.usage), "\(fromEnvironment.stderr)")
        for loopback in ["http://127.0.0.1:1", "http://127.9.8.7:1/x", "http://localhost:1", "http://[::1]:1", "https://192.0.2.1", "http://2130706433:1", "HTTP://0x7f.1:1"] {
            #expect(throws: Never.self, "\(loopback)") { try RemoteCache.checkScheme(loopback, allowHTTP: false) }
        }
        for other in ["http://192.0.2.1", "http://127.0.0.1.example.invalid", "http://[::2]:1", "http://10.0.0.1"] {
            #expect(throws: UsageError.self, "\(other)") { try RemoteCache.checkScheme(other, allowHTTP: false) }
        }
        try RemoteCache.checkScheme(url, allowHTTP: true)
    }

    /// The cache's token is for the cache: pip (a child krnative starts with its own environment)
    /// and a sandboxed step never see it.
    @Test(.timeLimit(.minutes(60))) func theTokenReachesNoChild() throws {
        let token = "krnative-test-token-\(UInt32.random(in: 0...UInt32.max))"
        let seen = work.path + "/pip-environment"
        let python = work.file("python", "#!/bin/sh\nenv > '\(seen)'\nexit 1\n")
        chmod(python, 0o755)
        let lock = work.path + "/pip.lock.json"
        let wheel = LockedInput(
            name: "w", kind: .wheel, version: "1.0", filename: "w-1.0-py3-none-any.whl", sha256: SHA256Digest.of(Data("w".utf8)),
            pip: .init(requirement: "w==1.0"))
        try Lockfile(sourceDateEpoch: 0, inputs: [wheel]).write(to: lock)
        let fetched = krnative(
            ["fetch", "--lock", lock, "--store", work.path + "/store", "--all", "--python", python, "--retries", "1"],
            environment: ["KRNATIVE_REMOTE_CACHE_TOKEN": token])
        #expect(!fetched.succeeded)
        let environment = try #require(FileManager.default.contents(atPath: seen), "pip was not run: \(fetched.stderr)")
        #expect(!String(decoding: environment, as: UTF8.self).contains(token))
        #expect(String(decoding: environment, as: UTF8.self).contains("PATH="), "the child's environment was not written")

        // A step, even unsandboxed, runs with its declared environment only.
        let step = krnative(["sandbox", "run", "--sandbox", "none", "--", "/usr/bin/env"], environment: ["KRNATIVE_REMOTE_CACHE_TOKEN": token])
        #expect(step.succeeded, "\(step.stderr)")
        #expect(step.stdout.contains("SOURCE_DATE_EPOCH="))
        #expect(!step.stdout.contains(token) && !step.stderr.contains(token))
    }
}

/// Item 7 against nginx with WebDAV: `/ac/` entries signed by the uploader's key and checked by
/// the reader's trust; a whole build checked whole before it is published.
@Suite("Remote cache signatures", .timeLimit(.minutes(60)), .tags(.process, .network), .endToEnd, .serialized, .enabled(if: Machine.hasExecutable(WebDAVCache.nginx)))
struct RemoteCacheSignatureTests {
    let work = TemporaryDirectory("krnative-signatures")
    let cache: WebDAVCache
    let said = Collected()

    init() throws { cache = try WebDAVCache() }

    func steps(_ name: String, signer: CacheSigner? = nil, trust: CacheTrust? = nil) throws -> RemoteSteps {
        let store = try Store(root: work.path + "/" + name)
        let note: @Sendable (String) -> Void = { [said] in said.append(Data(($0 + "\n").utf8)) }
        return RemoteSteps(cache: RemoteCache(url: cache.url, store: store, signer: signer, trust: trust ?? cache.trust, note: note), store: store)
    }

    /// What was said since `mark`.
    func saidSince(_ mark: Int) -> String { String(said.text.dropFirst(mark)) }

    /// A step record that is unsigned, signed by a key the reader does not list, or signed for
    /// another step key is a miss, said in one line naming the entry, and `steps/` holds nothing;
    /// the same record signed by the trusted key for this key is used. A reader trusting no key
    /// says once how to trust one.
    @Test(.timeLimit(.minutes(60))) func aStepRecordCountsOnlyWhenSignedForItsKey() throws {
        let tree = TemporaryDirectory("krnative-signed-step")
        _ = tree.file("lib/libz.a", randomData(20_000))
        let (key, other) = (SHA256Digest.of(Data("zlib step".utf8)), SHA256Digest.of(Data("json-c step".utf8)))
        try steps("uploader", signer: cache.signer).upload(tree.path, key: other, component: "json-c", epoch: 0, threads: 1)
        let entry = cache.data + "/ac/" + key.hex
        let signedForOther = try Data(contentsOf: URL(fileURLWithPath: cache.data + "/ac/" + other.hex))
        let envelope = try #require(try JSONSerialization.jsonObject(with: signedForOther) as? [String: Any])
        let record = try #require(Data(base64Encoded: envelope["record"] as? String ?? ""))
        let stranger = try CacheSigner.loadOrCreate(at: work.path + "/stranger-key").signer

        let forged: [(String, Data)] = [
            ("is not signed", record),
            ("which \(cache.keyFile).pub does not list", try stranger.sign(record, key: key)),
            ("has a signature that does not match its record and key", signedForOther),
        ]
        for (index, (reason, document)) in forged.enumerated() {
            try document.write(to: URL(fileURLWithPath: entry))
            let reader = try steps("reader-\(index)")
            let mark = said.text.count
            #expect(!reader.restore(key, component: "zlib"), "\(reason)")
            let now = saidSince(mark)
            #expect(now.hasPrefix("remote cache: \(cache.url)/ac/\(key.hex) (the zlib step \(key.hex.prefix(12))) "), "\(now)")
            #expect(now.contains(reason) && now.hasSuffix("; taken as a miss\n"), "\(now)")
            #expect(now.split(separator: "\n").count == 1, "\(now)")
            #expect(!FileSystem.exists(reader.store.item(.steps, key.hex)), "steps/ was poisoned")
        }

        try cache.signer.sign(record, key: key).write(to: URL(fileURLWithPath: entry))
        let trusted = try steps("reader-trusted")
        #expect(trusted.restore(key, component: "zlib"))
        #expect(try TreeHash.ofDirectory(at: trusted.store.item(.steps, key.hex)) == TreeHash.ofDirectory(at: tree.path))

        let mark = said.text.count
        let trustingNone = try steps("reader-none", trust: CacheTrust(source: "no trust file"))
        #expect(!trustingNone.restore(key, component: "zlib"))
        #expect(!trustingNone.restore(other, component: "json-c"))
        let now = saidSince(mark)
        #expect(now.components(separatedBy: "no key is trusted").count == 2 && now.contains("--remote-cache-trust FILE"), "\(now)")
        #expect(!FileSystem.exists(trustingNone.store.item(.steps, key.hex)))
    }

    /// Through the binary, with no key options: the first upload makes this machine's key (0600,
    /// its .pub beside it, the line printed), and this machine then trusts what it uploaded; another
    /// machine with no trust file uses no /ac/ entry, says once how to trust a key, and fetches
    /// from the lock's URL instead.
    @Test(.timeLimit(.minutes(60))) func theFirstUploadMakesAKeyThatThisMachineTrusts() throws {
        let server = try FaultServer()
        let lock = work.path + "/source.lock.json"
        try writeServedSourceLock(to: lock, server: server)
        func fetch(_ store: String, machine: String, _ extra: [String]) -> ChildProcess.Result {
            krnative(
                ["fetch", "--lock", lock, "--store", work.path + "/" + store, "--all", "--remote-cache", cache.url] + extra,
                environment: ["XDG_CACHE_HOME": work.path + "/" + machine, "KRNATIVE_REMOTE_CACHE_KEY": "", "KRNATIVE_REMOTE_CACHE_TRUST": ""])
        }
        let upload = fetch("a", machine: "machine-a", ["--remote-cache-upload"])
        #expect(upload.succeeded, "\(upload.stderr)")
        let key = work.path + "/machine-a/krnative/remote-cache-key"
        var status = stat()
        #expect(lstat(key, &status) == 0 && status.st_mode & 0o777 == 0o600)
        let publicLine = try String(contentsOfFile: key + ".pub", encoding: .utf8).trimmingCharacters(in: .newlines)
        #expect(upload.stderr.contains("made this machine's signing key \(key)") && upload.stderr.contains(publicLine), "\(upload.stderr)")
        #expect(!FileSystem.exists(work.path + "/a/remote-cache-key"), "the key went into the store")

        let blocked = work.file("blocked.conf", "block \(server.url(""))\n")
        let same = fetch("b", machine: "machine-a", ["--mirrors", blocked])
        #expect(same.succeeded && same.stderr.contains("fetched lib 1.0 from the remote cache"), "\(same.stderr)")

        let stranger = fetch("c", machine: "machine-c", [])
        #expect(stranger.succeeded, "\(stranger.stderr)")
        #expect(stranger.stderr.components(separatedBy: "no key is trusted").count == 2, "\(stranger.stderr)")
        #expect(stranger.stderr.contains("--remote-cache-trust FILE") && !stranger.stderr.contains("from the remote cache"), "\(stranger.stderr)")
        #expect(!FileSystem.exists(work.path + "/machine-c/krnative/remote-cache-key"), "a reader made a key")

        let trusting = fetch("d", machine: "machine-c", ["--mirrors", blocked, "--remote-cache-trust", key + ".pub"])
        #expect(trusting.succeeded && trusting.stderr.contains("fetched lib 1.0 from the remote cache"), "\(trusting.stderr)")
    }

    /// The key files as a user expects: the private key 0600 and refused when others may read
    /// it, the public key one line in `.pub` that a trust file takes as it is.
    @Test(.timeLimit(.minutes(60))) func theKeyFilesAreOneLineEachAndPrivate() throws {
        let path = work.path + "/keys/remote-cache-key"
        let (signer, created) = try CacheSigner.loadOrCreate(at: path)
        #expect(created)
        var status = stat()
        #expect(lstat(path, &status) == 0 && status.st_mode & 0o777 == 0o600)
        let line = try String(contentsOfFile: path + ".pub", encoding: .utf8)
        #expect(line == signer.publicKeyLine + "\n" && line.hasPrefix("krnative-cache-key "))
        #expect(try CacheSigner.loadOrCreate(at: path).created == false)
        #expect(try CacheTrust.load(from: path + ".pub").trusts(signer.publicKey))
        chmod(path, 0o644)
        #expect(throws: UsageError.self) { try CacheSigner.load(from: path) }
        #expect(throws: UsageError.self) { try CacheTrust.load(from: work.file("bad-trust", "# ok\nssh-ed25519 AAAA\n")) }
    }
}

extension BuildKeyTests {
    /// Item 7: `/ac/<build key>` from a trusted but lying uploader: a manifest listing the real
    /// volume beside a volume with a backdoor, or a wheel carrying another volume. Nothing is
    /// published, the reason is said, and the build goes on here (the restore gives nil).
    @Test(.enabled(if: Machine.hasExecutable(WebDAVCache.nginx)), .timeLimit(.minutes(60)))
    func aWholeBuildThatDisagreesWithItsManifestIsNotPublished() throws {
        let server = try WebDAVCache()
        let said = Collected()
        let (a, _, key) = try uploadedBuild(to: server)
        let honest = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/" + a.name(.manifest)))) as? [String: Any])

        /// `honest` with `file`'s output replaced by `bytes` (put into `/cas/`), signed for the key.
        func forge(_ file: String, _ bytes: Data) throws {
            let digest = SHA256Digest.of(bytes)
            try bytes.write(to: URL(fileURLWithPath: server.data + "/cas/" + digest.hex))
            var forged = honest
            forged["outputs"] = (honest["outputs"] as! [[String: Any]]).map { output in
                var output = output
                if output["file"] as? String == file { (output["sha256"], output["size"]) = (digest.hex, bytes.count) }
                return output
            }
            try server.serveBuild(manifest: try JSONSerialization.data(withJSONObject: forged), key: key)
        }
        func machineB(_ label: String, says reason: String) throws {
            let target = directory.path + "/" + label
            try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
            let b = try build(settings: {
                $0.outputDirectory = target
                $0.remoteCache = try? remoteCache(server, store: label + "-store", said: said)
            })
            let mark = said.text.count
            #expect(try b.restoreFromRemoteCache() == nil, "\(label) was published")
            #expect(try FileManager.default.contentsOfDirectory(atPath: target).isEmpty, "\(label) left files")
            let now = String(said.text.dropFirst(mark))
            #expect(now.contains("\(server.url)/ac/\(key.hex)") && now.contains(reason) && now.contains("nothing published, building here"), "\(now)")
        }

        let backdoored = directory.path + "/backdoored.tar.xz"
        _ = try packVolume(a, at: backdoored, extra: true)
        try forge(a.name(.volume), try Data(contentsOf: URL(fileURLWithPath: backdoored)))
        try machineB("b", says: "not listed: bin/backdoor")

        let otherWheelDirectory = TemporaryDirectory("krnative-other-wheel")
        var payload = a.wheelPayload(in: out)
        payload[a.name(.volume)] = backdoored
        let otherWheel = try PluginWheel(target: .manylinuxX86_64, version: "4.1.0", sourceDateEpoch: 0).write(into: otherWheelDirectory.path, payload: payload)
        try forge(a.name(.wheel), try Data(contentsOf: URL(fileURLWithPath: otherWheelDirectory.path + "/" + (otherWheel as NSString).lastPathComponent)))
        try machineB("c", says: "is not the \(a.name(.volume)) beside it")

        try forge(a.name(.ttyd), Data("another ttyd".utf8))
        try machineB("e", says: "the volume's bin/ttyd")

        // The honest entry, signed by the trusted key, is used.
        try server.serveBuild(manifest: try Data(contentsOf: URL(fileURLWithPath: out + "/" + a.name(.manifest))), key: key)
        let honestB = try build(settings: {
            $0.outputDirectory = directory.path + "/d"
            $0.remoteCache = try? remoteCache(server, store: "d-store", said: said)
        })
        try FileManager.default.createDirectory(atPath: directory.path + "/d", withIntermediateDirectories: true)
        #expect(try honestB.restoreFromRemoteCache()?.buildKey == key, "\(said.text)")
    }
}
