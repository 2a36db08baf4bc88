import Foundation
import KrnativeBase
import Testing

/// `krnative build-recipe NAME`: any recipe under `recipes/` that names its outputs, through the
/// real binary and sandbox, with stand-in sources whose build scripts are shell.
@Suite("build-recipe: any recipe, through the real binary", .timeLimit(.minutes(60)), .tags(.process, .namespaces), .endToEnd, .serialized, .needsNamespaces)
struct GenericRecipeBuildTests {
    var target: Target { HostPlatform.current.arch == .x86_64 ? .manylinuxX86_64 : .manylinuxAarch64 }

    func buildRecipe(_ name: String, _ inputs: ShellRecipeInputs, out: String, _ extra: [String] = []) -> ChildProcess.Result {
        krnative(
            ["build-recipe", name, "--target", target.rawValue, "--lock", inputs.lock, "--store", inputs.store, "--out", out, "--patches", inputs.patches,
             "--jobs", "1"] + extra)
    }

    /// ttyd's recipe run by the generic runner leaves the binary `build-ttyd` leaves, from the
    /// same cached steps (the keys are the recipe's, whoever runs it).
    @Test func ttydsRecipeGivesTheSameBinaryAsBuildTtyd() throws {
        let work = TemporaryDirectory("krnative-recipe")
        let inputs = try ShellRecipeInputs(work)
        try inputs.addTtydSources()
        try inputs.writeLock()
        let generic = buildRecipe("ttyd", inputs, out: work.path + "/generic")
        try #require(generic.succeeded, "\(generic.stderr)")
        let name = "ttyd_linux.\(target.arch.rawValue).bin"
        #expect(try String(contentsOfFile: work.path + "/generic/" + name, encoding: .utf8) == "not really ttyd\n")
        #expect(FileSystem.exists(work.path + "/generic/ttyd.\(target.arch.rawValue).json"))
        let specific = krnative(
            ["build-ttyd", "--target", target.rawValue, "--lock", inputs.lock, "--store", inputs.store, "--out", work.path + "/specific",
             "--patches", inputs.patches, "--jobs", "1"])
        try #require(specific.succeeded, "\(specific.stderr)")
        #expect(!specific.stderr.contains("building for"), "build-ttyd compiled what build-recipe ttyd had: \(specific.stderr)")
        #expect(try SHA256Digest.of(fileAt: work.path + "/specific/" + name).digest == SHA256Digest.of(fileAt: work.path + "/generic/" + name).digest)
    }

    /// A component krnative has no code for: a recipe file in `--recipes`, its source in the lock.
    /// A recipe that names no outputs is refused, naming the file and what to add.
    @Test func aNewRecipeFileBuildsWithNoCode() throws {
        let work = TemporaryDirectory("krnative-recipe")
        let inputs = try ShellRecipeInputs(work)
        try inputs.addTtydSources()
        try inputs.writeLock()
        _ = work.file("recipes/hello.json", """
            {
              "about": "a greeting, from zlib's stand-in source", "seed": "hello v1", "triple": "{arch}-linux-musl",
              "outputs": [{ "file": "hello.{arch}.bin", "from": "bin/hello" }],
              "steps": [{ "component": "zlib", "commands": [["sh", "-c", "mkdir -p {stage}/bin && printf 'hello from {arch}\\\\n' > {stage}/bin/hello"]] }]
            }
            """)
        let built = buildRecipe("hello", inputs, out: work.path + "/out", ["--recipes", work.path + "/recipes"])
        try #require(built.succeeded, "\(built.stderr)")
        #expect(try String(contentsOfFile: work.path + "/out/hello.\(target.arch.rawValue).bin", encoding: .utf8) == "hello from \(target.arch.rawValue)\n")
        #expect(built.stdout.contains("hello.\(target.arch.rawValue).bin"), "\(built.stdout)")

        _ = work.file("recipes/silent.json", #"{ "about": "a", "seed": "s", "steps": [{ "component": "zlib", "commands": [["true"]] }] }"#)
        let silent = buildRecipe("silent", inputs, out: work.path + "/silent", ["--recipes", work.path + "/recipes"])
        #expect(silent.termination == .exited(ExitStatus.usage), "\(silent.stderr)")
        #expect(silent.stderr.contains("recipes/silent.json: outputs: names no file for build-recipe to leave"), "\(silent.stderr)")
    }

    /// A lock outside any project (`--lock elsewhere/krnative.lock.json`, run from elsewhere):
    /// before, its directory's absent `patches/` meant no patches, and ttyd was built without
    /// libwebsockets' edits, silently. Now the patches krnative was built with apply, as its
    /// recipes do; the report lists them.
    @Test func aLockOutsideTheProjectStillGetsKrnativesPatches() throws {
        let work = TemporaryDirectory("krnative-recipe")
        let inputs = try ShellRecipeInputs(work)
        try inputs.addTtydSources()
        try inputs.replaceLibwebsockets(withTextEditedBy: Package.root + "/patches/libwebsockets")
        try inputs.writeLock()
        let elsewhere = work.path + "/elsewhere"
        try FileSystem.createDirectory(elsewhere)
        let arguments = ["build-ttyd", "--target", target.rawValue, "--lock", inputs.lock, "--store", inputs.store, "--out", work.path + "/out", "--jobs", "1"]
        let built = ChildProcess.run(["sh", "-c", "cd \"$0\" && exec \"$@\"", elsewhere, Package.binary] + arguments)
        try #require(built.succeeded, "\(built.stderr)")
        let report = try String(contentsOfFile: work.path + "/out/ttyd_linux.\(target.arch.rawValue).json", encoding: .utf8)
        #expect(report.contains("libwebsockets/05-static-link.json") && report.contains("libwebsockets/10-ping-pong.json"), "\(report)")
    }

    /// A patch change rebuilds the component it patches and what comes after it, nothing before
    /// (a step's key covers its patches and the steps it needs): ttyd's recipe with the real
    /// ping/pong patch, edited, over stand-in sources whose build is shell.
    @Test func aPatchChangeRebuildsItsComponentAndWhatFollowsOnly() throws {
        let work = TemporaryDirectory("krnative-recipe")
        let inputs = try ShellRecipeInputs(work)
        try inputs.addTtydSources()
        let patches = work.path + "/patches"
        try FileManager.default.copyItem(atPath: Package.root + "/patches", toPath: patches)
        try inputs.replaceLibwebsockets(withTextEditedBy: patches + "/libwebsockets")
        try inputs.writeLock()
        func build(_ out: String) throws -> [(component: String, cached: Bool)] {
            let result = krnative(
                ["build-ttyd", "--target", target.rawValue, "--lock", inputs.lock, "--store", inputs.store, "--out", work.path + "/" + out,
                 "--patches", patches, "--jobs", "1", "--json"])
            try #require(result.succeeded, "\(result.stderr)")
            let report = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
            let steps = try #require(report?["steps"] as? [[String: Any]], "\(result.stdout)")
            return steps.map { ($0["component"] as? String ?? "?", $0["cached"] as? Bool ?? false) }
        }
        let first = try build("one")
        #expect(first.map(\.component) == ["zlib", "json-c", "libuv", "mbedtls", "libwebsockets", "ttyd"] && first.allSatisfy { !$0.cached }, "\(first)")
        #expect(try build("two").allSatisfy(\.cached), "nothing changed: nothing is built")
        let pingPong = patches + "/libwebsockets/10-ping-pong.json"
        let text = try String(contentsOfFile: pingPong, encoding: .utf8)
        try #require(text.contains("ping = 20"))
        try text.replacingOccurrences(of: "ping = 20", with: "ping = 21").write(toFile: pingPong, atomically: true, encoding: .utf8)
        let changed = try build("three")
        #expect(changed.filter { !$0.cached }.map(\.component) == ["libwebsockets", "ttyd"], "\(changed)")
    }
}
