import Foundation
import KrnativeBase
import Patch

/// A recipe as data: `recipes/<name>.json`, the steps of one native build (ttyd's, the runtime's)
/// for any target, read by one generic runner. A new component is a new file, not Swift code.
///
/// The file holds the recipe's `seed` (its name and version in the first step key), `variables`
/// and `lists` (and per-libc ones under `byLibc`), an `environment` every step gets, named
/// `templates` of commands, and its `steps`: each a lock source (`component`), its `commands`
/// (argvs, or `"@template"` for a template's), its own variables, lists and environment, and
/// optionally a `directory`, `edits`, and a `when` (`libc`, or a component's locked `version`
/// `below`/`atLeast` one). In a string `{name}` is a variable — the recipe's, or a build's own:
/// `build`, `stage`, `wrappers`, `toolchain`, `toolchainFile`, `jobs`, `triple`, `arch`,
/// `buildArch`, `libc` —, `{file:path}` the text of a file beside the recipe, and an argument
/// that is exactly `{name...}` a list, spliced. Anything else in braces (find's `{}`) is text, and
/// `{{` is a brace (`${{HOME}` is the shell's `${HOME}`).
/// Unknown fields, variables, lists and templates are errors naming the file and the field.
public struct RecipeFile: Sendable {
    /// `ttyd`, `runtime`: the file's name without `.json`.
    public let name: String
    public let path: String
    let document: Document
    /// The texts `{file:…}` names, read when the recipe is.
    let files: [String: String]

    /// The directory of the recipes this krnative was built with (`recipes/` of its checkout):
    /// what a build reads unless told otherwise (`--recipes`, a project's own `recipes/`).
    public static let builtIn = builtInSibling("recipes")

    /// `name` in the checkout this krnative was built from (`patches`, `recipes`).
    public static func builtInSibling(_ name: String) -> String {
        var directory = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { directory.deleteLastPathComponent() }
        return directory.path + "/" + name
    }

    /// Reads and checks `directory/<name>.json`.
    public static func load(_ name: String, from directory: String) throws(RecipeError) -> RecipeFile {
        let path = directory + "/" + name + ".json"
        guard Scope.isName(name.replacingOccurrences(of: "-", with: "_")) else {
            throw RecipeError(path: path, field: nil, problem: "\(name) is not a recipe's name: letters, digits, - and _, starting with a letter")
        }
        let data: Data
        do { data = try FileSystem.readRegularFile(path, limit: 4 << 20) } catch {
            throw RecipeError(path: path, field: nil, problem: "cannot be read (\(error)); --recipes names the directory of krnative's recipes")
        }
        let document: Document
        do {
            try Schema.check(data, path: path)
            document = try DuplicateJSONKey.decode(Document.self, from: data)
        } catch let error as RecipeError {
            throw error
        } catch let error as DecodingError {
            throw RecipeError(path: path, field: Schema.field(of: error), problem: Schema.problem(of: error))
        } catch {
            throw RecipeError(path: path, field: nil, problem: "\(error)")
        }
        var files: [String: String] = [:]
        for reference in Self.fileReferences(in: String(decoding: data, as: UTF8.self)) {
            guard !reference.hasPrefix("/"), !reference.split(separator: "/").contains(".."), !reference.isEmpty else {
                throw RecipeError(path: path, field: nil, problem: "{file:\(reference)} leaves the recipes directory; name a file beside the recipe")
            }
            do { files[reference] = String(decoding: try FileSystem.readRegularFile(directory + "/" + reference), as: UTF8.self) } catch {
                throw RecipeError(path: path, field: nil, problem: "{file:\(reference)}: \(error)")
            }
        }
        let recipe = RecipeFile(name: name, path: path, document: document, files: files)
        try recipe.checkReferences()
        return recipe
    }

    /// The toolchain's target triple for `target`: the recipe's `triple`, else `{arch}-linux-musl`.
    public func triple(for target: Target) throws(RecipeError) -> String {
        let context = Context(layout: .sandboxed, target: target, buildArch: .x86_64, triple: "", jobs: 1, versions: [:])
        return try Scope(recipe: self, context: context, step: nil).expand(document.triple ?? "{arch}-linux-musl", at: "triple")
    }

    /// The files a build of the recipe leaves (`outputs`: each a file name and its path in the
    /// install tree), for `context`; none when the recipe names none.
    public func outputs(for context: Context) throws(RecipeError) -> [(file: String, from: String)] {
        let scope = Scope(recipe: self, context: context, step: nil)
        var outputs: [(file: String, from: String)] = []
        for (index, output) in (document.outputs ?? []).enumerated() {
            let file = try scope.expand(output.file, at: "outputs[\(index)].file")
            let from = try scope.expand(output.from, at: "outputs[\(index)].from")
            guard !file.isEmpty, !file.contains("/"), !file.hasPrefix("."),
                !from.hasPrefix("/"), !from.split(separator: "/").contains(".."), !from.isEmpty
            else {
                throw RecipeError(path: path, field: "outputs[\(index)]", problem: "\(file) from \(from): a file name (no /) from a path inside the install tree")
            }
            outputs.append((file, from))
        }
        return outputs
    }

    /// Every `{file:…}` in a recipe's text.
    static func fileReferences(in text: String) -> Set<String> {
        var references: Set<String> = []
        var rest = Substring(text)
        while let start = rest.range(of: "{file:"), let end = rest[start.upperBound...].firstIndex(of: "}") {
            references.insert(String(rest[start.upperBound..<end]))
            rest = rest[rest.index(after: end)...]
        }
        return references
    }

    /// Whether the recipe also compiles for the build machine (`buildMachine`: `build-cc`, …).
    public var compilesForBuildMachine: Bool { document.buildMachine ?? false }

    /// The lock sources the recipe builds, each once, in the order of its steps.
    public var components: [String] {
        var seen: [String] = []
        for step in document.steps where !seen.contains(step.component) { seen.append(step.component) }
        return seen
    }

    /// What a build of the recipe is for: where the steps see things, the target, the machine that
    /// builds, the toolchain's triple, the job count, and the lock's versions of the components.
    public struct Context: Sendable {
        public var layout: BuildLayout
        public var target: Target
        public var buildArch: Architecture
        public var triple: String
        public var jobs: Int
        public var versions: [String: String]

        public init(layout: BuildLayout, target: Target, buildArch: Architecture, triple: String, jobs: Int, versions: [String: String]) {
            self.layout = layout
            self.target = target
            self.buildArch = buildArch
            self.triple = triple
            self.jobs = jobs
            self.versions = versions
        }

        var variables: [String: String] {
            [
                "build": layout.build, "stage": layout.stage, "wrappers": layout.wrappers, "toolchain": layout.toolchain,
                "toolchainFile": layout.cmakeToolchainFile, "jobs": String(jobs), "triple": triple, "arch": target.arch.rawValue,
                "buildArch": buildArch.rawValue, "libc": target.libc.rawValue,
            ]
        }
    }

    /// The recipe's steps for `context`.
    public func recipe(for context: Context) throws(RecipeError) -> RenderedRecipe {
        var steps: [BuildStep] = []
        for (index, step) in document.steps.enumerated() {
            guard try holds(step.when, context, at: "steps[\(index)].when") else { continue }
            steps.append(try render(step, at: "steps[\(index)]", context))
        }
        var names: Set<String> = []
        for (index, step) in steps.enumerated() {
            guard names.insert(step.name).inserted else {
                throw RecipeError(path: path, field: "steps", problem: "two steps named \(step.name) for \(context.target.rawValue); a step's `directory` tells them apart")
            }
            // A step needs steps before it: so the recipe's order is an order the graph allows.
            for need in step.needs ?? [] where !steps[..<index].contains(where: { $0.name == need }) {
                let known = steps[..<index].map(\.name).joined(separator: ", ")
                throw RecipeError(
                    path: path, field: "steps (\(step.name)).needs",
                    problem: "\(need) is no step before \(step.name) for \(context.target.rawValue) (the steps before it: \(known.isEmpty ? "none" : known))")
            }
        }
        return RenderedRecipe(seed: document.seed, steps: steps)
    }

    func render(_ step: Document.Step, at field: String, _ context: Context) throws(RecipeError) -> BuildStep {
        let scope = Scope(recipe: self, context: context, step: step)
        var commands: [[String]] = []
        for (index, item) in step.commands.enumerated() {
            for argv in try scope.commands(item, at: "\(field).commands[\(index)]") {
                commands.append(try scope.arguments(argv, at: "\(field).commands[\(index)]"))
            }
        }
        var environment = step.ownEnvironment == true ? [:] : document.environment ?? [:]
        environment.merge(step.environment ?? [:]) { $1 }
        for name in step.dropEnvironment ?? [] { environment[name] = nil }
        var expanded: [String: String] = [:]
        for (name, value) in environment { expanded[name] = try scope.expand(value, at: "\(field).environment.\(name)") }
        var edits: [PatchEdit]? = nil
        if let listed = step.edits {
            edits = []
            for (index, edit) in listed.enumerated() {
                guard try holds(edit.when, context, at: "\(field).edits[\(index)].when") else { continue }
                edits!.append(PatchEdit(file: edit.file, find: edit.find, replace: edit.replace, count: edit.count ?? 1))
            }
        }
        return BuildStep(
            component: step.component, commands: commands, environment: expanded,
            adaptation: try step.adaptation.map { text throws(RecipeError) in try scope.expand(text, at: "\(field).adaptation") },
            directory: step.directory, edits: edits, forBuildMachine: step.forBuildMachine, needs: step.needs)
    }

    /// Whether `condition` holds for `context` (no condition always does).
    func holds(_ condition: Document.Condition?, _ context: Context, at field: String) throws(RecipeError) -> Bool {
        guard let condition else { return true }
        if let libc = condition.libc, libc != context.target.libc { return false }
        if let version = condition.version {
            guard let locked = context.versions[version.of] ?? document.defaultVersions?[version.of] else {
                throw RecipeError(path: path, field: field + ".version", problem: "no version of \(version.of): the lock has none and defaultVersions names none")
            }
            if let below = version.below, !(Self.compare(locked, below) < 0) { return false }
            if let atLeast = version.atLeast, Self.compare(locked, atLeast) < 0 { return false }
        }
        return true
    }

    /// -1, 0 or 1 as dotted version `a` is below, at or above `b`, number by number (`1.44.2` < `1.45`).
    static func compare(_ a: String, _ b: String) -> Int {
        let numbers = { (text: String) in text.split { !$0.isNumber }.map { Int($0) ?? 0 } }
        let (x, y) = (numbers(a), numbers(b))
        for index in 0..<max(x.count, y.count) {
            let (p, q) = (index < x.count ? x[index] : 0, index < y.count ? y[index] : 0)
            if p != q { return p < q ? -1 : 1 }
        }
        return 0
    }

    /// Every variable, list and template a step names exists, for every libc: a misspelling is
    /// found when the recipe is read, not when the one target that uses the step is built.
    func checkReferences() throws(RecipeError) {
        for target in [Target.manylinuxX86_64, .musllinuxX86_64] {
            let context = Context(layout: .sandboxed, target: target, buildArch: .x86_64, triple: "check", jobs: 1, versions: [:])
            for (index, step) in document.steps.enumerated() {
                _ = try render(step, at: "steps[\(index)]", context)
            }
        }
    }
}

/// A recipe's steps for one build, as the step runner runs them.
public struct RenderedRecipe: Recipe {
    public var seed: String
    public var steps: [BuildStep]
}

/// A recipe file that cannot be used: the file, the field, what is wrong.
public struct RecipeError: KrnativeError, Equatable {
    public var path: String
    public var field: String?
    public var problem: String
    public var description: String { "recipe \(path)" + (field.map { ": \($0)" } ?? "") + ": " + problem }
    public var exitCode: Int32 { ExitStatus.usage }
}

extension RecipeFile {
    /// What the file holds, as read.
    struct Document: Decodable {
        var about: String
        var seed: String
        var defaultVersions: [String: String]?
        var variables: [String: String]?
        var lists: [String: [String]]?
        var byLibc: [String: Values]?
        var environment: [String: String]?
        var templates: [String: [Command]]?
        var steps: [Step]
        /// The toolchain's triple (default `{arch}-linux-musl`), for a recipe `build-recipe` runs.
        var triple: String?
        /// Whether the recipe also compiles for the build machine (`{wrappers}/build-cc`, …), as
        /// a cross build of ncurses does for the table generators it runs.
        var buildMachine: Bool?
        /// What a `build-recipe` build leaves in its output directory.
        var outputs: [Output]?

        struct Output: Decodable {
            var file: String
            var from: String
        }

        struct Values: Decodable {
            var variables: [String: String]?
            var lists: [String: [String]]?
        }

        /// An argv, or `@name`: the commands of template `name`.
        enum Command: Decodable {
            case argv([String])
            case template(String)

            init(from decoder: any Decoder) throws {
                let container = try decoder.singleValueContainer()
                if let name = try? container.decode(String.self) {
                    guard name.hasPrefix("@") else {
                        throw DecodingError.dataCorruptedError(in: container, debugDescription: "a command is an argv (a list of strings) or \"@template\"")
                    }
                    self = .template(String(name.dropFirst()))
                } else {
                    self = .argv(try container.decode([String].self))
                }
            }
        }

        struct Condition: Decodable {
            var libc: Target.Libc?
            var version: Version?
            struct Version: Decodable {
                var of: String
                var below: String?
                var atLeast: String?
            }
        }

        struct Edit: Decodable {
            var when: Condition?
            var file: String
            var find: String
            var replace: String
            var count: Int?
        }

        struct Step: Decodable {
            var component: String
            var directory: String?
            var when: Condition?
            var commands: [Command]
            var variables: [String: String]?
            var lists: [String: [String]]?
            var environment: [String: String]?
            var ownEnvironment: Bool?
            var dropEnvironment: [String]?
            var edits: [Edit]?
            var adaptation: String?
            var forBuildMachine: Bool?
            var needs: [String]?
        }
    }

    /// The names a step sees: its own, then its libc's, then the recipe's, then the build's.
    struct Scope {
        let recipe: RecipeFile
        let variables: [String: String]
        let lists: [String: [String]]

        init(recipe: RecipeFile, context: Context, step: Document.Step?) {
            let document = recipe.document
            let libc = document.byLibc?[context.target.libc.rawValue]
            self.recipe = recipe
            variables = context.variables.merging(document.variables ?? [:]) { $1 }.merging(libc?.variables ?? [:]) { $1 }
                .merging(step?.variables ?? [:]) { $1 }
            lists = (document.lists ?? [:]).merging(libc?.lists ?? [:]) { $1 }.merging(step?.lists ?? [:]) { $1 }
        }

        func error(_ field: String, _ problem: String) -> RecipeError { RecipeError(path: recipe.path, field: field, problem: problem) }

        /// The argvs `command` stands for: itself, or its template's commands (templates may use templates).
        func commands(_ command: Document.Command, at field: String, depth: Int = 0) throws(RecipeError) -> [[String]] {
            switch command {
            case .argv(let argv): return [argv]
            case .template(let name):
                guard let template = recipe.document.templates?[name] else {
                    throw error(field, "@\(name) names no template (the templates: \(recipe.document.templates.map { $0.keys.sorted().joined(separator: ", ") } ?? "none"))")
                }
                guard depth < 8 else { throw error(field, "@\(name): templates use each other in a circle") }
                var argvs: [[String]] = []
                for item in template { argvs += try commands(item, at: field, depth: depth + 1) }
                return argvs
            }
        }

        /// `argv` with its variables expanded and its `{list...}` arguments spliced.
        func arguments(_ argv: [String], at field: String) throws(RecipeError) -> [String] {
            var result: [String] = []
            for argument in argv {
                if argument.hasPrefix("{"), argument.hasSuffix("...}") {
                    let name = String(argument.dropFirst().dropLast(4))
                    guard let list = lists[name] else {
                        throw error(field, "\(argument) names no list (the lists here: \(lists.keys.sorted().joined(separator: ", ")))")
                    }
                    for item in list { result.append(try expand(item, at: field)) }
                } else {
                    result.append(try expand(argument, at: field))
                }
            }
            return result
        }

        /// `text` with each `{name}` replaced by the variable's expanded value and each `{file:path}` by the file's text.
        func expand(_ text: String, at field: String, depth: Int = 0) throws(RecipeError) -> String {
            guard depth < 16 else { throw error(field, "variables that name each other in a circle: \(text)") }
            var result = ""
            var rest = Substring(text)
            while let open = rest.firstIndex(of: "{") {
                result += rest[..<open]
                let next = rest.index(after: open)
                if next < rest.endIndex, rest[next] == "{" {  // `{{`: a brace, for text that means one (`${{HOME}`)
                    result += "{"
                    rest = rest[rest.index(after: next)...]
                    continue
                }
                guard let close = rest[open...].firstIndex(of: "}") else {
                    result += rest[open...]
                    return result
                }
                let name = String(rest[next..<close])
                if name.hasPrefix("file:") {
                    guard let file = recipe.files[String(name.dropFirst(5))] else { throw error(field, "{\(name)} was not read with the recipe") }
                    result += Self.withoutFinalNewline(file)
                } else if Self.isName(name) {
                    guard let value = variables[name] else {
                        throw error(field, "{\(name)} names no variable (the variables here: \(variables.keys.sorted().joined(separator: ", ")))")
                    }
                    result += try expand(value, at: field, depth: depth + 1)
                } else if name.hasSuffix("...") {
                    throw error(field, "{\(name)} splices a list only as a whole argument of a command")
                } else {
                    result += rest[open...close]
                }
                rest = rest[rest.index(after: close)...]
            }
            return result + rest
        }

        static func isName(_ text: String) -> Bool {
            guard let first = text.unicodeScalars.first, first.properties.isAlphabetic, first.isASCII else { return false }
            return text.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "_") }
        }

        static func withoutFinalNewline(_ text: String) -> String { text.hasSuffix("\n") ? String(text.dropLast()) : text }
    }

    /// The fields each level of a recipe file may have: any other is refused, naming it.
    enum Schema {
        static let top = [
            "about", "seed", "defaultVersions", "variables", "lists", "byLibc", "environment", "templates", "steps", "triple", "buildMachine", "outputs",
        ]
        static let output = ["file", "from"]
        static let values = ["variables", "lists"]
        static let step = [
            "component", "directory", "when", "commands", "variables", "lists", "environment", "ownEnvironment", "dropEnvironment", "edits", "adaptation",
            "forBuildMachine", "needs",
        ]
        static let condition = ["libc", "version"]
        static let version = ["of", "below", "atLeast"]
        static let edit = ["when", "file", "find", "replace", "count"]

        static func check(_ data: Data, path: String) throws {
            guard let top = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw RecipeError(path: path, field: nil, problem: "is not a JSON object")
            }
            try keys(top, allowed: Self.top, at: "", path: path)
            for (index, output) in (top["outputs"] as? [Any] ?? []).enumerated() {
                try keys(output, allowed: Self.output, at: "outputs[\(index)].", path: path)
            }
            for (libc, values) in top["byLibc"] as? [String: Any] ?? [:] {
                guard Target.Libc(rawValue: libc) != nil else {
                    throw RecipeError(path: path, field: "byLibc.\(libc)", problem: "not a libc; byLibc takes gnu and musl")
                }
                try keys(values, allowed: Self.values, at: "byLibc.\(libc).", path: path)
            }
            for (index, step) in (top["steps"] as? [Any] ?? []).enumerated() {
                let at = "steps[\(index)]"
                try keys(step, allowed: Self.step, at: at + ".", path: path)
                let fields = step as? [String: Any] ?? [:]
                try condition(fields["when"], at: at + ".when", path: path)
                for (number, edit) in (fields["edits"] as? [Any] ?? []).enumerated() {
                    try keys(edit, allowed: Self.edit, at: "\(at).edits[\(number)].", path: path)
                    try condition((edit as? [String: Any])?["when"], at: "\(at).edits[\(number)].when", path: path)
                }
            }
        }

        static func condition(_ value: Any?, at field: String, path: String) throws {
            guard let value else { return }
            try keys(value, allowed: Self.condition, at: field + ".", path: path)
            if let version = (value as? [String: Any])?["version"] { try keys(version, allowed: Self.version, at: field + ".version.", path: path) }
        }

        static func keys(_ value: Any, allowed: [String], at prefix: String, path: String) throws {
            guard let object = value as? [String: Any] else { return }  // a wrong type is the decoder's to name
            for key in object.keys.sorted() where !allowed.contains(key) {
                throw RecipeError(path: path, field: prefix + key, problem: "unknown field; the fields here are: \(allowed.joined(separator: ", "))")
            }
        }

        /// `steps[3].commands[0]`: where a decoding error is.
        static func field(of error: DecodingError) -> String? {
            let path: [any CodingKey]
            switch error {
            case .typeMismatch(_, let context), .valueNotFound(_, let context), .dataCorrupted(let context): path = context.codingPath
            case .keyNotFound(let key, let context): path = context.codingPath + [key]
            @unknown default: return nil
            }
            var text = ""
            for key in path {
                if let index = key.intValue { text += "[\(index)]" } else { text += (text.isEmpty ? "" : ".") + key.stringValue }
            }
            return text.isEmpty ? nil : text
        }

        static func problem(of error: DecodingError) -> String {
            switch error {
            case .typeMismatch(let type, _): "not the kind of value expected (\(type))"
            case .valueNotFound: "missing value"
            case .keyNotFound: "missing field"
            case .dataCorrupted(let context): context.debugDescription
            @unknown default: "\(error)"
            }
        }
    }
}
