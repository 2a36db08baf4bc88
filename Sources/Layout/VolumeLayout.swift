import Archive
import Foundation
import KrnativeBase
import Sandbox

#if canImport(Glibc)
    import Glibc
#endif

/// A volume that is not what its target says.
public enum LayoutError: KrnativeError {
    case wrongRuntime(archive: String, problem: String)
    /// Compiling `.pyc` failed; the cause (a sandbox refusal, a failed step) keeps its own status.
    case bytecode(cause: any KrnativeError)

    public var description: String {
        switch self {
        case .wrongRuntime(let archive, let problem):
            "the runtime archive \(archive) does not fit the target: \(problem); check the lock's runtime entry for this target"
        case .bytecode(let cause):
            "compiling the volume's .pyc failed: \(cause.description)"
        }
    }
    public var exitCode: Int32 {
        switch self {
        case .wrongRuntime: ExitStatus.policy
        case .bytecode(let cause): cause.exitCode
        }
    }
}

/// Lays out the volume tree (docs/design.md §1): the runtime's `python/` contents at the prefix root,
/// `bin/python`, the wheels, `bin/ttyd`, the agent's mount points, `licenses/`, and `.pyc`.
public struct VolumeLayout: Sendable {
    public var target: Target
    public var mountPoint = "/opt/backend.ai"
    public var python = (major: 3, minor: 13)

    public init(target: Target) { self.target = target }

    var sitePackages: String { "lib/python\(python.major).\(python.minor)/site-packages" }

    /// The loader a target's binaries name.
    public var loader: String {
        switch (target.libc, target.arch) {
        case (.gnu, .x86_64): "/lib64/ld-linux-x86-64.so.2"
        case (.gnu, .aarch64): "/lib/ld-linux-aarch64.so.1"
        case (.musl, .x86_64): "/lib/ld-musl-x86_64.so.1"
        case (.musl, .aarch64): "/lib/ld-musl-aarch64.so.1"
        }
    }

    /// Unpacks a python-build-standalone `install_only` archive (`python/…`) into `prefix` and
    /// checks it; `recordedSize` is the archive's size in the lock, which bounds what it may unpack to.
    public func placeRuntime(_ archive: String, into prefix: String, recordedSize: Int64? = nil) throws {
        try SafeExtractor(stripComponents: 1, limits: .forArchive(recordedSize: recordedSize)).extract(archive, into: prefix)
        let executable = "\(prefix)/bin/python\(python.major).\(python.minor)"
        guard let elf = ELFFile(path: executable) else {
            throw LayoutError.wrongRuntime(archive: archive, problem: "it has no ELF bin/python\(python.major).\(python.minor)")
        }
        guard elf.machine == target.arch else {
            throw LayoutError.wrongRuntime(archive: archive, problem: "bin/python is for \(elf.machine?.rawValue ?? "another machine"), not \(target.arch.rawValue)")
        }
        guard elf.interpreter == loader else {
            throw LayoutError.wrongRuntime(archive: archive, problem: "bin/python loads with \(elf.interpreter ?? "no loader"), not \(loader)")
        }
        guard FileSystem.exists("\(prefix)/lib/python\(python.major).\(python.minor)/os.py") else {
            throw LayoutError.wrongRuntime(archive: archive, problem: "it has no lib/python\(python.major).\(python.minor)")
        }
        if !FileSystem.exists(prefix + "/bin/python") {
            try FileManager.default.createSymbolicLink(atPath: prefix + "/bin/python", withDestinationPath: "python3")
        }
    }

    /// What `ensurePip` found and did.
    public enum PipProvision: Equatable, Sendable {
        /// The runtime carries pip (python-build-standalone's do).
        case present
        /// The runtime had none; this bundled wheel was installed.
        case installed(wheel: String)
        /// Neither pip nor a bundled wheel: the volume has no pip (smoke's pip check fails on it).
        case unavailable(bundled: String)
    }

    /// pip, when the runtime has none: the wheel CPython bundles for `ensurepip` (pinned with
    /// CPython's sources), installed as the lock's wheels are, with the `pip`, `pip3` and
    /// `pip3.13` launchers pip writes when it installs itself. python-build-standalone's archives
    /// carry pip (theirs pins the same wheel); a runtime compiled from source has none: its build
    /// Python has no zlib to run pip from a wheel. A runtime with neither is reported, not refused
    /// (a runtime without pip is still a runtime); two wheels, or one that is not a regular file,
    /// are refused.
    public func ensurePip(in prefix: String, runtime archive: String) throws -> PipProvision {
        guard !FileSystem.exists("\(prefix)/\(sitePackages)/pip/__init__.py") else { return .present }
        let bundled = "lib/python\(python.major).\(python.minor)/ensurepip/_bundled"
        let wheels = ((try? FileManager.default.contentsOfDirectory(atPath: prefix + "/" + bundled)) ?? []).filter {
            $0.hasPrefix("pip-") && $0.hasSuffix(".whl")
        }
        guard let wheel = wheels.first else { return .unavailable(bundled: bundled) }
        guard wheels.count == 1, FileSystem.kind(of: bundled + "/" + wheel, beneath: prefix) == S_IFREG else {
            throw LayoutError.wrongRuntime(
                archive: archive, problem: "it has no pip, and \(wheels.count) pip wheels (one regular file expected) in \(bundled) to install it from")
        }
        try WheelInstaller(target: target).install(prefix + "/" + bundled + "/" + wheel, into: prefix)
        return .installed(wheel: wheel)
    }

    /// `bin/ttyd` (0755) and the empty directories the agent bind-mounts into. The binary must be
    /// a regular file (no link is followed to it); only the volume's copy is given its mode.
    public func placeTtyd(_ binary: String, into prefix: String) throws {
        try StepResultTree(root: (binary as NSString).deletingLastPathComponent, madeBy: "the ttyd build")
            .copyFile((binary as NSString).lastPathComponent, to: prefix + "/bin/ttyd", mode: 0o755)
        for directory in ["kernel", "helpers"] {
            try FileSystem.createDirectory("\(prefix)/\(sitePackages)/ai/backend/\(directory)")
        }
    }

    /// Copies the license files of the installed wheels (their dist-info) under `licenses/wheels/`.
    public func collectWheelLicenses(in prefix: String) throws {
        let site = prefix + "/" + sitePackages
        for distInfo in try FileManager.default.contentsOfDirectory(atPath: site).filter({ $0.hasSuffix(".dist-info") }).sorted() {
            let enumerator = FileManager.default.enumerator(atPath: site + "/" + distInfo)
            while let relative = enumerator?.nextObject() as? String {
                let name = (relative as NSString).lastPathComponent
                guard relative.hasPrefix("licenses/") || Self.isLicenseName(name), FileSystem.size(of: site + "/" + distInfo + "/" + relative) != nil else { continue }
                let destination = "\(prefix)/licenses/wheels/\(distInfo.dropLast(".dist-info".count))/\(relative)"
                try FileSystem.createDirectory((destination as NSString).deletingLastPathComponent)
                try FileManager.default.copyItem(atPath: site + "/" + distInfo + "/" + relative, toPath: destination)
            }
        }
    }

    /// Copies the top-level license files of a source archive under `licenses/<component>/`; a
    /// source without one (Debian's zlib repack drops LICENSE) gives its README, where zlib states
    /// its license.
    public func collectLicenses(ofArchive archive: String, component: String, into prefix: String) throws {
        var readme: Data?
        var found = false
        let reader = try ArchiveReader(path: archive)
        while let entry = try reader.next() {
            let parts = entry.path.split(separator: "/")
            guard entry.kind == .regular, parts.count == 2 else { continue }
            let name = String(parts[1])
            guard Self.isLicenseName(name) || name == "README" else { continue }
            var data = Data()
            try reader.readData(entry: entry.path) { data.append(contentsOf: $0) }
            if name == "README" {
                readme = data
                continue
            }
            try write(data, to: "\(prefix)/licenses/\(component)/\(name)")
            found = true
        }
        if !found, let readme { try write(readme, to: "\(prefix)/licenses/\(component)/README") }
    }

    private func write(_ data: Data, to destination: String) throws {
        try FileSystem.createDirectory((destination as NSString).deletingLastPathComponent)
        try FileSystem.writeAtomically(data, to: destination)
    }

    /// Copies the runtime's own license (python-build-standalone ships CPython's `LICENSE.txt`).
    public func collectRuntimeLicense(in prefix: String) throws {
        let license = "\(prefix)/lib/python\(python.major).\(python.minor)/LICENSE.txt"
        guard FileSystem.exists(license) else { return }
        try FileSystem.createDirectory(prefix + "/licenses/python")
        FileSystem.remove(prefix + "/licenses/python/LICENSE.txt")
        try FileManager.default.copyItem(atPath: license, toPath: prefix + "/licenses/python/LICENSE.txt")
    }

    static func isLicenseName(_ name: String) -> Bool {
        let upper = name.uppercased()
        return ["LICENSE", "LICENCE", "COPYING", "COPYRIGHT", "NOTICE"].contains { upper == $0 || upper.hasPrefix($0 + ".") || upper.hasPrefix($0 + "-") }
    }

    /// Compiles every `.py` of site-packages to `.pyc` with unchecked-hash invalidation, in the
    /// sandbox with the prefix at the mount point, by `interpreter` (inside path; the volume's own
    /// python by default). The read-only volume then never compiles at kernel start.
    public func compileBytecode(
        in prefix: String, runner: SandboxRunner, interpreter: String? = nil, extraMounts: [SandboxSpec.Mount] = [], sourceDateEpoch: Int64
    ) throws {
        let python = interpreter ?? "\(mountPoint)/bin/python\(python.major).\(python.minor)"
        let spec = SandboxSpec(
            argv: [python, "-m", "compileall", "-q", "-j", "1", "--invalidation-mode", "unchecked-hash", "\(mountPoint)/\(sitePackages)"],
            // No .pyc for the stdlib modules compileall itself imports: those would carry this build's times.
            environment: ["PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"],
            mounts: [.writable(prefix, at: mountPoint, followLink: false)] + extraMounts, workingDirectory: "/tmp", home: "/tmp",
            sourceDateEpoch: sourceDateEpoch)
        do { try runner.run(spec) } catch { throw LayoutError.bytecode(cause: error) }
        // The step had the volume writable (a wheel's `.pth` runs in it): nothing reads the
        // volume again before it is known to hold no link out and no special file.
        do { try StepResultTree(root: prefix, madeBy: "the .pyc step").check() } catch { throw LayoutError.bytecode(cause: error) }
    }
}
