import Archive
import Compile
import Foundation
import KrnativeBase
import Layout
import Lock
import Packaging
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Every path below `root` with what it is, not following links: type, permission bits, content
/// or link target. Two trees with equal listings are the same to every reader.
func treeListing(_ root: String) -> [String: String] {
    var listing: [String: String] = [:]
    let enumerator = FileManager.default.enumerator(atPath: root)
    while let relative = enumerator?.nextObject() as? String {
        let path = root + "/" + relative
        var info = stat()
        guard lstat(path, &info) == 0 else { continue }
        let mode = String(info.st_mode & 0o7777, radix: 8)
        switch info.st_mode & S_IFMT {
        case S_IFDIR: listing[relative] = "dir \(mode)"
        case S_IFLNK: listing[relative] = "link -> " + ((try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? "?")
        case S_IFREG: listing[relative] = "file \(mode) " + (FileManager.default.contents(atPath: path).map { SHA256Digest.of($0).hex } ?? "?")
        default: listing[relative] = "other \(String(info.st_mode, radix: 8))"
        }
    }
    return listing
}

/// A file outside everything a build may touch, with its mode and contents as the test made them.
struct Victim {
    let path: String
    let contents: String
    let mode: mode_t

    init(_ work: TemporaryDirectory, _ name: String, contents: String = "host secret \(UInt32.random(in: 0...UInt32.max))\n", mode: mode_t = 0o600) {
        path = work.file(name, contents)
        chmod(path, mode)
        self.contents = contents
        self.mode = mode
    }

    /// The victim's mode and contents are as they were.
    func expectUntouched(sourceLocation: SourceLocation = #_sourceLocation) {
        var info = stat()
        #expect(lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFREG, "\(path) is gone or replaced", sourceLocation: sourceLocation)
        #expect(info.st_mode & 0o7777 == mode, "\(path) has mode \(String(info.st_mode & 0o7777, radix: 8))", sourceLocation: sourceLocation)
        #expect((try? String(contentsOfFile: path, encoding: .utf8)) == contents, "\(path) changed", sourceLocation: sourceLocation)
    }
}

@Suite("Step boundary: copying and reading what a step wrote", .timeLimit(.minutes(60)))
struct StepResultTreeTests {
    /// An honest install tree: files of several modes, an empty directory, directories of unusual
    /// modes, links that stay inside (to a file, to a directory, up and down again, dangling), a hard link.
    func honestTree(_ work: TemporaryDirectory) throws -> String {
        let root = work.path + "/stage"
        for (name, mode) in [("bin/tool", 0o755), ("lib/libz.a", 0o644), ("lib/private.key", 0o600), ("include/zlib.h", 0o444)] as [(String, mode_t)] {
            chmod(work.file("stage/" + name, "contents of \(name)\n"), mode)
        }
        try FileManager.default.createDirectory(atPath: root + "/share/empty", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/locked/inner", withIntermediateDirectories: true)
        _ = work.file("stage/locked/inner/file", "inner\n")
        chmod(root + "/locked/inner", 0o555)
        chmod(root + "/locked", 0o700)
        symlink("tool", root + "/bin/tool-1.0")
        symlink("../include", root + "/lib/include")
        symlink("../lib/../bin/tool", root + "/share/tool")
        symlink("not-yet-there", root + "/bin/dangling")
        link(root + "/lib/libz.a", root + "/lib/libz-copy.a")
        return root
    }

    /// The safe copy gives what `FileManager.copyItem` gave (the step cache's copy before): the
    /// same tree hash, the same files, modes, directories and links; so honest builds' outputs
    /// stay byte-identical.
    @Test(.timeLimit(.minutes(60))) func anHonestTreeIsCopiedAsFoundationCopiesIt() throws {
        let work = TemporaryDirectory()
        let root = try honestTree(work)
        try FileManager.default.copyItem(atPath: root, toPath: work.path + "/foundation")
        try StepResultTree("stage", in: work.path, madeBy: "the test step").copy(to: work.path + "/safe")
        #expect(try TreeHash.ofDirectory(at: work.path + "/safe") == TreeHash.ofDirectory(at: work.path + "/foundation"))
        let safe = treeListing(work.path + "/safe"), foundation = treeListing(work.path + "/foundation")
        #expect(safe == foundation)
        #expect(safe.count == treeListing(root).count && safe["share/empty"]?.hasPrefix("dir ") == true)
        #expect(safe["locked"] == "dir 700" && safe["locked/inner"] == "dir 555" && safe["include/zlib.h"]?.hasPrefix("file 444 ") == true)
        var original = stat(), copied = stat()
        stat(root, &original)
        stat(work.path + "/safe", &copied)
        #expect(copied.st_mode == original.st_mode)
    }

    /// `make install` links by the absolute path the step saw (bzip2's `bzcmp -> /build/stage/deps/bin/bzdiff`):
    /// below the path the tree was seen at, such a link points into the tree and is kept as it is;
    /// climbing out of that path, elsewhere, or with no such path given, it points outside.
    @Test(.timeLimit(.minutes(60))) func anAbsoluteLinkIntoTheTreeAsTheStepSawItIsKept() throws {
        let work = TemporaryDirectory()
        let root = try honestTree(work)
        symlink("/build/stage/bin/tool", root + "/bin/tool-absolute")
        symlink("/build/stage/lib", root + "/share/lib")
        try FileManager.default.copyItem(atPath: root, toPath: work.path + "/foundation")
        try StepResultTree("stage", in: work.path, madeBy: "the bzip2 step", seenAs: "/build/stage").copy(to: work.path + "/safe")
        #expect(try TreeHash.ofDirectory(at: work.path + "/safe") == TreeHash.ofDirectory(at: work.path + "/foundation"))
        #expect(treeListing(work.path + "/safe") == treeListing(work.path + "/foundation"))
        #expect(throws: StepResultError.self) { try StepResultTree("stage", in: work.path, madeBy: "the bzip2 step").check() }
        for outside in ["/build/stage/../../etc/passwd", "/build/src/zlib", "/build/stagex/bin/tool", "/etc/passwd"] {
            unlink(root + "/bin/tool-absolute")
            symlink(outside, root + "/bin/tool-absolute")
            #expect(throws: StepResultError.self, "\(outside)") {
                try StepResultTree("stage", in: work.path, madeBy: "the bzip2 step", seenAs: "/build/stage").check()
            }
        }
    }

    /// Links that lead outside the tree (absolute, climbing, through a chain of the tree's own
    /// links), a FIFO, a root that is itself a link: each refused naming the step, the path and
    /// the target; the copy is removed and the victim outside is never touched.
    @Test(
        .timeLimit(.minutes(60)),
        arguments: [
            ("absolute", "bin/ttyd", "points outside"), ("climbing", "lib/out", "points outside"), ("chain", "a", "points outside"),
            ("fifo", "bin/pipe", "a FIFO"), ("rootLink", "", "where its result must be a real directory"),
        ])
    func aTreeThatLeadsOutIsRefused(kind: String, offender: String, reason: String) throws {
        let work = TemporaryDirectory()
        let victim = Victim(work, "victim/secret")
        let root = work.path + "/work/stage"
        try FileManager.default.createDirectory(atPath: root + "/bin", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/lib", withIntermediateDirectories: true)
        _ = work.file("work/stage/bin/honest", "honest\n")
        switch kind {
        case "absolute": symlink(victim.path, root + "/bin/ttyd")
        case "climbing": symlink("../../../victim/secret", root + "/lib/out")
        case "chain":
            symlink("q/q/q/../../../../victim/secret", root + "/a")
            symlink(".", root + "/q")
        case "fifo": mkfifo(root + "/bin/pipe", 0o644)
        default:
            try FileManager.default.removeItem(atPath: root)
            symlink(work.path + "/victim", root)
        }
        let tree = StepResultTree("stage", in: work.path + "/work", madeBy: "the zlib step")
        let destination = work.path + "/copy"
        for attempt in ["copy", "check"] {
            do {
                if attempt == "copy" { try tree.copy(to: destination) } else { try tree.check() }
                Issue.record("\(kind): the \(attempt) took it")
            } catch {
                #expect(error.description.contains("the zlib step left \(root + (offender.isEmpty ? "" : "/" + offender))"), "\(error)")
                #expect(error.description.contains(reason), "\(error)")
                if kind != "fifo" { #expect(error.description.contains(kind == "rootLink" ? work.path + "/victim" : "victim/secret"), "\(error)") }
                #expect(error.exitCode == ExitStatus.archive)
            }
        }
        #expect(!FileSystem.exists(destination), "a refused copy was left behind")
        victim.expectUntouched()
    }

    /// `copyFile` (how ttyd's binary leaves its stage): a link in its place, or a directory on
    /// the way that is a link, is refused; the victim's mode is never changed, only the copy's is.
    @Test(.timeLimit(.minutes(60))) func aFileIsTakenOnlyAsARegularFileThroughRealDirectories() throws {
        let work = TemporaryDirectory()
        let victim = Victim(work, "victim/ttyd")
        let stage = work.path + "/stage"
        try FileManager.default.createDirectory(atPath: stage + "/bin", withIntermediateDirectories: true)
        let tree = StepResultTree("stage", in: work.path, madeBy: "the ttyd step")
        symlink(victim.path, stage + "/bin/ttyd")
        #expect(throws: StepResultError.self) { try tree.copyFile("bin/ttyd", to: work.path + "/out.bin", mode: 0o755) }
        try FileManager.default.removeItem(atPath: stage + "/bin")
        symlink(work.path + "/victim", stage + "/bin")
        #expect(throws: StepResultError.self) { try tree.copyFile("bin/ttyd", to: work.path + "/out.bin", mode: 0o755) }
        victim.expectUntouched()
        #expect(!FileSystem.exists(work.path + "/out.bin"))

        try FileManager.default.removeItem(atPath: stage + "/bin")
        chmod(work.file("stage/bin/ttyd", "real binary\n"), 0o600)
        symlink(victim.path, work.path + "/out.bin")  // what stands at the destination is replaced, not followed
        try tree.copyFile("bin/ttyd", to: work.path + "/out.bin", mode: 0o755)
        #expect(treeListing(work.path)["out.bin"] == "file 755 " + SHA256Digest.of(Data("real binary\n".utf8)).hex)
        #expect(treeListing(work.path)["stage/bin/ttyd"]?.hasPrefix("file 600 ") == true, "the step's own file was given a mode")
        victim.expectUntouched()
    }

    /// Item 2 at unit level: what the `.pyc` step can plant in the volume (`licenses/zz-leak` to
    /// a host file) is refused by the volume check, and the plugin wheel's licences are read as
    /// regular files only, never through a link (even one that stays inside the volume).
    @Test(.timeLimit(.minutes(60))) func aPlantedLicenceLinkIsNeitherFollowedNorShipped() throws {
        let work = TemporaryDirectory()
        let victim = Victim(work, "victim/shadow")
        let volume = work.path + "/staging/volume"
        _ = work.file("staging/volume/licenses/ttyd/LICENSE", "MIT\n")
        _ = work.file("staging/volume/licenses/wheels/attrs/LICENSE", "attrs licence\n")
        _ = work.file("staging/volume/bin/python3.13", "python\n")
        symlink(victim.path, volume + "/licenses/zz-leak")
        do {
            try StepResultTree(root: volume, madeBy: "the .pyc step").check()
            Issue.record("the volume check took a link to a host file")
        } catch {
            #expect(error.description.contains("the .pyc step left "), "\(error)")
            #expect(error.description.contains("/staging/volume/licenses/zz-leak as a symbolic link to '\(victim.path)'"), "\(error)")
        }
        let wheel = PluginWheel(target: .manylinuxX86_64, version: "1.0.0", sourceDateEpoch: 1_700_000_000)
        #expect(throws: StepResultError.self) { _ = try wheel.write(into: work.path, payload: [:], licenses: volume + "/licenses") }
        unlink(volume + "/licenses/zz-leak")
        symlink("../bin/python3.13", volume + "/licenses/zz-leak")
        #expect(throws: StepResultError.self) { _ = try wheel.write(into: work.path, payload: [:], licenses: volume + "/licenses") }
        unlink(volume + "/licenses/zz-leak")
        let written = try wheel.write(into: work.path, payload: [:], licenses: volume + "/licenses")
        let listing = try ChildProcess.check(["python3", "-c", "import sys, zipfile; print('\\n'.join(zipfile.ZipFile(sys.argv[1]).namelist()))", written]).stdout
        #expect(listing.contains("licenses/volume/ttyd/LICENSE") && listing.contains("licenses/volume/wheels/attrs/LICENSE"), "\(listing)")
        #expect(!listing.contains("zz-leak"))
        victim.expectUntouched()
    }

    /// Removing a work directory (`FileSystem.remove`, Foundation's `removeItem`) removes the links
    /// a step left in it, never what they point to.
    @Test(.timeLimit(.minutes(60))) func removingAWorkDirectoryFollowsNoLink() throws {
        let work = TemporaryDirectory()
        let victim = Victim(work, "victim/keep")
        let build = work.path + "/build"
        try FileManager.default.createDirectory(atPath: build + "/stage/lib", withIntermediateDirectories: true)
        symlink(work.path + "/victim", build + "/src")
        symlink(work.path + "/victim", build + "/stage/lib/out")
        symlink(victim.path, build + "/stage/file")
        FileSystem.remove(build)
        #expect(!FileSystem.exists(build))
        victim.expectUntouched()
        #expect(try FileManager.default.contentsOfDirectory(atPath: work.path + "/victim") == ["keep"])
    }
}

/// A lock and a store for recipe builds made of nothing but shell: the Zig toolchain is a wheel
/// whose `ziglang/zig` is a script (nothing compiles), each source a tiny `.tar.gz` made here whose
/// "build" runs `evil.sh` — from `configure`'s Makefile (`make install`) or from a CMake project
/// with no language (`project(x NONE)`: cmake probes no compiler). What `evil.sh` does is the
/// test's: honest by default (ttyd's leaves a `bin/ttyd`, cpython's an installed tree).
final class ShellRecipeInputs {
    let work: TemporaryDirectory
    private(set) var inputs: [LockedInput] = []
    var store: String { work.path + "/store" }
    var lock: String { work.path + "/lock.json" }
    var patches: String { work.path + "/no-patches" }

    init(_ work: TemporaryDirectory) throws {
        self.work = work
        try FileSystem.createDirectory(store + "/sha256")
        try FileSystem.createDirectory(patches)
        let zig = try archive(
            "zig", files: ["ziglang/zig": "#!/bin/sh\n# objcopy --strip-debug IN OUT\nif [ \"$1\" = objcopy ]; then cp \"$3\" \"$4\"; fi\nexit 0\n"],
            top: nil)
        inputs.append(
            LockedInput(
                name: "zig-\(HostPlatform.current.rawValue)", kind: .toolchain, version: "0.14.0", filename: "zig.whl", sha256: zig.sha256,
                size: zig.size, urls: ["https://example.invalid/zig.whl"], host: .current))
    }

    /// Makes `name-version.tar.gz` (or one with another top directory, or none) of `files` (path
    /// → text; scripts are executable) and `copies` (path → a host file copied with its mode),
    /// puts it in the store and returns its hashes.
    func archive(
        _ name: String, version: String = "1.0", files: [String: String], copies: [String: String] = [:], top: String? = ""
    ) throws -> (path: String, sha256: SHA256Digest, size: Int64, tree: SHA256Digest) {
        let directory = work.path + "/sources/\(name)"
        let topName = top.map { $0.isEmpty ? "\(name)-\(version)" : $0 }
        let root = directory + (topName.map { "/" + $0 } ?? "")
        for (path, original) in copies {
            try FileSystem.createDirectory(((root + "/" + path) as NSString).deletingLastPathComponent)
            try FileManager.default.copyItem(atPath: original, toPath: root + "/" + path)
        }
        for (path, text) in files {
            let full = root + "/" + path
            try FileSystem.createDirectory((full as NSString).deletingLastPathComponent)
            try Data(text.utf8).write(to: URL(fileURLWithPath: full))
            chmod(full, text.hasPrefix("#!") || path.hasSuffix(".sh") || path == "configure" ? 0o755 : 0o644)
        }
        let archive = work.path + "/sources/\(name)-\(version).tar.gz"
        try ChildProcess.check(["tar", "-czf", archive, "-C", directory, "--sort=name", topName ?? "."])
        let (sha256, size) = try SHA256Digest.of(fileAt: archive)
        try FileManager.default.copyItem(atPath: archive, toPath: store + "/sha256/" + sha256.hex)
        return (archive, sha256, size, try TreeHash.ofArchive(at: archive))
    }

    func addSource(_ name: String, version: String = "1.0", files: [String: String]) throws {
        let made = try archive(name, version: version, files: files)
        inputs.append(
            LockedInput(
                name: name, kind: .source, version: version, filename: "\(name)-\(version).tar.gz", sha256: made.sha256, size: made.size,
                treeSha256: made.tree, urls: ["https://example.invalid/\(name).tar.gz"]))
    }

    func add(_ input: LockedInput) { inputs.append(input) }

    /// Puts a source of `files` in the place of source `name`: a new tree, a new hash.
    func replaceSource(_ name: String, version: String = "1.0", files: [String: String]) throws {
        inputs.removeAll { $0.name == name }
        try addSource(name, version: version, files: files)
    }

    static let cmakeProject = """
        cmake_minimum_required(VERSION 3.10)
        project(x NONE)
        execute_process(COMMAND sh ${CMAKE_SOURCE_DIR}/evil.sh RESULT_VARIABLE status)
        if(status)
          message(FATAL_ERROR "evil.sh failed")
        endif()

        """

    /// ttyd's six sources: zlib runs `evil.sh` from `make install`, the others from CMake.
    func addTtydSources(evil: [String: String] = [:]) throws {
        let honestTtyd = "mkdir -p /build/stage/bin && printf 'not really ttyd\\n' > /build/stage/bin/ttyd\n"
        try addSource(
            "zlib", files: ["configure": "#!/bin/sh\nexit 0\n", "Makefile": "install:\n\tsh ./evil.sh\n", "evil.sh": evil["zlib"] ?? ":\n"])
        for name in ["json-c", "libuv", "mbedtls", "libwebsockets", "ttyd"] {
            // libuv from 1.45 builds with the plain CMake commands (no uv_a target).
            try addSource(
                name, version: name == "libuv" ? "1.50.0" : "1.0",
                files: [
                    "CMakeLists.txt": Self.cmakeProject, "evil.sh": evil[name] ?? (name == "ttyd" ? honestTtyd : ":\n"), "LICENSE": "\(name)'s licence\n",
                ])
        }
    }

    /// libwebsockets 4.x in place of its stand-in, holding once the text that each patch in
    /// `folder` edits, so that every one of them applies.
    func replaceLibwebsockets(withTextEditedBy folder: String) throws {
        var files = ["CMakeLists.txt": Self.cmakeProject, "evil.sh": ":\n"]
        for name in try FileManager.default.contentsOfDirectory(atPath: folder) where name.hasSuffix(".json") {
            let patch = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: folder + "/" + name))) as! [String: Any]
            for edit in patch["edits"] as! [[String: Any]] { files[edit["file"] as! String, default: ""] += (edit["find"] as! String) + "\n" }
        }
        try replaceSource("libwebsockets", version: "4.3.5", files: files)
    }

    /// The runtime recipe's ten sources, one shape for all: `configure` (which notes its
    /// `--prefix`), perl's `Configure`, a Makefile whose `install` runs `evil.sh "$(DESTDIR)"`, and
    /// the Makefile.pre.in lines the recipe edits. Only cpython's installs write anything, unless
    /// `evil` says otherwise: with no DESTDIR (the build Python) a `bin/python3.13` that runs this
    /// machine's Python (the recipe's last command runs it), with one an installed tree.
    func addRuntimeSources(evil: [String: String] = [:]) throws {
        let honestInstall = """
            [ -n "$1" ] || exit 0
            mkdir -p "$1/install/bin" "$1/install/share/man/man1" && printf 'python\\n' > "$1/install/bin/python3.13"

            """
        let buildPython = """
            [ -z "$1" ] || exit 0
            prefix=$(cat .prefix) && mkdir -p "$prefix/bin"
            printf '#!/bin/sh\\nexec /usr/bin/python3 "$@"\\n' > "$prefix/bin/python3.13" && chmod 755 "$prefix/bin/python3.13"

            """
        let configure = "#!/bin/sh\nfor a; do case $a in --prefix=*) echo \"${a#--prefix=}\" > .prefix;; esac; done\n"
        for name in runtimeRecipeFile.components {
            try addSource(
                name, version: name == "cpython" ? "3.13.0" : "1.0",
                files: [
                    "configure": configure, "Configure": "exit 0;\n", "build-python.sh": name == "cpython" ? buildPython : ":\n",
                    "Makefile": "all:\n\t@true\ninstall:\n\tsh ./build-python.sh \"$(DESTDIR)\"\n\tsh ./evil.sh \"$(DESTDIR)\"\nbuild_libs install_dev sqlite3.h libsqlite3.la sqlite3.pc lib_install:\n\t@true\n",
                    // What sqlite's step installs by hand.
                    "sqlite3.h": "", "src/sqlite3ext.h": "", "sqlite3.pc": "",
                    "Makefile.pre.in": "\t$(BLDSHARED) $(NO_AS_NEEDED) -o $@ -Wl,-h$@ $^\nLDFLAGS = -Wl,-h$(INSTSONAME)\n",
                    // The line the recipe edits for musl targets.
                    "Misc/platform_triplet.c": "#  ifdef __DEFINED_va_list\n",
                    "evil.sh": evil[name] ?? (name == "cpython" ? honestInstall : ":\n"),
                ])
        }
    }

    /// This machine's Python as `target`'s runtime, in the layout of python-build-standalone's
    /// archives (a venv of the host's stdlib, `pyvenv.cfg`): enough for the `.pyc` step; for a musl
    /// target its loader is musl's (patchelf), as the layout checks. `files`
    /// are added to it (path → text; `{minor}` in a path is the host Python's minor version).
    func addHostPythonRuntime(for target: Target, files extra: [String: String] = [:]) throws {
        let python = try ChildProcess.check(["/usr/bin/python3", "-c", "import os, sys; print(os.path.realpath(sys.executable), sys.version_info[1])"])
            .stdout.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        var files = ["pyvenv.cfg": "home = /usr/bin\n", "lib/python3.13/os.py": "# the layout's landmark\n"]
        for (path, text) in extra { files[path.replacingOccurrences(of: "{minor}", with: python[1])] = text }
        var executable = python[0]
        if target.libc == .musl {
            // Never run (the glibc twin compiles the .pyc), but checked: it must name musl's loader.
            executable = work.path + "/python3.13-\(target.rawValue)"
            try FileManager.default.copyItem(atPath: python[0], toPath: executable)
            try ChildProcess.check(["patchelf", "--set-interpreter", "/lib/ld-musl-\(target.arch.rawValue).so.1", executable])
        }
        let runtime = try archive("cpython-\(target.rawValue)", version: "3.13.0", files: files, copies: ["bin/python3.13": executable], top: "python")
        add(
            LockedInput(
                name: "cpython-\(target.rawValue)", kind: .runtime, version: "3.13.0", filename: "cpython-3.13.0-install_only_stripped.tar.gz",
                sha256: runtime.sha256, size: runtime.size, urls: ["https://example.invalid/cpython.tar.gz"], targets: [target]))
    }

    func writeLock() throws {
        try Lockfile(sourceDateEpoch: 1_700_000_000, inputs: inputs).write(to: lock)
    }

    /// Every symbolic link in the step cache (the kept work directory in `tmp/` has the step's own).
    var linksInTheStepCache: [String] {
        treeListing(store + "/steps").filter { $0.value.hasPrefix("link") }.map(\.key).sorted()
    }
}

@Suite("Step boundary: hostile steps through the real binary", .timeLimit(.minutes(60)), .tags(.process, .namespaces), .endToEnd, .serialized, .needsNamespaces)
struct StepBoundaryTests {
    var target: Target { HostPlatform.current.arch == .x86_64 ? .manylinuxX86_64 : .manylinuxAarch64 }

    func buildTtyd(_ inputs: ShellRecipeInputs, out: String, _ extra: [String] = []) -> ChildProcess.Result {
        krnative(
            ["build-ttyd", "--target", target.rawValue, "--lock", inputs.lock, "--store", inputs.store, "--out", out, "--patches", inputs.patches, "--jobs", "1"]
                + extra)
    }

    func build(_ inputs: ShellRecipeInputs, out: String, _ extra: [String] = []) -> ChildProcess.Result {
        krnative(
            [
                "build", "--target", target.rawValue, "--lock", inputs.lock, "--store", inputs.store, "--out", out, "--patches", inputs.patches,
                "--config", Package.root + "/krunner.json", "--policy", Package.root + "/sysroots/audit-policy.json", "--audit", "report",
                "--ledger", "none", "--compile-jobs", "1", "--pack-threads", "1",
            ] + extra)
    }

    /// Item 1: the ttyd step leaves `stage/bin/ttyd` as a link to a host file (mode 0600).
    /// Before: the build chmod-ed the host file to 0755, published a link to it and cached the
    /// link in `steps/<key>`. Now: the step's result is refused when it is copied to the cache,
    /// naming the step, the path and the target; no output; the host file keeps mode and contents.
    /// And a step cache an older krnative poisoned that way is refused when restored.
    @Test(.timeLimit(.minutes(60))) func ttydStepLinkingItsBinaryToAHostFileIsRefused() throws {
        let work = TemporaryDirectory("krnative-boundary")
        let victim = Victim(work, "victim/shadow")
        let inputs = try ShellRecipeInputs(work)
        try inputs.addTtydSources(evil: ["ttyd": "mkdir -p /build/stage/bin && ln -s '\(victim.path)' /build/stage/bin/ttyd\n"])
        try inputs.writeLock()
        let out = work.path + "/out"
        let result = buildTtyd(inputs, out: out)
        #expect(result.termination == .exited(ExitStatus.archive), "\(result.stderr)")
        #expect(result.stderr.contains("the ttyd step left "), "\(result.stderr)")
        #expect(result.stderr.contains("/stage/bin/ttyd as a symbolic link to '\(victim.path)', which points outside "), "\(result.stderr)")
        #expect(!FileSystem.exists(out + "/ttyd_linux.\(target.arch.rawValue).bin"))
        #expect(inputs.linksInTheStepCache.isEmpty, "\(inputs.linksInTheStepCache)")
        victim.expectUntouched()

        // What an older krnative left in the step cache: the ttyd step's result with the link.
        let honest = try ShellRecipeInputs(TemporaryDirectory("krnative-boundary-cache"))
        try honest.addTtydSources()
        try honest.writeLock()
        let first = buildTtyd(honest, out: honest.work.path + "/out", ["--json"])
        try #require(first.succeeded, "\(first.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(first.stdout.utf8)) as? [String: Any]
        let steps = try #require(report?["steps"] as? [[String: Any]])
        let key = try #require(steps.last?["key"] as? String)
        let cached = honest.store + "/steps/" + key
        try FileManager.default.removeItem(atPath: cached + "/bin/ttyd")
        symlink(victim.path, cached + "/bin/ttyd")
        try Data((TreeHash.ofDirectory(at: cached).hex + "\n").utf8).write(to: URL(fileURLWithPath: cached + ".tree-sha256"))
        let again = buildTtyd(honest, out: honest.work.path + "/again")
        #expect(again.termination == .exited(ExitStatus.archive), "\(again.stderr)")
        #expect(again.stderr.contains("the ttyd step (its cached result) left \(cached)/bin/ttyd as a symbolic link to '\(victim.path)'"), "\(again.stderr)")
        #expect(!FileSystem.exists(honest.work.path + "/again/ttyd_linux.\(target.arch.rawValue).bin"))
        victim.expectUntouched()
    }

    /// Item 2, end to end: a runtime whose `site-packages` holds a `.pth` (as a malicious wheel
    /// would bring): the `.pyc` step runs the volume's Python, which plants `licenses/zz-leak`, a
    /// link to a host file. Before: the plugin wheel carried the host file in `dist-info/licenses/`
    /// and the build exited 0. Now: the volume is checked after the step and the build stops,
    /// naming the step and the link; no wheel, the host file untouched. The runtime is this
    /// machine's own Python under the target's name, made a venv of the host's stdlib (`pyvenv.cfg`).
    @Test(.timeLimit(.minutes(60)), .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs the host's /usr/bin/python3"))
    func pycStepPlantingALicenceLinkToAHostFileIsRefused() throws {
        let work = TemporaryDirectory("krnative-boundary")
        let victim = Victim(work, "etc/shadow")
        let inputs = try ShellRecipeInputs(work)
        try inputs.addTtydSources()
        let leak = "/opt/backend.ai/licenses/zz-leak"
        try inputs.addHostPythonRuntime(
            for: target,
            files: ["lib/python3.{minor}/site-packages/zz.pth": "import os; os.path.lexists('\(leak)') or os.symlink('\(victim.path)', '\(leak)')\n"])
        try inputs.writeLock()
        let out = work.path + "/out"
        let result = build(inputs, out: out)
        #expect(result.termination == .exited(ExitStatus.archive), "\(result.stderr)")
        #expect(result.stderr.contains("compiling the volume's .pyc failed: the .pyc step left "), "\(result.stderr)")
        #expect(result.stderr.contains("/volume/licenses/zz-leak as a symbolic link to '\(victim.path)', which points outside "), "\(result.stderr)")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: out)) ?? []).allSatisfy { !$0.hasSuffix(".whl") && !$0.hasSuffix(".tar.xz") })
        victim.expectUntouched()
    }

    /// Item 3: a step replaces `/build/src` (or `/build/wrappers`) with a link to a host directory.
    /// Before: krnative removed the next source's directory there (`src/json-c` in the host
    /// directory) and unpacked into it, and exited 0. Now: the build stops after the step, naming
    /// it and the path; the host directory is as it was. (Since the step graph, `/build` is the
    /// step's own build directory: no later step's source or wrappers are there to reach.)
    @Test(.timeLimit(.minutes(60)), arguments: ["src", "wrappers"])
    func stepReplacingAWorkDirectoryWithALinkStopsTheBuild(directory: String) throws {
        let work = TemporaryDirectory("krnative-boundary")
        let (victim, hostDirectory, inputs) = try hostDirectoryAndAStep(work, keeping: "json-c/keep") {
            "cd / && rm -rf /build/\(directory) && ln -s '\($0)' /build/\(directory)\n"
        }
        let before = treeListing(hostDirectory)
        try inputs.writeLock()
        let result = buildTtyd(inputs, out: work.path + "/out")
        #expect(result.termination == .exited(ExitStatus.archive), "\(result.stderr)")
        #expect(
            result.stderr.contains("the zlib step replaced /build/\(directory) (") && result.stderr.contains("/\(directory)) with a symbolic link to '\(hostDirectory)'"),
            "\(result.stderr)")
        #expect(result.stderr.contains("krnative follows no link a step made"), "\(result.stderr)")
        #expect(treeListing(hostDirectory) == before, "the host directory changed: \(treeListing(hostDirectory))")
        victim.expectUntouched()
        #expect(!FileSystem.exists(work.path + "/out/ttyd_linux.\(target.arch.rawValue).bin"))
    }

    /// A host directory `host-directory/` with a file that must stay as it is (`keeping`), and
    /// stand-in ttyd sources whose zlib step runs `zlib(the directory's path)`.
    func hostDirectoryAndAStep(
        _ work: TemporaryDirectory, keeping file: String = "keep", zlib: (String) -> String
    ) throws -> (victim: Victim, directory: String, inputs: ShellRecipeInputs) {
        let victim = Victim(work, "host-directory/" + file, mode: 0o644)
        let directory = work.path + "/host-directory"
        let inputs = try ShellRecipeInputs(work)
        try inputs.addTtydSources(evil: ["zlib": zlib(directory)])
        return (victim, directory, inputs)
    }

    /// The steps' logs are the host's: item 3's `/build/logs` link, before the step graph, took
    /// every later step's log into a host directory. Now `/build` is the step's own build
    /// directory, which has no `logs/`: what a step puts there krnative neither reads nor follows
    /// (it removes the directory, links unfollowed), and the logs stay in the work directory.
    @Test(.timeLimit(.minutes(60))) func aStepCannotReachTheBuildsLogs() throws {
        let work = TemporaryDirectory("krnative-boundary")
        let (victim, hostDirectory, inputs) = try hostDirectoryAndAStep(work) { "[ ! -e /build/logs ] || exit 9\nln -s '\($0)' /build/logs\n" }
        try inputs.writeLock()
        let result = buildTtyd(inputs, out: work.path + "/out", ["--workdir", work.path + "/kept"])
        #expect(result.succeeded, "\(result.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: hostDirectory) == ["keep"])
        #expect(FileSystem.kind(of: "logs/zlib.log", beneath: work.path + "/kept") == S_IFREG)
        victim.expectUntouched()
    }

    /// A work directory kept with `--workdir` holds what its steps left: a step made
    /// `/build/wrappers` a link to a host directory. Before: the next build in that directory
    /// wrote its compiler wrappers (and `src/`, `logs/`) through the link. Now: the first build
    /// stops after the step; the next makes the step's build directory again (removing the link,
    /// not following it), and stops after the step again; nothing reaches the host directory.
    @Test(.timeLimit(.minutes(60))) func aKeptWorkDirectoryIsNotWrittenThroughALinkAStepLeft() throws {
        let work = TemporaryDirectory("krnative-boundary")
        let (victim, hostDirectory, inputs) = try hostDirectoryAndAStep(work) { "rm -rf /build/wrappers && ln -s '\($0)' /build/wrappers\n" }
        try inputs.writeLock()
        let workDirectory = work.path + "/kept"
        let first = buildTtyd(inputs, out: work.path + "/out", ["--workdir", workDirectory])
        #expect(first.termination == .exited(ExitStatus.archive), "\(first.stderr)")
        #expect(first.stderr.contains("the zlib step replaced /build/wrappers ("), "\(first.stderr)")
        let second = buildTtyd(inputs, out: work.path + "/out", ["--workdir", workDirectory])
        #expect(second.termination == .exited(ExitStatus.archive), "\(second.stderr)")
        #expect(second.stderr.contains("the zlib step replaced /build/wrappers ("), "\(second.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: hostDirectory) == ["keep"])
        victim.expectUntouched()
    }

    /// Item 4: a step makes `/build/stage` a link to a host directory holding an `id_rsa`, in a
    /// build that uploads its steps to a remote cache. Before: the step cache entry became a link
    /// to the directory and its contents were packed and uploaded. Now: the build stops after the
    /// step; no byte of the key reaches the cache, the store holds no link, the key is untouched.
    @Test(.timeLimit(.minutes(60)), .enabled(if: Machine.hasExecutable(WebDAVCache.nginx), "nginx is not installed (scripts/setup installs nginx-light)"))
    func stepLinkingTheStageToAHostDirectoryUploadsNothingOfIt() throws {
        let work = TemporaryDirectory("krnative-boundary")
        let key = Victim(work, "home/.ssh/id_rsa", contents: "-----BEGIN OPENSSH PRIVATE KEY----- \(UUID().uuidString)\n")
        let hostDirectory = work.path + "/home/.ssh"
        let inputs = try ShellRecipeInputs(work)
        try inputs.addTtydSources(evil: ["zlib": "rm -rf /build/stage && ln -s '\(hostDirectory)' /build/stage\n"])
        try inputs.writeLock()
        let cache = try WebDAVCache()
        let result = build(inputs, out: work.path + "/out", ["--remote-cache", cache.url, "--remote-cache-upload"])
        #expect(result.termination == .exited(ExitStatus.archive), "\(result.stderr)")
        #expect(result.stderr.contains("the zlib step replaced /build/stage (") && result.stderr.contains("with a symbolic link to '\(hostDirectory)'"), "\(result.stderr)")
        // Whatever reached the cache, unpacked: none of it is the key.
        let secret = Data(key.contents.utf8)
        for (relative, entry) in treeListing(cache.data) where entry.hasPrefix("file") {
            let data = FileManager.default.contents(atPath: cache.data + "/" + relative) ?? Data()
            let unpacked = ChildProcess.run(["sh", "-c", "xz -dc < \"$1\" 2>/dev/null || cat \"$1\"", "sh", cache.data + "/" + relative]).stdout
            #expect(data.range(of: secret) == nil && !unpacked.contains(key.contents), "\(relative) holds the key")
        }
        #expect(inputs.linksInTheStepCache.isEmpty, "\(inputs.linksInTheStepCache)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: hostDirectory) == ["id_rsa"])
        key.expectUntouched()
        #expect(!FileSystem.exists(work.path + "/out/krnative-manifest.static-gnu.\(target.arch.rawValue).json"))
    }

    /// Item 12, Zig's cache: a step plants an object where Zig looks for the target's libc
    /// (`$ZIG_GLOBAL_CACHE_DIR/o/<hash>/libc.a`; Zig reuses what its cache holds unchecked).
    /// Before: every build's steps shared the store's `zig-cache/<version>-<triple>`, and the
    /// next build, of other sources, found the object there. Now: each build has a cache of its own
    /// in the store's `tmp/`, removed when it ends; the next build finds nothing, nothing is left.
    @Test(.timeLimit(.minutes(60))) func anObjectAStepPlantsInZigsCacheReachesNoOtherBuild() throws {
        let work = TemporaryDirectory("krnative-boundary")
        let planted = "o/0123456789abcdef0123456789abcdef/libc.a"
        let plant = try ShellRecipeInputs(work)
        try plant.addTtydSources(evil: [
            "zlib": "mkdir -p \"$(dirname \"$ZIG_GLOBAL_CACHE_DIR/\(planted)\")\" && printf 'backdoor' > \"$ZIG_GLOBAL_CACHE_DIR/\(planted)\"\n"
        ])
        try plant.writeLock()
        let first = buildTtyd(plant, out: work.path + "/out")
        try #require(first.succeeded, "\(first.stderr)")

        // Another lock (its zlib differs) built into the same store.
        let other = try ShellRecipeInputs(work)
        try other.addTtydSources(evil: [
            "zlib": "if [ -e \"$ZIG_GLOBAL_CACHE_DIR/\(planted)\" ]; then echo 'found the planted libc.a' >&2; exit 1; fi\n"
        ])
        try other.writeLock()
        let second = buildTtyd(other, out: work.path + "/out-other")
        #expect(second.succeeded, "\(second.stderr)")
        #expect(!second.stderr.contains("found the planted libc.a"), "\(second.stderr)")
        let left = try FileManager.default.contentsOfDirectory(atPath: plant.store + "/tmp").filter { $0.hasPrefix(".krnative-work-") }
        #expect(left.isEmpty, "\(left)")
        #expect(!FileSystem.exists(plant.store + "/zig-cache"), "\(treeListing(plant.store + "/zig-cache"))")
    }

    /// Item 5: the cpython step of `build-runtime` links `stage/runtime/install` to a host
    /// directory H. Before: packing removed `H/share/man` and created `H/lib/…` (H=/usr as root:
    /// `rm -rf /usr/share/man`). Now: the step's result is refused, naming the step and the link.
    @Test(.timeLimit(.minutes(60))) func cpythonStepLinkingItsInstallTreeToAHostDirectoryIsRefused() throws {
        let work = TemporaryDirectory("krnative-boundary")
        let manual = Victim(work, "usr/share/man/man1/python3.1", mode: 0o644)
        let interpreter = Victim(work, "usr/bin/python3.13", mode: 0o755)
        let hostDirectory = work.path + "/usr"
        let before = treeListing(hostDirectory)
        let inputs = try ShellRecipeInputs(work)
        try inputs.addRuntimeSources(evil: [
            "cpython": "[ -n \"$1\" ] || exit 0\nmkdir -p \"$1\" && ln -s '\(hostDirectory)' \"$1/install\"\n"
        ])
        try inputs.writeLock()
        let out = work.path + "/out"
        let result = krnative([
            "build-runtime", "--target", target.rawValue, "--lock", inputs.lock, "--store", inputs.store, "--out", out, "--patches", inputs.patches,
            "--jobs", "1",
        ])
        #expect(result.termination == .exited(ExitStatus.archive), "\(result.stderr)")
        #expect(
            result.stderr.contains("the cpython step left ") && result.stderr.contains("/stage/runtime/install as a symbolic link to '\(hostDirectory)'"),
            "\(result.stderr)")
        #expect(treeListing(hostDirectory) == before, "the host directory changed: \(treeListing(hostDirectory))")
        manual.expectUntouched()
        interpreter.expectUntouched()
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: out)) ?? []).allSatisfy { !$0.hasSuffix(".tar.xz") })
    }

    /// Issue #23: the build Python is keyed by this machine, not the target: a second target's
    /// runtime build in the same store takes it from the step cache and compiles the rest, whose
    /// keys still name their target.
    @Test(.timeLimit(.minutes(60))) func theBuildPythonIsBuiltOncePerMachine() throws {
        let work = TemporaryDirectory("krnative-boundary")
        let inputs = try ShellRecipeInputs(work)
        try inputs.addRuntimeSources()
        try inputs.writeLock()
        let musl: Target = target.arch == .x86_64 ? .musllinuxX86_64 : .musllinuxAarch64
        func build(_ target: Target) throws -> [[String: Any]] {
            let result = krnative([
                "build-runtime", "--target", target.rawValue, "--lock", inputs.lock, "--store", inputs.store, "--out", work.path + "/" + target.rawValue,
                "--patches", inputs.patches, "--jobs", "1", "--json",
            ])
            try #require(result.succeeded, "\(result.stderr)")
            let report = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
            return try #require(report?["steps"] as? [[String: Any]])
        }
        let first = try build(target), second = try build(musl)
        #expect(first.map { $0["cached"] as? Bool } == Array(repeating: false, count: 11))
        #expect(second.map { $0["cached"] as? Bool } == [true] + Array(repeating: false, count: 10), "\(second)")
        #expect(first[0]["key"] as? String == second[0]["key"] as? String)
        #expect(Set(zip(first, second).dropFirst().map { ($0["key"] as? String) == ($1["key"] as? String) }) == [false])
    }

    /// The runtime recipe's shell stand-ins build honestly: the boundary takes an honest install
    /// tree (and the build Python's) and packs it, so the refusal above is the link's doing.
    @Test(.timeLimit(.minutes(60))) func anHonestRuntimeBuildStillPacks() throws {
        let work = TemporaryDirectory("krnative-boundary")
        let inputs = try ShellRecipeInputs(work)
        try inputs.addRuntimeSources()
        try inputs.writeLock()
        let out = work.path + "/out"
        let result = krnative([
            "build-runtime", "--target", target.rawValue, "--lock", inputs.lock, "--store", inputs.store, "--out", out, "--patches", inputs.patches,
            "--jobs", "1",
        ])
        try #require(result.succeeded, "\(result.stderr)")
        let archive = try #require(try FileManager.default.contentsOfDirectory(atPath: out).first { $0.hasSuffix(".tar.xz") })
        let listing = try ChildProcess.check(["tar", "-tJf", out + "/" + archive]).stdout
        #expect(listing.contains("python/bin/python3.13") && listing.contains("python/lib/python3.13/site-packages"), "\(listing)")
        #expect(!listing.contains("share/man"), "\(listing)")
    }
}
