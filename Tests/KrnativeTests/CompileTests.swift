import Archive
import Compile
import Foundation
import Inputs
import KrnativeBase
import Lock
import Sandbox
import Store
import Testing
import Toolchain
import Verify
import Layout

extension Tag {
    /// Compiles real C sources with a real toolchain (minutes).
    @Tag static var compile: Self
}

/// The real compile: ttyd's libraries (and ttyd, when its source is at hand) from Debian's
/// upstream tarballs (scripts/debian-sources), with Zig from the `ziglang` wheel (through pip).
@Suite("Compile ttyd", .timeLimit(.minutes(60)), .tags(.compile, .namespaces, .pypi), .endToEnd, .serialized, .needsCompile)
struct CompileTests {
    /// One store for the suite: the Zig wheel is fetched once and Zig's libc cache is shared.
    /// KRNATIVE_TEST_STORE, else a temporary directory left for the system to clean (it holds Zig's cache).
    static let store: (path: String, unused: Void) = {
        if let shared = ProcessInfo.processInfo.environment["KRNATIVE_TEST_STORE"], !shared.isEmpty { return (shared, ()) }
        var template = Array((NSTemporaryDirectory() + "/krnative-compile-store.XXXXXX").utf8CString)
        return (template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }, ())
    }()

    /// A lock with Debian's sources (ttyd's unless told; the versions differ from ttyd 1.7.7's) and the repository's Zig.
    static func makeLock(in work: TemporaryDirectory, sources: [String: (file: String, version: String)] = Machine.testSources) throws -> (Lockfile, String) {
        let repository = try Lockfile.load(from: Package.root + "/krnative.lock.json")
        var lock = Lockfile(sourceDateEpoch: repository.sourceDateEpoch, inputs: repository.inputs.filter { $0.name.hasPrefix("zig-") })
        let resolver = InputResolver(store: try Store(root: store.path))
        for (component, tarball) in sources {
            let input = LockedInput(
                name: component, kind: .source, version: tarball.version, filename: (tarball.file as NSString).lastPathComponent,
                treeSha256: try TreeHash.ofArchive(at: tarball.file), urls: ["https://deb.invalid/\(component)"])
            _ = try resolver.importFile(tarball.file, for: input)
            lock.upsert(input)
        }
        let path = work.path + "/test.lock.json"
        try lock.write(to: path)
        let fetched = krnative(["fetch", "--lock", path, "--store", store.path, "--all", "--host", "x86_64-linux"])
        try #require(fetched.succeeded, "the Zig wheel must come through pip: \(fetched.stderr)")
        return (lock, path)
    }

    func build(_ target: Target, lock: Lockfile, work: String, patches: String = Package.root + "/patches", rebuild: Bool = true) throws -> TtydBuild.Report {
        var settings = StepRunner.Settings(entryExecutable: Package.binary, patchesDirectory: patches)
        settings.workDirectory = work + "/build"
        settings.rebuild = rebuild
        settings.log = { print("[\(target.ttydTriple)] \($0)") }
        let options = TtydBuild.Options(target: target, outputDirectory: work + "/out", settings: settings)
        return try TtydBuild(options: options, resolver: InputResolver(store: try Store(root: Self.store.path))).run(lock: lock)
    }

    @Test(arguments: [Target.manylinuxX86_64, .musllinuxAarch64])
    func patchedStackBuildsAndRuns(target: Target) throws {
        let work = TemporaryDirectory("krnative-ttyd")
        let (lock, _) = try Self.makeLock(in: work)
        let started = Date()
        let report = try build(target, lock: lock, work: work.path)
        print("[\(target.ttydTriple)] built in \(Int(Date().timeIntervalSince(started))) s: \(report.steps.map { "\($0.component) \(Int($0.seconds)) s" }.joined(separator: ", "))")
        #expect(report.steps.allSatisfy { !$0.cached })
        let pingPong = try #require(report.patches.first { $0.patch.hasSuffix("libwebsockets/10-ping-pong.json") })
        #expect(pingPong.edits == 2)
        // Each step built in a directory of its own, kept with the work directory.
        let context = try String(contentsOfFile: work.path + "/build/steps/libwebsockets/src/libwebsockets/lib/core/context.c", encoding: .utf8)
        #expect(context.contains("secs_since_valid_ping = 20") && context.contains("secs_since_valid_hangup = 30"))
        #expect(FileManager.default.fileExists(atPath: work.path + "/build/stage/lib/libwebsockets.a"))
        let archive = try Data(contentsOf: URL(fileURLWithPath: work.path + "/build/stage/lib/libuv.a"))
        let member = try #require(archive.firstRange(of: Data([0x7f, 0x45, 0x4c, 0x46])))
        #expect(ELFFile(data: archive.subdata(in: member.lowerBound..<archive.count))?.machine == target.arch)

        let output = try #require(report.output)
        let binary = work.path + "/out/" + output.file
        #expect(output.file == "ttyd_linux.\(target.arch.rawValue).bin")
        let elf = try #require(ELFFile(path: binary))
        #expect(elf.machine == target.arch)
        #expect(elf.isStatic)
        #expect(elf.isStripped)
        let run = target.arch == HostPlatform.current.arch ? [binary] : ["qemu-\(target.arch.rawValue)-static", binary]
        let version = ChildProcess.run(run + ["--version"])
        #expect(version.succeeded, "\(version.stderr)")
        #expect(version.stdout.contains("ttyd version \(lock["ttyd"]!.version)") || version.stderr.contains("ttyd version \(lock["ttyd"]!.version)"))
        try typeIntoTheTerminal(run, target: target)
        if target.arch == HostPlatform.current.arch { try serveAPage(binary) } else { try smokeOnForeignRoot(binary, target: target, work: work) }
    }

    /// The agent starts ttyd as `ttyd -p PORT /bin/bash -c …`, without -W: a WebSocket client
    /// (Support/ttyd_echo.py) typing into `ttyd -p PORT cat` gets its input back
    /// (patches/ttyd/20-writable-by-default.json); with -R it does not; --help says so.
    func typeIntoTheTerminal(_ run: [String], target: Target) throws {
        let help = ChildProcess.run(run + ["--help"])
        #expect((help.stdout + help.stderr).contains("-R, --readonly"), "\(help.stderr)")
        for readonly in [false, true] {
            let result = ChildProcess.run(["python3", Package.supportDirectory + "/ttyd_echo.py"] + (readonly ? ["--readonly"] : []) + ["--"] + run)
            try #require(result.succeeded, "ttyd_echo.py: \(result.stderr.suffix(2000))")
            let report = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
            let echoed = report["echoed"] as? Bool
            print("[\(target.ttydTriple)] ttyd -p \(report["port"] ?? "?")\(readonly ? " -R" : "") cat: echoed \(echoed.map(String.init) ?? "?"), output \((report["output"] as? String ?? "").debugDescription)")
            #expect(echoed == !readonly, readonly ? "-R still let input through" : "the agent's ttyd (no -W) ignored input")
        }
    }

    /// `krnative smoke`'s path for another architecture: a Debian root file system of that
    /// architecture (mmdebstrap's extract variant), the binary at /opt/backend.ai/bin/ttyd, run
    /// in the sandbox under qemu.
    func smokeOnForeignRoot(_ binary: String, target: Target, work: TemporaryDirectory) throws {
        try #require(Machine.hasExecutable("/usr/bin/mmdebstrap"), "mmdebstrap is not installed (scripts/setup installs it)")
        var description = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Package.root + "/sysroots/smoke.json"))) as! [String: Any]
        description["checks"] = [["bin/ttyd", "--version"]]
        let path = work.path + "/smoke.json"
        try JSONSerialization.data(withJSONObject: description).write(to: URL(fileURLWithPath: path))
        try FileManager.default.createDirectory(atPath: work.path + "/volume/bin", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: binary, toPath: work.path + "/volume/bin/ttyd")
        let result = krnative(["smoke", "--target", target.rawValue, "--volume", work.path + "/volume", "--sysroot", path, "--store", work.path + "/smoke-store"])
        #expect(result.succeeded, "\(result.stderr.suffix(2000))")
        #expect(result.stdout.contains("ttyd version"))
        #expect(result.stderr.contains("--variant=extract --architectures=arm64"))
        #expect(result.stdout.contains("/opt/krnative-qemu -L / /opt/backend.ai/bin/ttyd --version"))
        // Each check's result is printed once (stdout); stderr says which check is running.
        #expect((result.stdout + result.stderr).components(separatedBy: "ok  /opt/krnative-qemu").count == 2, "\(result.stdout)\n\(result.stderr)")
        #expect(result.stderr.contains("smoke: check 1 of 1: /opt/krnative-qemu -L / /opt/backend.ai/bin/ttyd --version"))

        // Started directly, with no emulator in argv (as the kernel runner re-executes itself):
        // the sandbox's own binfmt_misc runs it through the emulator; without one, the kernel cannot.
        let qemu = "/usr/bin/qemu-\(target.arch.rawValue)-static"
        let direct = SandboxSpec(
            argv: ["/opt/ttyd", "--version"], mounts: [.readOnly(binary, at: "/opt/ttyd"), .readOnly(qemu, at: SmokeTest.emulatorInside)],
            workingDirectory: "/tmp", emulator: .init(path: SmokeTest.emulatorInside, arch: target.arch))
        let ran = try SandboxRunner(entryExecutable: Package.binary).start(direct)
        #expect(ran.termination == .exited(0) && ran.outputTail.contains("ttyd version"), "\(ran.termination): \(ran.outputTail)")
        var without = direct
        without.emulator = nil
        // Without it the kernel refuses the exec: the sandbox says it could not start the program.
        #expect {
            try SandboxRunner(entryExecutable: Package.binary).start(without)
        } throws: { "\($0)".contains("Exec format error") }
    }

    /// Starts the built ttyd on loopback and fetches its page.
    func serveAPage(_ binary: String) throws {
        let port = try freeLoopbackPort()
        let server = Process()
        server.executableURL = URL(fileURLWithPath: binary)
        server.arguments = ["-i", "lo", "-p", String(port), "true"]
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        try server.run()
        defer { server.terminate(); kill(server.processIdentifier, SIGKILL); server.waitUntilExit() }
        let saved = NSTemporaryDirectory() + "/krnative-ttyd-page-\(getpid()).html"
        defer { unlink(saved) }
        for _ in 0..<50 {
            if ChildProcess.run(["curl", "-s", "--compressed", "-o", saved, "http://127.0.0.1:\(port)/"]).succeeded { break }
            usleep(100_000)
        }
        let page = (try? String(contentsOfFile: saved, encoding: .utf8)) ?? ""
        #expect(page.hasPrefix("<!DOCTYPE html>") && page.contains("</html>"), "ttyd served no page (\(page.utf8.count) bytes)")
    }
}
