import Archive
import Build
import Compile
import Foundation
import Inputs
import KrnativeBase
import Layout
import Testing

/// The runtime from source: CPython 3.13 and its libraries compiled with Zig from Debian's
/// upstream tarballs, for musllinux-x86_64, then run on a minimal Debian with musl (`krnative smoke`).
@Suite("Runtime from source", .timeLimit(.minutes(60)), .tags(.compile, .namespaces, .pypi), .endToEnd, .fullTierOnly, .serialized, .needsCompileRuntime)
struct RuntimeTests {
    static let distro = Target.musllinuxX86_64.defaultFlavour.distro
    /// `krnative build --runtime source --target musllinux-x86_64` from the stand-in lock (the
    /// runtime's and ttyd's sources from Debian, the real wheels and Zig through pip): the audit
    /// enforced, the runtime laid out as python-build-standalone's, smoke-tested on Debian with musl,
    /// and built again from another output directory, every step from the cache, to the same bytes.
    @Test func musllinuxX86_64VolumeFromSource() throws {
        let work = TemporaryDirectory("krnative-runtime")
        let store = CompileTests.store.path
        var environment = ProcessInfo.processInfo.environment
        environment["KRNATIVE"] = Package.binary
        environment["KRNATIVE_STORE"] = store
        let standin = ChildProcess.run([Package.root + "/scripts/standin-lock", work.path + "/standin"], environment: environment, directory: Package.root)
        try #require(standin.succeeded, "standin-lock: \(standin.stderr)")
        let lock = standin.stdout.trimmingCharacters(in: .whitespacesAndNewlines)

        let out = work.path + "/out"
        let started = Date()
        let built = build(lock: lock, store: store, out: out)
        try #require(built.succeeded, "krnative build --runtime source failed: \(built.stderr.suffix(4000))")
        print("[runtime] musllinux-x86_64 volume from source, cold: \(Int(Date().timeIntervalSince(started))) s")
        let manifest = try JSONDecoder().decode(BuildManifest.self, from: Data(contentsOf: URL(fileURLWithPath: out + "/krnative-manifest.\(Self.distro).x86_64.json")))
        #expect(manifest.runtime == .source)
        #expect(manifest.audit?.mode == .enforce && manifest.audit?.violations.isEmpty == true)
        for component in runtimeRecipeFile.components {
            #expect(manifest.inputs.contains { $0.name == component }, "\(component) is not in the manifest's inputs")
        }
        let tarball = out + "/krunner-env.\(Self.distro).x86_64.tar.xz"
        let volume = work.path + "/volume"
        _ = try SafeExtractor().extract(tarball, into: volume)

        // Laid out as python-build-standalone's archive is: CPython's own files in lib/.
        for path in ["bin/python3", "lib/libpython3.13.so.1.0", "lib/libpython3.so", "lib/python3.13/os.py", "include/python3.13/Python.h"] {
            #expect(FileManager.default.fileExists(atPath: volume + "/" + path), "\(path)")
        }
        let ownFiles = try FileManager.default.contentsOfDirectory(atPath: volume + "/lib").filter {
            !$0.hasPrefix("libpython3") && $0 != "python3.13" && $0 != "pkgconfig"
        }
        #expect(ownFiles.isEmpty, "lib/ holds CPython's own files only: \(ownFiles)")
        #expect(FileManager.default.fileExists(atPath: volume + "/lib/python3.13/lib-dynload/readline.cpython-313-x86_64-linux-musl.so"))
        let elf = try #require(ELFFile(path: volume + "/bin/python3.13"))
        #expect(elf.interpreter == "/lib/ld-musl-x86_64.so.1")
        // What python-build-standalone's runtimes have: a PIE python3.13, pip, scripts that run from any prefix.
        #expect(elf.isPositionIndependentExecutable, "bin/python3.13 is linked at a fixed address")
        for path in ["bin/pip", "bin/pip3", "bin/pip3.13", "lib/python3.13/site-packages/pip/__init__.py"] {
            #expect(FileManager.default.fileExists(atPath: volume + "/" + path), "\(path)")
        }
        for name in try FileManager.default.contentsOfDirectory(atPath: volume + "/bin") {
            let head = (FileHandle(forReadingAtPath: volume + "/bin/" + name)?.readData(ofLength: 256)).map { String(decoding: $0, as: UTF8.self) } ?? ""
            #expect(!head.hasPrefix("#!") || !head.prefix { $0 != "\n" }.contains("/install/"), "bin/\(name) names the build's /install: \(head.prefix(80))")
        }
        let idle = try String(contentsOfFile: volume + "/bin/idle3.13", encoding: .utf8)
        #expect(idle.hasPrefix("#!/bin/sh\n'''exec' \"$(dirname -- \"$(realpath -- \"$0\")\")/python3.13\" \"$0\" \"$@\"\n' '''\n"), "\(idle.prefix(200))")

        // On Debian with musl: the runtime's modules and the krunner's (sysroots/smoke.json's checks).
        // The agent's own kernel runner (the newest backend.ai-kernel and -helper from PyPI) starts with the volume's Python.
        try ChildProcess.check([
            "python3", "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", "--only-binary=:all:", "--python-version", "3.13",
            "-d", work.path + "/kernel-wheels", "backend.ai-kernel", "backend.ai-kernel-helper",
        ])
        for wheel in try FileManager.default.contentsOfDirectory(atPath: work.path + "/kernel-wheels") {
            try ChildProcess.check(["python3", "-m", "zipfile", "-e", work.path + "/kernel-wheels/" + wheel, work.path + "/kernel-runner"])
        }
        let smoke = krnative([
            "smoke", "--target", "musllinux-x86_64", "--volume", tarball, "--sysroot", Package.root + "/sysroots/smoke.json", "--store", store + "/smoke",
            "--kernel-runner", work.path + "/kernel-runner",
        ])
        print("[runtime] smoke: \(smoke.stdout)")
        #expect(smoke.succeeded, "\(smoke.stderr.suffix(3000))")
        #expect(smoke.stdout.contains("imports ok") && smoke.stdout.contains("OpenSSL 3.5") && smoke.stdout.contains("ttyd version"))
        // OpenSSLDIR is /etc/ssl: the default context finds Debian's CA certificates in /etc/ssl/certs.
        #expect(smoke.stdout.contains("each found by the default context in /etc/ssl/certs"), "\(smoke.stdout)")
        // readline with patches/readline (its upstream patch 1): a locale that is not installed does not crash it.
        #expect(smoke.stdout.contains("readline with a locale that is not installed: ok"), "\(smoke.stdout)")
        // pip runs from the read-only volume (the agent's Python kernel runs it in its build step).
        #expect(smoke.stdout.contains("from /opt/backend.ai/lib/python3.13/site-packages/pip (python 3.13)"), "\(smoke.stdout)")
        #expect(smoke.stdout.contains("(/opt/backend.ai/bin/python -s -m ai.backend.kernel python): its main loop answered status"), "\(smoke.stdout)")

        // Again elsewhere: nothing compiled, the same outputs (the .pyc and the packing are the
        // store's: compiling and packing them again from the same tree is the variation harness's
        // to check, in VolumeTests).
        let again = build(lock: lock, store: store, out: work.path + "/again")
        try #require(again.succeeded, "\(again.stderr.suffix(3000))")
        #expect(again.stderr.contains("cpython 3.13.15: cached"), "the runtime's steps come from the step cache")
        let second = try JSONDecoder().decode(BuildManifest.self, from: Data(contentsOf: URL(fileURLWithPath: work.path + "/again/krnative-manifest.\(Self.distro).x86_64.json")))
        #expect(second.outputs.map(\.sha256) == manifest.outputs.map(\.sha256), "the same outputs from another output directory")
    }

    func build(lock: String, store: String, out: String, _ extra: [String] = []) -> ChildProcess.Result {
        krnative(
            [
                "build", "--lock", lock, "--store", store, "--target", "musllinux-x86_64", "--runtime", "source", "--out", out,
                "--config", Package.root + "/krunner.json", "--patches", Package.root + "/patches",
                "--policy", Package.root + "/sysroots/audit-policy.json", "--ledger", "none",
            ] + extra)
    }
}

/// `krnative build-runtime` without compiling: `--sandbox none --prepare-only` leaves every step's
/// source unpacked and patched (the recipe's CPython edits too, in the target CPython's directory
/// only), and `--print-script` prints the steps' commands over them, as the benchmark runs them.
@Suite("build-runtime prepares and prints", .timeLimit(.minutes(60)), .tags(.process, .pypi), .endToEnd, .needsCompileRuntime)
struct BuildRuntimeCommandTests {
    @Test func preparesTheSourcesAndPrintsEachStepsCommands() throws {
        let work = TemporaryDirectory("krnative-build-runtime")
        let (_, lock) = try CompileTests.makeLock(in: work, sources: Machine.runtimeSources)
        let prepared = work.path + "/prepared"
        let common = ["build-runtime", "--lock", lock, "--store", CompileTests.store.path, "--target", "musllinux-x86_64", "--sandbox", "none", "--workdir", prepared]
        let prepare = krnative(common + ["--prepare-only"])
        try #require(prepare.succeeded, "\(prepare.stderr.suffix(3000))")
        #expect(prepare.stdout.contains("prepared \(runtimeRecipeFile.components.count) sources in \(prepared)"), "\(prepare.stdout)")
        let steps = ["cpython-build"] + runtimeRecipeFile.components.dropFirst() + ["cpython"]
        let sources = try FileManager.default.contentsOfDirectory(atPath: prepared + "/src")
        #expect(Set(sources) == Set(steps), "one directory a step: \(sources.sorted())")
        #expect(try FileManager.default.contentsOfDirectory(atPath: prepared + "/stage").isEmpty, "nothing compiled")
        // The recipe's edits are the target CPython's: the build Python's source stays as it came.
        let makefile = "/Makefile.pre.in", edited = "-Wl,-soname,$(INSTSONAME)"
        #expect(try String(contentsOfFile: prepared + "/src/cpython" + makefile, encoding: .utf8).contains(edited))
        #expect(try !String(contentsOfFile: prepared + "/src/cpython-build" + makefile, encoding: .utf8).contains(edited))
        #expect(try String(contentsOfFile: prepared + "/src/cpython/Misc/platform_triplet.c", encoding: .utf8).contains("musl: Linux"))

        let printed = krnative(common + ["--print-script"])
        try #require(printed.succeeded, "\(printed.stderr.suffix(3000))")
        let script = printed.stdout
        #expect(script.hasPrefix("#!/usr/bin/env bash\n") && script.contains("set -euo pipefail"))
        // The script's sections, one a step, in the recipe's order: each starts with `cd` into its source.
        var sections: [(step: String, commands: [String])] = []
        for line in script.split(separator: "\n").map(String.init) {
            if line.hasPrefix("cd ") {
                sections.append((String(line.dropFirst(3)).replacingOccurrences(of: prepared + "/src/", with: ""), []))
            } else if !sections.isEmpty {
                sections[sections.count - 1].commands.append(line)
            }
        }
        #expect(sections.map(\.step) == steps)
        for (step, commands) in sections {
            // bzip2 has no configure: its Makefile takes everything on the command line.
            let configure = step == "bzip2" ? " make " : step == "openssl" ? " perl ./Configure " : " ./configure "
            #expect(commands.first?.contains(configure) == true, "\(step) starts with its configure: \(commands.first ?? "")")
        }
        let target = try #require(sections.last?.commands.first)
        #expect(target.contains("--host=x86_64-pc-linux-musl") && target.contains("--with-build-python=\(prepared)/stage/build-python/bin/python3.13"))
        let syntax = ChildProcess.run(["bash", "-n", "-c", script])
        #expect(syntax.succeeded, "\(syntax.stderr)")
    }
}
