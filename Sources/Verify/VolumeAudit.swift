import Foundation
import KrnativeBase
import Layout

/// A JSON description kept in `sysroots/`, format version 1.
protocol SysrootDescription: Decodable {
    var formatVersion: Int { get }
}

extension SysrootDescription {
    /// Reads and checks it; errors name the file and the option that points elsewhere.
    static func loadDescription(from path: String, what: String, option: String) throws -> Self {
        guard let data = try? FileSystem.readRegularFile(path) else {
            throw UsageError("cannot read \(what) \(path) (\(FileSystem.whyUnreadable(path))); run krnative in the project (the directory holding krnative.lock.json, or below it) or give \(option) FILE")
        }
        let description: Self
        do { description = try DuplicateJSONKey.decode(Self.self, from: data) } catch {
            throw UsageError("\(what) \(path) is not valid: \(error)")
        }
        guard description.formatVersion == 1 else { throw UsageError("\(what) \(path): formatVersion \(description.formatVersion) is not 1") }
        return description
    }
}

/// `sysroots/audit-policy.json`: per libc, the loaders, the libraries a volume may expect on the
/// system, and the symbol versions it may ask of them, per architecture.
public struct AuditPolicy: Codable, Sendable, Equatable, SysrootDescription {
    public struct Policy: Codable, Sendable, Equatable {
        public var name: String
        public var loaders: [String: String]
        public var libraries: [String]
        /// Per architecture, per version prefix (`GLIBC`), the versions allowed (`2.17`).
        public var symbolVersions: [String: [String: [String]]]
    }
    public var formatVersion: Int
    public var policies: [String: Policy]

    public static let defaultPath = "sysroots/audit-policy.json"

    public static func load(from path: String) throws -> AuditPolicy {
        try loadDescription(from: path, what: "the audit policy", option: "--policy")
    }

    public func policy(for target: Target) throws -> Policy {
        guard let policy = policies[target.libc.rawValue] else {
            throw UsageError("the audit policy has no entry \"\(target.libc.rawValue)\" for \(target.rawValue)")
        }
        return policy
    }
}

/// One thing in a volume that breaks its target's policy, naming the file and what it asks for.
public struct AuditViolation: Codable, Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var problem: String
    public var description: String { "\(file): \(problem)" }
}

/// `krnative audit`: every ELF file in a volume against the target's policy (docs/design.md's portability
/// promise): machine, loader, needed libraries (allowed or bundled), symbol versions, and a static,
/// stripped `bin/ttyd`; position-independent executables and scripts in `bin/` that run where the
/// volume is mounted.
public struct VolumeAudit: Sendable {
    public var target: Target
    public var policy: AuditPolicy.Policy
    /// Where the agent mounts the volume: a `bin/` script may name an interpreter there.
    public var mountPoint = "/opt/backend.ai"

    public init(target: Target, policy: AuditPolicy) throws {
        self.target = target
        self.policy = try policy.policy(for: target)
    }

    public struct Report: Codable, Sendable {
        public var target: Target
        public var policy: String
        public var elfFiles: Int
        public var violations: [AuditViolation]
        public var passed: Bool { violations.isEmpty }
    }

    /// Why a `bin/` script whose first line is `line` runs nowhere but where it was built: it names
    /// an interpreter neither in the volume (at the mount point) nor the system's (`/bin`,
    /// `/usr/bin`: `/bin/sh`, `/usr/bin/env`), such as the build's `/install/bin/python3.13`. Nil when it runs.
    func scriptProblem(_ line: String) -> String? {
        let interpreter = line.dropFirst(2).trimmingCharacters(in: .whitespaces).split(separator: " ").first.map(String.init) ?? ""
        let runs = [mountPoint + "/", "/bin/", "/usr/bin/"].contains { interpreter.hasPrefix($0) } && !interpreter.contains("/../")
        return runs
            ? nil
            : "is a script for \(interpreter.isEmpty ? "no interpreter" : interpreter), which is neither in the volume (\(mountPoint)) nor /bin or /usr/bin: "
                + "it runs only where it was built (rewrite its first line to run the volume's python, as python-build-standalone's scripts do)"
    }

    /// `GLIBC_2.17` → (`GLIBC`, `2.17`).
    static func split(_ version: String) -> (String, String)? {
        guard let underscore = version.lastIndex(of: "_") else { return nil }
        return (String(version[..<underscore]), String(version[version.index(after: underscore)...]))
    }

    public func audit(_ listing: Listing) -> Report {
        let arch = target.arch.rawValue
        let loader = policy.loaders[arch]
        let versions = policy.symbolVersions[arch] ?? [:]
        // A library the volume carries itself, by file name (as the loader finds it through RPATH).
        let bundled = Set(listing.files.filter { $0.value.kind != .directory }.keys.map { $0.split(separator: "/").last.map(String.init) ?? $0 })
        let allowed = Set(policy.libraries).union(loader.map { [($0 as NSString).lastPathComponent] } ?? [])
        var violations: [AuditViolation] = []
        var elfFiles = 0
        for (path, file) in listing.files.sorted(by: { $0.key < $1.key }) {
            if path.hasPrefix("bin/"), let line = file.interpreterLine, let problem = scriptProblem(line) {
                violations.append(.init(file: path, problem: problem))
            }
            guard let elf = file.elf else {
                if path == "bin/ttyd" { violations.append(.init(file: path, problem: "is not an ELF file")) }
                continue
            }
            elfFiles += 1
            func flag(_ problem: String) { violations.append(.init(file: path, problem: problem)) }
            if elf.unreadable {
                flag("is not a 64-bit little-endian ELF file")
                continue
            }
            if elf.machine != target.arch { flag("ELF machine is \(elf.machine?.rawValue ?? "unknown"), the target's is \(arch)") }
            if let interpreter = elf.interpreter, interpreter != loader {
                flag("asks for the loader \(interpreter); \(target.rawValue) has \(loader ?? "none")")
            }
            for library in elf.neededLibraries where !allowed.contains(library) && !bundled.contains(library) {
                flag("needs \(library), which \(policy.name) does not allow and the volume does not carry")
            }
            // One line per library and version family: the newest version asked for beyond the policy.
            var beyond: [String: [ELFFile.NeededVersion]] = [:]
            for needed in elf.neededVersions {
                // A bundled library's versions are its own business, a disallowed one is flagged above.
                if bundled.contains(needed.library) || !allowed.contains(needed.library) { continue }
                guard let (prefix, number) = Self.split(needed.version), versions[prefix]?.contains(number) != true else { continue }
                beyond["\(needed.library) \(prefix)", default: []].append(needed)
            }
            for (_, needs) in beyond.sorted(by: { $0.key < $1.key }) {
                let newest = needs.max { Self.split($0.version)!.1.compare(Self.split($1.version)!.1, options: .numeric) == .orderedAscending }!
                let prefix = Self.split(newest.version)!.0
                let permitted = versions[prefix].map { "allows \(prefix) up to \($0.last ?? "none")" } ?? "does not allow \(prefix) versions"
                let symbols = newest.symbols.isEmpty ? "" : " (\(newest.symbols.prefix(3).joined(separator: ", "))\(newest.symbols.count > 3 ? ", …" : ""))"
                let others = needs.count > 1 ? "; \(needs.count - 1) more \(prefix) versions beyond the policy" : ""
                flag("needs \(newest.version) from \(newest.library)\(symbols); \(policy.name) \(permitted)\(others)")
            }
            if path.hasPrefix("bin/"), elf.isFixedAddressExecutable == true {
                flag("is an executable at a fixed address, not position-independent (link it with -pie, as python-build-standalone's are)")
            }
            if path == "bin/ttyd" {
                if elf.interpreter != nil || !elf.neededLibraries.isEmpty {
                    flag("ttyd is not static (loader \(elf.interpreter ?? "none"), needs \(elf.neededLibraries.joined(separator: ", ")))")
                }
                if !elf.isStripped { flag("ttyd is not stripped (it has a .symtab)") }
            }
        }
        if listing.files["bin/ttyd"] == nil { violations.append(.init(file: "bin/ttyd", problem: "is missing")) }
        return Report(target: target, policy: policy.name, elfFiles: elfFiles, violations: violations)
    }
}

public struct AuditFailed: KrnativeError {
    public var location: String
    public var report: VolumeAudit.Report
    public init(location: String, report: VolumeAudit.Report) {
        self.location = location
        self.report = report
    }
    public var description: String {
        let shown = report.violations.prefix(20).map { "  \($0)" }.joined(separator: "\n")
        let more = report.violations.count > 20 ? "\n  … and \(report.violations.count - 20) more (krnative audit --json \(location))" : ""
        return "\(location) breaks the \(report.policy) policy of \(report.target.rawValue) (sysroots/audit-policy.json):\n\(shown)\(more)"
    }
    public var exitCode: Int32 { ExitStatus.policy }
}
