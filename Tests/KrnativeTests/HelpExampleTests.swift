import Foundation
import KrnativeBase
import Testing

/// Issue #27: every example in every `--help` runs as printed (HelpTests, above, checks that each
/// names options its command has). The examples are read from the help
/// itself — the root, every command and every group, found through the SUBCOMMANDS lists — and
/// each runs with `sh` in a project made for it: the real lock, an empty store, no network
/// (`KRNATIVE_OFFLINE=1`), and the files the examples name. Each must end with the status
/// `expected` gives it; an example the table does not know fails the test, so a new example comes
/// with its status. What needs the pinned inputs gets past every check and stops for them (66).
extension HelpTests {
    /// Each example and its status here, with why when it is not 0.
    static let expected: [String: (status: Int32, why: String)] = [
        "krnative targets": (0, ""),
        "krnative targets --json": (0, ""),
        "krnative doctor": (0, ""),
        "krnative doctor --json": (0, ""),
        "krnative fetch --target manylinux-x86_64": (66, "offline, empty store"),
        "krnative fetch --all --jobs 8 --mirrors mirrors.conf": (66, "offline, empty store"),
        "krnative fetch --all --offline   # what is missing, without a connection": (66, "empty store"),
        "krnative build --target musllinux-aarch64": (66, "offline, empty store"),
        "krnative build --target manylinux-x86_64": (66, "offline, empty store"),
        "krnative build --target musllinux-aarch64 --offline --out arm-out": (66, "empty store"),
        "krnative build --target manylinux-x86_64 --check --variations all": (66, "offline, empty store"),
        "krnative build --all --remote-cache https://cache.internal:8080 --remote-cache-upload": (66, "offline (no cache either), empty store"),
        "krnative build-ttyd --target musllinux-aarch64 --out ttyd-out": (66, "empty store"),
        "krnative build-runtime --target musllinux-x86_64 --out runtime-out": (66, "empty store"),
        "krnative build-recipe ttyd --target musllinux-aarch64 --out ttyd-out": (66, "empty store"),
        "krnative build-runner --arch aarch64": (66, "empty store"),
        "krnative build-runner --arch x86_64 --only dropbear,sftp-server --check": (66, "empty store"),
        "krnative build-runner --arch aarch64 --offline": (66, "empty store"),
        "krnative store ls": (0, ""),
        "krnative store ls --store ~/krnative-store --json": (0, ""),
        "krnative store verify": (0, ""),
        "krnative store verify --json": (0, ""),
        "krnative store gc --dry-run -v": (0, ""),
        "krnative store gc --max-age 7": (0, ""),
        "krnative store import downloads/*.tar.gz": (0, ""),
        "krnative bundle export inputs.tar --all": (66, "empty store"),
        "krnative bundle export arm.tar --target musllinux-aarch64 --host aarch64-linux": (66, "empty store"),
        "krnative bundle export arm.tar --target musllinux-aarch64 --runtime source": (66, "empty store"),
        "krnative bundle export runner.tar --target musllinux-aarch64 --runner": (66, "empty store"),
        "krnative bundle import inputs.tar": (76, "the bundle here was made from another lock"),
        "krnative bundle import inputs.tar --lock site.lock.json --take-lock": (0, "the bundle's own lock, written where there was none"),
        "krnative lock check": (0, ""),
        "krnative lock check --lock other.lock.json --json": (0, ""),
        "krnative lock tree-hash ttyd-1.7.7.tar.gz": (0, ""),
        "krnative lock tree-hash --strip 0 unpacked/": (0, ""),
        "krnative lock add --name attrs --kind wheel --upstream-version 24.2.0 --pip-requirement attrs==24.2.0": (66, "offline: pip is not run"),
        "krnative lock add --name ttyd --kind source --upstream-version 1.7.7 --file ttyd-1.7.7.tar.gz --url https://github.com/tsl0922/ttyd/archive/refs/tags/1.7.7.tar.gz":
            (0, ""),
        "krnative pack volume/ krunner-env.tar.xz --source-date-epoch 1700000000": (0, ""),
        "krnative wheel install --target manylinux-x86_64 --prefix prefix *.whl": (0, ""),
        "krnative wheel install --target manylinux-x86_64 --prefix prefix attrs-24.2.0-py3-none-any.whl": (0, ""),
        "krnative sandbox run -- id": (0, ""),
        "krnative sandbox run --ro src --rw build --env CC=cc -- make -C build": (0, ""),
        "krnative diff out/krunner-env.static-gnu.x86_64.tar.xz ci/krunner-env.static-gnu.x86_64.tar.xz": (0, ""),
        "krnative diff out/ ci/ --json": (0, ""),
        "krnative audit out/krunner-env.static-gnu.x86_64.tar.xz --target manylinux-x86_64": (81, "the archive here is not a volume: no bin/ttyd"),
        "krnative verify --manifest ci/krnative-manifest.static-gnu.x86_64.json": (64, "no build made that manifest here"),
        "krnative smoke --target manylinux-x86_64": (64, "out/ holds the small archive of the diff examples, not a volume"),
        "krnative smoke --target musllinux-aarch64 --volume out/krunner-env.musllinux_1_2.aarch64.tar.xz": (66, "no such volume here"),
    ]

    @Test func everyCommandAndGroupHasExamplesThatFitTheHelp() {
        for path in Self.paths {
            let (examples, wrapped) = Self.examples(in: Self.help(path))
            let command = (["krnative"] + path).joined(separator: " ")
            #expect(!examples.isEmpty, "`\(command) --help` has no examples")
            #expect(wrapped.isEmpty, "`\(command) --help` wrapped an example: \(wrapped)")
            for example in examples { #expect(Self.expected[example] != nil, "`\(command) --help`: no status known for `\(example)`") }
        }
    }

    @Test func everyExampleEndsWithItsStatus() throws {
        let project = try Self.project()
        var seen = Set<String>()
        for path in Self.paths {
            for example in Self.examples(in: Self.help(path)).examples where seen.insert(example).inserted {
                guard let (status, why) = Self.expected[example] else { continue }  // said by the test above
                let result = ChildProcess.run(["sh", "-c", example], environment: project.environment, directory: project.directory.path)
                #expect(result.termination == .exited(status), "`\(example)` (\(why.isEmpty ? "runs" : why)): \(result.termination)\n\(result.stderr.suffix(800))")
            }
        }
        #expect(seen == Set(Self.expected.keys), "examples in the table that no help shows: \(Set(Self.expected.keys).subtracting(seen))")
    }

    /// A project the examples run in: the lock, config and policy of this checkout (copies), an
    /// empty store, and the files the examples name.
    static func project() throws -> (directory: TemporaryDirectory, environment: [String: String]) {
        let project = TemporaryDirectory("krnative-examples")
        let path = project.path
        for name in ["krnative.lock.json", "krunner.json", "krunner-volumes.json", "patches", "sysroots"] {
            try FileManager.default.copyItem(atPath: Package.root + "/" + name, toPath: path + "/" + name)
        }
        try FileManager.default.copyItem(atPath: path + "/krnative.lock.json", toPath: path + "/other.lock.json")
        try FileManager.default.createDirectory(atPath: path + "/bin", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: path + "/bin/krnative", withDestinationPath: Package.binary)
        _ = project.file("mirrors.conf", "# no rules\n")
        _ = project.file("volume/bin/hello", "hello\n")
        _ = project.file("unpacked/ttyd-1.7.7/README.md", "ttyd\n")
        _ = project.file("src/main.c", "int main(void) { return 0; }\n")
        _ = project.file("build/Makefile", "all:\n\t@echo $(CC)\n")
        try ChildProcess.check(["tar", "-czf", "../ttyd-1.7.7.tar.gz", "ttyd-1.7.7"], directory: path + "/unpacked")
        try FileManager.default.createDirectory(atPath: path + "/downloads", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: path + "/ttyd-1.7.7.tar.gz", toPath: path + "/downloads/ttyd-1.7.7.tar.gz")
        for directory in ["out", "ci"] {
            try FileManager.default.createDirectory(atPath: path + "/" + directory, withIntermediateDirectories: true)
            try ChildProcess.check([Package.binary, "pack", path + "/volume", path + "/\(directory)/krunner-env.static-gnu.x86_64.tar.xz", "--source-date-epoch", "0"])
        }
        try writeWheel(at: path + "/attrs-24.2.0-py3-none-any.whl")
        // The project's lock pins ttyd by the tree of the archive here, so that what `store import`
        // is shown taking matches an input.
        try ChildProcess.check(
            [Package.binary, "lock", "add", "--lock", path + "/krnative.lock.json", "--store", path + "/setup-store", "--name", "ttyd", "--kind", "source",
             "--upstream-version", "1.7.7", "--file", path + "/ttyd-1.7.7.tar.gz", "--url", "http://127.0.0.1:9/ttyd-1.7.7.tar.gz"])
        // inputs.tar: a bundle made from another lock (the wheel alone), which `bundle import` refuses here.
        let other = ["--lock", path + "/bundled.json", "--store", path + "/other-store"]
        try ChildProcess.check(
            [Package.binary, "lock", "add", "--name", "attrs", "--kind", "wheel", "--upstream-version", "24.2.0", "--file", path + "/attrs-24.2.0-py3-none-any.whl",
             "--url", "http://127.0.0.1:9/attrs-24.2.0-py3-none-any.whl"] + other)
        try ChildProcess.check([Package.binary, "bundle", "export", path + "/inputs.tar", "--all"] + other)
        var environment = ProcessInfo.processInfo.environment
        environment["PATH"] = path + "/bin:" + (environment["PATH"] ?? "/usr/bin:/bin")
        environment["KRNATIVE_STORE"] = path + "/store"
        environment["KRNATIVE_OFFLINE"] = "1"
        environment["HOME"] = path
        environment["XDG_CACHE_HOME"] = path + "/cache"
        environment["KRNATIVE_LOCK"] = nil
        return (project, environment)
    }

    /// A small, true wheel (RECORD and all) named as the wheel examples name it.
    static func writeWheel(at path: String) throws {
        let script = """
            import base64, hashlib, sys, zipfile
            files = {"attrs/__init__.py": "__version__ = '24.2.0'\\n",
                     "attrs-24.2.0.dist-info/METADATA": "Metadata-Version: 2.1\\nName: attrs\\nVersion: 24.2.0\\n",
                     "attrs-24.2.0.dist-info/WHEEL": "Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
            rows = []
            with zipfile.ZipFile(sys.argv[1], "w") as z:
                for name, body in files.items():
                    z.writestr(name, body)
                    digest = base64.urlsafe_b64encode(hashlib.sha256(body.encode()).digest()).rstrip(b"=").decode()
                    rows.append(f"{name},sha256={digest},{len(body.encode())}")
                z.writestr("attrs-24.2.0.dist-info/RECORD", "\\n".join(rows + ["attrs-24.2.0.dist-info/RECORD,,"]) + "\\n")
            """
        try ChildProcess.check(["python3", "-c", script, path])
    }
}
