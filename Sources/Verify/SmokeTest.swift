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
    /// The Debian release (suite) per libc.
    public var suites: [String: String]?
    /// The release of every libc, in a description older than `suites`.
    public var suite: String?
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
    /// argv of the check that starts the kernel runner as the agent does (`--kernel-runner`), the
    /// program relative to the volume; `KRNATIVE_SMOKE_LAUNCHER` names the emulator it starts the
    /// runner with, if any.
    public var kernelRunnerCheck: [String]?

    public static let defaultPath = "sysroots/smoke.json"

    public static func load(from path: String) throws -> SmokeDescription {
        try loadDescription(from: path, what: "the smoke description", option: "--sysroot")
    }

    public func suite(for libc: Target.Libc) -> String? { suites?[libc.rawValue] ?? suite }
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
            + failures.map { "  \(SmokeTest.shown($0.argv)): \($0.termination)\n    " + $0.output.replacingOccurrences(of: "\n", with: "\n    ") }
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
        /// The Debian release of the root file system: "Debian 11.11 (bullseye)".
        public var release: String?
        public var emulator: String?
        public var checks: [Check]
        public var passed: Bool { checks.allSatisfy(\.passed) }
    }

    /// argv as a line to read: an argument of several lines (a program) as its first line and
    /// its length; --json and sysroots/smoke.json have it whole.
    public static func shown(_ argv: [String]) -> String {
        argv.map { argument in
            let lines = argument.split(separator: "\n", omittingEmptySubsequences: false)
            return lines.count > 1 ? "\(lines[0]) … (\(lines.count) lines)" : argument
        }.joined(separator: " ")
    }

    public var target: Target
    public var description: SmokeDescription
    public var store: Store
    public var runner: SandboxRunner
    /// A directory holding the agent's `ai/backend/kernel` and `ai/backend/helpers` (its
    /// site-packages, or the `backend.ai-kernel` and `backend.ai-kernel-helper` wheels unpacked):
    /// bound where the agent binds them, for the check that starts the kernel runner.
    public var kernelRunner: String?
    /// Where the root file systems' packages come from: this machine's apt sources.
    public var aptSources = AptSources.host()
    public var log: @Sendable (String) -> Void = Reporting.note

    public init(target: Target, description: SmokeDescription, store: Store, runner: SandboxRunner) {
        self.target = target
        self.description = description
        self.store = store
        self.runner = runner
    }

    public var isForeign: Bool { target.arch != HostPlatform.current.arch }
    public static let emulatorInside = "/opt/krnative-qemu"

    /// The Debian release the target's root file system is made of.
    public func suite() throws -> String {
        guard let suite = description.suite(for: target.libc) else {
            throw UsageError("\(SmokeDescription.defaultPath) names no Debian suite for \(target.libc.rawValue) (suites)")
        }
        return suite
    }

    /// The mmdebstrap command for the target: the suite, then the mirrors (Debian's archive
    /// among this machine's apt sources, `AptSources.mirrors(for:)`).
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
        let suite = try suite()
        return argv + [suite, directory] + (try aptSources.mirrors(for: suite))
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

    /// The root file system, made once and kept in the store under a key of its command (suite
    /// and mirrors), the contents of the sources files it names and how its CA certificates are
    /// configured.
    public func rootFilesystem() throws -> String {
        let name = try rootName()
        let root = store.item(.sysroots, name)
        let itemLock = try store.lock(.sysroots, name)
        defer { itemLock.unlock() }
        if FileSystem.exists(root) {
            store.markUsed(.sysroots, name)
            return root
        }
        guard ChildProcess.resolve("mmdebstrap").hasPrefix("/") else {
            throw UsageError("mmdebstrap is not installed; it makes the smoke test's root file system: apt-get install mmdebstrap")
        }
        try FileSystem.createDirectory(store.directory(.sysroots))
        let temporary = root + ".partial-\(getpid())"
        FileSystem.remove(temporary)
        defer { FileSystem.remove(temporary) }
        let argv = try rootFilesystemCommand(into: temporary)
        log("making the \(target.rawValue) smoke root file system: \(argv.map(ChildProcess.quote).joined(separator: " "))")
        try makeWithRetries(argv, into: temporary)
        try finish(root: temporary)
        // No tree-hash record: mmdebstrap's root holds device files, which a tree hash refuses.
        try store.complete(.sysroots, name, from: temporary, recordingTreeHash: false)
        return root
    }

    /// The root's item in the store's `sysroots/`: the target and the key of the root's command,
    /// its sources files and its CA certificates' configuration.
    public func rootName() throws -> String {
        let probe = try rootFilesystemCommand(into: "-")
        var parts = probe + [Self.caCertificatesConfiguration]
        for file in probe where file.hasPrefix("/") { parts.append((try? SHA256Digest.of(fileAt: file).digest.hex) ?? "") }
        let key = SHA256Digest.of(Data(parts.joined(separator: "\n").utf8))
        return "\(target.rawValue)-\(key.hex.prefix(16))"
    }

    /// What a root needs after mmdebstrap: the mount points a read-only root must already have
    /// (the volume's, and the emulator's in a foreign root) and its CA certificates. The root's
    /// files came from a mirror: every write goes through real directories of the root only,
    /// never through one of its symbolic links, which point wherever the packages chose.
    public func finish(root: String) throws {
        try SandboxEntry.makeMountPoint(description.mountPoint, under: root, directory: true)
        if isForeign { try SandboxEntry.makeMountPoint(Self.emulatorInside, under: root, directory: false) }
        try configureCACertificates(in: root)
    }

    /// Part of a root's key: a change to `configureCACertificates` makes the roots again.
    static let caCertificatesConfiguration = "ca-certificates: links, openssl rehash, bundle (1)"

    /// What ca-certificates' postinst (update-ca-certificates) does, for a root whose maintainer
    /// scripts did not run (mmdebstrap's extract variant, another architecture): every
    /// certificate of /usr/share/ca-certificates linked into /etc/ssl/certs as NAME.pem, the
    /// links to them named by subject hash (`openssl rehash`, here: the certificates are data,
    /// the same on every architecture), and the bundle ca-certificates.crt. The links are
    /// relative (Debian's are absolute) so that they resolve both in the root and from here.
    /// A root whose postinst made the bundle is left as it is.
    /// Like every write of `finish(root:)`, it follows none of the root's symbolic links: a
    /// certificate that is one is refused, not read.
    func configureCACertificates(in root: String) throws {
        let certificates = root + "/usr/share/ca-certificates", directory = root + "/etc/ssl/certs"
        guard FileSystem.kind(of: "usr/share/ca-certificates", beneath: root) == S_IFDIR,
            !FileSystem.exists(directory + "/ca-certificates.crt")
        else { return }
        let files = (FileManager.default.enumerator(atPath: certificates)?.compactMap { $0 as? String } ?? [])
            .filter { $0.hasSuffix(".crt") }.sorted()
        guard !files.isEmpty else { return }
        let openssl = ChildProcess.resolve("openssl")
        guard openssl.hasPrefix("/") else {
            throw UsageError("openssl is not installed; it names the CA certificates of the \(target.rawValue) smoke root by subject hash: apt-get install openssl")
        }
        for file in files where FileSystem.kind(of: "usr/share/ca-certificates/" + file, beneath: root) != S_IFREG {
            throw UsageError(
                "the \(target.rawValue) smoke root's /usr/share/ca-certificates/\(file) is not a regular file reached through real directories "
                    + "(a symbolic link?), as the Debian packages made it; krnative follows no link of a root it makes: check the apt sources the mmdebstrap command above names")
        }
        try SandboxEntry.makeMountPoint("/etc/ssl/certs", under: root, directory: true)
        var bundle = Data()
        for file in files {
            // update-ca-certificates' names: spaces and commas to _, parentheses to =.
            let name = String((file as NSString).lastPathComponent.dropLast(".crt".count))
                .map { $0 == " " || $0 == "," ? "_" : $0 == "(" || $0 == ")" ? "=" : $0 }
            let link = directory + "/" + String(name) + ".pem"
            FileSystem.remove(link)
            guard symlink("../../../usr/share/ca-certificates/" + file, link) == 0 else {
                throw FileSystemError.cannotWrite(path: link, errno: errno)
            }
            let contents = try Data(contentsOf: URL(fileURLWithPath: certificates + "/" + file))
            bundle += contents
            if contents.last != UInt8(ascii: "\n") { bundle.append(UInt8(ascii: "\n")) }
        }
        try ChildProcess.check([openssl, "rehash", directory])
        try FileSystem.writeAtomically(bundle, to: directory + "/ca-certificates.crt")
        log("smoke: \(files.count) CA certificates linked in /etc/ssl/certs of the \(target.rawValue) root (its maintainer scripts do not run)")
    }

    /// "Debian 11.11 (bullseye)": the root's /etc/debian_version (base-files), else its os-release.
    public static func release(of root: String, suite: String) -> String {
        if let version = try? String(contentsOfFile: root + "/etc/debian_version", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines),
            !version.isEmpty
        {
            return "Debian \(version) (\(suite))"
        }
        for file in ["/etc/os-release", "/usr/lib/os-release"] {
            if let text = try? String(contentsOfFile: root + file, encoding: .utf8),
                let name = AptSources.osReleaseField("PRETTY_NAME", in: text)
            {
                return name
            }
        }
        return "Debian \(suite)"
    }

    /// The agent's kernel and helpers packages bound where the agent binds them
    /// (`_prepare_python_lib_mounts`), or nil without `kernelRunner`; a directory without them is
    /// a usage error naming what is missing and where to get it.
    func kernelRunnerMounts() throws -> [SandboxSpec.Mount]? {
        guard let kernelRunner else { return nil }
        guard description.kernelRunnerCheck?.isEmpty == false else {
            throw UsageError("\(SmokeDescription.defaultPath) has no kernelRunnerCheck to start the kernel runner with")
        }
        let sitePackages = "\(description.mountPoint)/lib/python3.13/site-packages/ai/backend"
        return try ["kernel", "helpers"].map { package in
            let path = kernelRunner + "/ai/backend/" + package
            guard FileSystem.isDirectory(path) else {
                throw UsageError(
                    "--kernel-runner \(kernelRunner) has no ai/backend/\(package): give the agent's site-packages, or a directory where the "
                        + "backend.ai-kernel and backend.ai-kernel-helper wheels are unpacked (pip download --no-deps --python-version 3.13 backend.ai-kernel backend.ai-kernel-helper)")
            }
            return .readOnly(path, at: sitePackages + "/" + package)
        }
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
        let kernelRunnerMounts = try kernelRunnerMounts()
        let rootfs = try rootFilesystem()
        var mounts: [SandboxSpec.Mount] = [.readOnly(tree, at: description.mountPoint)]
        if let emulator { mounts.append(.readOnly(emulator, at: Self.emulatorInside)) }
        let launcher = emulator == nil ? [] : [Self.emulatorInside, "-L", "/"]
        var planned = description.checks.map { (argv: launcher + [description.mountPoint + "/" + $0[0]] + $0.dropFirst(), mounts: mounts, home: nil as String?) }
        let home = store.temporaryPath("smoke-home")
        defer { FileSystem.remove(home) }
        if let kernelRunnerMounts, let check = description.kernelRunnerCheck, !check.isEmpty {
            // The agent's home for the runner: /home/work, writable.
            try FileSystem.createDirectory(home + "/work")
            planned.append((launcher + [description.mountPoint + "/" + check[0]] + check.dropFirst(), mounts + kernelRunnerMounts + [.writable(home, at: "/home")], "/home/work"))
        }
        var checks: [Check] = []
        for (number, check) in planned.enumerated() {
            // What is running; the result is the caller's to print, once.
            log("smoke: check \(number + 1) of \(planned.count): \(Self.shown(check.argv))")
            let spec = SandboxSpec(
                argv: check.argv, environment: ["PYTHONDONTWRITEBYTECODE": "1", "KRNATIVE_SMOKE_LAUNCHER": launcher.joined(separator: " ")],
                mounts: check.mounts, rootDirectory: rootfs, workingDirectory: "/tmp", home: check.home, hostname: "krnative-smoke",
                emulator: emulator == nil ? nil : .init(path: Self.emulatorInside, arch: target.arch))
            let result = try runner.start(spec)
            let passed = result.termination == .exited(0)
            checks.append(Check(argv: check.argv, termination: "\(result.termination)", passed: passed, output: result.outputTail))
        }
        return Report(
            target: target, volume: volume, rootFilesystem: rootfs, release: Self.release(of: rootfs, suite: try suite()), emulator: emulator,
            checks: checks)
    }
}
