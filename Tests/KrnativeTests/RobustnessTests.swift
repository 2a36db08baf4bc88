import Archive
import Build
import Foundation
import KrnativeBase
import Lock
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Bad paths, signals and killed runs against the real krnative binary: documented exit
/// statuses, a message naming the path, nothing left running, outputs whole or absent.
@Suite("robustness", .timeLimit(.minutes(60)), .tags(.process), .endToEnd, .serialized)
struct RobustnessTests {
    let work = TemporaryDirectory("krnative-robust")

    // MARK: - No crash

    /// What a path argument is made to be.
    enum Subject: String, CaseIterable, Sendable {
        case missing, directory, empty, random, unwritable
    }

    /// `path` made as `subject`.
    func make(_ subject: Subject, _ label: String) -> String {
        // Under a wheel's file name, so that wheel install looks inside.
        let path = work.path + "/\(label)-\(subject.rawValue)/x-1.0-py3-none-any.whl"
        try? FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        switch subject {
        case .missing: break
        case .directory: try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        case .empty: _ = FileManager.default.createFile(atPath: path, contents: Data())
        case .random: _ = FileManager.default.createFile(atPath: path, contents: randomData(4096))
        case .unwritable:
            // Below a regular file: ENOTDIR even for root.
            _ = work.file("\(label)-blocker", "x")
            return work.path + "/\(label)-blocker/x-1.0-py3-none-any.whl"
        }
        return path
    }

    /// A lock that parses, naming one wheel nobody serves.
    func validLock() throws -> String {
        let path = work.path + "/good.lock.json"
        let input = wheelInput("w", sha256: SHA256Digest.of(Data("w".utf8)), urls: ["http://127.0.0.1:9/w-1.0-py3-none-any.whl"])
        try Lockfile(sourceDateEpoch: 1_700_000_000, inputs: [input]).write(to: path)
        return path
    }

    /// Each command with a path argument, as argv for `path`, and which subjects it takes as valid.
    func commands() throws -> [(name: String, argv: (String) -> [String], valid: Set<Subject>)] {
        let lock = try validLock(), store = work.path + "/store", root = Package.root
        // The lock is outside the project, so the project's files are named.
        let config = root + "/krunner.json", smokeDescription = root + "/sysroots/smoke.json"
        let someDirectory = work.path + "/some-dir"
        try FileSystem.createDirectory(someDirectory)
        let policy = root + "/sysroots/audit-policy.json"
        let target = "manylinux-x86_64", url = "http://127.0.0.1:9/x.whl"
        let wheel = try Self.tinyWheel(in: work.path)
        // A store that holds the lock's one input, so that `bundle export` gets to writing.
        let fullStore = work.path + "/full-store"
        let held = work.file("w-1.0-py3-none-any.whl", "w")
        #expect(krnative(["store", "import", held, "--lock", lock, "--store", fullStore]).succeeded)
        let notFiles: Set<Subject> = [.directory]
        return [
            ("fetch --lock", { ["fetch", "--lock", $0, "--store", store, "--all", "--offline"] }, []),
            ("build --lock", { ["build", "--target", target, "--lock", $0, "--store", store, "--offline", "--config", config, "--out", self.work.path + "/out"] }, []),
            ("build --config", { ["build", "--target", target, "--lock", lock, "--store", store, "--offline", "--config", $0, "--out", self.work.path + "/out"] }, []),
            ("build --out", { ["build", "--target", target, "--lock", lock, "--store", store, "--offline", "--config", config, "--out", $0] }, [.missing, .directory]),
            ("build-ttyd --lock", { ["build-ttyd", "--target", target, "--lock", $0, "--store", store, "--out", self.work.path + "/out"] }, []),
            ("build-runtime --lock", { ["build-runtime", "--target", target, "--lock", $0, "--store", store, "--out", self.work.path + "/out"] }, []),
            ("verify --manifest", { ["verify", "--manifest", $0, "--lock", lock, "--store", store, "--out", self.work.path + "/v"] }, []),
            // An empty file is an empty archive to libarchive (and to tar).
            ("diff A", { ["diff", $0, someDirectory] }, [.directory, .empty]),
            ("diff B", { ["diff", someDirectory, $0] }, [.directory, .empty]),
            ("audit", { ["audit", $0, "--target", target, "--policy", policy] }, notFiles),
            ("audit --policy", { ["audit", someDirectory, "--target", target, "--policy", $0] }, []),
            ("smoke --volume", { ["smoke", "--target", target, "--volume", $0, "--lock", lock, "--store", store, "--sysroot", smokeDescription] }, []),
            ("store import", { ["store", "import", $0, "--lock", lock, "--store", store] }, []),
            ("store verify --store", { ["store", "verify", "--lock", lock, "--store", $0] }, [.missing, .directory]),
            ("store ls --lock", { ["store", "ls", "--lock", $0, "--store", store] }, []),
            ("store gc --lock", { ["store", "gc", "--lock", $0, "--store", store] }, []),
            ("bundle export", { ["bundle", "export", $0, "--all", "--lock", lock, "--store", fullStore] }, [.missing, .empty, .random]),
            ("bundle import", { ["bundle", "import", $0, "--lock", lock, "--store", store] }, []),
            ("lock add --file", { ["lock", "add", "--name", "x", "--kind", "wheel", "--upstream-version", "1", "--url", url, "--file", $0, "--lock", self.work.path + "/new.lock.json", "--store", store] }, [.empty, .random]),
            ("lock add --lock", { ["lock", "add", "--name", "x", "--kind", "wheel", "--upstream-version", "1", "--url", url, "--file", lock, "--lock", $0, "--store", store] }, [.missing]),
            ("lock check", { ["lock", "check", "--lock", $0] }, []),
            ("lock tree-hash", { ["lock", "tree-hash", $0] }, [.directory, .empty]),
            ("pack DIR", { ["pack", $0, self.work.path + "/packed.tar.xz"] }, notFiles),
            ("pack OUT", { ["pack", someDirectory, $0] }, [.missing, .empty, .random]),
            ("wheel install", { ["wheel", "install", "--target", target, "--prefix", self.work.path + "/prefix", $0] }, []),
            ("wheel install --prefix", { ["wheel", "install", "--target", target, "--prefix", $0, wheel] }, [.missing, .directory]),
            ("sandbox run --ro", { ["sandbox", "run", "--ro", $0 + ":/mnt", "--", "true"] }, [.directory, .empty, .random]),
            ("sandbox run ARGV", { ["sandbox", "run", "--sandbox", "none", "--", $0] }, []),
            ("doctor --store", { ["doctor", "--store", $0] }, Set(Subject.allCases)),
        ]
    }

    /// A pure-Python wheel with one module.
    static func tinyWheel(in directory: String) throws -> String {
        let path = directory + "/tiny-1.0-py3-none-any.whl"
        let files: [(String, String)] = [
            ("tiny/__init__.py", "x = 1\n"),
            ("tiny-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: tiny\nVersion: 1.0\n"),
            ("tiny-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
        ]
        var record = ""
        let zip = try ZipWriter(path: path, mtime: 0)
        for (name, text) in files {
            try zip.add(name, data: Data(text.utf8))
            let hex = Array(SHA256Digest.of(Data(text.utf8)).hex.utf8)
            let bytes = stride(from: 0, to: hex.count, by: 2).map { UInt8(String(decoding: hex[$0..<$0 + 2], as: UTF8.self), radix: 16)! }
            let digest = Data(bytes).base64EncodedString()
                .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
            record += "\(name),sha256=\(digest),\(text.utf8.count)\n"
        }
        try zip.add("tiny-1.0.dist-info/RECORD", data: Data((record + "tiny-1.0.dist-info/RECORD,,\n").utf8))
        try zip.close()
        return path
    }

    /// Statuses of the README's table a failure may end with (1: `diff` found a difference).
    static let documented: Set<Int32> = [1, 64, 65, 66, 74, 75, 76, 77, 78, 79, 80, 81]

    @Test func everyCommandRefusesBadPathsWithoutCrashing() throws {
        var failures: [String] = []
        for command in try commands() {
            for subject in Subject.allCases where !command.valid.contains(subject) {
                let path = make(subject, command.name.replacingOccurrences(of: " ", with: "_"))
                let result = krnative(command.argv(path), environment: ["KRNATIVE_STORE": work.path + "/store"])
                let status: Int32
                switch result.termination {
                case .exited(let code): status = code
                case .signalled(let signal): status = 128 + signal
                case .notStarted(let reason): status = -1; failures.append("\(command.name): \(reason)")
                }
                // The wheel installer names a wheel by its file name.
                let name = command.name.hasPrefix("wheel install") ? (path as NSString).lastPathComponent : path
                let named = result.stderr.split(separator: "\n").contains { $0.hasPrefix("krnative: ") && $0.contains(name) }
                let allowed = command.name == "sandbox run ARGV" ? status > 0 && status < 128 : Self.documented.contains(status)
                if !allowed || !named {
                    failures.append("\(command.name) [\(subject)]: exit \(status)\n  \(result.stderr.split(separator: "\n").prefix(3).joined(separator: "\n  "))")
                }
            }
        }
        #expect(failures.isEmpty, "\(failures.count) cases:\n\(failures.joined(separator: "\n"))")
    }

    // MARK: - Signals

    /// A running krnative, its stderr in a file.
    final class Running {
        let process = Process()
        let stderrPath: String
        init(_ arguments: [String], stderrPath: String) throws {
            self.stderrPath = stderrPath
            FileManager.default.createFile(atPath: stderrPath, contents: nil)
            process.executableURL = URL(fileURLWithPath: Package.binary)
            process.arguments = arguments
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle(forWritingAtPath: stderrPath)
            try process.run()
        }
        var pid: pid_t { process.processIdentifier }
        var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

        /// Sends `signal` and waits (at most `bound` seconds) for the exit; returns the status and
        /// the seconds it took.
        func stop(with signal: Int32, bound: Double = 10) -> (status: Int32?, seconds: Double) {
            let start = Date()
            kill(pid, signal)
            while process.isRunning && Date().timeIntervalSince(start) < bound { usleep(10_000) }
            let seconds = Date().timeIntervalSince(start)
            guard !process.isRunning else {
                kill(pid, SIGKILL)
                process.waitUntilExit()
                return (nil, seconds)
            }
            return (process.terminationReason == .exit ? process.terminationStatus : 128 + process.terminationStatus, seconds)
        }
    }

    static func waitFor(_ bound: Double = 30, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(bound)
        while !condition() {
            if Date() > deadline { return false }
            usleep(20_000)
        }
        return true
    }

    /// Processes whose command line contains `marker`, zombies excepted.
    static func alive(_ marker: String) -> [pid_t] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return names.compactMap { pid_t($0) }.filter { pid in
            guard let command = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"),
                String(decoding: command, as: UTF8.self).replacingOccurrences(of: "\0", with: " ").contains(marker),
                let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                let state = stat.split(separator: ")").last?.split(separator: " ").first
            else { return false }
            return state != "Z"
        }
    }

    static let signals: [Int32] = [SIGINT, SIGTERM, SIGHUP]

    @Test(arguments: signals) func packingStopsAt130(_ signal: Int32) throws {
        let directory = work.path + "/big"
        try FileSystem.createDirectory(directory)
        for index in 0..<3 {
            #expect(ChildProcess.run(["dd", "if=/dev/urandom", "of=\(directory)/r\(index)", "bs=1M", "count=24", "status=none"]).succeeded)
        }
        let output = work.path + "/big.tar.xz"
        let running = try Running(["pack", directory, output, "--threads", "2"], stderrPath: work.path + "/pack.err")
        #expect(Self.waitFor { (FileSystem.size(of: output + ".partial") ?? 0) > 0 })
        usleep(300_000)
        let (status, seconds) = running.stop(with: signal)
        #expect(status == 130, "exit \(String(describing: status)) after \(seconds) s: \(running.stderr)")
        #expect(seconds < 5, "took \(seconds) s")
        #expect(!FileSystem.exists(output) && !FileSystem.exists(output + ".partial"))
        #expect(running.stderr.contains("interrupted"))
    }

    static var namespaces: Bool { ChildProcess.run(["unshare", "--user", "--map-root-user", "true"]).succeeded }

    @Test(.enabled(if: namespaces), arguments: signals) func sandboxedStepStopsAt130(_ signal: Int32) throws {
        let marker = "\(4000 + Int(signal)).\(getpid() % 1000)"
        let running = try Running(
            ["sandbox", "run", "--", "sh", "-c", "sleep \(marker) & sleep \(marker); wait"], stderrPath: work.path + "/sandbox.err")
        #expect(Self.waitFor { Self.alive("sleep \(marker)").count >= 3 })
        let (status, seconds) = running.stop(with: signal)
        #expect(status == 130, "exit \(String(describing: status)) after \(seconds) s: \(running.stderr)")
        #expect(seconds < 5, "took \(seconds) s")
        #expect(Self.waitFor(5) { Self.alive("sleep \(marker)").isEmpty }, "left running: \(Self.alive("sleep \(marker)"))")
        #expect(Self.alive("sandbox-entry").filter { Self.parent(of: $0) == running.pid }.isEmpty)
    }

    @Test(arguments: signals) func unsandboxedChildrenStopAt130(_ signal: Int32) throws {
        let marker = "\(5000 + Int(signal)).\(getpid() % 1000)"
        let running = try Running(
            ["sandbox", "run", "--sandbox", "none", "--", "sh", "-c", "trap '' TERM; sleep \(marker) & sleep \(marker); wait"],
            stderrPath: work.path + "/none.err")
        #expect(Self.waitFor { Self.alive("sleep \(marker)").count >= 3 })
        let (status, seconds) = running.stop(with: signal)
        #expect(status == 130, "exit \(String(describing: status)) after \(seconds) s: \(running.stderr)")
        #expect(seconds < 5, "took \(seconds) s")
        #expect(Self.waitFor(5) { Self.alive("sleep \(marker)").isEmpty }, "left running: \(Self.alive("sleep \(marker)"))")
    }

    /// A result that cannot be written (stdout on a full disk) is a failed command, exit 74 with
    /// the reason, not a crash (corelibs' FileHandle.write traps: it died of SIGILL before).
    @Test func aResultOnAFullDiskIsAnIOErrorNotACrash() {
        let result = ChildProcess.run(["sh", "-c", "exec \"$0\" targets --json > /dev/full", Package.binary])
        #expect(result.termination == .exited(ExitStatus.store), "\(result.termination): \(result.stderr.suffix(500))")
        #expect(result.stderr.contains("cannot write the result to stdout: No space left on device"))
    }

    /// A descriptor krnative holds without close-on-exec (as a test runner's or a shell's extra
    /// pipes are) does not reach its children: mmdebstrap's `cat >&20` failed under `swift test`
    /// because the inherited ones pushed its own pipe past 9, where dash cannot name it.
    @Test func childrenGetOnlyTheThreeStandardDescriptors() throws {
        let inherited = open("/dev/null", O_RDONLY)
        try #require(inherited > 2)
        defer { close(inherited) }
        let probe = "[ -e /proc/$$/fd/\(inherited) ] && echo open || echo closed; ls /proc/$$/fd | tr '\\n' ' '"
        let result = ChildProcess.run(["sh", "-c", probe])
        #expect(result.succeeded)
        #expect(result.stdout.hasPrefix("closed"), "descriptor \(inherited) reached the child: \(result.stdout)")
    }

    static func parent(of pid: pid_t) -> pid_t? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let fields = stat.split(separator: ")").last?.split(separator: " "), fields.count > 2
        else { return nil }
        return pid_t(fields[2])
    }

    @Test(.tags(.network), arguments: signals) func fetchingStopsAt130(_ signal: Int32) throws {
        let server = try FaultServer()
        let digest = server.serve("slow.whl", randomData(2 * 1024 * 1024))
        let lock = work.path + "/slow.lock.json"
        try Lockfile(sourceDateEpoch: 1_700_000_000, inputs: [wheelInput("slow", sha256: digest, urls: [server.url("slow/slow.whl")])]).write(to: lock)
        let store = work.path + "/fetch-store"
        let running = try Running(["fetch", "--lock", lock, "--store", store, "--all"], stderrPath: work.path + "/fetch.err")
        #expect(Self.waitFor { (FileSystem.size(of: "\(store)/tmp/\(digest.hex).partial") ?? 0) > 100_000 })
        let (status, seconds) = running.stop(with: signal)
        #expect(status == 130, "exit \(String(describing: status)) after \(seconds) s: \(running.stderr)")
        #expect(seconds < 5, "took \(seconds) s")
        #expect(!FileSystem.exists("\(store)/sha256/\(digest.hex)"))
    }

    // MARK: - Publishing and staging

    /// A fake output set in a staging directory: `names` with `version` in their bytes, and a
    /// manifest listing them with their hashes.
    static func stage(_ names: [String], version: String, in parent: String) throws -> String {
        let staging = parent + "/.stage-\(version)"
        try FileSystem.createDirectory(staging)
        var outputs: [[String: String]] = []
        for name in names {
            let data = Data("\(name) \(version)\n".utf8)
            try FileSystem.writeAtomically(data, to: staging + "/" + name)
            outputs.append(["file": name, "sha256": SHA256Digest.of(data).hex])
        }
        let manifest = try JSONSerialization.data(withJSONObject: ["outputs": outputs])
        try FileSystem.writeAtomically(manifest, to: staging + "/manifest.json")
        return staging
    }

    /// Whether `directory` has no manifest, or one whose every output is beside it with its hash.
    static func consistent(_ directory: String) -> Bool {
        guard let data = FileManager.default.contents(atPath: directory + "/manifest.json") else { return true }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: [[String: String]]] else { return false }
        return (object["outputs"] ?? []).allSatisfy { output in
            guard let content = FileManager.default.contents(atPath: directory + "/" + output["file"]!) else { return false }
            return SHA256Digest.of(content).hex == output["sha256"]
        }
    }

    static let oldSet = ["ttyd.bin", "env.tar.xz", "plugin-1.0.whl", "sbom.json"]
    static let newSet = ["ttyd.bin", "env.tar.xz", "plugin-1.1.whl", "sbom.json"]

    @Test func publishKilledAtEveryStepLeavesNoDisagreeingManifestAndTheRerunRepairs() async throws {
        for step in 1...(Self.newSet.count + 2) {
            let directory = work.path + "/published-\(step)"
            try FileSystem.createDirectory(directory)
            try VolumeBuild.publish(Self.oldSet, manifest: "manifest.json", from: try Self.stage(Self.oldSet, version: "1.0", in: work.path + "/s\(step)"), into: directory)
            #expect(Self.consistent(directory) && FileSystem.exists(directory + "/manifest.json"))
            let staging = try Self.stage(Self.newSet, version: "1.1", in: work.path + "/s\(step)")
            let names = Self.newSet
            await #expect(processExitsWith: .signal(SIGKILL)) { [step = step as Int, staging = staging as String, directory = directory as String, names = names as [String]] in
                try VolumeBuild.publish(names, manifest: "manifest.json", from: staging, into: directory) {
                    if $0 == step { kill(getpid(), SIGKILL) }
                }
            }
            #expect(Self.consistent(directory), "killed after step \(step): the manifest disagrees with the files")
            // The rerun stages everything again and publishes.
            let again = try Self.stage(Self.newSet, version: "1.1", in: work.path + "/r\(step)")
            try VolumeBuild.publish(Self.newSet, manifest: "manifest.json", from: again, into: directory)
            #expect(Self.consistent(directory) && FileSystem.exists(directory + "/manifest.json"))
            let listing = Set(try FileManager.default.contentsOfDirectory(atPath: directory))
            #expect(listing == Set(Self.newSet + ["manifest.json"]), "after the rerun of step \(step): \(listing.sorted())")
        }
    }

    @Test func aVersionChangeRemovesTheOldWheel() throws {
        let directory = work.path + "/published"
        try FileSystem.createDirectory(directory)
        try VolumeBuild.publish(Self.oldSet, manifest: "manifest.json", from: try Self.stage(Self.oldSet, version: "1.0", in: work.path + "/a"), into: directory)
        _ = work.file("published/unrelated.txt", "not ours")
        try VolumeBuild.publish(Self.newSet, manifest: "manifest.json", from: try Self.stage(Self.newSet, version: "1.1", in: work.path + "/b"), into: directory)
        let listing = Set(try FileManager.default.contentsOfDirectory(atPath: directory))
        #expect(listing == Set(Self.newSet + ["manifest.json", "unrelated.txt"]))
    }

    @Test func aKilledRunsStagingIsRemovedByTheNextAndALiveOneKept() async throws {
        let output = work.path + "/out"
        try FileSystem.createDirectory(output)
        await #expect(processExitsWith: .signal(SIGKILL)) { [output = output as String] in
            let staging = try StagingDirectory(in: output)
            _ = FileManager.default.createFile(atPath: staging.path + "/big", contents: Data(count: 1 << 20))
            kill(getpid(), SIGKILL)
        }
        let dead = try FileManager.default.contentsOfDirectory(atPath: output).filter { !$0.hasSuffix(".lock") }
        #expect(dead.count == 1 && dead[0].hasPrefix(StagingDirectory.prefix), "\(dead)")
        // A staging directory of an older krnative, without a lock file.
        try FileSystem.createDirectory(output + "/.krnative-staging-1")
        // A live run's: its lock is held (by this process, through another open file).
        try FileSystem.createDirectory(output + "/.krnative-staging-2")
        let liveLock = try FileLock(path: output + "/.krnative-staging-2.lock")
        let staging = try StagingDirectory(in: output)
        let listing = Set(try FileManager.default.contentsOfDirectory(atPath: output))
        #expect(
            listing == Set([".krnative-staging-2", ".krnative-staging-2.lock", (staging.path as NSString).lastPathComponent, (staging.path as NSString).lastPathComponent + ".lock"]),
            "\(listing.sorted())")
        staging.remove()
        liveLock.unlock()
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: output)) == [".krnative-staging-2", ".krnative-staging-2.lock"])
    }
}
