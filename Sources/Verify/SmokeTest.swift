import Archive
import Foundation
import KrnativeBase
import Sandbox
import Store

#if canImport(Glibc)
    import Glibc
#endif

/// `sysroots/smoke.json`: the minimal system a volume is tried on, and what is run there.
public struct SmokeDescription: Codable, Sendable, SysrootDescription {
    public var formatVersion: Int
    public var suite: String
    public var variant: String
    /// Debian's name for each architecture.
    public var architectures: [String: String]
    /// Packages added to the variant, per libc.
    public var packages: [String: [String]]
    /// For a foreign architecture: the packages unpacked (extract variant), per libc.
    public var foreignPackages: [String: [String]]
    public var mountPoint: String
    /// argv of each check, the program relative to the volume.
    public var checks: [[String]]

    public static let defaultPath = "sysroots/smoke.json"

    public static func load(from path: String) throws -> SmokeDescription {
        try loadDescription(from: path, what: "the smoke description", option: "--sysroot")
    }
}

/// `krnative smoke` of a volume that is not there.
public struct MissingVolume: KrnativeError {
    public var path: String
    public var target: Target
    public var description: String {
        "no volume at \(path): build it with `krnative build --target \(target.rawValue)`, or name one with --volume (a directory or tar.xz)"
    }
    public var exitCode: Int32 { ExitStatus.missingInput }
}

public struct SmokeFailed: KrnativeError {
    public var volume: String
    public var failures: [SmokeTest.Check]
    public init(volume: String, failures: [SmokeTest.Check]) {
        self.volume = volume
        self.failures = failures
    }
    public var description: String {
        "\(volume) fails on the minimal system:\n"
            + failures.map { "  \($0.argv.joined(separator: " ")): \($0.termination)\n    " + $0.output.replacingOccurrences(of: "\n", with: "\n    ") }
            .joined(separator: "\n")
    }
    public var exitCode: Int32 { ExitStatus.process }
}

/// `krnative smoke --target T`: the volume mounted where the agent mounts it, in a minimal Debian
/// root file system of the target's architecture and libc, inside the sandbox; its Python
/// imports what the kernel runner needs and its ttyd starts. No Docker: mmdebstrap makes the root
/// file system once (kept in the store), the sandbox runs the checks, qemu-user-static runs
/// another architecture's binaries.
public struct SmokeTest: Sendable {
    public struct Check: Codable, Sendable {
        public var argv: [String]
        public var termination: String
        public var passed: Bool
        public var output: String
    }
    public struct Report: Codable, Sendable {
        public var target: Target
        public var volume: String
        public var rootFilesystem: String
        public var emulator: String?
        public var checks: [Check]
        public var passed: Bool { checks.allSatisfy(\.passed) }
    }

    public var target: Target
    public var description: SmokeDescription
    public var store: Store
    public var runner: SandboxRunner
    public var log: @Sendable (String) -> Void = Reporting.note

    public init(target: Target, description: SmokeDescription, store: Store, runner: SandboxRunner) {
        self.target = target
        self.description = description
        self.store = store
        self.runner = runner
    }

    var isForeign: Bool { target.arch != HostPlatform.current.arch }
    static let emulatorInside = "/opt/krnative-qemu"

    /// The host's apt sources of binary packages, which mmdebstrap copies into the root file system.
    static func aptSources() -> [String] {
        var files = ["/etc/apt/sources.list"]
        let directory = "/etc/apt/sources.list.d"
        for name in ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
        where name.hasSuffix(".sources") || name.hasSuffix(".list") {
            files.append(directory + "/" + name)
        }
        return files.filter { file in
            let text = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").contains { line in
                line.hasPrefix("deb ") || (line.hasPrefix("Types:") && line.split(separator: " ").contains("deb"))
            }
        }
    }

    /// The mmdebstrap command for the target, the key it is cached under, and where.
    public func rootFilesystemCommand(into directory: String) throws -> [String] {
        guard let debianArch = description.architectures[target.arch.rawValue] else {
            throw UsageError("\(SmokeDescription.defaultPath) names no Debian architecture for \(target.arch.rawValue)")
        }
        let libc = target.libc.rawValue
        let packages = (isForeign ? description.foreignPackages[libc] : description.packages[libc]) ?? []
        var argv = [
            // Not --quiet: when apt fails, its own lines are what the error's output tail shows.
            "mmdebstrap", "--variant=\(isForeign ? "extract" : description.variant)", "--architectures=\(debianArch)",
            "--mode=\(geteuid() == 0 ? "root" : "unshare")",
        ]
        if !packages.isEmpty { argv.append("--include=" + packages.joined(separator: ",")) }
        let sources = Self.aptSources()
        guard !sources.isEmpty else { throw UsageError("no apt sources in /etc/apt: mmdebstrap needs them to make the smoke root file system") }
        return argv + [description.suite, directory] + sources
    }

    /// Runs mmdebstrap, again after a pause when it fails: it downloads from the apt sources, whose
    /// mirrors fail now and then as any download does (the fetcher retries the same way).
    func makeWithRetries(_ argv: [String], into temporary: String, attempts: Int = 3) throws {
        for attempt in 1...attempts {
            do {
                try ChildProcess.check(argv)
                return
            } catch {
                guard attempt < attempts, !Cancellation.requested else { throw error }
                let pause = UInt32(30 * attempt)
                log("mmdebstrap failed (attempt \(attempt) of \(attempts)); trying again in \(pause) s: \(error.description.suffix(500))")
                FileSystem.remove(temporary)
                sleep(pause)
            }
        }
    }

    /// The root file system, made once and kept in the store under a key of its command and the
    /// apt sources' contents.
    public func rootFilesystem() throws -> String {
        let probe = try rootFilesystemCommand(into: "-")
        var parts = probe
        for file in Self.aptSources() { parts.append((try? SHA256Digest.of(fileAt: file).digest.hex) ?? "") }
        let key = SHA256Digest.of(Data(parts.joined(separator: "\n").utf8))
        let root = store.root + "/sysroots/\(target.rawValue)-\(key.hex.prefix(16))"
        if FileSystem.exists(root) { return root }
        guard ChildProcess.resolve("mmdebstrap").hasPrefix("/") else {
            throw UsageError("mmdebstrap is not installed; it makes the smoke test's root file system: apt-get install mmdebstrap")
        }
        try FileSystem.createDirectory(store.root + "/sysroots")
        let temporary = root + ".partial-\(getpid())"
        FileSystem.remove(temporary)
        defer { FileSystem.remove(temporary) }
        let argv = try rootFilesystemCommand(into: temporary)
        log("making the \(target.rawValue) smoke root file system: \(argv.joined(separator: " "))")
        try makeWithRetries(argv, into: temporary)
        // Mount points that must exist in a read-only root.
        try FileSystem.createDirectory(temporary + description.mountPoint)
        if isForeign { _ = FileManager.default.createFile(atPath: temporary + Self.emulatorInside, contents: nil) }
        try FileSystem.rename(temporary, to: root)
        return root
    }

    /// Unpacks `volume` (a directory is used as it is) and runs every check in the root file system.
    public func run(volume: String) throws -> Report {
        // Before minutes of mmdebstrap: is there anything to try?
        guard FileSystem.exists(volume) else { throw MissingVolume(path: volume, target: target) }
        var emulator: String?
        if isForeign {
            let qemu = ChildProcess.resolve("qemu-\(target.arch.rawValue)-static")
            guard qemu.hasPrefix("/") else {
                throw UsageError("qemu-\(target.arch.rawValue)-static is not installed; it runs \(target.rawValue) binaries here: apt-get install qemu-user-static")
            }
            emulator = qemu
        }
        var tree = volume
        let scratch = store.temporaryPath("smoke")
        defer { FileSystem.remove(scratch) }
        if !FileSystem.isDirectory(volume) {
            try FileSystem.createDirectory(scratch)
            log("unpacking \(volume)")
            _ = try SafeExtractor().extract(volume, into: scratch)
            tree = scratch
        }
        var info = stat()
        for check in description.checks where lstat(tree + "/" + check[0], &info) != 0 {
            throw UsageError("\(volume) is not a \(target.rawValue) volume: it has no \(check[0]); give the krunner-env tar.xz or its unpacked directory")
        }
        let rootfs = try rootFilesystem()
        var mounts: [SandboxSpec.Mount] = [.readOnly(tree, at: description.mountPoint)]
        if let emulator { mounts.append(.readOnly(emulator, at: Self.emulatorInside)) }
        var checks: [Check] = []
        for (number, check) in description.checks.enumerated() {
            var argv = [description.mountPoint + "/" + check[0]] + check.dropFirst()
            if emulator != nil { argv = [Self.emulatorInside, "-L", "/"] + argv }
            // What is running; the result is the caller's to print, once.
            log("smoke: check \(number + 1) of \(description.checks.count): \(argv.joined(separator: " "))")
            let spec = SandboxSpec(
                argv: argv, environment: ["PYTHONDONTWRITEBYTECODE": "1"], mounts: mounts, rootDirectory: rootfs, workingDirectory: "/tmp",
                hostname: "krnative-smoke")
            let result = try runner.start(spec)
            let passed = result.termination == .exited(0)
            checks.append(Check(argv: argv, termination: "\(result.termination)", passed: passed, output: result.outputTail))
        }
        return Report(target: target, volume: volume, rootFilesystem: rootfs, emulator: emulator, checks: checks)
    }
}
