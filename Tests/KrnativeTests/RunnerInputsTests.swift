import Bundle
import Foundation
import KrnativeBase
import Lock
import Store
import Testing

/// What `build-runner` is built from, through the krnative binary, with no compiler: it fetches it
/// itself (as `build` does), `--offline` names exactly the set's inputs and the one way to bring
/// them, and `fetch --runner` / `bundle export --runner` take the same inputs across an air gap,
/// whose import says the `build-runner` command to run next. Before, `build-runner` fetched
/// nothing, and no bundle could carry dropbear's, OpenSSH's or tmux's sources.
@Suite("Runner binaries' inputs across an air gap", .timeLimit(.minutes(60)), .tags(.process), .endToEnd, .serialized)
struct RunnerInputsTests {
    /// The sources the four runner recipes build (recipes/*.json), and the toolchain they use.
    static let runnerInputs = [
        "dropbear", "json-c", "libevent", "libuv", "libwebsockets", "mbedtls", "ncurses", "openssh", "tmux", "ttyd", "zlib",
        "zig-\(HostPlatform.current.rawValue)",
    ]
    /// Inputs of the lock that no runner binary uses: a volume's runtime, wheel, source and toolchain.
    static let otherInputs = ["cpython-standalone", "attrs", "cpython", "musl-cross-x86_64-linux-musl"]

    let work = TemporaryDirectory("krnative-runner-inputs")
    var lock: String { work.path + "/krnative.lock.json" }
    var source: String { work.path + "/source" }

    /// A lock of every input above, all of them in the store `source`: each source a small
    /// archive of its own (with its tree hash, through `lock add`), the others a few random bytes.
    init() throws {
        let store = try Store(root: work.path + "/source")
        var inputs: [LockedInput] = []
        let kinds: [String: LockedInput.Kind] = ["cpython-standalone": .runtime, "attrs": .wheel, "zig-\(HostPlatform.current.rawValue)": .toolchain,
            "musl-cross-x86_64-linux-musl": .toolchain]
        for (name, kind) in kinds {
            let (digest, size) = try store.ingest(copying: work.file(name, randomData(2_000)))
            inputs.append(
                LockedInput(
                    name: name, kind: kind, version: "1", filename: "\(name).tar.gz", sha256: digest, size: size, urls: ["http://127.0.0.1:9/\(name).tar.gz"],
                    host: kind == .toolchain ? .current : nil))
        }
        try Lockfile(sourceDateEpoch: 1_700_000_000, inputs: inputs).write(to: lock)
        for name in Self.runnerInputs + Self.otherInputs where kinds[name] == nil {
            _ = work.file("src/\(name)-1/README", "\(name)\n")
            try ChildProcess.check(["tar", "-czf", "../\(name).tar.gz", "\(name)-1"], directory: work.path + "/src")
            try ChildProcess.check(
                [Package.binary, "lock", "add", "--lock", lock, "--store", source, "--name", name, "--kind", "source", "--upstream-version", "1",
                 "--file", work.path + "/\(name).tar.gz", "--url", "http://127.0.0.1:9/\(name).tar.gz"])
        }
    }

    /// The input names of an `--offline` report's table (its lines between the head and the advice).
    func missing(in stderr: String) -> Set<String> {
        let lines = stderr.split(separator: "\n").map(String.init)
        guard let head = lines.firstIndex(where: { $0.contains("not in the store, and --offline forbids downloading") }) else { return [] }
        return Set(lines[(head + 1)...].prefix { $0.hasPrefix("  ") && !$0.hasPrefix("  krnative") }.compactMap { $0.split(separator: " ").first.map(String.init) })
    }

    @Test func buildRunnerOfflineNamesExactlyTheSetsInputsAndHowToBringThem() {
        let empty = work.path + "/empty"
        let built = krnative(["build-runner", "--arch", "aarch64", "--offline", "--lock", lock, "--store", empty, "--out", work.path + "/out"])
        #expect(built.termination == .exited(66), "\(built.stderr)")
        #expect(missing(in: built.stderr) == Set(Self.runnerInputs), "\(built.stderr)")
        #expect(
            built.stderr.contains("krnative fetch --lock \(lock) --target musllinux-aarch64 --runner && krnative bundle export inputs.tar --lock \(lock) --target musllinux-aarch64 --runner"),
            "\(built.stderr)")
        #expect(!FileManager.default.fileExists(atPath: work.path + "/out/krnative-runner-manifest.aarch64.json"))

        let narrowed = krnative(["build-runner", "--arch", "aarch64", "--only", "sftp-server", "--offline", "--lock", lock, "--store", empty, "--out", work.path + "/out"])
        #expect(missing(in: narrowed.stderr) == ["openssh", "zig-\(HostPlatform.current.rawValue)"], "\(narrowed.stderr)")

        let fetched = krnative(["fetch", "--target", "musllinux-aarch64", "--runner", "--offline", "--lock", lock, "--store", empty])
        #expect(fetched.termination == .exited(66) && missing(in: fetched.stderr) == Set(Self.runnerInputs), "\(fetched.stderr)")
        let contradicted = krnative(["fetch", "--target", "musllinux-aarch64", "--runner", "--runtime", "source", "--offline", "--lock", lock, "--store", empty])
        #expect(contradicted.termination == .exited(64) && contradicted.stderr.contains("drop --toolchain and --runtime"), "\(contradicted.stderr)")
    }

    /// `verify` of a runner set's manifest takes its inputs from the store alone, as a volume's
    /// does: what is missing is named with the `--runner` way to bring it, before any step.
    @Test func verifyingARunnerManifestOfflineNamesItsMissingInputs() throws {
        let manifest = work.file(
            "krnative-runner-manifest.x86_64.json",
            """
            {"tool": {"name": "krnative", "version": "0"}, "arch": "x86_64", "lockSha256": "\(try Lockfile.load(from: lock).digest.hex)",
             "sourceDateEpoch": 1700000000, "isolation": "namespaces",
             "binaries": [{"file": "sftp-server.x86_64.bin", "sha256": "\(String(repeating: "0", count: 64))", "size": 1,
                           "recipe": "sftp-server", "sources": [], "patches": []}]}
            """)
        let verified = krnative(["verify", "--manifest", manifest, "--lock", lock, "--store", work.path + "/empty", "--out", work.path + "/again"])
        #expect(verified.termination == .exited(66), "\(verified.stderr)")
        #expect(missing(in: verified.stderr) == ["openssh", "zig-\(HostPlatform.current.rawValue)"], "\(verified.stderr)")
        #expect(verified.stderr.contains("--target musllinux-x86_64 --runner"), "\(verified.stderr)")
    }

    @Test func aRunnerBundleCarriesTheSetsInputsAndSaysTheBuildRunnerCommand() throws {
        let file = work.path + "/runner.tar"
        let exported = krnative(["bundle", "export", file, "--target", "musllinux-x86_64", "--target", "musllinux-aarch64", "--runner", "--lock", lock, "--store", source, "--json"])
        try #require(exported.succeeded, "\(exported.stderr)")
        let manifest = try JSONDecoder().decode(BundleManifest.self, from: Data(exported.stdout.utf8))
        #expect(Set(manifest.inputs.map(\.name)) == Set(Self.runnerInputs), "\(manifest.inputs.map(\.name))")

        let other = work.path + "/other"
        let imported = krnative(["bundle", "import", file, "--lock", lock, "--store", other])
        try #require(imported.succeeded, "\(imported.stderr)")
        for arch in ["x86_64", "aarch64"] {
            #expect(imported.stdout.contains("build them with: krnative build-runner --arch \(arch) --lock \(lock) --store \(other) --offline"), "\(imported.stdout)")
        }
        let fetched = krnative(["fetch", "--target", "musllinux-x86_64", "--runner", "--offline", "--lock", lock, "--store", other])
        #expect(fetched.succeeded && fetched.stdout.contains("\(Self.runnerInputs.count) inputs: \(Self.runnerInputs.count) already in the store"), "\(fetched.stdout)\(fetched.stderr)")
    }
}
