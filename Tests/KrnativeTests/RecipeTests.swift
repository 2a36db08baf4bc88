import Compile
import Foundation
import KrnativeBase
import Testing
import Toolchain

/// The recipe and the toolchain files are values: checked here without running anything.
@Suite("ttyd recipe")
struct RecipeTests {
    let recipe = TtydRecipe(
        layout: .sandboxed, triple: "aarch64-linux-musl", jobs: 2,
        versions: ["zlib": "1.3.1", "json-c": "0.17", "libuv": "1.44.2", "mbedtls": "2.28.5", "libwebsockets": "4.3.3", "ttyd": "1.7.7"])

    func step(_ component: String) -> BuildStep { recipe.steps.first { $0.component == component }! }

    @Test func followsCrossBuildShInOrder() {
        #expect(recipe.steps.map(\.component) == ["zlib", "json-c", "libuv", "mbedtls", "libwebsockets", "ttyd"])
        #expect(TtydRecipe.components == recipe.steps.map(\.component))
        #expect(step("zlib").commands[0] == ["./configure", "--static", "--archs=-fPIC", "--prefix=/build/stage"])
        #expect(step("zlib").environment["CHOST"] == "aarch64-linux-musl")
        #expect(step("zlib").environment["CC"] == "/build/wrappers/cc")
        let lws = step("libwebsockets").commands[0]
        for option in ["-DLWS_WITH_MBEDTLS=ON", "-DLWS_WITH_LIBUV=ON", "-DLWS_WITHOUT_CLIENT=ON", "-DLWS_WITH_SHARED=OFF", "-DDISABLE_WERROR=ON", "-DCMAKE_EXE_LINKER_FLAGS=-static"] {
            #expect(lws.contains(option), "\(option)")
        }
        #expect(recipe.steps.allSatisfy { $0.adaptation != nil }, "every step says where it departs from cross-build.sh")
    }

    @Test func ttydIsStaticSizeOptimisedGarbageCollectedAndStripped() {
        let configure = step("ttyd").commands[0]
        let flags = configure.first { $0.hasPrefix("-DCMAKE_C_FLAGS=") }!
        let linker = configure.first { $0.hasPrefix("-DCMAKE_EXE_LINKER_FLAGS=") }!
        for flag in ["-Os", "-ffunction-sections", "-fdata-sections", "-flto", "-ffile-prefix-map=/build=/build"] { #expect(flags.contains(flag)) }
        for flag in ["-static", "-no-pie", "-Wl,-s", "-Wl,--gc-sections", "-Wl,--build-id=none"] { #expect(linker.contains(flag)) }
        #expect(step("ttyd").commands[1] == ["cmake", "--build", "build", "-j", "2"])
    }

    @Test func libuvBuildsStaticWhateverItsVersion() {
        let old = step("libuv").commands
        #expect(old.contains(["cmake", "--build", "build", "-j", "2", "--target", "uv_a"]))
        #expect(old.contains(["cmake", "-E", "copy", "build/libuv_a.a", "/build/stage/lib/libuv.a"]))
        var newer = recipe
        newer.versions["libuv"] = "1.50.0"
        let commands = newer.steps.first { $0.component == "libuv" }!.commands
        #expect(commands[0].contains("-DLIBUV_BUILD_SHARED=OFF"))
        #expect(commands.last == ["cmake", "--install", "build"])
    }

    @Test func hostPathsAreMappedAwayWithoutTheSandbox() {
        let unsandboxed = TtydRecipe(
            layout: BuildLayout(build: "/home/me/work", toolchain: "/store/toolchains/x", zigCache: "/store/zig"), triple: "x86_64-linux-musl",
            jobs: 1, versions: [:])
        let flags = unsandboxed.steps.last!.commands[0].first { $0.hasPrefix("-DCMAKE_C_FLAGS=") }!
        #expect(flags.contains("-ffile-prefix-map=/home/me/work=/build"))
    }

    @Test func wrappersAndCMakeFilePerToolchain() {
        let zig = Toolchain(kind: .zig, version: "0.14.1", archiveSha256: .of(Data("z".utf8)), triple: "aarch64-linux-musl", hostRoot: "/x")
        #expect(zig.wrappers(root: "/toolchain")["cc"] == "#!/bin/sh\nexec /toolchain/ziglang/zig cc -target aarch64-linux-musl \"$@\"\n")
        #expect(zig.wrappers(root: "/toolchain")["ar"] == "#!/bin/sh\nexec /toolchain/ziglang/zig ar \"$@\"\n")
        let gcc = Toolchain(kind: .muslCross, version: "11.2.1", archiveSha256: .of(Data("g".utf8)), triple: "x86_64-linux-musl", hostRoot: "/x")
        #expect(gcc.wrappers(root: "/toolchain")["cc"] == "#!/bin/sh\nexec /toolchain/bin/x86_64-linux-musl-gcc \"$@\"\n")
        let file = zig.cmakeToolchainFile(wrappers: "/build/wrappers", stage: "/build/stage")
        #expect(file.contains("set(CMAKE_SYSTEM_NAME Linux)"))
        #expect(file.contains("set(CMAKE_SYSTEM_PROCESSOR aarch64)"))
        #expect(file.contains("set(CMAKE_FIND_ROOT_PATH \"/build/stage\")"))
        #expect(file.contains("set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)"))
        #expect(Toolchain.runs(.muslCross, on: HostPlatform(arch: .x86_64)))
        #expect(!Toolchain.runs(.muslCross, on: HostPlatform(arch: .aarch64)))
        #expect(Toolchain.defaultKind(for: HostPlatform(arch: .aarch64)) == .zig)
        #expect(ToolchainKind.muslCross.lockName(triple: "aarch64-linux-musl", host: .init(arch: .x86_64)) == "musl-cross-aarch64-linux-musl")
        #expect(ToolchainKind.zig.lockName(triple: "aarch64-linux-musl", host: .init(arch: .aarch64)) == "zig-aarch64-linux")
    }
}
