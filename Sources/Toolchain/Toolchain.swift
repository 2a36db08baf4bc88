import Foundation
import KrnativeBase

/// The compilers krnative can build ttyd with (docs/design.md §2.6).
public enum ToolchainKind: String, CaseIterable, Sendable, Codable {
    /// `zig cc -target <arch>-linux-musl`, from the `ziglang` wheel: runs on x86_64 and aarch64
    /// hosts and gives the same bytes on both, so it is the default everywhere.
    case zig
    /// The musl.cc GCC cross toolchains ttyd's own recipe uses; x86_64 hosts only.
    case muslCross = "musl-cross"

    /// The lock entry that provides this toolchain for `triple` on `host`.
    public func lockName(triple: String, host: HostPlatform) -> String {
        switch self {
        case .zig: "zig-\(host.rawValue)"
        case .muslCross: "musl-cross-\(triple)"
        }
    }

    /// Leading components to strip when unpacking its archive.
    public var stripComponents: Int {
        switch self {
        case .zig: 0  // a wheel: ziglang/zig at its root
        case .muslCross: 1  // x86_64-linux-musl-cross/bin/…
        }
    }
}

/// A toolchain unpacked on the host, seen inside the sandbox at `/toolchain`, for one target triple.
public struct Toolchain: Sendable, Codable, Equatable {
    public static let insideRoot = "/toolchain"

    public var kind: ToolchainKind
    public var version: String
    /// sha256 of the toolchain's archive: part of every step's cache key.
    public var archiveSha256: SHA256Digest
    public var triple: String
    /// Where it is unpacked on the host.
    public var hostRoot: String

    public init(kind: ToolchainKind, version: String, archiveSha256: SHA256Digest, triple: String, hostRoot: String) {
        self.kind = kind
        self.version = version
        self.archiveSha256 = archiveSha256
        self.triple = triple
        self.hostRoot = hostRoot
    }

    public var arch: String { String(triple.prefix { $0 != "-" }) }

    /// What identifies its output, for cache keys (not where it is unpacked).
    public var identity: String { "\(kind.rawValue) \(version) \(archiveSha256.hex) \(triple)" }

    /// The compiler wrappers krnative writes (name → script), calling the toolchain at `root`
    /// (its path as the steps see it). Zig's carry the target; musl.cc's give the tools plain names.
    public func wrappers(root: String) -> [String: String] {
        func script(_ command: String) -> String { "#!/bin/sh\nexec \(command) \"$@\"\n" }
        switch kind {
        case .zig:
            let zig = "\(root)/ziglang/zig"
            return [
                "cc": script("\(zig) cc -target \(triple)"),
                "c++": script("\(zig) c++ -target \(triple)"),
                "ar": script("\(zig) ar"),
                "ranlib": script("\(zig) ranlib"),
                // Every file named, in place, keeping its mode: zig objcopy takes one input and one output.
                "strip-debug":
                    "#!/bin/sh\nfor f; do \(zig) objcopy --strip-debug \"$f\" \"$f.stripped\" && mv \"$f.stripped\" \"$f\" || exit 1; done\n",
            ]
        case .muslCross:
            let bin = "\(root)/bin/\(triple)"
            return [
                "cc": script("\(bin)-gcc"), "c++": script("\(bin)-g++"), "ar": script("\(bin)-ar"), "ranlib": script("\(bin)-ranlib"),
                "strip-debug": script("\(bin)-strip --strip-debug"),
            ]
        }
    }

    /// The CMake toolchain file: ttyd's `install_cmake_cross_file`, with krnative's wrappers.
    public func cmakeToolchainFile(wrappers: String, stage: String) -> String {
        """
        set(CMAKE_SYSTEM_NAME Linux)
        set(CMAKE_SYSTEM_PROCESSOR \(arch))

        set(CMAKE_C_COMPILER "\(wrappers)/cc")
        set(CMAKE_CXX_COMPILER "\(wrappers)/c++")
        set(CMAKE_AR "\(wrappers)/ar" CACHE FILEPATH "archiver")
        set(CMAKE_RANLIB "\(wrappers)/ranlib" CACHE FILEPATH "ranlib")

        set(CMAKE_FIND_ROOT_PATH "\(stage)")
        set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
        set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
        set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
        set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

        set(OPENSSL_USE_STATIC_LIBS TRUE)

        """
    }

    /// Picks the toolchain for `host` when none is named: Zig everywhere.
    public static func defaultKind(for host: HostPlatform) -> ToolchainKind { .zig }

    /// Whether `kind` can run on `host`.
    public static func runs(_ kind: ToolchainKind, on host: HostPlatform) -> Bool {
        kind == .zig || host.arch == .x86_64
    }
}
