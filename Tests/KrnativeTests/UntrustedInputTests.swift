import Archive
import Fetch
import Foundation
import KrnativeBase
import Lock
import Store
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Names, numbers and files from outside (issue #22, items 8–12), through the krnative binary: each
/// is refused promptly with a message naming the file, entry and field, and its victim is left as it was.
@Suite("Untrusted input", .timeLimit(.minutes(60)), .tags(.process), .endToEnd, .serialized)
struct UntrustedInputTests {
    let work = TemporaryDirectory()
    var store: String { work.path + "/store" }

    /// The binary under `timeout`: a regression that blocks is killed (exit 137) and fails, not hangs, the test.
    func bounded(_ arguments: [String]) -> ChildProcess.Result {
        ChildProcess.run(["/usr/bin/timeout", "-s", "KILL", "60", Package.binary] + arguments)
    }

    /// A lock of one wheel, written by hand so that it can hold what `Lockfile` would never write.
    func handWrittenLock(_ file: String, name: String = "\"ok\"", size: String = "10", epoch: String = "0") -> String {
        work.file(
            file,
            """
            {"version": 1, "sourceDateEpoch": \(epoch), "inputs": [{"name": \(name), "kind": "wheel", "version": "1",
             "filename": "ok-1-py3-none-any.whl", "sha256": "\(String(repeating: "ab", count: 32))", "size": \(size),
             "urls": ["http://127.0.0.1:9/ok.whl"]}]}
            """)
    }

    func fileType(_ path: String) -> mode_t? {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_mode & S_IFMT : nil
    }

    /// /dev/full's device number, (1, 7) in glibc's encoding of small numbers.
    let fullDevice: dev_t = 1 << 8 | 7

    func makeFIFO(_ name: String) throws -> String {
        let path = work.path + "/" + name
        try #require(mkfifo(path, 0o644) == 0, "mkfifo \(path): \(String(cString: strerror(errno)))")
        return path
    }

    // MARK: Names and numbers (items 9, 10, 12)

    @Test(.timeLimit(.minutes(60)))
    func lockNamesSizesAndEpochsOutsideTheSafeSetAreRefused() throws {
        let cases: [(label: String, lock: String, key: String, needle: String)] = [
            ("dotdot", handWrittenLock("dotdot.json", name: "\"../../../\(work.path)/somewhere/evil\""), "inputs[0].name", "a name uses ASCII letters"),
            ("slash", handWrittenLock("slash.json", name: "\"a/b\""), "inputs[0].name", "starting with a letter or digit"),
            ("nul", handWrittenLock("nul.json", name: "\"ok\\u0000evil\""), "inputs[0].name", "\"ok\\u{0000}evil\""),
            ("bidi", handWrittenLock("bidi.json", name: "\"invoice\\u202egpj.exe\""), "inputs[0].name", "\"invoice\\u{202E}gpj.exe\""),
            ("negative size", handWrittenLock("negative.json", size: "-1"), "inputs[0] (ok).size", "-1 bytes is outside 0...68719476736"),
            ("absurd size", handWrittenLock("absurd.json", size: "9223372036854775807"), "inputs[0] (ok).size", "is outside 0...68719476736"),
            ("huge epoch", handWrittenLock("epoch.json", epoch: "9223372036854775807"), "sourceDateEpoch", "1970-01-01 to 2106-02-07 UTC"),
            ("negative epoch", handWrittenLock("before.json", epoch: "-1"), "sourceDateEpoch", "-1 is outside 0...4294967295"),
        ]
        for item in cases {
            let result = bounded(["lock", "check", "--lock", item.lock])
            #expect(result.termination == .exited(65), "\(item.label): \(result.stderr)")
            #expect(result.stderr.contains("the lock \(item.lock) is invalid at \(item.key)"), "\(item.label): \(result.stderr)")
            #expect(result.stderr.contains(item.needle), "\(item.label): \(item.needle) missing from \(result.stderr)")
        }
        // A build with the climbing name stops at the lock: nothing appears where the name points.
        let build = bounded([
            "build", "--lock", cases[0].lock, "--store", store, "--target", "musllinux-x86_64", "--out", work.path + "/out",
            "--config", Package.root + "/krunner.json", "--sandbox", "none",
        ])
        #expect(build.termination == .exited(65), "\(build.stderr)")
        #expect(fileType(work.path + "/somewhere") == nil)
        // The boundaries themselves are accepted.
        for (file, size, epoch) in [("low.json", "0", "0"), ("high.json", "68719476736", "4294967295")] {
            let result = bounded(["lock", "check", "--lock", handWrittenLock(file, size: size, epoch: epoch)])
            #expect(result.termination == .exited(0), "\(file): \(result.stderr)")
        }
    }

    /// The last sourceDateEpoch a lock may give still makes a zip Python reads with that date (a
    /// larger one crashed libarchive while the wheel was written).
    @Test func theLatestAllowedEpochMakesAReadableWheel() throws {
        let path = work.path + "/late.whl"
        let zip = try ZipWriter(path: path, mtime: Lockfile.sourceDateEpochRange.upperBound)
        try zip.add("pkg/__init__.py", data: Data("x = 1\n".utf8))
        try zip.close()
        let script = "import sys, zipfile\nfor i in zipfile.ZipFile(sys.argv[1]).infolist(): print(i.filename, i.date_time)"
        let listing = try ChildProcess.check(["python3", "-c", script, path]).stdout
        #expect(listing == "pkg/__init__.py (2106, 2, 7, 6, 28, 14)\n")
    }

    @Test func everyNameTheProjectUsesIsAllowed() throws {
        let lock = try Lockfile.load(from: Package.root + "/krnative.lock.json")
        for input in lock.inputs { #expect(Lockfile.problem(withName: input.name) == nil, "\(input.name)") }
        // scripts/standin-lock's names.
        let standin = [
            "cpython-3.13.5-standin-x86_64-gnu", "ttyd", "zlib", "json-c", "libuv", "mbedtls", "libwebsockets", "cpython", "bzip2",
            "xz", "libffi", "util-linux", "ncurses", "readline", "sqlite", "openssl",
        ]
        for name in standin { #expect(Lockfile.problem(withName: name) == nil, "\(name)") }
        for name in ["", ".", "..", ".hidden", "a/b", "a\u{0}b", "a\u{202E}b", "a b", "é", String(repeating: "a", count: 129)] {
            #expect(Lockfile.problem(withName: name) != nil, "\(name.debugDescription)")
        }
    }

    // MARK: Duplicate keys (item 12)

    @Test(.timeLimit(.minutes(60)))
    func krunnerConfigAndLedgerWithADuplicatedKeyAreRefused() throws {
        let lock = work.path + "/krnative.lock.json"
        try Lockfile(sourceDateEpoch: 0).write(to: lock)
        func build(config: String, ledger: String) -> ChildProcess.Result {
            bounded([
                "build", "--lock", lock, "--store", store, "--target", "musllinux-x86_64", "--out", work.path + "/out",
                "--config", config, "--ledger", ledger, "--sandbox", "none", "--offline",
                "--policy", Package.root + "/sysroots/audit-policy.json", "--patches", Package.root + "/patches",
            ])
        }
        let goodLedger = work.file("good-volumes.json", #"{"format": 1, "published": {"musllinux_1_2": 12}, "volumes": []}"#)
        let config = work.file(
            "krunner.json",
            #"{"packageVersions": {"musllinux_1_2": "5.5.0"}, "volumeVersions": {"musllinux_1_2": 13, "musllinux_1_2": 99}}"#)
        let refused = build(config: config, ledger: goodLedger)
        #expect(refused.termination == .exited(64), "\(refused.stderr)")
        #expect(refused.stderr.contains("\(config) is not a valid krunner config"), "\(refused.stderr)")
        #expect(refused.stderr.contains("the key volumeVersions.musllinux_1_2 is written twice"), "\(refused.stderr)")

        let goodConfig = work.file("good-krunner.json", #"{"packageVersions": {"musllinux_1_2": "5.5.0"}, "volumeVersions": {"musllinux_1_2": 13}}"#)
        let ledger = work.file(
            "krunner-volumes.json", #"{"format": 1, "published": {"musllinux_1_2": 12, "musllinux_1_2": 14}, "volumes": []}"#)
        let before = try Data(contentsOf: URL(fileURLWithPath: ledger))
        let refusedLedger = build(config: goodConfig, ledger: ledger)
        #expect(!refusedLedger.succeeded, "\(refusedLedger.stderr)")
        #expect(refusedLedger.stderr.contains(ledger), "\(refusedLedger.stderr)")
        #expect(refusedLedger.stderr.contains("the key published.musllinux_1_2 is written twice"), "\(refusedLedger.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: ledger)) == before)
    }

    // MARK: Files that are not regular files (item 11)

    @Test(.timeLimit(.minutes(60)))
    func outputsNeverReplaceAFIFOOrADevice() throws {
        let directory = work.path + "/tree"
        _ = work.file("tree/hello.txt", "hello\n")
        let fifo = try makeFIFO("out.tar.xz")
        // A device node of our own, the twin of /dev/full (1, 7): if the fix were wrong it is this one that goes.
        let device = work.path + "/full"
        try #require(mknod(device, S_IFCHR | 0o666, fullDevice) == 0, "mknod needs root: \(String(cString: strerror(errno)))")
        let lock = work.path + "/krnative.lock.json"
        try Lockfile(sourceDateEpoch: 0).write(to: lock)
        let commands: [(String, [String])] = [
            (fifo, ["pack", directory, fifo]),
            (device, ["pack", directory, device]),
            (fifo, ["bundle", "export", fifo, "--lock", lock, "--store", store, "--all"]),
            (device, ["bundle", "export", device, "--lock", lock, "--store", store, "--all"]),
            (fifo, ["lock", "add", "--lock", fifo, "--store", store, "--name", "t", "--kind", "toolchain", "--upstream-version", "1",
                    "--file", directory + "/hello.txt", "--url", "http://127.0.0.1:9/t"]),
        ]
        for (victim, arguments) in commands {
            let kind = fileType(victim)
            let result = bounded(arguments)
            #expect(!result.succeeded && result.termination != .exited(137), "\(arguments): \(result.termination) \(result.stderr)")
            #expect(result.stderr.contains(victim), "\(arguments): \(result.stderr)")
            #expect(result.stderr.contains(victim == fifo ? "FIFO (named pipe)" : "character device"), "\(arguments): \(result.stderr)")
            #expect(fileType(victim) == kind, "\(arguments) replaced \(victim)")
        }
        var info = stat()
        #expect(stat(device, &info) == 0 && info.st_rdev == fullDevice)
        #expect(fileType(fifo + ".partial") == nil)
    }

    @Test(.timeLimit(.minutes(60)))
    func inputsThatAreNotRegularFilesAreRefusedWithoutAReadThatBlocks() throws {
        let fifo = try makeFIFO("input.tar.gz")
        let lock = work.path + "/krnative.lock.json"
        try Lockfile(sourceDateEpoch: 0).write(to: lock)
        let commands: [(arguments: [String], victim: String)] = [
            (["lock", "tree-hash", fifo], fifo),
            (["lock", "tree-hash", "/dev/zero"], "/dev/zero"),
            (["store", "import", fifo, "--lock", lock, "--store", store], fifo),
            (["store", "import", "/dev/zero", "--lock", lock, "--store", store], "/dev/zero"),
            (["bundle", "import", fifo, "--lock", lock, "--store", store], fifo),
            (["bundle", "import", "/dev/zero", "--lock", lock, "--store", store], "/dev/zero"),
            (["diff", fifo, "/dev/zero"], fifo),
            (["lock", "check", "--lock", fifo], fifo),
            (["fetch", "--lock", lock, "--store", store, "--all", "--mirrors", fifo], fifo),
        ]
        for (arguments, victim) in commands {
            let result = bounded(arguments)
            #expect(!result.succeeded && result.termination != .exited(137), "\(arguments): \(result.termination) \(result.stderr)")
            #expect(result.stderr.contains(victim), "\(arguments): \(result.stderr)")
            #expect(result.stderr.contains(victim == fifo ? "FIFO (named pipe)" : "character device"), "\(arguments): \(result.stderr)")
        }
        #expect(fileType(fifo) == S_IFIFO)
    }

    /// One SIGTERM ends a run that waits: here for a store lock another process holds (the wait
    /// is on a worker thread, which a signal does not interrupt; before, the first SIGTERM was lost).
    @Test(.timeLimit(.minutes(60)))
    func oneSIGTERMEndsARunThatWaits() throws {
        let digest = SHA256Digest.of(Data("w".utf8))
        let lock = work.path + "/krnative.lock.json"
        try Lockfile(sourceDateEpoch: 0, inputs: [wheelInput("w", sha256: digest, urls: ["http://127.0.0.1:9/w.whl"])]).write(to: lock)
        _ = try Store(root: store)
        let held = try FileLock(path: "\(store)/locks/\(digest.hex).lock")
        defer { held.unlock() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Package.binary)
        process.arguments = ["fetch", "--lock", lock, "--store", store, "--all"]
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        usleep(1_500_000)
        kill(process.processIdentifier, SIGTERM)
        var waited = 0
        while process.isRunning && waited < 100 {
            usleep(100_000)
            waited += 1
        }
        let ignored = process.isRunning
        if ignored { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(!ignored, "one SIGTERM did not end the run in 10 s")
        #expect(process.terminationStatus == 130, "\(stderr)")
        #expect(stderr.contains("holds its lock"), "\(stderr)")
        #expect(stderr.contains("fetch interrupted by a signal"), "\(stderr)")
    }

    // MARK: Bundles (item 12)

    @Test(.timeLimit(.minutes(60)))
    func aBundleMemberLargerThanTheLockPinsIsRefusedBeforeItIsWritten() throws {
        let source = try Store(root: work.path + "/source")
        let (digest, size) = try source.ingest(copying: work.file("a", randomData(40_000)))
        let lock = work.path + "/krnative.lock.json"
        try Lockfile(sourceDateEpoch: 0, inputs: [
            LockedInput(name: "a", kind: .runtime, version: "1", filename: "a.tar.gz", sha256: digest, size: size, urls: ["http://127.0.0.1:9/a"])
        ]).write(to: lock)
        let bundle = work.path + "/inputs.tar"
        let export = bounded(["bundle", "export", bundle, "--lock", lock, "--store", source.root, "--all"])
        try #require(export.succeeded, "\(export.stderr)")
        let grown = work.path + "/grown.tar"
        let extra = work.file("extra", randomData(4 << 20))
        try ChildProcess.check(["python3", Package.supportDirectory + "/tamper_bundle.py", bundle, grown, "grow-last", extra])

        let target = try Store(root: work.path + "/target")
        let result = bounded(["bundle", "import", grown, "--lock", lock, "--store", target.root])
        #expect(result.termination == .exited(76), "\(result.stderr)")
        #expect(result.stderr.contains("bundle \(grown): entry sha256/\(digest.hex) refused"), "\(result.stderr)")
        #expect(result.stderr.contains("it has \(40_000 + (4 << 20)) bytes, the local lock pins 40000 for a"), "\(result.stderr)")
        #expect(!FileSystem.exists(target.path(for: digest)))
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: target.root + "/tmp")) ?? []).isEmpty)
    }
}

/// Block rules against spellings of a blocked server (issue #22, item 8): the blocked server must
/// see no request, whatever the redirect's URL says.
@Suite("Untrusted input: block rules", .timeLimit(.minutes(60)), .tags(.network, .process), .endToEnd, .serialized)
struct BlockRuleTests {
    let origin: FaultServer
    let blocked: FaultServer
    let work = TemporaryDirectory()

    init() throws {
        origin = try FaultServer()
        blocked = try FaultServer()
    }

    func redirect(to target: String) -> String {
        origin.url("redirect/r?to=" + target.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)
    }

    func fetch(_ url: String, digest: SHA256Digest, mirrors: String?, store: String) throws -> ChildProcess.Result {
        let lock = work.path + "/krnative.lock.json"
        try Lockfile(sourceDateEpoch: 0, inputs: [wheelInput("r", sha256: digest, urls: [url])]).write(to: lock)
        let arguments = ["fetch", "--lock", lock, "--store", store, "--all", "--retries", "1", "--retry-delay", "0.05"]
        return ChildProcess.run(["/usr/bin/timeout", "-s", "KILL", "120", Package.binary] + arguments + (mirrors.map { ["--mirrors", $0] } ?? []))
    }

    @Test(.timeLimit(.minutes(60)))
    func redirectsToOtherSpellingsOfABlockedServerAreRefused() throws {
        let digest = blocked.serve("r.whl", randomData(50_000))
        let port = blocked.port
        let rule = "http://127.0.0.1:\(port)/"
        let mirrors = work.file("mirrors.conf", "block \(rule)\n")
        let spellings = [
            "http://x@127.0.0.1:\(port)/files/r.whl", "http://localhost:\(port)/files/r.whl", "http://LocalHost.:\(port)/files/r.whl",
            "http://2130706433:\(port)/files/r.whl", "http://0x7f.1:\(port)/files/r.whl", "http://[::ffff:127.0.0.1]:\(port)/files/r.whl",
            "HTTP://127.0.0.1:\(port)/x/../files/r.whl",
        ]
        for (index, spelling) in spellings.enumerated() {
            let store = work.path + "/store\(index)"
            let result = try fetch(redirect(to: spelling), digest: digest, mirrors: mirrors, store: store)
            #expect(result.termination == .exited(75), "\(spelling): \(result.stderr)")
            #expect(result.stderr.contains("which the mirror config blocks (rule `block \(rule)`)"), "\(spelling): \(result.stderr)")
            #expect(blocked.requests().isEmpty, "\(spelling) reached the blocked server")
            #expect(!FileSystem.exists(store + "/sha256/\(digest.hex)"))
        }
        // Without the rule the first spelling reaches the server: the refusals above are the rule's doing.
        let followed = try fetch(redirect(to: spellings[0]), digest: digest, mirrors: nil, store: work.path + "/open")
        #expect(followed.termination == .exited(0), "\(followed.stderr)")
        #expect(blocked.requests().map(\.path) == ["/files/r.whl"])
    }

    /// This machine's name, when it resolves to 127.0.0.1 (as /etc/hosts often says): a spelling of the
    /// blocked server that only the address libcurl connected to gives away.
    static let loopbackHostname: String? = {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return nil }
        let name = String(cString: buffer)
        let addresses = ChildProcess.run(["getent", "ahostsv4", name]).stdout.split(separator: "\n").map { $0.prefix { $0 != " " } }
        return !addresses.isEmpty && addresses.allSatisfy { $0 == "127.0.0.1" } ? name : nil
    }()

    @Test(
        .enabled(if: loopbackHostname != nil, "this machine's name does not resolve to 127.0.0.1 alone"),
        .timeLimit(.minutes(60)))
    func aNameThatResolvesToABlockedAddressIsRefusedOnceConnected() throws {
        let name = try #require(Self.loopbackHostname)
        let digest = blocked.serve("r.whl", randomData(50_000))
        let rule = "http://127.0.0.1:\(blocked.port)/"
        let mirrors = work.file("mirrors.conf", "block \(rule)\n")
        let target = "http://\(name):\(blocked.port)/files/r.whl"
        let result = try fetch(redirect(to: target), digest: digest, mirrors: mirrors, store: work.path + "/store")
        #expect(result.termination == .exited(75), "\(result.stderr)")
        #expect(
            result.stderr.contains("\(target) led to a connection to 127.0.0.1 port \(blocked.port), which the mirror config blocks (rule `block \(rule)`)"),
            "\(result.stderr)")
        #expect(blocked.requests().isEmpty, "the blocked server got a request")
    }

    @Test func rulesCompareWhereARequestGoesNotHowItIsSpelled() throws {
        let config = try MirrorConfig.parse("block http://127.0.0.1:8080/files/\n", file: "m")
        let rule = "http://127.0.0.1:8080/files/"
        for url in [
            "http://u:p@127.0.0.1:8080/files/a", "http://0177.0.0.1:8080/files/a", "http://[::1]:8080/files/a",
            "http://127.0.0.1:8080/%66iles/a", "http://127.0.0.1:8080/./files/a",
        ] {
            #expect(config.blockingPrefix(for: url) == rule, "\(url)")
        }
        for url in ["http://127.0.0.1:8081/files/a", "https://127.0.0.1:8080/files/a", "http://127.0.0.1:8080/other/a", "http://127.0.0.2:8080/files/a"] {
            #expect(config.blockingPrefix(for: url) == nil, "\(url)")
        }
        // Where libcurl connected decides too: a name that resolved to the blocked address is blocked.
        #expect(config.blockingPrefix(for: "http://mirror.invalid:8080/files/a", connectedTo: "127.0.0.1", port: 8080) == rule)
        #expect(config.blockingPrefix(for: "http://mirror.invalid:8080/files/a", connectedTo: "::ffff:127.0.0.1", port: 8080) == rule)
        #expect(config.blockingPrefix(for: "http://mirror.invalid:8080/files/a", connectedTo: "127.0.0.1", port: 9090) == nil)
        #expect(config.blockingPrefix(for: "http://mirror.invalid:8080/other/a", connectedTo: "127.0.0.1", port: 8080) == nil)
        // A default port is the port: http://h/ and http://h:80/ are one server.
        let https = try MirrorConfig.parse("block https://Example.ORG/\n", file: "m")
        #expect(https.blockingPrefix(for: "https://example.org:443/x") == "https://Example.ORG/")
        #expect(https.blockingPrefix(for: "https://example.org.evil.test/x") == nil)
    }
}
