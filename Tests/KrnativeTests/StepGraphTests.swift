import Foundation
import KrnativeBase
import Testing

/// Issue #23 item 3: a recipe's steps form a graph. Each step names the steps it needs; its key
/// hashes theirs only, it sees their results and nothing else, its result is what it added, and
/// steps that do not need one another compile at the same time. Through the real binary and
/// sandbox, with shell steps (nothing compiles).
@Suite("Steps as a graph, through the real binary", .timeLimit(.minutes(60)), .tags(.process, .namespaces), .endToEnd, .serialized, .needsNamespaces)
struct StepGraphTests {
    var target: Target { HostPlatform.current.arch == .x86_64 ? .manylinuxX86_64 : .manylinuxAarch64 }
    var arch: String { target.arch.rawValue }

    /// `a` and `b` need nothing, `c` needs `a`; each writes what its stage held when it began
    /// (`<step>-saw.txt`) and a file of its own. `a` takes two seconds, so `b` begins before it ends.
    static func recipe(a: String = "", b: String = "", c: String = "") -> String {
        func step(_ name: String, _ component: String, needs: [String], _ extra: String) -> String {
            let script = "find {stage} -type f | sort > saw && cp saw {stage}/\(name)-saw.txt && \(extra)"
            let needed = needs.map { "\"\($0)\"" }.joined(separator: ", ")
            return #"{ "component": "\#(component)", "directory": "\#(name)", "needs": [\#(needed)], "commands": [["sh", "-c", "\#(script)"]] }"#
        }
        return """
            {
              "about": "a graph of three shell steps", "seed": "graph v1", "triple": "{arch}-linux-musl",
              "outputs": [{ "file": "b-saw.{arch}.txt", "from": "b-saw.txt" }, { "file": "c-saw.{arch}.txt", "from": "c-saw.txt" }],
              "steps": [
                \(step("a", "zlib", needs: [], "mkdir -p {stage}/lib && echo a > {stage}/lib/a.txt && sleep 2\(a)")),
                \(step("b", "json-c", needs: [], "echo b > {stage}/b.txt\(b)")),
                \(step("c", "libuv", needs: ["a"], "echo c > {stage}/c.txt\(c)"))
              ]
            }
            """
    }

    func build(_ inputs: ShellRecipeInputs, recipes: String, out: String) -> ChildProcess.Result {
        krnative(
            ["build-recipe", "graph", "--target", target.rawValue, "--lock", inputs.lock, "--store", inputs.store, "--out", out, "--patches",
             inputs.patches, "--jobs", "1", "--recipes", recipes])
    }

    func inputs(_ work: TemporaryDirectory) throws -> ShellRecipeInputs {
        let inputs = try ShellRecipeInputs(work)
        try inputs.addTtydSources()
        try inputs.writeLock()
        return inputs
    }

    /// Before: the steps were a chain — `c` saw `b`'s files, its key hashed `b`'s, and a new `b`
    /// compiled `c` again (as a new zlib compiled SQLite). Now `b` sees nothing, `c` sees `a`'s
    /// file only, `b` begins while `a` runs, each step's cached result holds only what it added,
    /// the install tree holds all three; and a new `b` compiles `b` alone.
    @Test func aStepSeesAndIsKeyedByWhatItNeedsOnly() throws {
        let work = TemporaryDirectory("krnative-graph")
        _ = work.file("recipes/graph.json", Self.recipe())
        let inputs = try inputs(work)
        let first = build(inputs, recipes: work.path + "/recipes", out: work.path + "/out")
        try #require(first.succeeded, "\(first.stderr)")
        #expect(try String(contentsOfFile: work.path + "/out/b-saw.\(arch).txt", encoding: .utf8) == "")
        #expect(try String(contentsOfFile: work.path + "/out/c-saw.\(arch).txt", encoding: .utf8) == "/build/stage/a-saw.txt\n/build/stage/lib/a.txt\n")
        let lines = first.stderr.split(separator: "\n").map(String.init)
        let bBegins = lines.firstIndex { $0.contains("[2/3] b 1.0: building") }
        let aEnds = lines.firstIndex { $0.contains("[1/3] a 1.0: built in") }
        let cBegins = lines.firstIndex { $0.contains("[3/3] c 1.50.0: building") }
        #expect(bBegins != nil && aEnds != nil && cBegins != nil && bBegins! < aEnds! && aEnds! < cBegins!, "\(first.stderr)")

        let report = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: work.path + "/out/graph.\(arch).json"))) as! [String: Any]
        let steps = (report["outcome"] as! [String: Any])["steps"] as! [[String: Any]]
        var results: [String: [String]] = [:]
        for step in steps {
            let listing = treeListing(inputs.store + "/steps/" + (step["key"] as! String))
            results[step["component"] as! String] = listing.filter { $0.value.hasPrefix("file") }.map(\.key).sorted()
        }
        #expect(results == ["a": ["a-saw.txt", "lib/a.txt"], "b": ["b-saw.txt", "b.txt"], "c": ["c-saw.txt", "c.txt"]], "\(results)")

        try inputs.replaceSource("json-c", files: ["another": "json-c\n"])
        try inputs.writeLock()
        let again = build(inputs, recipes: work.path + "/recipes", out: work.path + "/out-again")
        try #require(again.succeeded, "\(again.stderr)")
        #expect(again.stderr.contains("[2/3] b 1.0: building"), "\(again.stderr)")
        #expect(again.stderr.contains("[1/3] a 1.0: cached") && again.stderr.contains("[3/3] c 1.50.0: cached"), "\(again.stderr)")
    }

    /// Two steps that do not need one another may not install the same file (the tree would
    /// depend on which came last), and a step may not remove what a step it needs installed
    /// (its result could not say so): both stop the build, naming the steps and the path.
    @Test func collidingAndRemovingStepsAreRefused() throws {
        let work = TemporaryDirectory("krnative-graph")
        let inputs = try inputs(work)
        _ = work.file("collide/graph.json", Self.recipe(b: " && mkdir -p {stage}/lib && echo b > {stage}/lib/a.txt"))
        let collide = build(inputs, recipes: work.path + "/collide", out: work.path + "/out")
        #expect(collide.termination == .exited(ExitStatus.process), "\(collide.stderr)")
        #expect(collide.stderr.contains("the a and b steps both installed lib/a.txt, and neither needs the other"), "\(collide.stderr)")
        #expect(!FileSystem.exists(work.path + "/out/c-saw.\(arch).txt"))

        _ = work.file("remove/graph.json", Self.recipe(c: " && rm {stage}/lib/a.txt"))
        let remove = build(inputs, recipes: work.path + "/remove", out: work.path + "/out")
        #expect(remove.termination == .exited(ExitStatus.process), "\(remove.stderr)")
        #expect(remove.stderr.contains("the c step removed ") && remove.stderr.contains("/stage/lib/a.txt, which a step it needs installed"), "\(remove.stderr)")
        #expect(!FileSystem.exists(work.path + "/out/c-saw.\(arch).txt"))
    }
}
