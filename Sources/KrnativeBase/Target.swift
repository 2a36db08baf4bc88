/// The four volumes krnative builds (docs/design.md §1).
public enum Target: String, CaseIterable, Sendable, Codable, Comparable {
    case manylinuxX86_64 = "manylinux-x86_64"
    case manylinuxAarch64 = "manylinux-aarch64"
    case musllinuxX86_64 = "musllinux-x86_64"
    case musllinuxAarch64 = "musllinux-aarch64"

    public enum Libc: String, Sendable, Codable { case gnu, musl }

    public static func < (a: Target, b: Target) -> Bool { a.rawValue < b.rawValue }

    public var libc: Libc {
        switch self {
        case .manylinuxX86_64, .manylinuxAarch64: .gnu
        case .musllinuxX86_64, .musllinuxAarch64: .musl
        }
    }

    public var arch: Architecture {
        switch self {
        case .manylinuxX86_64, .musllinuxX86_64: .x86_64
        case .manylinuxAarch64, .musllinuxAarch64: .aarch64
        }
    }

    /// The flavours a volume of this target can ship as; the first is the one builds made before
    /// flavours were a choice (its build keys are unchanged).
    public var flavours: [Flavour] { libc == .gnu ? [.staticGnu] : [.alpine, .staticMusl] }

    /// The first of `flavours`: the one a request that names no flavour builds (as every request
    /// before flavours), and whose file names `smoke` looks for by default.
    public var defaultFlavour: Flavour { flavours[0] }

    /// The python-build-standalone triple of the runtime that ships in the volume.
    public var pythonBuildStandaloneTriple: String {
        switch self {
        case .manylinuxX86_64: "x86_64_v2-unknown-linux-gnu"
        case .manylinuxAarch64: "aarch64-unknown-linux-gnu"
        case .musllinuxX86_64: "x86_64_v2-unknown-linux-musl"
        case .musllinuxAarch64: "aarch64-unknown-linux-musl"
        }
    }

    /// The triple ttyd is cross-compiled for: always static musl.
    public var ttydTriple: String { "\(arch.rawValue)-linux-musl" }

    /// The options that choose `targets` for `host` on a command line (`--target T …` or `--all`,
    /// and `--host H` when it is not this machine), as advice to run a command prints them.
    public static func options(for targets: [Target], host: HostPlatform = .current) -> String {
        (targets == allCases ? "--all" : targets.map { "--target \($0.rawValue)" }.joined(separator: " "))
            + (host == .current ? "" : " --host \(host)")
    }

    /// Parses a `--target` value, naming the valid ones when it is not one.
    public static func parse(_ text: String) throws(UsageError) -> Target {
        guard let target = Target(rawValue: text) else {
            throw UsageError(
                "unknown target '\(text)'; the targets are: "
                    + Target.allCases.map(\.rawValue).joined(separator: ", "))
        }
        return target
    }
}

/// A CPU architecture as krnative names it (the uname spelling).
public enum Architecture: String, CaseIterable, Sendable, Codable {
    case x86_64
    case aarch64
}

/// The machine a toolchain runs on, as written in the lock: `x86_64-linux`, `aarch64-linux`.
public struct HostPlatform: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
    public var arch: Architecture
    public init(arch: Architecture) { self.arch = arch }
    public init?(rawValue: String) {
        guard rawValue.hasSuffix("-linux"),
            let arch = Architecture(rawValue: String(rawValue.dropLast("-linux".count)))
        else { return nil }
        self.arch = arch
    }
    public var rawValue: String { "\(arch.rawValue)-linux" }
    public var description: String { rawValue }

    /// The machine krnative runs on.
    public static var current: HostPlatform {
        #if arch(arm64)
            HostPlatform(arch: .aarch64)
        #else
            HostPlatform(arch: .x86_64)
        #endif
    }
}

/// The package a volume ships in, as the Backend.AI agent finds it: the distro key in its file
/// names and in the agent's `krunner_volumes`, the module and entry point, the distribution name.
/// The agent looks for `static-gnu` for glibc images and `static-musl` for Alpine ones first
/// (`match_distro_data`), then for keys that start with the image's distro name; `alpine` is the
/// published package of musl volumes (distro `musllinux_1_2`), which the agent never selects.
public enum Flavour: String, CaseIterable, Sendable, Codable {
    case staticGnu = "static-gnu"
    case alpine
    case staticMusl = "static-musl"

    /// The distro key: in the volume's file names, `versions.txt`, `krunner.json` and the ledger.
    public var distro: String {
        switch self {
        case .staticGnu: "static-gnu"
        case .alpine: "musllinux_1_2"
        case .staticMusl: "static-musl"
        }
    }

    /// The suffix of the plugin module `ai.backend.krunner.<name>` and the entry point's name.
    public var moduleName: String { rawValue.replacingOccurrences(of: "-", with: "_") }

    /// The Python distribution name of the plugin wheel.
    public var packageName: String { "backend.ai-krunner-" + rawValue }
}
