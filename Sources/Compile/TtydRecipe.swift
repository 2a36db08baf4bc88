import Foundation
import KrnativeBase
import Patch
import Toolchain

/// Where things are during a build, as the steps see them. Inside the sandbox these are fixed
/// paths, the same on every machine; with `--sandbox none` they are the host paths.
public struct BuildLayout: Sendable, Codable, Equatable {
    /// The work directory: sources under `src/`, the install tree under `stage/`.
    public var build: String
    public var toolchain: String
    public var zigCache: String

    public init(build: String, toolchain: String, zigCache: String) {
        self.build = build
        self.toolchain = toolchain
        self.zigCache = zigCache
    }

    public static let sandboxed = BuildLayout(build: "/build", toolchain: Toolchain.insideRoot, zigCache: "/zig-cache")

    /// Zig's cache of a build without the sandbox: in its work directory, so it goes with it.
    public static func zigCache(inWork work: String) -> String { work + "/zig-cache" }

    public var stage: String { build + "/stage" }
    public var wrappers: String { build + "/wrappers" }
    public var cmakeToolchainFile: String { build + "/toolchain.cmake" }
    public func source(_ component: String) -> String { build + "/src/" + component }
}

/// One library (or ttyd itself) of the recipe: commands run in order in its source directory.
public struct BuildStep: Sendable, Codable, Equatable {
    /// The lock's source entry, and the `patches/` folder.
    public var component: String
    public var commands: [[String]]
    public var environment: [String: String]
    /// Where and why this step differs from its upstream recipe.
    public var adaptation: String?
    /// The directory under `src/` it builds in, when not the component's name (a source built twice).
    public var directory: String? = nil
    /// Edits of the source the recipe makes before the commands run (after `patches/`), each
    /// checked as a structured patch's edit is: the step fails when a `find` is not there `count` times.
    public var edits: [PatchEdit]? = nil

    /// The step's name: its directory under `src/`, its log, its line in the report.
    public var name: String { directory ?? component }
}

/// ttyd 1.7.7's `scripts/cross-build.sh` as a value: zlib, json-c, libuv, mbedtls,
/// libwebsockets (patched), then ttyd — static, `-Os`, sections garbage-collected, stripped.
public struct TtydRecipe: Recipe {
    public var seed: String { "krnative ttyd recipe v1" }
    public var layout: BuildLayout
    public var triple: String
    public var jobs: Int
    /// Locked upstream versions by component (some options depend on them).
    public var versions: [String: String]

    public init(layout: BuildLayout, triple: String, jobs: Int, versions: [String: String]) {
        self.layout = layout
        self.triple = triple
        self.jobs = jobs
        self.versions = versions
    }

    public static let components = ["zlib", "json-c", "libuv", "mbedtls", "libwebsockets", "ttyd"]

    /// Flags that make the output independent of where the build ran.
    var reproducibleFlags: String { "-ffile-prefix-map=\(layout.build)=/build" }

    func cmake(_ options: [String], flags: String? = nil, linkerFlags: String? = nil) -> [[String]] {
        var configure = [
            "cmake", "-G", "Ninja", "-S", ".", "-B", "build", "-DCMAKE_TOOLCHAIN_FILE=\(layout.cmakeToolchainFile)",
            "-DCMAKE_BUILD_TYPE=RELEASE", "-DCMAKE_INSTALL_PREFIX=\(layout.stage)",
            "-DCMAKE_C_FLAGS=\(flags.map { $0 + " " } ?? "")\(reproducibleFlags)",
        ]
        if let linkerFlags { configure.append("-DCMAKE_EXE_LINKER_FLAGS=\(linkerFlags)") }
        return [configure + options, ["cmake", "--build", "build", "-j", String(jobs)], ["cmake", "--install", "build"]]
    }

    public var steps: [BuildStep] {
        let wrappers = layout.wrappers
        let libuvVersion = versions["libuv"] ?? "1.44.2"
        let libuvHasSharedSwitch = !(libuvVersion.hasPrefix("1.") && (Int(libuvVersion.split(separator: ".")[1]) ?? 0) < 45)
        let libuv: [[String]] =
            libuvHasSharedSwitch
            ? cmake(["-DLIBUV_BUILD_SHARED=OFF", "-DLIBUV_BUILD_TESTS=OFF", "-DLIBUV_BUILD_BENCH=OFF"], flags: "-fPIC")
            : Array(cmake(["-DLIBUV_BUILD_TESTS=OFF", "-DLIBUV_BUILD_BENCH=OFF"], flags: "-fPIC").prefix(1)) + [
                ["cmake", "--build", "build", "-j", String(jobs), "--target", "uv_a"],
                ["cmake", "-E", "make_directory", layout.stage + "/lib", layout.stage + "/include"],
                ["cmake", "-E", "copy_directory", "include", layout.stage + "/include"],
                ["cmake", "-E", "copy", "build/libuv_a.a", layout.stage + "/lib/libuv.a"],
            ]
        return [
            BuildStep(
                component: "zlib",
                commands: [
                    ["./configure", "--static", "--archs=-fPIC", "--prefix=\(layout.stage)"],
                    ["make", "-j\(jobs)", "install"],
                ],
                environment: [
                    "CHOST": triple, "CC": wrappers + "/cc", "AR": wrappers + "/ar", "RANLIB": wrappers + "/ranlib",
                    "CFLAGS": "-O3 \(reproducibleFlags)",
                ],
                adaptation: "CC, AR and RANLIB name krnative's wrappers instead of \(triple)-gcc on PATH; CFLAGS keeps zlib's -O3 and adds the prefix map"),
            BuildStep(
                component: "json-c",
                commands: cmake(["-DBUILD_SHARED_LIBS=OFF", "-DBUILD_TESTING=OFF", "-DDISABLE_THREAD_LOCAL_STORAGE=ON", "-DBUILD_APPS=OFF"]),
                environment: [:],
                adaptation: "-DBUILD_APPS=OFF: json-c's command-line apps are not part of ttyd and need nothing from it"),
            BuildStep(
                component: "libuv", commands: libuv, environment: [:],
                adaptation: "CMake and Ninja instead of autogen.sh and configure, so the host needs no autotools; "
                    + "static only (LIBUV_BUILD_SHARED=OFF from 1.45; before that the uv_a target, installed as libuv.a, the name ttyd's find_library looks for)"),
            BuildStep(
                component: "mbedtls",
                commands: cmake(["-DENABLE_TESTING=OFF", "-DENABLE_PROGRAMS=OFF"]),
                environment: [:],
                adaptation: "-DENABLE_PROGRAMS=OFF: mbedtls' sample programs are not part of ttyd"),
            BuildStep(
                component: "libwebsockets",
                commands: cmake([
                    "-DCMAKE_FIND_LIBRARY_SUFFIXES=.a", "-DLWS_WITHOUT_TESTAPPS=ON", "-DLWS_WITH_MBEDTLS=ON",
                    "-DLWS_WITH_LIBUV=ON", "-DLWS_STATIC_PIC=ON", "-DLWS_WITH_SHARED=OFF", "-DLWS_UNIX_SOCK=ON",
                    "-DLWS_IPV6=ON", "-DLWS_ROLE_RAW_FILE=OFF", "-DLWS_WITH_HTTP2=ON", "-DLWS_WITH_HTTP_BASIC_AUTH=OFF",
                    "-DLWS_WITH_UDP=OFF", "-DLWS_WITHOUT_CLIENT=ON", "-DLWS_WITHOUT_EXTENSIONS=OFF", "-DLWS_WITH_LEJP=OFF",
                    "-DLWS_WITH_LEJP_CONF=OFF", "-DLWS_WITH_LWSAC=OFF", "-DLWS_WITH_SEQUENCER=OFF", "-DDISABLE_WERROR=ON",
                ], linkerFlags: "-static"),
                environment: [:],
                adaptation: "-DDISABLE_WERROR=ON: clang (zig cc) warns where GCC does not; the recipe's sed edits are patches/libwebsockets/"),
            BuildStep(
                component: "ttyd",
                commands: cmake(
                    ["-DCMAKE_FIND_LIBRARY_SUFFIXES=.a"],
                    flags: "-Os -ffunction-sections -fdata-sections -fno-unwind-tables -fno-asynchronous-unwind-tables -flto",
                    linkerFlags: "-static -no-pie -Wl,-s -Wl,-Bsymbolic -Wl,--gc-sections -Wl,--build-id=none"),
                environment: [:],
                adaptation: "-Wl,--build-id=none: no build id, so nothing in the binary depends on more than its inputs"),
        ]
    }
}
