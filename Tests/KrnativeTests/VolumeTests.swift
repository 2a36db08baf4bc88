import Archive
import Build
import Foundation
import KrnativeBase
import Lock
import Sandbox
import Testing
import Verify

/// The product end to end: `krnative build --target manylinux-x86_64` from stand-in inputs
/// (scripts/standin-lock: a PBS-layout CPython 3.13 from this machine, Debian's ttyd sources, the
/// real wheels and Zig through pip), twice, then the agent's view of the plugin wheel.
@Suite("Volume and plugin wheel", .timeLimit(.minutes(60)), .tags(.compile, .namespaces, .pypi), .endToEnd, .serialized)
struct VolumeTests {
    /// The compile tests' store: ttyd's steps (the same sources, toolchain and epoch) and Zig's
    /// warmed libraries are made once for both suites.
    static var store: String { CompileTests.store.path }

    /// A copy of the committed ledger: the stand-in volume is recorded there, never in krunner-volumes.json.
    static let ledger: String = {
        let path = NSTemporaryDirectory() + "/krnative-volume-ledger-\(getpid()).json"
        try? FileManager.default.removeItem(atPath: path)
        try? FileManager.default.copyItem(atPath: Package.root + "/krunner-volumes.json", toPath: path)
        return path
    }()

    /// `krnative build` of manylinux-x86_64 from `lock`; the stand-in runtime breaks manylinux2014
    /// (it is this machine's CPython), so the audit reports rather than fails.
    func build(_ lock: String, out: String, config: String = Package.root + "/krunner.json", _ extra: [String] = []) throws -> ChildProcess.Result {
        let result = run(lock, out: out, config: config, extra)
        try #require(result.succeeded, "krnative build failed: \(result.stderr.suffix(3000))")
        return result
    }

    /// `krnative build` of manylinux-x86_64, its volume checked against (and recorded in) the ledger copy.
    func run(
        _ lock: String, out: String, config: String = Package.root + "/krunner.json", ledger: String = Self.ledger, store: String = Self.store,
        _ extra: [String] = []
    ) -> ChildProcess.Result {
        ChildProcess.run(
            [
                Package.binary, "build", "--lock", lock, "--store", store, "--target", "manylinux-x86_64", "--out", out,
                "--config", config, "--patches", Package.root + "/patches", "--policy", Package.root + "/sysroots/audit-policy.json",
                "--audit", "report", "--ledger", ledger, "--record-volume",
            ] + extra, directory: Package.root)
    }

    @Test(.needsCompile, .enabled(if: HostPlatform.current.arch == .x86_64, "the stand-in runtime is this x86_64 machine's CPython"))
    func buildsReproduciblyPassesAuditAndSmokeAndTheAgentUsesIt() throws {
        let work = TemporaryDirectory("krnative-volume")
        var environment = ProcessInfo.processInfo.environment
        environment["KRNATIVE"] = Package.binary
        environment["KRNATIVE_STORE"] = Self.store
        chmod(work.path, 0o755)  // the check's ordinary user reaches its run directory through it
        let standin = ChildProcess.run([Package.root + "/scripts/standin-lock", work.path + "/standin"], environment: environment, directory: Package.root)
        try #require(standin.succeeded, "standin-lock: \(standin.stderr)")
        let lock = standin.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        chmod(work.path + "/standin", 0o755)  // and the lock, whatever the umask (the check user reads it)
        chmod(lock, 0o644)

        // Machine A uploads what it fetched and compiled to a team's cache (nginx with WebDAV).
        try #require(Machine.hasExecutable(WebDAVCache.nginx), "nginx is not installed (scripts/setup installs nginx-light)")
        let cache = try WebDAVCache()
        let machineA = Date()
        _ = try build(lock, out: work.path + "/one", ["--remote-cache", cache.url, "--remote-cache-upload"] + cache.keyOptions)
        print("machine A, cold, uploading: \(String(format: "%.0f", Date().timeIntervalSince(machineA))) s")
        try machineBBuildsFromTheCacheAlone(lock: lock, cache: cache, reference: work.path + "/one", work: work.path)
        let manifest = try JSONDecoder().decode(BuildManifest.self, from: Data(contentsOf: URL(fileURLWithPath: work.path + "/one/krnative-manifest.static-gnu.x86_64.json")))
        for output in manifest.outputs { print("\(output.file): \(output.sha256) (\(output.size) bytes)") }
        #expect(!FileManager.default.fileExists(atPath: work.path + "/one/.krnative-staging-\(getpid())"))

        // What the volume holds.
        let paths = Set(manifest.volume.map(\.path))
        for path in ["./bin/python", "./bin/python3", "./bin/ttyd", "./bin/jupyter-kernel", "./lib/python3.13/site-packages/ai/backend/kernel",
            "./lib/python3.13/site-packages/ai/backend/helpers", "./licenses/ttyd/LICENSE", "./licenses/python/LICENSE.txt"] {
            #expect(paths.contains(path), "\(path) missing from the volume")
        }
        #expect(manifest.volume.first { $0.path == "./bin/ttyd" }?.mode == "755")
        #expect(manifest.volume.contains { $0.path.hasSuffix(".cpython-313.pyc") && $0.path.contains("/site-packages/zmq/") })
        #expect(manifest.patches.contains { $0.patch.hasSuffix("10-ping-pong.json") && $0.edits == 2 })

        // The agent: pip install the wheel into a fresh venv, scan, read, extract.
        let venv = work.path + "/venv"
        try ChildProcess.check(["python3", "-m", "venv", venv])
        let wheel = manifest.outputs.first { $0.file.hasSuffix(".whl") }!.file
        try ChildProcess.check([venv + "/bin/pip", "install", "--no-index", "--disable-pip-version-check", "-q", work.path + "/one/" + wheel])
        let agent = try ChildProcess.check([venv + "/bin/python", Package.supportDirectory + "/agent_consumer.py", work.path + "/agent"])
        let found = try JSONSerialization.jsonObject(with: Data(agent.stdout.utf8)) as! [[String: Any]]
        #expect(found.count == 1)
        #expect(found.first?["entry"] as? String == "static_gnu")
        #expect(found.first?["distro"] as? String == "static-gnu")
        #expect(found.first?["version"] as? Int == 15)
        let volume = try #require(found.first?["volume"] as? String)
        #expect(volume.hasSuffix("/backendai-krunner.v15.x86_64.static-gnu"))

        // The unpacked volume at /opt/backend.ai, read-only, imports the krunner modules.
        let scratch = TemporaryDirectory()
        let spec = SandboxSpec(
            argv: ["/opt/backend.ai/bin/python3", "-c", "import zmq, uvloop, attrs, janus, msgpack, jupyter_client, setproctitle, sys; print(sys.version.split()[0], zmq.zmq_version())"],
            environment: ["PYTHONDONTWRITEBYTECODE": "1"],
            mounts: [.readOnly(volume, at: "/opt/backend.ai"), .writable(scratch.path)], workingDirectory: scratch.path)
        let imported = try SandboxRunner(entryExecutable: Package.binary).run(spec)
        print("the volume's python: \(imported.outputTail)")
        #expect(imported.outputTail.hasPrefix("3.13."))
        let version = ChildProcess.run([volume + "/bin/ttyd", "--version"])
        #expect(version.stdout.contains("ttyd version") || version.stderr.contains("ttyd version"))

        try checkVariations(lock: lock, out: work.path + "/one")
        try auditAndSmoke(out: work.path + "/one")
        try verifyAndRebuild(lock: lock, out: work.path + "/one", work: work.path)
    }

    /// Machine B: its own empty store, every URL of the lock blocked and no pip, only the cache
    /// machine A filled. First the whole build comes from the cache under its build key (nothing
    /// fetched, nothing built); then, with that record gone, every input and every ttyd step comes
    /// from the cache and nothing is compiled. Both times the outputs are A's to the bit.
    func machineBBuildsFromTheCacheAlone(lock: String, cache: WebDAVCache, reference: String, work: String) throws {
        let blockEverything = work + "/block-everything.conf"
        try Data("block http\nblock file\n".utf8).write(to: URL(fileURLWithPath: blockEverything))
        let name = "krnative-manifest.static-gnu.x86_64.json"
        let a = try JSONDecoder().decode(BuildManifest.self, from: Data(contentsOf: URL(fileURLWithPath: reference + "/" + name)))
        func machineB(_ label: String) throws -> (ChildProcess.Result, BuildManifest) {
            let started = Date()
            let result = run(
                lock, out: work + "/" + label, store: work + "/" + label + "-store",
                ["--remote-cache", cache.url, "--mirrors", blockEverything, "--python", "/bin/false"] + cache.keyOptions)
            print("\(label) from the remote cache: \(String(format: "%.0f", Date().timeIntervalSince(started))) s")
            try #require(result.succeeded, "\(label): \(result.stderr.suffix(3000))")
            #expect(!result.stderr.contains("remote cache:"), "the cache warned: \(result.stderr.suffix(3000))")
            let b = try JSONDecoder().decode(BuildManifest.self, from: Data(contentsOf: URL(fileURLWithPath: work + "/" + label + "/" + name)))
            #expect(a.outputs.map(\.file) == b.outputs.map(\.file))
            #expect(a.outputs.map(\.sha256) == b.outputs.map(\.sha256), "\(label)'s outputs differ from A's")
            return (result, b)
        }
        let (whole, _) = try machineB("machine-b-whole")
        #expect(whole.stderr.contains("from the remote cache"), "\(whole.stderr.suffix(2000))")
        #expect(!whole.stderr.contains("fetched ") && !whole.stderr.contains("ttyd: "), "\(whole.stderr.suffix(2000))")

        let key = try #require(a.buildKey)
        try FileManager.default.removeItem(atPath: cache.data + "/ac/" + key.hex)
        let (stepwise, _) = try machineB("machine-b-steps")
        #expect(stepwise.stderr.contains(" 0 compiled, 0 cached, "), "\(stepwise.stderr.suffix(3000))")
        #expect(!stepwise.stderr.contains(": building for "))
    }

    /// The variation harness: every variation this machine can apply, offline, compared entry by
    /// entry with the first build, in three builds (each compiles the .pyc and packs the volume
    /// again, a few minutes here): `path+user+jobs`, as another user at another path from an empty
    /// step cache with other compile jobs and pack threads (ttyd compiled again: a step's key names
    /// its jobs, so `jobs` compiles wherever it runs); the other cheap ones together, as
    /// `build --check` runs them; and `file-order`, under disorderfs.
    func checkVariations(lock: String, out: String) throws {
        let cheap = Variation.together.filter { $0 != .jobs }.map(\.rawValue).joined(separator: "+")
        let runs = ["path+user+jobs", cheap, Variation.fileOrder.rawValue]
        #expect(Set(runs.flatMap { $0.split(separator: "+").map(String.init) }) == Set(Variation.allCases.map(\.rawValue)), "a variation is left out")
        let result = ChildProcess.run(
            [
                Package.binary, "build", "--lock", lock, "--store", Self.store, "--target", "manylinux-x86_64",
                "--out", out, "--config", Package.root + "/krunner.json", "--patches", Package.root + "/patches", "--audit", "report",
                "--ledger", Self.ledger, "--check", "--variations", runs.joined(separator: ","), "--json",
            ], directory: Package.root)
        let report = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
        let made = try #require(report?["runs"] as? [[String: Any]], "no check report: \(result.stderr.suffix(3000))")
        let volume = "krunner-env.static-gnu.x86_64.tar.xz"
        print("variation harness (reference \(((report?["referenceOutputs"] as? [String: String]) ?? [:])[volume] ?? "-")):")
        for run in made {
            let outputs = run["outputs"] as? [String: String] ?? [:]
            let notApplied = run["notApplied"] as? [String: String] ?? [:]
            print("  \(run["name"]!): identical \(run["identical"]!), volume \(outputs[volume] ?? "-"), \(Int(run["seconds"] as? Double ?? 0)) s\(notApplied.isEmpty ? "" : ", not applied: \(notApplied)")")
            #expect(run["identical"] as? Bool == true, "variation \(run["name"]!): \(run["error"] ?? run["differences"] ?? "")")
            // As root with scripts/setup's packages, this machine applies every variation.
            if geteuid() == 0 { #expect(notApplied.isEmpty, "\(run["name"]!): \(notApplied)") }
        }
        #expect(made.compactMap { $0["name"] as? String } == runs)
        #expect(result.succeeded, "\(result.stderr.suffix(2000))")
        #expect(!FileManager.default.fileExists(atPath: out + ".check/path+user+jobs"), "an identical run is not kept")
    }

    /// The audit finds in the stand-in runtime exactly what makes it not manylinux2014 (this
    /// glibc's symbol versions) and nothing in the wheels or ttyd; the smoke test runs the volume
    /// on Debian minbase, and fails a volume that lacks a module, naming it.
    func auditAndSmoke(out: String) throws {
        let tarball = out + "/krunner-env.static-gnu.x86_64.tar.xz"
        let audit = krnative(["audit", tarball, "--target", "manylinux-x86_64", "--policy", Package.root + "/sysroots/audit-policy.json", "--json"])
        let report = try #require(try JSONSerialization.jsonObject(with: Data(audit.stdout.utf8)) as? [String: Any])
        let violations = (report["violations"] as? [[String: String]] ?? [])
        print("audit: \(report["elfFiles"]!) ELF files, \(violations.count) violations, all in the stand-in runtime")
        #expect(audit.termination == .exited(ExitStatus.policy))
        #expect(!violations.isEmpty)
        for violation in violations {
            let file = violation["file"] ?? ""
            #expect(file.hasPrefix("bin/python3") || file.hasPrefix("lib/libpython3") || file.hasPrefix("lib/python3.13/lib-dynload/") || (file.hasPrefix("lib/lib") && !file.contains("/site-packages/")), "\(violation)")
            // Symbol versions of this glibc (and zlib) beyond manylinux2014's; every library it needs is carried.
            let problem = violation["problem"] ?? ""
            #expect(problem.hasPrefix("needs GLIBC_2.") || problem.hasPrefix("needs ZLIB_1."), "\(violation)")
        }
        let manifest = try JSONDecoder().decode(BuildManifest.self, from: Data(contentsOf: URL(fileURLWithPath: out + "/krnative-manifest.static-gnu.x86_64.json")))
        #expect(manifest.audit?.violations.count == violations.count)
        #expect(manifest.audit?.mode == .report)

        // The stand-in runtime is this machine's CPython, built against its glibc (it asks for
        // GLIBC_2.35; bookworm has 2.36): it cannot run on bullseye (glibc 2.31), where
        // sysroots/smoke.json puts glibc volumes. So this volume is smoke-tested on bookworm.
        let work = TemporaryDirectory("krnative-smoke")
        var description = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Package.root + "/sysroots/smoke.json"))) as! [String: Any]
        description["suites"] = ["gnu": "bookworm", "musl": "bookworm"]
        let sysroot = work.file("smoke.json", try JSONSerialization.data(withJSONObject: description))
        let store = ["--store", Self.store, "--sysroot", sysroot, "--target", "manylinux-x86_64"]
        let smoke = krnative(["smoke", "--volume", tarball] + store)
        print("smoke: \(smoke.stdout)")
        #expect(smoke.succeeded, "\(smoke.stderr.suffix(3000))")
        #expect(smoke.stdout.contains("imports ok") && smoke.stdout.contains("ttyd version"))
        #expect(smoke.stdout.contains("CA certificates ") && smoke.stdout.contains(" runs on Debian 12."), "\(smoke.stdout)")

        let broken = TemporaryDirectory("krnative-smoke")
        _ = try SafeExtractor().extract(tarball, into: broken.path)
        try FileManager.default.removeItem(atPath: broken.path + "/lib/python3.13/site-packages/janus")
        let failed = krnative(["smoke", "--volume", broken.path] + store)
        #expect(failed.termination == .exited(ExitStatus.process))
        #expect(failed.stderr.contains("No module named 'janus'"))
    }

    /// verify rebuilds from the manifest and agrees; a manifest that says otherwise is caught, by
    /// path; a second build is a no-op; a version bump rebuilds without compiling.
    func verifyAndRebuild(lock: String, out: String, work: String) throws {
        let manifestPath = out + "/krnative-manifest.static-gnu.x86_64.json"
        // The stand-in runtime breaks manylinux2014: verify enforces the audit unless told here, as the build was.
        let common = [
            "--lock", lock, "--store", Self.store, "--patches", Package.root + "/patches", "--policy", Package.root + "/sysroots/audit-policy.json",
            "--audit", "report",
        ]
        let verified = ChildProcess.run([Package.binary, "verify", "--manifest", manifestPath, "--out", work + "/verify"] + common)
        #expect(verified.succeeded, "\(verified.stderr.suffix(3000))")
        #expect(verified.stdout.hasSuffix("identical\n"))

        var tampered = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: manifestPath))) as! [String: Any]
        var volume = tampered["volume"] as! [[String: Any]]
        let index = volume.firstIndex { $0["path"] as? String == "./bin/ttyd" }!
        volume[index]["sha256"] = String(repeating: "0", count: 64)
        tampered["volume"] = volume
        var outputs = tampered["outputs"] as! [[String: Any]]
        let tarball = outputs.firstIndex { ($0["file"] as! String).hasSuffix(".tar.xz") }!
        outputs[tarball]["sha256"] = String(repeating: "1", count: 64)
        tampered["outputs"] = outputs
        let tamperedPath = work + "/tampered.json"
        try JSONSerialization.data(withJSONObject: tampered).write(to: URL(fileURLWithPath: tamperedPath))
        let caught = ChildProcess.run([Package.binary, "verify", "--manifest", tamperedPath, "--out", work + "/verify", "--json"] + common)
        #expect(caught.termination == .exited(1))
        let report = try JSONDecoder().decode(DiffReport.self, from: Data(caught.stdout.utf8))
        #expect(report.differences.map(\.path) == ["krunner-env.static-gnu.x86_64.tar.xz"])
        #expect(report.differences.first?.inner?.map(\.path) == ["bin/ttyd"])

        let started = Date()
        let again = try build(lock, out: out)
        #expect(again.stdout.contains("is up to date"))
        print("no-op rebuild: \(String(format: "%.2f", Date().timeIntervalSince(started))) s")

        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Package.root + "/krunner.json"))) as! [String: Any]
        var versions = config["volumeVersions"] as! [String: Int]
        versions["static-gnu"]! += 1
        config["volumeVersions"] = versions
        let bumped = work + "/krunner-bumped.json"
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: bumped))
        // The ledger: the first build recorded v15; the same number with other contents (a ledger
        // whose v15 holds another tree) fails naming both tree hashes and the fix, and writes nothing.
        let recorded = try VolumeLedger.load(from: Self.ledger)
        #expect(recorded.volumes.map(\.volume) == [versions["static-gnu"]! - 1])
        let tree = try #require(recorded.volumes.first?.treeSha256)
        var forged = recorded
        forged.volumes[0].treeSha256 = String(repeating: "0", count: 64)
        let forgedPath = work + "/forged-ledger.json"
        try forged.write(to: forgedPath)
        let reused = run(lock, out: work + "/reused", ledger: forgedPath, ["--force"])
        #expect(reused.termination == .exited(ExitStatus.integrity), "\(reused.stderr.suffix(2000))")
        #expect(reused.stderr.contains(String(repeating: "0", count: 64)) && reused.stderr.contains(tree), "\(reused.stderr.suffix(2000))")
        #expect(reused.stderr.contains("to \(versions["static-gnu"]!)"))
        #expect(!FileManager.default.fileExists(atPath: work + "/reused/krnative-manifest.static-gnu.x86_64.json"))

        let rebuilt = try build(lock, out: work + "/bumped", config: bumped)
        // After the bump it builds, and the ledger gains one entry: v16, the same tree.
        let after = try VolumeLedger.load(from: Self.ledger).volumes
        #expect(after.count == recorded.volumes.count + 1)
        #expect(after.last?.volume == versions["static-gnu"]! && after.last?.treeSha256 == tree)
        #expect(!rebuilt.stderr.contains(": building for "), "a version bump compiled: \(rebuilt.stderr.suffix(2000))")
        #expect(rebuilt.stderr.contains(": cached ("))
        #expect(try String(contentsOfFile: work + "/bumped/krunner-version.static-gnu.txt", encoding: .utf8) == "\(versions["static-gnu"]!)\n")
        let ttyd = "ttyd_linux.x86_64.bin"
        #expect(try SHA256Digest.of(fileAt: out + "/" + ttyd).digest == SHA256Digest.of(fileAt: work + "/bumped/" + ttyd).digest)
    }
}
