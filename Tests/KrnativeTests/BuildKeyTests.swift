import Archive
import Build
import Compile
import Fetch
import Foundation
import Inputs
import KrnativeBase
import Lock
import Packaging
import Store
import Testing

/// `krnative build`'s no-op: a build whose output directory holds its outputs has nothing to do,
/// and one that has something to do says why. Small files stand in for the outputs and the krnative
/// executable, so nothing compiles and nothing is fetched.
@Suite("Build key and the no-op", .timeLimit(.minutes(60)))
struct BuildKeyTests {
    let directory = TemporaryDirectory("krnative-build-key")
    let lock = Lockfile(sourceDateEpoch: 0)
    var out: String { directory.path + "/out" }

    init() {
        _ = directory.file("krnative", "the krnative executable")
        _ = directory.file("patches/ttyd/10-version.json", "{}")
        try? FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
    }

    /// A build of manylinux-x86_64 in report mode, as `change` varies its request and `setUp` its settings.
    func build(
        _ change: (inout BuildRequest) -> Void = { _ in }, settings setUp: (inout VolumeBuild.Settings) -> Void = { _ in }
    ) throws -> VolumeBuild {
        var request = BuildRequest(
            choices: .init(target: .manylinuxX86_64, toolchain: .zig, auditMode: .report, packageVersion: "4.1.0", volumeVersion: 15),
            locations: .init(patchesDirectory: directory.path + "/patches"))
        change(&request)
        var settings = VolumeBuild.Settings(outputDirectory: out, entryExecutable: directory.path + "/krnative")
        setUp(&settings)
        return try VolumeBuild(request: request, lock: lock, settings: settings, resolver: InputResolver(store: try Store(root: directory.path + "/store")))
    }

    /// Stand-ins for `build`'s outputs in `out` (a small real volume, the wheel carrying it, the
    /// version files a build writes), and a manifest listing them under `build`'s key: with its
    /// parts, or (`recordParts` false) as a manifest of an older krnative, with another key.
    /// A remote cache on `server` with a store of its own (`store`, under the test directory),
    /// signing what it uploads with the server's key when `upload`; what it says goes to `said`.
    func remoteCache(_ server: WebDAVCache, store: String, upload: Bool = false, said: Collected? = nil) throws -> RemoteCache {
        RemoteCache(
            url: server.url, store: try Store(root: directory.path + "/" + store), signer: upload ? server.signer : nil, trust: server.trust,
            note: { said?.append(Data(($0 + "\n").utf8)) })
    }

    /// Machine A: the stand-in build published (its volume `moreFiles` entries larger) and
    /// uploaded to `server`, with the manifest it is up to date with and its build key.
    func uploadedBuild(to server: WebDAVCache, moreFiles: Int = 0) throws -> (build: VolumeBuild, manifest: BuildManifest, key: SHA256Digest) {
        let a = try build(settings: { $0.remoteCache = try? remoteCache(server, store: "store-a", upload: true) })
        try publish(a, moreFiles: moreFiles)
        guard case .upToDate(let manifest) = try a.upToDate() else { throw UsageError("the stand-in build is not whole") }
        try a.uploadToRemoteCache(manifest)
        return (a, manifest, try #require(manifest.buildKey))
    }

    func publish(_ build: VolumeBuild, recordParts: Bool = true, moreFiles: Int = 0) throws {
        let packed = try packVolume(build, moreFiles: moreFiles)
        let carried = [BuildOutput.ttyd, .volume, .volumeVersion, .pythonVersion, .versions].map(build.name)
        let texts = [build.name(.volumeVersion): "15\n", build.name(.pythonVersion): "3.13\n", build.name(.versions): "static-gnu\n"]
        for name in carried where name != build.name(.volume) { _ = directory.file("out/" + name, texts[name] ?? "stand-in for \(name)") }
        _ = try PluginWheel(target: .manylinuxX86_64, version: "4.1.0", sourceDateEpoch: 0)
            .write(into: out, payload: build.wheelPayload(in: out))
        _ = directory.file("out/" + build.name(.sbom), "stand-in for the SBOM")
        var outputs: [[String: Any]] = []
        for name in build.plan.outputNames.dropLast() {
            let (digest, size) = try SHA256Digest.of(fileAt: out + "/" + name)
            outputs.append(["file": name, "sha256": digest.hex, "size": size])
        }
        let parts = build.plan.keyParts
        var manifest: [String: Any] = [
            "tool": ["name": "krnative", "version": "0"], "target": "manylinux-x86_64", "lockSha256": lock.digest.hex,
            "sourceDateEpoch": 0, "isolation": "namespaces", "packageVersion": "4.1.0", "volumeVersion": 15,
            "inputs": [], "patches": [], "outputs": outputs, "volume": packed,
            "buildKey": (recordParts ? BuildKey.digest(of: parts) : SHA256Digest.of(Data("krnative build key v1".utf8))).hex,
        ]
        if recordParts { manifest["buildKeyParts"] = parts }
        _ = directory.file("out/" + build.plan.outputNames.last!, try JSONSerialization.data(withJSONObject: manifest))
    }

    /// A volume of a few entries (a file, an executable, a symbolic and a hard link, directories,
    /// and `moreFiles` modules of a package) packed into `out`; its manifest listing.
    func packVolume(_ build: VolumeBuild, at path: String? = nil, extra: Bool = false, moreFiles: Int = 0) throws -> [[String: Any]] {
        let tree = TemporaryDirectory("krnative-build-key-volume")
        for index in 0..<moreFiles { _ = tree.file("lib/python3.13/site-packages/package/module_\(index).py", "VALUE = \(index)\n") }
        chmod(tree.file("bin/python3", "#!/bin/sh\necho real\n"), 0o755)
        chmod(tree.file("bin/ttyd", "stand-in for \(build.name(.ttyd))"), 0o755)
        _ = tree.file("lib/python3.13/os.py", "import sys\n")
        link(tree.path + "/lib/python3.13/os.py", tree.path + "/lib/python3.13/os-again.py")
        if extra { chmod(tree.file("bin/backdoor", "#!/bin/sh\n"), 0o755) }
        try FileManager.default.createSymbolicLink(atPath: tree.path + "/bin/python", withDestinationPath: "python3")
        let entries = try DeterministicTarXz(sourceDateEpoch: 0, threads: 1).pack(tree.path, to: path ?? out + "/" + build.name(.volume))
        return entries.map { entry in
            var listed: [String: Any] = ["path": entry.path, "type": entry.kind.rawValue, "mode": String(entry.mode, radix: 8), "size": entry.size]
            if let sha256 = entry.sha256 { listed["sha256"] = sha256.hex }
            if let target = entry.target { listed["target"] = target }
            return listed
        }
    }

    /// A build's plan reads its recipe once: the key's recipe part, the step count and the steps
    /// the recipe build renders all come from that reading, so a recipe edited while the build
    /// runs changes none of them (before the plan, each stage read the file again).
    @Test func aPlanReadsItsRecipesOnceAndItsStepsComeFromThatReading() throws {
        let recipes = TemporaryDirectory("krnative-plan-recipes")
        let original = try FileSystem.readRegularFile(RecipeFile.builtIn + "/ttyd.json")
        try original.write(to: URL(fileURLWithPath: recipes.path + "/ttyd.json"))
        let plan = try build { $0.locations.recipesDirectory = recipes.path }.plan
        #expect(plan.keyParts["recipe ttyd.json"] == "sha256:" + SHA256Digest.of(original).hex)
        #expect(plan.recipes.keys.sorted() == ["ttyd"] && plan.recipeSteps.runtime == 0)

        _ = recipes.file("ttyd.json", "{\"edited\": \"while the build runs\"}")
        var settings = StepRunner.Settings(entryExecutable: directory.path + "/krnative", patchesDirectory: directory.path + "/patches")
        settings.recipesDirectory = recipes.path
        func rendered(_ settings: StepRunner.Settings) throws -> Int {
            try TtydBuild(options: .init(target: .manylinuxX86_64, outputDirectory: out, settings: settings), resolver: InputResolver(store: try Store(root: directory.path + "/store")))
                .recipe(lock: lock, layout: .sandboxed).steps.count
        }
        // Without the plan's reading the edited file is what a build would read, and it is no recipe.
        #expect(throws: RecipeError.self) { try rendered(settings) }
        settings.recipes = plan.recipes
        #expect(try rendered(settings) == plan.recipeSteps.ttyd && plan.recipeSteps.ttyd > 1)
    }

    @Test func theSameBuildIsUpToDate() throws {
        try publish(try build())
        let verdict = try build().upToDate()
        guard case .upToDate(let manifest) = verdict else {
            Issue.record("not up to date: \(verdict.reasons)")
            return
        }
        #expect(manifest.outputs.count == 7)
        #expect(verdict.reasons.isEmpty)
    }

    @Test func anEmptyOutputDirectoryHasNoManifest() throws {
        let verdict = try build().upToDate()
        guard case .noManifest = verdict else {
            Issue.record("\(verdict)")
            return
        }
        #expect(verdict.reasons == ["no manifest in \(out)"])
    }

    @Test func anotherSettingIsNamedWithItsOldAndNewValue() throws {
        try publish(try build())
        let enforcing = try build { $0.auditMode = .enforce }.upToDate()
        #expect(enforcing.reasons == ["the build key differs: audit mode report → enforce"])
        let bumped = try build {
            $0.volumeVersion = 16
            $0.toolchain = .muslCross
        }.upToDate()
        #expect(bumped.reasons == ["the build key differs: toolchain zig → musl-cross, volume version 15 → 16"])
    }

    @Test func changedFilesAreNamedNotTheirHashes() throws {
        try publish(try build())
        _ = directory.file("krnative", "another krnative executable")
        _ = directory.file("patches/ttyd/10-version.json", #"{"edits": []}"#)
        _ = directory.file("patches/ttyd/20-writable.json", "{}")
        #expect(
            try build().upToDate().reasons == [
                "the build key differs: the krnative executable changed, patch ttyd/10-version.json changed, patch ttyd/20-writable.json added"
            ])
        try FileManager.default.removeItem(atPath: directory.path + "/patches/ttyd/10-version.json")
        #expect(
            try build().upToDate().reasons == [
                "the build key differs: the krnative executable changed, patch ttyd/10-version.json removed, patch ttyd/20-writable.json added"
            ])
    }

    @Test func aManifestWithoutPartsSaysItPredatesThem() throws {
        try publish(try build(), recordParts: false)
        #expect(try build().upToDate().reasons == ["the build key differs (the manifest predates recorded key parts)"])
    }

    @Test func aMissingOrAlteredOutputIsNamed() throws {
        let build = try build()
        try publish(build)
        try FileManager.default.removeItem(atPath: out + "/versions.static-gnu.txt")
        // The same size: only the hash tells.
        _ = directory.file("out/ttyd_linux.x86_64.bin", "STAND-IN for ttyd_linux.x86_64.bin")
        #expect(
            try build.upToDate().reasons == [
                "\(out)/ttyd_linux.x86_64.bin does not hash as the manifest says", "\(out)/versions.static-gnu.txt is missing",
            ])
    }

    @Test func aManifestListingOtherOutputsIsNotTrusted() throws {
        let build = try build()
        try publish(build)
        let path = out + "/" + build.plan.outputNames.last!
        var manifest = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        manifest["outputs"] = (manifest["outputs"] as? [[String: Any]])?.filter { $0["file"] as? String != "versions.static-gnu.txt" }
        _ = directory.file("out/" + build.plan.outputNames.last!, try JSONSerialization.data(withJSONObject: manifest))
        #expect(try build.upToDate().reasons == ["the outputs differ from the manifest's list (not listed: versions.static-gnu.txt)"])
    }

    /// `build --json` prints the manifest's keys, so it still reads as a manifest, and why it built.
    @Test func theJSONReportIsTheManifestAndTheReasons() throws {
        let build = try build()
        try publish(build)
        guard case .upToDate(let manifest) = try build.upToDate() else {
            Issue.record("not up to date")
            return
        }
        let data = try JSONEncoder().encode(BuildReport(manifest: manifest, rebuildReasons: ["forced (--force)"]))
        #expect(try JSONDecoder().decode(BuildManifest.self, from: data).buildKey == manifest.buildKey)
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(object["upToDate"] as? Bool == false)
        #expect(object["rebuildReasons"] as? [String] == ["forced (--force)"])
    }

    /// Issue #26: machine B takes a whole build whose manifest is real-size (8,000 volume entries:
    /// over 1 MiB, the most an `/ac/` record may have). Before, the record was the manifest itself:
    /// B found it "larger than expected" and left the cache for the rest of the run. Now the record
    /// names the manifest in `/cas/`. And an oversized answer is a miss for that entry alone: the
    /// same cache, just after one, still gives the build.
    @Test(.enabled(if: Machine.hasExecutable(WebDAVCache.nginx)))
    func aRealSizeBuildComesBackAndAnOversizedEntryIsAMissForItselfAlone() throws {
        let server = try WebDAVCache()
        let said = Collected()
        let (a, manifest, key) = try uploadedBuild(to: server, moreFiles: 8_000)
        #expect((FileSystem.size(of: out + "/" + a.name(.manifest)) ?? 0) > 1 << 20)

        let cacheB = try remoteCache(server, store: "store-b", said: said)
        let otherKey = SHA256Digest.of(Data("another build".utf8))
        try Data(count: 2 << 20).write(to: URL(fileURLWithPath: server.data + "/ac/" + otherKey.hex))
        #expect(cacheB.actionResult(otherKey, what: "another build") == nil)
        #expect(said.text.contains("/ac/\(otherKey.hex) (another build) is larger than the 1048576 bytes it may have"), "\(said.text)")
        let b = try build(settings: {
            $0.outputDirectory = directory.path + "/b"
            $0.remoteCache = cacheB
        })
        try FileManager.default.createDirectory(atPath: directory.path + "/b", withIntermediateDirectories: true)
        #expect(try b.restoreFromRemoteCache()?.buildKey == key, "\(said.text)")
        for file in manifest.outputs.map(\.file) + [a.name(.manifest)] {
            #expect(FileManager.default.contents(atPath: directory.path + "/b/" + file) == FileManager.default.contents(atPath: out + "/" + file), "\(file)")
        }
        #expect(!said.text.contains("going on without it"), "\(said.text)")
    }

    /// A whole build through the remote cache: A uploads its outputs and then its manifest under
    /// the build key; B, with an empty output directory, takes them, each hashed, and is up to
    /// date; an output whose bytes the cache changed, or a manifest of another key, is refused
    /// and leaves nothing in the output directory (the build would run).
    @Test(.enabled(if: Machine.hasExecutable(WebDAVCache.nginx))) func aWholeBuildComesFromTheCacheOrNotAtAll() throws {
        let server = try WebDAVCache()
        let (a, manifest, _) = try uploadedBuild(to: server)
        func machineB(_ label: String) throws -> (VolumeBuild, BuildManifest?) {
            let out = directory.path + "/" + label
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let b = try build(settings: {
                $0.outputDirectory = out
                $0.remoteCache = try? remoteCache(server, store: label + "-store")
            })
            return (b, try b.restoreFromRemoteCache())
        }
        let (b, restored) = try machineB("b")
        #expect(restored?.buildKey == manifest.buildKey)
        guard case .upToDate = try b.upToDate() else { throw UsageError("B is not up to date after the restore") }
        for output in manifest.outputs {
            #expect(FileManager.default.contents(atPath: b.settings.outputDirectory + "/" + output.file) == FileManager.default.contents(atPath: out + "/" + output.file))
        }

        let changed = server.data + "/cas/" + manifest.outputs[0].sha256.hex
        let original = try Data(contentsOf: URL(fileURLWithPath: changed))
        try Data("other bytes".utf8).write(to: URL(fileURLWithPath: changed))
        let (c, refused) = try machineB("c")
        #expect(refused == nil)
        #expect(!FileManager.default.fileExists(atPath: c.settings.outputDirectory + "/" + c.name(.manifest)))
        try original.write(to: URL(fileURLWithPath: changed))

        // A manifest of another key, signed by the trusted key for this one.
        let key = try #require(manifest.buildKey)
        var other = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/" + a.name(.manifest)))) as! [String: Any]
        other["buildKey"] = String(repeating: "0", count: 64)
        try server.serveBuild(manifest: try JSONSerialization.data(withJSONObject: other), key: key)
        let (d, foreign) = try machineB("d")
        #expect(foreign == nil)
        #expect(!FileManager.default.fileExists(atPath: d.settings.outputDirectory + "/" + d.name(.manifest)))
    }
}
