import Foundation
import KrnativeBase
import Testing

/// The command line as a user meets it: mistakes get exit 64 and one message that says what to
/// type instead; environment settings are read strictly.
@Suite("Usage errors", .timeLimit(.minutes(60)), .tags(.process), .endToEnd)
struct UsageTests {
    struct Case: Sendable, CustomStringConvertible {
        var arguments: [String]
        var environment: [String: String] = [:]
        var message: String
        var description: String { arguments.joined(separator: " ") }
    }

    static let cases: [Case] = [
        Case(arguments: ["biuld", "--target", "manylinux-x86_64"], message: "'biuld' is not a command of `krnative`; did you mean `krnative build`?"),
        Case(arguments: ["buidl"], message: "did you mean `krnative build`?"),
        Case(arguments: ["help", "biuld"], message: "did you mean `krnative build`?"),
        Case(arguments: ["store", "lss"], message: "did you mean `krnative store ls`?"),
        Case(arguments: ["xyzzy"], message: "the commands are targets, fetch, build"),
        // Issue #27: an option typo is named, with the nearest option, before anything else is said of the command line.
        Case(arguments: ["build", "--targt", "musllinux-aarch64"], message: "`krnative build` has no option --targt; did you mean --target?"),
        Case(arguments: ["--verison"], message: "`krnative` has no option --verison; did you mean --version?"),
        Case(arguments: ["smoke", "--targt", "musllinux-aarch64"], message: "`krnative smoke` has no option --targt; did you mean --target?"),
        Case(arguments: ["bundle", "export", "--runtime=source", "--targt", "x", "f.tar"], message: "`krnative bundle export` has no option --targt; did you mean --target?"),
        Case(arguments: ["store", "ls", "--jsn"], message: "`krnative store ls` has no option --jsn; did you mean --json?"),
        Case(arguments: ["doctor", "--xyzzy-plugh"], message: "`krnative doctor` has no option --xyzzy-plugh (`krnative doctor --help` lists its options)"),
        Case(arguments: ["fetch", "--target", "manylinux-x86_64", "--all", "--offline"], message: "--all and --target manylinux-x86_64 contradict each other"),
        Case(arguments: ["fetch", "--jobs", "-1", "--all", "--offline"], message: "--jobs takes a whole number from 1 (got -1)"),
        Case(arguments: ["build", "--target", "manylinux-x86_64", "--compile-jobs", "0"], message: "--compile-jobs takes a whole number from 1 (got 0)"),
        Case(
            arguments: ["build", "--request", "request.json", "--target", "manylinux-x86_64", "--toolchain", "zig"],
            message: "--request FILE holds the target and what decides the bytes: drop --target, --toolchain"),
        // Every option a request file holds is named, read off the parsed values (no list to keep).
        Case(
            arguments: [
                "build", "--request", "r.json", "--all", "--lock", "l", "--flavour", "alpine", "--patches", "p", "--policy", "a", "--xz-preset", "3",
                "--source-date-epoch", "0", "--config", "c", "--runtime", "source", "--recipes", "", "--out", "o", "--compile-jobs", "1",
            ],
            message: "drop --lock, --all, --flavour, --patches, --policy, --xz-preset, --source-date-epoch, --config, --runtime, --recipes\n"),
        Case(
            arguments: ["build", "--target", "musllinux-x86_64", "--check"],
            message: "--check compares the builds of one volume; musllinux-x86_64 ships as alpine and static-musl: name one with --flavour"),
        Case(arguments: ["build", "--target", "manylinux-x86_64", "--xz-preset", "12"], message: "--xz-preset takes a whole number from 0 to 9 (got 12)"),
        Case(
            arguments: ["build", "--target", "manylinux-x86_64", "--source-date-epoch", "4294967296"],
            message: "--source-date-epoch 4294967296 is outside 0...4294967295: a zip records no time beyond 2106"),
        Case(
            arguments: ["build-ttyd", "--target", "manylinux-x86_64", "--source-date-epoch", "-1"],
            message: "--source-date-epoch -1 is outside 0...4294967295: a zip records no time beyond 2106"),
        Case(arguments: ["build", "--request", "/nonexistent/request.json"], message: "cannot read the build request /nonexistent/request.json"),
        Case(
            arguments: ["build", "--target", "musllinux-aarch64", "--flavour", "alpine", "--check", "--variations", "umask,path+usr"],
            message: "unknown variation 'usr'; the variations are path, clock, timezone, locale, umask, user, jobs, environment, hostname, file-order, or all; join several with + for one run"),
        Case(arguments: ["fetch", "--all"], environment: ["KRNATIVE_OFFLINE": "maybe"], message: "KRNATIVE_OFFLINE=maybe is neither on nor off"),
        Case(arguments: ["sandbox", "run", "--", "true"], environment: ["KRNATIVE_SANDBOX": "chroot"], message: "KRNATIVE_SANDBOX=chroot is not one of namespaces, none"),
        Case(arguments: ["sandbox", "run", "true"], message: "Unexpected argument 'true'"),
        Case(
            arguments: ["build-runtime", "--target", "musllinux-x86_64", "--print-script"],
            message: "--print-script needs --workdir DIR, the directory a --sandbox none --prepare-only run prepared"),
        Case(arguments: ["build-ttyd", "--target", "musllinux-x86_64", "--prepare-only"], message: "--prepare-only needs --workdir DIR"),
        Case(
            arguments: ["build-runtime", "--target", "musllinux-x86_64", "--workdir", "w", "--prepare-only", "--print-script"],
            message: "--prepare-only and --print-script contradict each other"),
        Case(
            arguments: ["build-runner", "--arch", "x86_64", "--only", "dropbear,su-exec"],
            message: "su-exec is not a runner binary's recipe; the recipes are ttyd, dropbear, sftp-server, tmux"),
        Case(arguments: ["build-runner", "--arch", "riscv64"], message: "The value 'riscv64' is invalid for '--arch <arch>'"),
        Case(arguments: ["build-runner", "--arch", "x86_64", "--workdir", "w"], message: "--workdir takes one recipe's build: use build-recipe NAME --workdir DIR"),
    ]

    @Test(arguments: cases)
    func mistakeIsAUsageError(_ example: Case) {
        let result = krnative(example.arguments, environment: example.environment)
        #expect(result.termination == .exited(ExitStatus.usage), "\(example): \(result.termination) \(result.stderr)")
        #expect(result.stderr.contains(example.message), "\(example): \(result.stderr)")
    }

    /// `--help` is help wherever it stands before `--`, also for the command that runs a step.
    @Test func sandboxRunHelpIsHelp() {
        let result = krnative(["sandbox", "run", "--help"])
        #expect(result.succeeded, "\(result.stderr)")
        #expect(result.stdout.contains("USAGE: krnative sandbox run"))
    }

    /// `--version` names the commit the binary is built from (this checkout's, as it was built
    /// from it), on every command.
    @Test func versionNamesTheCommit() throws {
        let head = ChildProcess.run(["git", "-C", Package.root, "rev-parse", "--short=12", "HEAD"])
        try #require(head.succeeded, "the tests run from a git checkout: \(head.stderr)")
        let commit = head.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        for arguments in [["--version"], ["build", "--version"], ["lock", "add", "--version"]] {
            let result = krnative(arguments)
            #expect(result.succeeded, "\(arguments): \(result.stderr)")
            #expect(result.stdout.hasPrefix("0.1.0 (commit \(commit)"), "\(arguments): \(result.stdout)")
        }
    }

    /// `build --all` builds every target in turn and ends with a table, one row a target, whatever
    /// happened to the others; its exit status is the first failure's. Here the store is empty
    /// and the build offline: each target stops at its missing inputs (66), and is said so.
    @Test func buildAllTriesEveryTargetAndTabulates() throws {
        let work = TemporaryDirectory("krnative-build-all")
        let result = krnative([
            "build", "--all", "--offline", "--lock", Package.root + "/krnative.lock.json", "--store", work.path + "/store",
            "--out", work.path + "/out", "--ledger", "none",
        ])
        #expect(result.termination == .exited(ExitStatus.missingInput), "\(result.stderr.suffix(1000))")
        // A row a target and flavour (musl targets ship as alpine and as static-musl).
        let rows = result.stdout.split(separator: "\n").filter { $0.contains("FAILED (exit 66)") }
        #expect(
            rows.map { $0.split(separator: " ", omittingEmptySubsequences: true).prefix(2).joined(separator: " ") }
                == Target.allCases.flatMap { target in target.flavours.map { "\(target.rawValue) \($0.rawValue)" } },
            "\(result.stdout)")
        for target in Target.allCases { #expect(result.stderr.contains("build of \(target.rawValue) (\(target.defaultFlavour.rawValue)) failed")) }
        let contradicting = krnative(["build", "--all", "--target", "manylinux-x86_64"])
        #expect(contradicting.termination == .exited(ExitStatus.usage) && contradicting.stderr.contains("contradict"))
        let checkingTwo = krnative(["build", "--target", "manylinux-x86_64", "--target", "musllinux-x86_64", "--check"])
        #expect(checkingTwo.termination == .exited(ExitStatus.usage) && checkingTwo.stderr.contains("one --target"))
    }

    /// Issue #27: a command given `--json` that fails prints the failure as JSON on stdout too
    /// (stdout was empty), with the exit status it ends with.
    @Test func aFailureUnderJSONIsJSONOnStdout() throws {
        let store = TemporaryDirectory()
        let result = krnative([
            "build", "--json", "--offline", "--target", "manylinux-aarch64", "--store", store.path, "--out", store.path + "/out", "--ledger", "none",
            "--lock", Package.root + "/krnative.lock.json",
        ])
        #expect(result.termination == .exited(ExitStatus.missingInput), "\(result.stderr.suffix(500))")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any], "\(result.stdout)")
        let error = try #require(object["error"] as? [String: Any])
        #expect(error["command"] as? String == "build")
        #expect(error["exitStatus"] as? Int == Int(ExitStatus.missingInput))
        #expect((error["message"] as? String)?.contains("--offline forbids downloading") == true)
    }

    /// The usual spellings of on: an offline fetch of an empty store fails for the missing input
    /// (66), which only happens when offline was understood.
    @Test(arguments: ["1", "true", "YES", "on"])
    func offlineTakesTheUsualSpellings(_ value: String) {
        let store = TemporaryDirectory()
        let result = krnative(["fetch", "--all", "--store", store.path, "--lock", Package.root + "/krnative.lock.json"], environment: ["KRNATIVE_OFFLINE": value])
        #expect(result.termination == .exited(ExitStatus.missingInput), "\(value): \(result.stderr.prefix(500))")
        #expect(result.stderr.contains("--offline forbids downloading:"))
        // One table and one command to run, naming what was asked for (issue #27: the advice came
        // once per input, with a literal `--target …`).
        let lock = Package.root + "/krnative.lock.json"
        #expect(result.stderr.components(separatedBy: "On a machine with network").count == 2, "\(result.stderr)")
        #expect(result.stderr.contains("krnative fetch --lock \(lock) --all && krnative bundle export inputs.tar --lock \(lock) --all"), "\(result.stderr)")
    }

    /// As cargo finds Cargo.toml: from any directory below the project, the project's lock, and
    /// its sysroots/ and out/ as defaults; outside any project, a message that says where to run.
    @Test func theProjectIsFoundFromASubdirectory() {
        let inside = ChildProcess.run([Package.binary, "lock", "check"], directory: Package.root + "/Sources/Build")
        #expect(inside.succeeded, "\(inside.stderr)")
        #expect(inside.stdout.hasPrefix(Package.root + "/krnative.lock.json: "))
        let store = TemporaryDirectory()
        let smoke = ChildProcess.run(
            [Package.binary, "smoke", "--target", "musllinux-aarch64", "--store", store.path, "--volume", "no-such-volume.tar.xz"],
            directory: Package.root + "/Sources")
        #expect(smoke.termination == .exited(ExitStatus.missingInput))
        #expect(smoke.stderr.contains("no volume at no-such-volume.tar.xz: build it with `krnative build --target musllinux-aarch64`"), "\(smoke.stderr)")
        let defaulted = ChildProcess.run([Package.binary, "smoke", "--target", "musllinux-aarch64", "--store", store.path], directory: Package.root + "/Sources")
        if !FileSystem.exists(Package.root + "/out/krunner-env.musllinux_1_2.aarch64.tar.xz") {
            #expect(defaulted.stderr.contains("no volume at \(Package.root)/out/krunner-env.musllinux_1_2.aarch64.tar.xz"), "\(defaulted.stderr)")
        }

        let elsewhere = TemporaryDirectory()
        _ = elsewhere.file("krnative.lock.json/x", "a directory where the lock should be")
        let outside = ChildProcess.run([Package.binary, "lock", "check"], directory: elsewhere.path + "/krnative.lock.json")
        #expect(outside.termination == .exited(ExitStatus.lock))
        #expect(outside.stderr.contains("/krnative.lock.json: it is a directory, not a file"), "\(outside.stderr)")
        #expect(outside.stderr.contains("Run krnative in the project"))
    }

    /// `lock add` never writes a lock `lock check` refuses, keeps an entry's licence when it
    /// refreshes it, takes a pip requirement alone, and speaks JSON where asked.
    @Test func lockAddWritesOnlyValidLocks() throws {
        let work = TemporaryDirectory()
        let lock = work.path + "/krnative.lock.json", store = work.path + "/store"
        let file = work.file("tool.tgz", randomData(1000))
        func add(_ arguments: [String]) -> ChildProcess.Result {
            krnative(["lock", "add", "--lock", lock, "--store", store] + arguments)
        }
        // No URL: nowhere to fetch it from, so nothing is written; said before the file is hashed
        // (issue #27: it was the lock's validation, exit 65, blaming "the lock").
        let orphan = add(["--name", "tool", "--kind", "toolchain", "--upstream-version", "1", "--file", file])
        #expect(orphan.termination == .exited(ExitStatus.usage), "\(orphan.stderr)")
        #expect(orphan.stderr.contains("add --url URL (repeatable) or --pip-requirement"), "\(orphan.stderr)")
        #expect(!FileSystem.exists(lock))

        let first = add(["--name", "tool", "--kind", "toolchain", "--upstream-version", "1", "--file", file, "--url", "https://example.org/tool.tgz", "--license", "MIT", "--json"])
        #expect(first.succeeded, "\(first.stderr)")
        let entry = try JSONSerialization.jsonObject(with: Data(first.stdout.utf8)) as? [String: Any]
        #expect(entry?["name"] as? String == "tool" && entry?["license"] as? String == "MIT")
        let refreshed = add(["--name", "tool", "--kind", "toolchain", "--upstream-version", "2", "--file", file, "--url", "https://example.org/tool.tgz"])
        #expect(refreshed.succeeded, "\(refreshed.stderr)")
        let check = krnative(["lock", "check", "--lock", lock, "--json"])
        #expect(check.succeeded)
        #expect((try JSONSerialization.jsonObject(with: Data(check.stdout.utf8)) as? [String: Any])?["inputs"] as? Int == 1)
        let text = try String(contentsOfFile: lock, encoding: .utf8)
        #expect(text.contains("\"license\" : \"MIT\"") && text.contains("\"version\" : \"2\""), "\(text)")

        // A pip requirement alone is a way to fetch (refused here only because it is offline).
        let pip = add(["--name", "six", "--kind", "wheel", "--upstream-version", "1.16.0", "--pip-requirement", "six==1.16.0", "--offline"])
        #expect(pip.termination == .exited(ExitStatus.missingInput), "\(pip.stderr)")
        #expect(pip.stderr.contains("--offline forbids downloading pip download six==1.16.0"), "\(pip.stderr)")
    }

    /// `lock add --pip-requirement` alone: pip chooses the file, krnative pins what it chose.
    @Test(.tags(.pypi), .endToEnd) func lockAddWithPipAlone() throws {
        let work = TemporaryDirectory()
        let lock = work.path + "/krnative.lock.json"
        let added = krnative([
            "lock", "add", "--lock", lock, "--store", work.path + "/store", "--name", "six", "--kind", "wheel",
            "--upstream-version", "1.16.0", "--pip-requirement", "six==1.16.0", "--json",
        ])
        #expect(added.succeeded, "\(added.stderr)")
        let entry = try JSONSerialization.jsonObject(with: Data(added.stdout.utf8)) as? [String: Any]
        #expect(entry?["filename"] as? String == "six-1.16.0-py2.py3-none-any.whl")
        #expect((entry?["sha256"] as? String)?.count == 64)
        #expect(krnative(["lock", "check", "--lock", lock]).succeeded)
    }
}
