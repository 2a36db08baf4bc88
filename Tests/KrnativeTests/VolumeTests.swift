import Build
import Foundation
import KrnativeBase
import Lock
import Sandbox
import Testing

/// The product end to end: `krnative build --target manylinux-x86_64` from stand-in inputs
/// (scripts/standin-lock: a PBS-layout CPython 3.13 from this machine, Debian's ttyd sources, the
/// real wheels and Zig through pip), twice, then the agent's view of the plugin wheel.
@Suite("Volume and plugin wheel", .tags(.compile, .namespaces, .pypi), .serialized)
struct VolumeTests {
    static let store: String = {
        if let shared = ProcessInfo.processInfo.environment["KRNATIVE_TEST_STORE"], !shared.isEmpty { return shared }
        var template = Array((NSTemporaryDirectory() + "/krnative-volume-store.XXXXXX").utf8CString)
        return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    }()

    func ready() -> Bool {
        guard ProcessInfo.processInfo.environment["KRNATIVE_TEST_SOURCES"] != nil, Sandbox.userNamespacesWork, HostPlatform.current.arch == .x86_64 else {
            print("SKIPPED the volume build: it needs KRNATIVE_TEST_SOURCES (scripts/test), user namespaces and an x86_64 host")
            return false
        }
        return true
    }

    func build(_ lock: String, out: String, environment: [String: String] = [:], umask: String = "022") throws -> ChildProcess.Result {
        let result = ChildProcess.run(
            ["bash", "-c", "umask \(umask) && exec \"$@\"", "bash", "env"] + environment.map { "\($0.key)=\($0.value)" } + [
                Package.binary, "build", "--lock", lock, "--store", Self.store, "--target", "manylinux-x86_64", "--out", out,
                "--config", Package.root + "/krunner.json", "--patches", Package.root + "/patches",
            ])
        try #require(result.succeeded, "krnative build failed: \(result.stderr.suffix(3000))")
        return result
    }

    @Test func buildsTwiceToTheSameBytesAndTheAgentUsesIt() throws {
        guard ready() else { return }
        let work = TemporaryDirectory("krnative-volume")
        var environment = ProcessInfo.processInfo.environment
        environment["KRNATIVE"] = Package.binary
        environment["KRNATIVE_STORE"] = Self.store
        let standin = ChildProcess.run([Package.root + "/scripts/standin-lock", work.path + "/standin"], environment: environment, directory: Package.root)
        try #require(standin.succeeded, "standin-lock: \(standin.stderr)")
        let lock = standin.stdout.trimmingCharacters(in: .whitespacesAndNewlines)

        _ = try build(lock, out: work.path + "/one")
        _ = try build(lock, out: work.path + "/two/elsewhere", environment: ["TZ": "Pacific/Chatham", "LC_ALL": "C", "HOME": work.path], umask: "077")
        let manifest = try JSONDecoder().decode(BuildManifest.self, from: Data(contentsOf: URL(fileURLWithPath: work.path + "/one/krnative-manifest.static-gnu.x86_64.json")))
        for output in manifest.outputs.map(\.file) + ["krnative-manifest.static-gnu.x86_64.json"] {
            let a = try SHA256Digest.of(fileAt: work.path + "/one/" + output), b = try SHA256Digest.of(fileAt: work.path + "/two/elsewhere/" + output)
            print("\(output): \(a.digest) (\(a.size) bytes)")
            #expect(a.digest == b.digest, "\(output) differs between two builds")
        }
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
        #expect(found.first?["version"] as? Int == 14)
        let volume = try #require(found.first?["volume"] as? String)
        #expect(volume.hasSuffix("/backendai-krunner.v14.x86_64.static-gnu"))

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
    }
}
