import Fetch
import Foundation
import KrnativeBase
import Layout
import Lock
import Store
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Wheel installer", .timeLimit(.minutes(60)), .tags(.pypi), .endToEnd, .serialized)
struct WheelInstallerTests {
    /// The real wheel sets of the repository's lock, fetched once (through pip) into one store.
    static let wheels: Result<(store: String, lock: Lockfile), any Error> = Result {
        var template = Array((NSTemporaryDirectory() + "/krnative-wheels.XXXXXX").utf8CString)
        let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        let store = ProcessInfo.processInfo.environment["KRNATIVE_TEST_STORE"].flatMap { $0.isEmpty ? nil : $0 } ?? directory + "/store"
        let repository = try Lockfile.load(from: Package.root + "/krnative.lock.json")
        let lock = Lockfile(sourceDateEpoch: repository.sourceDateEpoch, inputs: repository.inputs.filter { $0.kind == .wheel })
        try lock.write(to: directory + "/wheels.lock.json")
        let fetched = krnative(["fetch", "--lock", directory + "/wheels.lock.json", "--store", store, "--all"])
        guard fetched.succeeded else { throw UsageError("pip could not fetch the wheel sets: \(fetched.stderr)") }
        return (store, lock)
    }

    func wheelPath(_ input: LockedInput) throws -> String {
        let (store, _) = try Self.wheels.get()
        return "\(store)/sha256/\(input.sha256!.hex)"
    }

    /// A copy of the store file under its wheel name (the installer reads tags from the name).
    func named(_ input: LockedInput, in work: TemporaryDirectory) throws -> String {
        let path = work.path + "/" + input.filename
        if !FileManager.default.fileExists(atPath: path) { try FileManager.default.copyItem(atPath: try wheelPath(input), toPath: path) }
        return path
    }

    @Test(arguments: Target.allCases)
    func realWheelSetInstallsForEachTarget(target: Target) throws {
        let (_, lock) = try Self.wheels.get()
        let work = TemporaryDirectory()
        let prefix = work.path + "/prefix"
        let set = lock.inputs(for: [target], host: .current).filter { $0.kind == .wheel }
        #expect(set.count == 13)
        for input in set { try WheelInstaller(target: target).install(try named(input, in: work), into: prefix) }
        let site = prefix + "/lib/python3.13/site-packages"
        for module in ["zmq", "uvloop", "attr", "janus", "msgpack", "jupyter_client", "tornado"] {
            #expect(FileManager.default.fileExists(atPath: site + "/" + module), "\(module) for \(target)")
        }
        let script = try String(contentsOfFile: prefix + "/bin/jupyter-kernel", encoding: .utf8)
        #expect(script.hasPrefix("#!/opt/backend.ai/bin/python3\n"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: prefix).sorted() == ["bin", "lib"])
    }

    /// The same wheels through pip (CPython 3.13's own pip, --no-deps --no-compile --prefix) and through krnative.
    @Test(.enabled(if: python313 != nil, "no CPython 3.13 with pip on this machine (pyenv's 3.13 is used where present)"))
    func matchesPipFileForFile() throws {
        let python = try #require(Self.python313)
        let (_, lock) = try Self.wheels.get()
        let work = TemporaryDirectory()
        let set = lock.inputs(for: [.manylinuxX86_64], host: .current).filter { $0.kind == .wheel }
        let files = try set.map { try named($0, in: work) }
        try ChildProcess.check(
            [python, "-m", "pip", "install", "--no-deps", "--no-compile", "--no-index", "--disable-pip-version-check", "--prefix", work.path + "/pip"] + files)
        for file in files { try WheelInstaller(target: .manylinuxX86_64).install(file, into: work.path + "/krnative") }
        let pip = try Self.listing(work.path + "/pip"), ours = try Self.listing(work.path + "/krnative")
        // What pip writes differently (see the README): its own INSTALLER text, REQUESTED,
        // direct_url.json (the local path of the wheel file), the shebang of scripts, RECORD's rows for those.
        let pipOnly = Set(pip.keys).subtracting(ours.keys)
        #expect(pipOnly.allSatisfy { $0.hasSuffix("/REQUESTED") || $0.hasSuffix("/direct_url.json") }, "\(pipOnly.sorted())")
        #expect(Set(ours.keys).subtracting(pip.keys).isEmpty, "\(Set(ours.keys).subtracting(pip.keys).sorted())")
        var compared = 0
        for (path, entry) in ours where !path.hasSuffix("/RECORD") && !path.hasSuffix("/INSTALLER") {
            let theirs = try #require(pip[path])
            #expect(theirs.executable == entry.executable, "mode of \(path)")
            if path.hasPrefix("bin/") {
                #expect(theirs.body.split(separator: 0x0a, maxSplits: 1).last == entry.body.split(separator: 0x0a, maxSplits: 1).last, "script \(path)")
            } else {
                #expect(theirs.body == entry.body, "content of \(path)")
            }
            compared += 1
        }
        #expect(compared > 500)
        // RECORD: the same rows apart from the files pip alone writes and the scripts' hashes.
        for (path, entry) in ours where path.hasSuffix("/RECORD") {
            func rows(_ data: Data) -> Set<String> {
                Set(String(decoding: data, as: UTF8.self).components(separatedBy: "\r\n").filter {
                    !$0.contains("REQUESTED") && !$0.contains("direct_url.json") && !$0.contains("INSTALLER") && !$0.hasPrefix("../../../bin/")
                })
            }
            #expect(rows(entry.body) == rows(pip[path]!.body), "RECORD of \(path)")
            #expect(entry.body.last == 0x0a && entry.body.dropLast().last == 0x0d, "RECORD ends its lines with CRLF, as pip's")
        }
    }

    /// A runtime without pip (one compiled from source) gets the pip wheel CPython bundles for
    /// ensurepip, with the launchers pip writes when it installs itself (`pip`, `pip3`, `pip3.13`);
    /// a runtime with pip is left alone; one with neither is reported; two wheels are refused, naming the runtime.
    @Test(.enabled(if: python313 != nil, "no CPython 3.13 with pip on this machine (pyenv's 3.13 is used where present)"))
    func aRuntimeWithoutPipGetsEnsurepipsWheel() throws {
        let python = try #require(Self.python313)
        let bundled = "lib/python3.13/ensurepip/_bundled"
        let home = ((python as NSString).deletingLastPathComponent as NSString).deletingLastPathComponent
        let wheel = try #require(try FileManager.default.contentsOfDirectory(atPath: home + "/" + bundled).first { $0.hasPrefix("pip-") })
        let work = TemporaryDirectory()
        let prefix = work.path + "/runtime"
        try FileManager.default.createDirectory(atPath: prefix + "/" + bundled, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: home + "/" + bundled + "/" + wheel, toPath: prefix + "/" + bundled + "/" + wheel)
        let layout = VolumeLayout(target: .musllinuxX86_64)
        #expect(try layout.ensurePip(in: prefix, runtime: "runtime.tar.gz") == .installed(wheel: wheel))
        #expect(try layout.ensurePip(in: prefix, runtime: "runtime.tar.gz") == .present, "pip is there now")
        // What pip itself installs from the same wheel: the same files, the same launchers.
        try ChildProcess.check(
            [python, "-m", "pip", "install", "--ignore-installed", "--no-deps", "--no-compile", "--no-index", "--disable-pip-version-check", "--prefix", work.path + "/pip",
             prefix + "/" + bundled + "/" + wheel])
        let pip = try Self.listing(work.path + "/pip"), ours = try Self.listing(prefix).filter { !$0.key.hasPrefix("lib/python3.13/ensurepip") }
        #expect(Set(ours.keys.filter { $0.hasPrefix("bin/") }) == ["bin/pip", "bin/pip3", "bin/pip3.13"])
        #expect(Set(ours.keys.filter { $0.hasPrefix("bin/") }) == Set(pip.keys.filter { $0.hasPrefix("bin/") }))
        let pipOnly = Set(pip.keys).subtracting(ours.keys)
        #expect(pipOnly.allSatisfy { $0.hasSuffix("/REQUESTED") || $0.hasSuffix("/direct_url.json") }, "\(pipOnly.sorted())")

        FileSystem.remove(prefix)
        try FileManager.default.createDirectory(atPath: prefix + "/" + bundled, withIntermediateDirectories: true)
        #expect(try layout.ensurePip(in: prefix, runtime: "runtime.tar.gz") == .unavailable(bundled: bundled), "no pip, no wheel: reported")
        for name in [wheel, "pip-0.0-py3-none-any.whl"] {
            try FileManager.default.copyItem(atPath: home + "/" + bundled + "/" + wheel, toPath: prefix + "/" + bundled + "/" + name)
        }
        #expect {
            try layout.ensurePip(in: prefix, runtime: "runtime.tar.gz")
        } throws: { error in
            "\(error)".contains("runtime.tar.gz") && "\(error)".contains("it has no pip, and 2 pip wheels")
        }
    }

    static let python313: String? = {
        let root = ProcessInfo.processInfo.environment["PYENV_ROOT"] ?? NSHomeDirectory() + "/.pyenv"
        let candidates = ((try? FileManager.default.contentsOfDirectory(atPath: root + "/versions")) ?? []).filter { $0.hasPrefix("3.13") }.sorted()
        return candidates.last.map { root + "/versions/" + $0 + "/bin/python3.13" }.flatMap {
            ChildProcess.run([$0, "-m", "pip", "--version"]).succeeded ? $0 : nil
        }
    }()

    static func listing(_ root: String) throws -> [String: (body: Data, executable: Bool)] {
        var result: [String: (Data, Bool)] = [:]
        let enumerator = FileManager.default.enumerator(atPath: root)
        while let path = enumerator?.nextObject() as? String {
            var info = stat()
            lstat(root + "/" + path, &info)
            guard (info.st_mode & S_IFMT) == S_IFREG else { continue }
            result[path] = (try Data(contentsOf: URL(fileURLWithPath: root + "/" + path)), info.st_mode & 0o100 != 0)
        }
        return result
    }
}

/// Wheels made in the test: no network.
@Suite("Wheel installer: hostile wheels", .timeLimit(.minutes(60)))
struct HostileWheelTests {
    /// Builds a wheel in the test with Python's zipfile. `record`: nil for a true RECORD, "none"
    /// for none at all, or "lie:NAME" for a true RECORD except for NAME's hash.
    func hostileWheel(_ work: TemporaryDirectory, name: String = "evil-1.0-py3-none-any.whl", _ files: [(String, String)], record: String? = nil) throws -> String {
        let path = work.path + "/" + name
        let script = """
            import base64, hashlib, json, sys, zipfile
            files = json.loads(sys.argv[2]); record = sys.argv[3]
            liar = record[4:] if record.startswith("lie:") else None
            with zipfile.ZipFile(sys.argv[1], "w") as z:
                rows = []
                for name, body in files:
                    z.writestr(name, body)
                    digest = base64.urlsafe_b64encode(hashlib.sha256(body.encode()).digest()).rstrip(b"=").decode()
                    if name == liar: digest = "A" * 43
                    rows.append(f"{name},sha256={digest},{len(body.encode())}")
                if record != "none":
                    z.writestr("evil-1.0.dist-info/RECORD", "\\n".join(rows + ["evil-1.0.dist-info/RECORD,,"]) + "\\n")
            """
        let json = String(decoding: try JSONSerialization.data(withJSONObject: files.map { [$0.0, $0.1] }), as: UTF8.self)
        try ChildProcess.check(["python3", "-c", script, path, json, record ?? ""])
        return path
    }

    let metadata = [("evil-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"), ("evil-1.0.dist-info/METADATA", "Name: evil\nVersion: 1.0\n")]

    @Test func hostileWheelsAreRefusedAndLeaveNothing() throws {
        let work = TemporaryDirectory()
        let prefix = work.path + "/prefix"
        try FileManager.default.createDirectory(atPath: prefix, withIntermediateDirectories: true)
        func refused(_ wheel: String, _ needle: String, target: Target = .manylinuxX86_64) {
            do {
                try WheelInstaller(target: target).install(wheel, into: prefix)
                Issue.record("\(wheel) was installed")
            } catch {
                #expect(error.description.contains(needle), "\(error)")
                #expect(error.description.contains((wheel as NSString).lastPathComponent))
            }
            #expect((try? FileManager.default.contentsOfDirectory(atPath: prefix)) == [], "something was left in the prefix")
        }
        refused(try hostileWheel(work, metadata + [("../../escape.py", "x")]), "'../../escape.py' would be installed outside")
        // Every row true but one hash: the lie alone is what refuses it.
        let honest = try hostileWheel(work, name: "honest-1.0-py3-none-any.whl", metadata + [("evil.py", "print(1)")])
        #expect(try WheelInstaller(target: .manylinuxX86_64).install(honest, into: work.path + "/honest").count > 0)
        refused(try hostileWheel(work, metadata + [("evil.py", "print(1)")], record: "lie:evil.py"), "evil.py: RECORD says sha256=AAAA")
        refused(try hostileWheel(work, metadata + [("evil.py", "print(1)")], record: "none"), "has no evil-1.0.dist-info/RECORD")
        refused(try hostileWheel(work, name: "evil-1.0-cp313-cp313-manylinux2014_aarch64.whl", metadata + [("evil.py", "x")]), "platform tag manylinux2014_aarch64 does not fit manylinux-x86_64")
        refused(try hostileWheel(work, name: "evil-1.0-cp313-cp313-manylinux_2_28_x86_64.whl", metadata + [("evil.py", "x")]), "platform tag manylinux_2_28_x86_64")
        refused(try hostileWheel(work, name: "evil-1.0-cp312-cp312-musllinux_1_2_x86_64.whl", metadata + [("evil.py", "x")]), "python tag cp312", target: .musllinuxX86_64)
    }

    @Test func tagsFollowTheTargetsPolicy() {
        let musl = WheelName("pyzmq-26.4.0-cp313-cp313-musllinux_1_1_x86_64.whl")!
        #expect(musl.incompatibility(with: .musllinuxX86_64) == nil)
        #expect(musl.incompatibility(with: .manylinuxX86_64) != nil)
        #expect(WheelName("tornado-6.6.1-cp311-abi3-manylinux1_x86_64.manylinux_2_28_x86_64.manylinux_2_5_x86_64.whl")!.incompatibility(with: .manylinuxX86_64) == nil)
        #expect(WheelName("x-1-cp313-cp313-musllinux_1_3_aarch64.whl")!.incompatibility(with: .musllinuxAarch64) != nil)
        #expect(WheelName("attrs-25.4.0-py3-none-any.whl")!.incompatibility(with: .musllinuxAarch64) == nil)
    }
}
