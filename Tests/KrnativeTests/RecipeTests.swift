import Archive
import Compile
import Foundation
import KrnativeBase
import Patch
import Sandbox
import Testing
import Toolchain

/// The recipe and the toolchain files are values: checked here without running anything.
@Suite("ttyd recipe", .timeLimit(.minutes(60)))
struct RecipeTests {
    let recipe = ttydRecipe(
        layout: .sandboxed, triple: "aarch64-linux-musl", jobs: 2,
        versions: ["zlib": "1.3.1", "json-c": "0.17", "libuv": "1.44.2", "mbedtls": "2.28.5", "libwebsockets": "4.3.3", "ttyd": "1.7.7"])

    func step(_ component: String) -> BuildStep { recipe.steps.first { $0.component == component }! }

    @Test func followsCrossBuildShInOrder() {
        #expect(recipe.steps.map(\.component) == ["zlib", "json-c", "libuv", "mbedtls", "libwebsockets", "ttyd"])
        #expect(ttydRecipeFile.components == recipe.steps.map(\.component))
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
        let newer = ttydRecipe(layout: .sandboxed, triple: "aarch64-linux-musl", jobs: 2, versions: ["libuv": "1.50.0"])
        let commands = newer.steps.first { $0.component == "libuv" }!.commands
        #expect(commands[0].contains("-DLIBUV_BUILD_SHARED=OFF"))
        #expect(commands.last == ["cmake", "--install", "build"])
    }

    @Test func hostPathsAreMappedAwayWithoutTheSandbox() {
        let unsandboxed = ttydRecipe(
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

/// The runtime recipe is a value too: its steps, flags and answers, checked without compiling.
@Suite("runtime recipe", .timeLimit(.minutes(60)))
struct RuntimeRecipeTests {
    func recipe(_ target: Target) -> RenderedRecipe { runtimeRecipe(layout: .sandboxed, target: target, buildArch: .x86_64, jobs: 2) }
    func step(_ name: String, of target: Target = .musllinuxX86_64) -> BuildStep { recipe(target).steps.first { $0.name == name }! }

    @Test func buildPythonFirstThenTheLibrariesThenCPython() {
        let steps = recipe(.musllinuxAarch64).steps
        #expect(steps.map(\.name) == ["cpython-build", "zlib", "bzip2", "xz", "libffi", "util-linux", "ncurses", "readline", "sqlite", "openssl", "cpython"])
        #expect(Set(steps.map(\.component)) == Set(runtimeRecipeFile.components))
        #expect(steps.allSatisfy { $0.adaptation != nil }, "every step says why it is built as it is")
        // The build Python is compiled for this machine, never the target, and used by the cross build.
        #expect(step("cpython-build").environment["CC"] == "/build/wrappers/build-cc")
        #expect(step("cpython-build").commands[0].contains("--prefix=/build/stage/build-python"))
        #expect(step("cpython-build").environment["PKG_CONFIG_LIBDIR"] == "/build/no-pkg-config", "the host's pkg-config files name libraries Zig cannot link")
        let configure = step("cpython", of: .musllinuxAarch64).commands.first { $0.first == "./configure" }!
        #expect(configure.contains("--with-build-python=/build/stage/build-python/bin/python3.13"))
        #expect(configure.contains("--build=x86_64-pc-linux-gnu") && configure.contains("--host=aarch64-pc-linux-musl"))
    }

    @Test func zigTriplesAreManylinux2014GlibcAndMusl() {
        #expect(RuntimeBuild.zigTriple(for: .manylinuxX86_64) == "x86_64-linux-gnu.2.17")
        #expect(RuntimeBuild.zigTriple(for: .manylinuxAarch64) == "aarch64-linux-gnu.2.17")
        #expect(RuntimeBuild.zigTriple(for: .musllinuxX86_64) == "x86_64-linux-musl")
        #expect(RuntimeBuild.zigTriple(for: .musllinuxAarch64) == "aarch64-linux-musl")
        #expect(RuntimeBuild.archiveName(for: .musllinuxX86_64, version: "3.13.15") == "cpython-3.13.15-x86_64-linux-musl-krnative-install_only_stripped.tar.xz")
    }

    @Test func librariesAreStaticPositionIndependentAndInTheDepsPrefix() {
        for name in ["xz", "libffi", "util-linux", "ncurses", "readline", "sqlite"] {
            let configure = step(name).commands[0]
            #expect(configure.contains("--disable-shared") && configure.contains("--enable-static"), "\(name)")
            #expect(configure.contains("--prefix=/build/stage/deps"), "\(name)")
            #expect(step(name).environment["CFLAGS"]?.contains("-fPIC") == true, "\(name)")
            #expect(step(name).environment["CC"] == "/build/wrappers/cc", "\(name)")
        }
        #expect(step("util-linux").commands[0].contains("--enable-libuuid") && step("util-linux").commands[0].contains("--disable-all-programs"))
        #expect(step("ncurses").commands[0].contains("--enable-widec"))
        // SQLite's library, headers and pkg-config file: its `install` target builds the shell too.
        let sqlite = step("sqlite").commands
        #expect(sqlite.contains { $0.starts(with: ["make", "lib_install"]) } && !sqlite.contains { $0.first == "make" && $0.contains("install") }, "\(sqlite)")
        #expect(step("zlib").commands[0] == ["./configure", "--static", "--prefix=/build/stage/deps"])
    }

    @Test func opensslLooksForCertificatesWhereTheTargetSystemKeepsThem() {
        let musl = step("openssl").commands[0]
        #expect(musl.contains("--openssldir=/etc/ssl") && musl.contains("no-shared") && musl.contains("linux-x86_64"))
        #expect(musl.contains("no-async"), "musl has no makecontext")
        let gnu = step("openssl", of: .manylinuxAarch64).commands[0]
        #expect(gnu.contains("linux-aarch64") && !gnu.contains("no-async"))
    }

    @Test func cpythonIsSharedWithItsLibrariesNamedAndTheCrossAnswersGiven() {
        let cpython = step("cpython")
        let configure = cpython.commands.first { $0.first == "./configure" }!
        for option in ["--enable-shared", "--prefix=/install", "--with-openssl=/build/stage/deps", "--with-ensurepip=no", "--without-system-expat",
            "--without-system-libmpdec", "ac_cv_file__dev_ptmx=yes", "ac_cv_file__dev_ptc=no"] {
            #expect(configure.contains(option), "\(option)")
        }
        #expect(cpython.environment["LDFLAGS"]?.contains("-Wl,-rpath,\\$$ORIGIN/../lib") == true)
        #expect(cpython.environment["LIBREADLINE_LIBS"] == "-L/build/stage/deps/lib -lreadline -lncursesw")
        #expect(cpython.commands.dropLast(2).last == ["make", "-j2", "install", "DESTDIR=/build/stage/runtime"])
        #expect(cpython.commands.dropLast().last?.suffix(3) == ["/build/wrappers/strip-debug", "{}", "+"], "install_only_stripped: no debug information")
        #expect(cpython.commands.last?.first == "/build/stage/build-python/bin/python3.13" && cpython.commands.last?.last == "/build/stage/runtime/install",
            "the build Python makes the installed scripts relocatable")
        #expect(cpython.environment["LINKFORSHARED"] == "-pie -Xlinker -export-dynamic", "python3.13 is PIE")
        #expect(cpython.edits?.contains { $0.replace.contains("-Wl,-soname,$(INSTSONAME)") } == true, "Zig's linker takes no -h")
        #expect(cpython.edits?.contains { $0.file == "Misc/platform_triplet.c" } == true, "musl's triplet without musl's <stdarg.h>")
        #expect(step("cpython", of: .manylinuxX86_64).edits?.contains { $0.file == "Misc/platform_triplet.c" } == false, "glibc is found by __GLIBC__")
        #expect(step("cpython", of: .manylinuxX86_64).environment["LIBSQLITE3_LIBS"]?.hasSuffix("-lpthread -ldl -lm") == true, "glibc 2.17 keeps them apart")
    }

    /// The recipe's edits of CPython apply to the pinned source as they must (each `find` found
    /// exactly `count` times), for both kinds of libc.
    @Test(.enabled(if: Machine.runtimeSources["cpython"] != nil, "needs Debian's CPython 3.13 tarball (scripts/debian-sources)"))
    func cpythonEditsApplyToThePinnedSource() throws {
        let source = TemporaryDirectory("krnative-cpython-edits")
        _ = try SafeExtractor(stripComponents: 1).extract(Machine.runtimeSources["cpython"]!.file, into: source.path)
        for target in [Target.musllinuxAarch64, .manylinuxX86_64] {
            let edits = try #require(step("cpython", of: target).edits)
            let copy = TemporaryDirectory("krnative-cpython-edits")
            for file in Set(edits.map(\.file)) {
                try FileManager.default.createDirectory(atPath: copy.path + "/" + (file as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try FileManager.default.copyItem(atPath: source.path + "/" + file, toPath: copy.path + "/" + file)
            }
            let applied = try PatchApplier().apply([SourcePatch.recipeEdits(edits, step: "cpython")], to: copy.path, version: "3.13.15")
            #expect(applied.count == 1)
            let makefile = try String(contentsOfFile: copy.path + "/Makefile.pre.in", encoding: .utf8)
            #expect(!makefile.contains("-Wl,-h$") && makefile.contains("-Wl,-soname,$@ Modules/libpython3-stub.c $^"))
        }
    }

    /// A recipe's edits are in its step's key by a digest that is the same in every process: of
    /// their JSON with sorted keys.
    @Test func recipeEditsHaveTheSameDigestInEveryProcess() {
        let edits = [PatchEdit(file: "Makefile.pre.in", find: "-h", replace: "-soname,")]
        let json = #"[{"count":1,"file":"Makefile.pre.in","find":"-h","replace":"-soname,"}]"#
        #expect(SourcePatch.recipeEdits(edits, step: "cpython").sha256 == SHA256Digest.of(Data(json.utf8)))
    }

    @Test func theTtydStepsKeepTheirJSON() throws {
        // `directory` is new and absent from ttyd's steps: their JSON is as before.
        let ttyd = ttydRecipe(layout: .sandboxed, triple: "x86_64-linux-musl", jobs: 2, versions: [:])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json = String(decoding: try encoder.encode(ttyd.steps[0]), as: UTF8.self)
        #expect(!json.contains("directory") && !json.contains("edits"))
        #expect(ttyd.seed == "krnative ttyd recipe v1")
        let tree = SHA256Digest.of(Data("tree".utf8))
        let environment = StepRunner.commandSpec([], of: ttyd.steps[0], in: .sandboxed, epoch: 0).fullEnvironment
        let base = StepRunner.cacheKey(previous: tree, step: ttyd.steps[0], tree: tree, patches: [], environment: environment)
        var renamed = ttyd.steps[0]
        renamed.directory = "zlib-again"
        #expect(StepRunner.cacheKey(previous: tree, step: renamed, tree: tree, patches: [], environment: environment) != base)
    }

    /// Issue #23: a step's key covers the whole environment its commands get, from the spec the
    /// sandbox runs them with: the fixed variables (SOURCE_DATE_EPOCH among them) and the step's.
    @Test func aStepsKeyCoversTheEnvironmentItsCommandsGet() {
        let ttyd = ttydRecipe(layout: .sandboxed, triple: "x86_64-linux-musl", jobs: 2, versions: [:])
        let tree = SHA256Digest.of(Data("tree".utf8))
        for step in ttyd.steps {
            let spec = StepRunner.commandSpec(step.commands[0], of: step, in: .sandboxed, epoch: 1_700_000_000)
            #expect(spec.fullEnvironment == StepRunner.commandSpec([], of: step, in: .sandboxed, epoch: 1_700_000_000).fullEnvironment)
            for name in ["PATH", "HOME", "TZ", "LC_ALL", "ZIG_GLOBAL_CACHE_DIR", "ZIG_LOCAL_CACHE_DIR"] + Array(step.environment.keys) {
                #expect(spec.fullEnvironment[name] != nil, "\(step.name): \(name)")
            }
            #expect(spec.fullEnvironment["SOURCE_DATE_EPOCH"] == "1700000000")
            func key(epoch: Int64) -> SHA256Digest {
                let environment = StepRunner.commandSpec([], of: step, in: .sandboxed, epoch: epoch).fullEnvironment
                return StepRunner.cacheKey(previous: tree, step: step, tree: tree, patches: [], environment: environment)
            }
            #expect(key(epoch: 1_700_000_000) != key(epoch: 1_700_086_400), "\(step.name)")
            #expect(key(epoch: 1_700_000_000) == key(epoch: 1_700_000_000))
        }
    }
}

/// Issue #27: a step that compiles for minutes talks. Off a terminal (this test), the step's lines
/// and a heartbeat naming it, its time so far and its last line of output; nothing after it ended.
@Suite("Step progress", .timeLimit(.minutes(60)))
struct StepProgressTests {
    @Test func aLongStepSaysItIsStillRunningWithItsLastLine() {
        let said = Collected()
        let progress = StepProgress(emit: { said.append(Data(($0 + "\n").utf8)) }, terminal: false, heartbeat: 1)
        progress.begin("[2/6] json-c 0.17: building for aarch64-linux-musl with zig")
        progress.output(Data("[ 10%] Building C object arraylist.c.o\n[ 20%] Building C object".utf8))
        progress.output(Data(" debug.c.o\n\n".utf8))
        Thread.sleep(forTimeInterval: 2.5)
        progress.end("[2/6] json-c 0.17: built in 3 s")
        let before = said.text
        Thread.sleep(forTimeInterval: 1.5)
        let lines = said.text.split(separator: "\n").map(String.init)
        #expect(lines.first == "[2/6] json-c 0.17: building for aarch64-linux-musl with zig")
        let beats = lines.filter { $0.hasPrefix("… still [2/6] json-c 0.17: building") }
        #expect(!beats.isEmpty, "\(lines)")
        #expect(beats.allSatisfy { $0.hasSuffix(" · [ 20%] Building C object debug.c.o") }, "\(beats)")
        #expect(lines.last == "[2/6] json-c 0.17: built in 3 s")
        #expect(said.text == before, "it went on after the step ended")
    }
}
