import Compile
import Foundation
import KrnativeBase
import Testing

/// Issue #23: the recipes are files under `recipes/`, read by one generic runner.
@Suite("Recipes as data", .timeLimit(.minutes(60)))
struct RecipeFileTests {
    static let layouts = [BuildLayout.sandboxed, BuildLayout(build: "/home/u/work", toolchain: "/home/u/zig", zigCache: "/home/u/work/zig-cache")]

    /// Every step, as the Swift recipes wrote them before they became files: the digest of each
    /// case's seed and steps (commands, environment, edits, directory, adaptation) for both
    /// layouts, every target and build machine, one and two jobs, libuv below and from 1.45.
    /// Equal steps make equal step keys, so the outputs are byte for byte what they were.
    @Test func theRecipesGiveTheStepsTheSwiftRecipesGave() throws {
        let recorded = try JSONDecoder().decode(
            [String: String].self, from: Data(contentsOf: URL(fileURLWithPath: Package.supportDirectory + "/recipe-steps.json")))
        var seen: Set<String> = []
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        func check(_ name: String, _ recipe: RenderedRecipe) throws {
            seen.insert(name)
            // Marked later (it changes the build Python's key, not its commands): all else as the Swift recipes were.
            #expect(recipe.steps.map { $0.forBuildMachine == true } == recipe.steps.indices.map { $0 == 0 && name.hasPrefix("runtime") }, "\(name)")
            let steps = try encoder.encode(recipe.steps.map { step in
                var step = step
                step.forBuildMachine = nil
                step.needs = nil  // the graph (#23 item 3) came later: it changes keys, not commands
                return step
            })
            let digest = SHA256Digest.of(Data(recipe.seed.utf8) + steps)
            #expect(recorded[name] == digest.hex, "\(name): \(String(decoding: steps, as: UTF8.self).prefix(3000))")
        }
        for layout in Self.layouts {
            for target in [Target.musllinuxX86_64, .musllinuxAarch64] {
                for jobs in [1, 2] {
                    for libuv in [nil, "1.44.2", "1.45.0", "1.50.0"] {
                        try check(
                            "ttyd \(target.arch.rawValue) \(layout.build) -j\(jobs) libuv \(libuv ?? "-")",
                            ttydRecipe(layout: layout, triple: target.ttydTriple, jobs: jobs, versions: libuv.map { ["libuv": $0] } ?? [:]))
                    }
                }
            }
            for target in Target.allCases {
                for build in Architecture.allCases {
                    for jobs in [1, 2] {
                        try check(
                            "runtime \(target.rawValue) on \(build.rawValue) \(layout.build) -j\(jobs)",
                            runtimeRecipe(layout: layout, target: target, buildArch: build, jobs: jobs))
                    }
                }
            }
        }
        #expect(seen == Set(recorded.keys))
    }

    /// A recipe of a component krnative has no Swift for: a file, read and rendered by the same runner.
    @Test func aNewComponentIsANewFile() throws {
        let work = TemporaryDirectory()
        _ = work.file("recipes/hello.json", """
            {
              "about": "GNU hello, static", "seed": "hello v1",
              "variables": { "flags": "-Os -ffile-prefix-map={build}=/build" },
              "byLibc": { "musl": { "lists": { "extra": ["--enable-static-link"] } }, "gnu": { "lists": { "extra": [] } } },
              "templates": { "autoconf": [["./configure", "--host={arch}-linux-{libc}", "--prefix={stage}", "{extra...}"], ["make", "-j{jobs}", "install"]] },
              "steps": [
                { "component": "hello", "commands": ["@autoconf"], "environment": { "CC": "{wrappers}/cc", "CFLAGS": "{flags}" }, "adaptation": "static" },
                { "component": "hello", "directory": "hello-docs", "when": { "libc": "gnu" }, "commands": [["make", "-C", "doc", "{}"], ["sh", "-c", "echo ${{HOME} {unclosed"]] }
              ]
            }
            """)
        let file = try RecipeFile.load("hello", from: work.path + "/recipes")
        #expect(file.components == ["hello"])
        #expect(throws: RecipeError.self, "a name is not a path") { try RecipeFile.load("../recipes/hello", from: work.path + "/recipes") }
        let musl = try file.recipe(for: .init(layout: .sandboxed, target: .musllinuxAarch64, buildArch: .x86_64, triple: "t", jobs: 3, versions: [:]))
        #expect(musl.seed == "hello v1")
        #expect(musl.steps.map(\.name) == ["hello"])
        #expect(musl.steps[0].commands == [
            ["./configure", "--host=aarch64-linux-musl", "--prefix=/build/stage", "--enable-static-link"], ["make", "-j3", "install"],
        ])
        #expect(musl.steps[0].environment == ["CC": "/build/wrappers/cc", "CFLAGS": "-Os -ffile-prefix-map=/build=/build"])
        let gnu = try file.recipe(for: .init(layout: .sandboxed, target: .manylinuxX86_64, buildArch: .x86_64, triple: "t", jobs: 1, versions: [:]))
        #expect(gnu.steps.map(\.name) == ["hello", "hello-docs"])
        #expect(gnu.steps[1].commands == [["make", "-C", "doc", "{}"], ["sh", "-c", "echo ${HOME} {unclosed"]], "braces that name nothing are text; {{ is one")
    }

    /// A recipe that cannot be used is refused when it is read, naming the file, the field and
    /// the fix; a step no target of this run uses is checked all the same.
    @Test(arguments: [
        (#""steps": [{ "component": "z", "commands": [["make"]], "comand": [] }]"#, "steps[0].comand", "unknown field"),
        (#""steps": [{ "component": "z", "commands": [["make", "{prefx}"]] }]"#, "steps[0].commands[0]", "{prefx} names no variable"),
        (#""steps": [{ "component": "z", "commands": ["@cmak"] }]"#, "steps[0].commands[0]", "@cmak names no template"),
        (#""steps": [{ "component": "z", "commands": [["make", "{flags...}"]] }]"#, "steps[0].commands[0]", "{flags...} names no list"),
        (#""steps": [{ "component": "z", "commands": ["make"] }]"#, "steps[0].commands[0]", "an argv (a list of strings) or \"@template\""),
        (#""steps": [{ "component": "z", "commands": [["make"]], "when": { "libc": "glibc" } }]"#, "steps[0].when.libc", "glibc"),
        (#""byLibc": { "bionic": {} }, "steps": []"#, "byLibc.bionic", "byLibc takes gnu and musl"),
        (#""steps": [{ "component": "z", "commands": [["sh", "-c", "{file:../../etc/passwd}"]] }]"#, "bad.json", "leaves the recipes directory"),
        (#""steps": [{ "component": "z", "commands": [["sh", "-c", "{file:absent.sh}"]] }]"#, "bad.json", "{file:absent.sh}"),
        (#""steps": [{ "component": "z", "commands": [["make"]], "when": { "libc": "musl" }, "environment": { "X": "{nope}" } }]"#, "steps[0].environment.X", "{nope}"),
        (#""steps": [{ "component": "z", "commands": [["make"]] }], "steps": []"#, "steps", "line"),
        (#""steps": [{ "component": "z", "commands": [["make"]] }, { "component": "z", "commands": [["make"]] }]"#, "steps", "two steps named z"),
        (#""steps": [{ "component": "z", "needs": ["y"], "commands": [["make"]] }, { "component": "y", "commands": [["make"]] }]"#, "steps (z).needs",
         "y is no step before z for musllinux-x86_64 (the steps before it: none)"),
        (#""steps": [{ "component": "z", "needs": "y", "commands": [["make"]] }]"#, "steps[0].needs", "not the kind of value expected (Array"),
    ])
    func aBadRecipeNamesTheFileAndTheField(body: String, field: String, problem: String) throws {
        let work = TemporaryDirectory()
        _ = work.file("recipes/bad.json", #"{ "about": "a", "seed": "s", "# + body + " }")
        do {
            let file = try RecipeFile.load("bad", from: work.path + "/recipes")
            _ = try file.recipe(for: .init(layout: .sandboxed, target: .musllinuxX86_64, buildArch: .x86_64, triple: "t", jobs: 1, versions: [:]))
            Issue.record("accepted: \(body)")
        } catch {
            #expect(error.path == work.path + "/recipes/bad.json")
            #expect(error.description.contains(field) && error.description.contains(problem), "\(error)")
        }
    }
}
