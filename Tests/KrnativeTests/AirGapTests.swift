import Build
import Bundle
import Foundation
import KrnativeBase
import Lock
import Testing
import Toolchain

/// Issue #27 item 3: the air gap works for the build you run. Machine A holds the inputs of one
/// build (made of shell, `ShellRecipeInputs`: nothing compiles, everything else is real — the
/// sandbox, the step cache, the volume, the wheel); its lock also pins inputs that build never
/// uses (the musl-cross toolchain, the runtime's sources), absent from its store. A builds, exports
/// exactly that build's inputs, and machine B — an empty store, no lock, in a network namespace with
/// nothing but loopback — imports the bundle, takes the lock it carries, and builds offline: every
/// output as A's, byte for byte.
@Suite("Air gap: one build's inputs across", .timeLimit(.minutes(60)), .tags(.process, .namespaces), .endToEnd, .serialized, .needsNamespaces)
struct AirGapTests {
    var target: Target { HostPlatform.current.arch == .x86_64 ? .manylinuxX86_64 : .manylinuxAarch64 }

    /// A's inputs: ttyd's six sources, Zig, and a runtime (this machine's Python in the layout of
    /// python-build-standalone's archives, enough for the `.pyc` step); plus, pinned but never
    /// fetched, what other builds of the target would use.
    func machineA(_ work: TemporaryDirectory) throws -> ShellRecipeInputs {
        let inputs = try ShellRecipeInputs(work)
        try inputs.addTtydSources()
        try inputs.addHostPythonRuntime(for: target)
        let absent = SHA256Digest.of(Data("never fetched".utf8))
        inputs.add(
            LockedInput(
                name: ToolchainKind.muslCross.lockName(triple: target.ttydTriple, host: .current), kind: .toolchain, version: "11.2.1",
                filename: "musl-cross.tgz", sha256: absent, size: 1, urls: ["https://example.invalid/musl-cross.tgz"], host: .current))
        for name in ["bzip2", "openssl"] {
            inputs.add(
                LockedInput(
                    name: name, kind: .source, version: "1.0", filename: "\(name).tar.gz", sha256: absent, size: 1, treeSha256: absent,
                    urls: ["https://example.invalid/\(name).tar.gz"]))
        }
        try inputs.writeLock()
        return inputs
    }

    /// `krnative build` of the target with the project's config, policy and a ledger of its own.
    func buildArguments(lock: String, store: String, out: String, patches: String) -> [String] {
        [
            "build", "--target", target.rawValue, "--lock", lock, "--store", store, "--out", out, "--patches", patches,
            "--config", Package.root + "/krunner.json", "--policy", Package.root + "/sysroots/audit-policy.json", "--audit", "report",
            "--ledger", "none", "--compile-jobs", "1", "--pack-threads", "1",
        ]
    }

    /// Issue #27 item 4: `[k/n]` counts the whole build — ttyd's six steps, then laying out, the
    /// `.pyc`, packing and the wheel — where it counted each recipe's steps alone (`[6/6]` ended it).
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs the host's /usr/bin/python3"))
    func aBuildCountsItsStepsAndStagesAsOne() throws {
        let work = TemporaryDirectory("krnative-airgap")
        let a = try machineA(work)
        let built = krnative(buildArguments(lock: a.lock, store: a.store, out: work.path + "/out", patches: a.patches))
        try #require(built.succeeded, "\(built.stderr.suffix(2000))")
        // Each step's lines (its start and its end) carry its number: every number once. Steps that
        // need nothing of one another start together, in either order ([2/10] may print before
        // [1/10]); the stages after them run one after another, so those come in order.
        var numbers: [Int] = []
        for line in built.stderr.split(separator: "\n") where line.hasPrefix("[") {
            let counter = line.dropFirst().prefix { $0 != "/" }
            if let number = Int(counter), !numbers.contains(number) { numbers.append(number) }
        }
        #expect(numbers.sorted() == Array(1...10), "\(built.stderr)")
        #expect(numbers.suffix(4) == [7, 8, 9, 10], "\(built.stderr)")
        #expect(built.stderr.contains("[7/10] laying out the \(target.rawValue) volume"), "\(built.stderr)")
        #expect(built.stderr.contains("[10/10] writing the plugin wheel"), "\(built.stderr)")
    }

    /// Issue #23's probe, `--source-date-epoch N`: the volume's and the wheel's times are clamped
    /// to N, not the lock's epoch; the manifest records N; verify rebuilds the same bytes from it.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs the host's /usr/bin/python3"))
    func aSourceDateEpochOnTheCommandLineDecidesEveryTime() throws {
        let work = TemporaryDirectory("krnative-airgap")
        let a = try machineA(work)
        let out = work.path + "/out"
        let built = krnative(buildArguments(lock: a.lock, store: a.store, out: out, patches: a.patches) + ["--source-date-epoch", "1600000000"])
        try #require(built.succeeded, "\(built.stderr.suffix(2000))")
        let names = try FileManager.default.contentsOfDirectory(atPath: out)
        let volume = try #require(names.first { $0.hasPrefix("krunner-env.") && $0.hasSuffix(".tar.xz") })
        let wheel = try #require(names.first { $0.hasSuffix(".whl") })
        let manifest = try #require(names.first { $0.hasPrefix("krnative-manifest.") })
        let times = try ChildProcess.check([
            "/usr/bin/python3", "-c",
            "import sys, tarfile, zipfile, calendar; print(max(m.mtime for m in tarfile.open(sys.argv[1])), "
                + "max(calendar.timegm(i.date_time + (0, 0, 0)) for i in zipfile.ZipFile(sys.argv[2]).infolist()))",
            out + "/" + volume, out + "/" + wheel,
        ]).stdout.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        #expect(times == ["1600000000", "1600000000"], "the lock says 1700000000")
        let recorded = try JSONDecoder().decode(BuildManifest.self, from: Data(contentsOf: URL(fileURLWithPath: out + "/" + manifest)))
        #expect(recorded.sourceDateEpoch == 1_600_000_000 && recorded.request?.sourceDateEpoch == 1_600_000_000)
        let verified = krnative([
            "verify", "--manifest", out + "/" + manifest, "--lock", a.lock, "--store", a.store, "--out", work.path + "/verify", "--patches", a.patches,
            "--audit", "report",
        ])
        #expect(verified.termination == .exited(0), "\(verified.stdout)\(verified.stderr.suffix(2000))")
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs the host's /usr/bin/python3"))
    func aBuildsInputsCrossAndBBuildsTheSameBytesWithNoNetwork() throws {
        let work = TemporaryDirectory("krnative-airgap")
        let a = try machineA(work)
        let outA = work.path + "/a-out"
        let built = krnative(buildArguments(lock: a.lock, store: a.store, out: outA, patches: a.patches))
        try #require(built.succeeded, "\(built.stderr.suffix(2000))")

        // Before: export demanded every input of the target, the unused ones too.
        let bundle = work.path + "/inputs.tar"
        let exported = krnative(["bundle", "export", bundle, "--target", target.rawValue, "--lock", a.lock, "--store", a.store, "--json"])
        try #require(exported.succeeded, "\(exported.stderr)")
        let manifest = try JSONDecoder().decode(BundleManifest.self, from: Data(exported.stdout.utf8))
        let used = try VolumeBuild.inputs(of: target, in: try Lockfile.load(from: a.lock), host: .current, toolchain: .zig, runtime: .pbs)
        #expect(manifest.inputs.map(\.name).sorted() == used.map(\.name).sorted())
        #expect(!manifest.inputs.contains { ["bzip2", "openssl"].contains($0.name) || $0.name.hasPrefix("musl-cross") })
        #expect(manifest.build == "--target \(target.rawValue) --toolchain zig --runtime pbs")

        // Another build of the same target uses what A has not got: said, with the fetch that gets it.
        let other = krnative(["bundle", "export", work.path + "/other.tar", "--target", target.rawValue, "--runtime", "source", "--lock", a.lock, "--store", a.store])
        #expect(other.termination == .exited(ExitStatus.missingInput), "\(other.stderr)")
        #expect(other.stderr.contains("bzip2, ") && other.stderr.contains("openssl"), "\(other.stderr)")
        #expect(other.stderr.contains("`krnative fetch --lock \(a.lock) --target \(target.rawValue) --toolchain zig --runtime source`"), "\(other.stderr)")
        #expect(!FileSystem.exists(work.path + "/other.tar"))

        // Machine B: no lock, an empty store, a network namespace with nothing but loopback.
        let b = work.path + "/b"
        try FileSystem.createDirectory(b + "/patches")
        let lockB = b + "/krnative.lock.json"
        // A bundle cut short is refused whole, and its lock is not taken.
        let data = try FileSystem.readRegularFile(bundle)
        let cut = work.path + "/cut.tar"
        try data.prefix(data.count * 2 / 3).write(to: URL(fileURLWithPath: cut))
        let refused = krnative(["bundle", "import", cut, "--lock", lockB, "--store", b + "/cut-store", "--take-lock"])
        #expect(!refused.succeeded, "\(refused.stderr)")
        #expect(!FileSystem.exists(lockB), "the lock of a refused bundle was written")
        let withoutLock = krnative(["bundle", "import", bundle, "--lock", lockB, "--store", b + "/store"])
        #expect(withoutLock.termination == .exited(ExitStatus.missingInput), "\(withoutLock.stderr)")
        #expect(withoutLock.stderr.contains("`krnative bundle import \(bundle) --take-lock` writes it to \(lockB)"), "\(withoutLock.stderr)")
        #expect(withoutLock.stderr.contains("sha256 \(manifest.lockSha256)"), "\(withoutLock.stderr)")
        let flow = ChildProcess.run(
            [
                "unshare", "--user", "--map-root-user", "--net", "sh", "-c",
                "set -e; [ -z \"$(awk -F: 'NR > 2 && $1 !~ /^ *lo$/' /proc/self/net/dev)\" ] || { echo 'B has a network interface besides lo' >&2; exit 3; }; "
                    + "\"$0\" bundle import \"$1\" --lock \"$2\" --store \"$3\" --take-lock; shift 3; \"$0\" \"$@\" --offline",
                Package.binary, bundle, lockB, b + "/store",
            ] + buildArguments(lock: lockB, store: b + "/store", out: b + "/out", patches: b + "/patches"))
        try #require(flow.succeeded, "\(flow.stderr.suffix(3000))")
        #expect(flow.stderr.contains("wrote the lock \(bundle) carries to \(lockB)"), "\(flow.stderr)")
        #expect(flow.stdout.contains("build them with: krnative build --target \(target.rawValue) --toolchain zig --runtime pbs --lock \(lockB) --store \(b)/store --offline"), "\(flow.stdout)")
        #expect(try Lockfile.load(from: lockB).digest == manifest.lockSha256)

        // Every output of B is A's, byte for byte.
        let name = BuildManifest.fileName(for: target)
        let manifestA = try DuplicateJSONKey.decode(BuildManifest.self, from: try FileSystem.readRegularFile(outA + "/" + name))
        let manifestB = try DuplicateJSONKey.decode(BuildManifest.self, from: try FileSystem.readRegularFile(b + "/out/" + name))
        #expect(manifestA.outputs.map { [$0.file, $0.sha256.hex] } == manifestB.outputs.map { [$0.file, $0.sha256.hex] })
        for output in manifestA.outputs {
            #expect(try SHA256Digest.of(fileAt: b + "/out/" + output.file).0 == output.sha256, "\(output.file)")
        }
        let diff = krnative(["diff", outA, b + "/out"])
        #expect(diff.succeeded, "\(diff.stdout)")
    }
}
