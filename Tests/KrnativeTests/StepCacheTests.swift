import Archive
import Foundation
import Inputs
import KrnativeBase
import Lock
import Store
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The step cache through `krnative build-ttyd`, with ttyd's six sources made by hand: each builds
/// nothing but writes `$SOURCE_DATE_EPOCH` into the stage (ttyd's "binary" is that number), and
/// the Zig toolchain is a shell script, since no compiler runs.
@Suite("Step cache", .timeLimit(.minutes(60)), .tags(.process, .namespaces), .endToEnd, .needsNamespaces, .serialized)
struct StepCacheTests {
    let work = TemporaryDirectory("krnative-step-cache")
    var store: String { work.path + "/store" }

    /// A source tarball `name-version.tar.gz` of `files` (path, contents, executable), in the store and
    /// locked by its tree hash.
    func source(_ name: String, _ files: [(String, String, Bool)]) throws -> LockedInput {
        // libuv from 1.45 is built as a static library by its own switch, with cmake's install.
        let version = name == "libuv" ? "1.48.0" : "1.0"
        for (path, contents, executable) in files {
            let file = work.file("src/\(name)-\(version)/" + path, contents)
            chmod(file, executable ? 0o755 : 0o644)
        }
        let tarball = work.path + "/\(name)-\(version).tar.gz"
        try ChildProcess.check(["tar", "-C", work.path + "/src", "-czf", tarball, "\(name)-\(version)"])
        let input = LockedInput(
            name: name, kind: .source, version: version, filename: "\(name)-\(version).tar.gz", treeSha256: try TreeHash.ofArchive(at: tarball),
            urls: ["https://example.invalid/\(name)"])
        _ = try InputResolver(store: try Store(root: store)).importFile(tarball, for: input)
        return input
    }

    /// The fake Zig wheel (`ziglang/zig`, a script), in the store and locked.
    func toolchain() throws -> LockedInput {
        _ = work.file("zig/ziglang/zig", "#!/bin/sh\nexit 0\n")
        let archive = work.path + "/zig.tar"
        try ChildProcess.check(["tar", "-C", work.path + "/zig", "-cf", archive, "ziglang"])
        let digest = try SHA256Digest.of(fileAt: archive).digest
        let input = LockedInput(
            name: "zig-\(HostPlatform.current.rawValue)", kind: .toolchain, version: "0.14.0", filename: "zig.whl", sha256: digest,
            size: FileSystem.size(of: archive), urls: ["https://example.invalid/zig.whl"], host: .current)
        _ = try InputResolver(store: try Store(root: store)).importFile(archive, for: input)
        return input
    }

    /// ttyd's sources by hand: zlib's `configure` and the others' CMakeLists.txt (no language, so
    /// no compiler) each write `$SOURCE_DATE_EPOCH` into the stage; ttyd's is `bin/ttyd`.
    func inputs() throws -> [LockedInput] {
        let configure = """
            #!/bin/sh
            for argument; do case $argument in --prefix=*) prefix=${argument#--prefix=} ;; esac; done
            mkdir -p "$prefix" && printf '%s' "$SOURCE_DATE_EPOCH" > "$prefix/zlib-epoch"
            printf 'install:\\n\\t@true\\n' > Makefile

            """
        var inputs = [try toolchain(), try source("zlib", [("configure", configure, true)])]
        for name in ["json-c", "libuv", "mbedtls", "libwebsockets", "ttyd"] {
            let file = name == "ttyd" ? "bin/ttyd" : "\(name)-epoch"
            let cmake = "cmake_minimum_required(VERSION 3.10)\nproject(\(name == "json-c" ? "jsonc" : name) NONE)\n"
                + "file(WRITE \"${CMAKE_INSTALL_PREFIX}/\(file)\" \"$ENV{SOURCE_DATE_EPOCH}\")\n"
            inputs.append(try source(name, [("CMakeLists.txt", cmake, false)]))
        }
        return inputs
    }

    /// What the build's thread leaves; read after its semaphore.
    final class Outcome: @unchecked Sendable { var result: ChildProcess.Result? }

    struct Report: Decodable {
        struct Step: Decodable {
            var component: String
            var key: String
            var cached: Bool
        }
        var steps: [Step]
    }

    /// `build-ttyd` from a lock of `inputs` dated `epoch`, into `out`: its report and its ttyd.
    func buildTtyd(_ inputs: [LockedInput], epoch: Int64, out: String) throws -> (Report, String) {
        let lock = work.path + "/lock-\(epoch).json"
        try Lockfile(sourceDateEpoch: epoch, inputs: inputs).write(to: lock)
        try FileSystem.createDirectory(work.path + "/no-patches")
        let result = krnative([
            "build-ttyd", "--target", "manylinux-x86_64", "--lock", lock, "--store", store, "--out", out,
            "--patches", work.path + "/no-patches", "--jobs", "2", "--json",
        ])
        try #require(result.succeeded, "\(result.stderr)")
        let report = try JSONDecoder().decode(Report.self, from: Data(result.stdout.utf8))
        return (report, try String(contentsOfFile: out + "/ttyd_linux.x86_64.bin", encoding: .utf8))
    }

    /// Issue #23: every step's key covers SOURCE_DATE_EPOCH, which the steps see. Before, the
    /// second lock's build took every step from the cache and its ttyd said the first lock's date:
    /// the bytes depended on what the cache held.
    @Test(.timeLimit(.minutes(60))) func aStepsKeyCoversTheLocksEpoch() throws {
        let inputs = try inputs()
        let (first, firstTtyd) = try buildTtyd(inputs, epoch: 1_700_000_000, out: work.path + "/first")
        #expect(first.steps.count == 6 && first.steps.allSatisfy { !$0.cached })
        #expect(firstTtyd == "1700000000")

        let (redated, redatedTtyd) = try buildTtyd(inputs, epoch: 1_700_086_400, out: work.path + "/redated")
        #expect(redatedTtyd == "1700086400", "the ttyd of the second date was taken from the first date's steps")
        #expect(redated.steps.map(\.component) == first.steps.map(\.component))
        for (old, new) in zip(first.steps, redated.steps) {
            #expect(old.key != new.key, "\(new.component) kept its key when the lock's epoch changed")
            #expect(!new.cached, "\(new.component) came from the cache of another date")
        }

        // Equal keys still mean reuse: the first lock again takes every step from the cache.
        let (again, againTtyd) = try buildTtyd(inputs, epoch: 1_700_000_000, out: work.path + "/again")
        #expect(again.steps.map(\.key) == first.steps.map(\.key))
        #expect(again.steps.allSatisfy { $0.cached })
        #expect(againTtyd == "1700000000")
    }

    /// Runs `build-ttyd` of `lock` while `held` is held: it must still be waiting after 3 s,
    /// `item` not made yet; once the lock goes, the build finishes and `item` is there.
    func buildWaits(for held: FileLock, lock: String, item: String) throws {
        let finished = DispatchSemaphore(value: 0)
        let outcome = Outcome()
        let argv = [
            "build-ttyd", "--target", "manylinux-x86_64", "--lock", lock, "--store", store, "--out", work.path + "/waited",
            "--patches", work.path + "/no-patches", "--jobs", "2",
        ]
        Thread {
            outcome.result = krnative(argv)
            finished.signal()
        }.start()
        let early = finished.wait(timeout: .now() + 3)
        #expect(early == .timedOut, "the build did not wait for the item's lock")
        #expect(!FileManager.default.fileExists(atPath: item), "\(item) was written under a held lock")
        held.unlock()
        if early == .timedOut { #expect(finished.wait(timeout: .now() + 120) == .success) }
        let result = try #require(outcome.result)
        #expect(result.succeeded, "\(result.stderr)")
        #expect(FileManager.default.fileExists(atPath: item))
    }

    /// Issue #23: the toolchain's writer takes the lock `store gc` takes for `toolchains/<sha256>`
    /// (`Store.lock(_:_:)`). Before, it took `toolchain-<sha256>`: with gc's lock held, the build
    /// unpacked the toolchain anyway.
    @Test(.timeLimit(.minutes(60))) func theToolchainIsUnpackedUnderTheLockGcTakes() throws {
        let inputs = try inputs()
        let zig = try #require(inputs.first?.sha256)
        let lock = work.path + "/lock.json"
        try Lockfile(sourceDateEpoch: 1_700_000_000, inputs: inputs).write(to: lock)
        try FileSystem.createDirectory(work.path + "/no-patches")
        try buildWaits(for: try Store(root: store).lock(.toolchains, zig.hex), lock: lock, item: store + "/toolchains/" + zig.hex)
    }

    /// Issue #23: a step's result is put in the step cache under the lock gc takes for
    /// `steps/<key>`. Before, the snapshot took no lock: with gc's lock held, it was written.
    @Test(.timeLimit(.minutes(60))) func aStepsResultIsCachedUnderTheLockGcTakes() throws {
        let inputs = try inputs()
        let (first, _) = try buildTtyd(inputs, epoch: 1_700_000_000, out: work.path + "/first")
        let zlib = try #require(first.steps.first { $0.component == "zlib" }?.key)
        let cached = try Store(root: store)
        cached.quarantine(cached.item(.steps, zlib), reason: "test")  // zlib is compiled and cached again
        unlink(cached.treeHashRecord(.steps, zlib))
        try buildWaits(for: try cached.lock(.steps, zlib), lock: work.path + "/lock-1700000000.json", item: cached.item(.steps, zlib))
    }
}
