import Foundation
import KrnativeBase
import Testing

/// What the help and the README show is what the binary takes: every command has examples, and
/// every command line of the examples and of the README's command list names a real command with
/// options that command accepts.
@Suite("Help and README", .timeLimit(.minutes(60)), .tags(.process), .endToEnd)
struct HelpTests {
    /// Every command and group, the root (`[]`) first, as its words after `krnative`, found
    /// through the help itself.
    static let paths: [[String]] = {
        var found: [[String]] = []
        var pending: [[String]] = [[]]
        while !pending.isEmpty {
            let path = pending.removeFirst()
            found.append(path)
            pending += subcommandNames(help(path)).filter { $0 != "help" }.map { path + [$0] }
        }
        return found
    }()

    /// Every command a user can call (no group), sorted.
    static let commands: [[String]] = paths.filter { !$0.isEmpty && subcommandNames(help($0)).isEmpty }
        .sorted { $0.joined(separator: " ") < $1.joined(separator: " ") }

    /// The examples of a help text, a line continued with `\` joined to the next; the lines of the
    /// block that are neither an example nor its continuation (the help wrapped one) apart.
    static func examples(in help: String) -> (examples: [String], wrapped: [String]) {
        guard let block = help.components(separatedBy: "Examples:\n").dropFirst().first?.components(separatedBy: "\n\n").first else { return ([], []) }
        var (examples, wrapped, continues) = ([String](), [String](), false)
        for line in block.split(separator: "\n").map(String.init) {
            let text = line.trimmingCharacters(in: .whitespaces)
            let part = text.hasSuffix("\\") ? String(text.dropLast()).trimmingCharacters(in: .whitespaces) : text
            if continues {
                examples[examples.count - 1] += " " + part
            } else if line.hasPrefix("  krnative ") {
                examples.append(part)
            } else {
                wrapped.append(line)
            }
            continues = text.hasSuffix("\\")
        }
        return (examples, wrapped)
    }

    static func help(_ path: [String]) -> String { krnative(path + ["--help"]).stdout }

    /// The names under SUBCOMMANDS: in a help text.
    static func subcommandNames(_ help: String) -> [String] {
        guard let section = help.components(separatedBy: "SUBCOMMANDS:\n").dropFirst().first else { return [] }
        return section.split(separator: "\n", omittingEmptySubsequences: false)
            .prefix { !$0.isEmpty && $0.hasPrefix("  ") }
            .filter { !$0.hasPrefix("   ") }  // a wrapped abstract, not a name
            .compactMap { line in line.split(separator: " ").first.map(String.init) }
            .filter { $0.first?.isLetter == true }
    }

    /// A documented command line: the commands it names (`store verify | ls` names two) and its options.
    struct CommandLine: CustomStringConvertible {
        var text: String
        var commands: [[String]]
        var options: [String]
        var description: String { text }

        init(_ text: String) {
            self.text = text
            let words = text.split(separator: "#").first.map { $0.split(separator: " ").map(String.init) } ?? []
            var prefix: [String] = [], alternatives: [String] = [], expectingAlternative = false
            for word in words.dropFirst() {
                if word == "|" {
                    expectingAlternative = true
                } else if word.range(of: "^[a-z][a-z0-9-]*$", options: .regularExpression) != nil {
                    // After a command that has no subcommands, a word is its argument (`build-recipe ttyd`).
                    if expectingAlternative {
                        alternatives.append(word)
                    } else if alternatives.isEmpty && !HelpTests.commands.contains(prefix) {
                        prefix.append(word)
                    } else {
                        break
                    }
                    expectingAlternative = false
                } else {
                    break
                }
            }
            commands = [prefix] + alternatives.map { prefix.dropLast() + [$0] }
            options = words.compactMap { word in
                word.range(of: "--[a-z][a-z0-9-]*|^-[a-z]$", options: .regularExpression).map { String(word[$0]) }
            }
        }
    }

    static func accepts(_ help: String, _ option: String) -> Bool {
        // `--record-volume/--no-record-volume`: a flag and its inversion are listed together.
        help.range(of: "(^|[ ,\\[/])\(option)([ ,=\\]/\n]|$)", options: .regularExpression) != nil
    }

    @Test func everyCommandHasExamplesThatItAccepts() throws {
        #expect(Self.commands.count >= 20, "\(Self.commands)")
        for path in Self.commands {
            let help = Self.help(path)
            let examples = Self.examples(in: help).examples
            #expect(!examples.isEmpty, "`krnative \(path.joined(separator: " ")) --help` shows no example")
            for example in examples.map(CommandLine.init) {
                #expect(example.commands == [path], "example of \(path): \(example)")
                for option in example.options {
                    #expect(Self.accepts(help, option), "example `\(example)`: \(option) is not an option of \(path.joined(separator: " "))")
                }
            }
        }
    }

    /// The README names every Debian package scripts/setup installs.
    @Test func theReadmeNamesEveryPackageSetupInstalls() throws {
        let readme = try String(contentsOfFile: Package.root + "/README.md", encoding: .utf8)
        let setup = try String(contentsOfFile: Package.root + "/scripts/setup", encoding: .utf8)
        let list = try #require(setup.components(separatedBy: "packages=(\n").dropFirst().first?.components(separatedBy: "\n)").first)
        let packages = list.split(separator: "\n").flatMap { line in
            (line.split(separator: "#").first ?? "").split(separator: " ").map(String.init)
        }
        #expect(packages.count >= 20, "\(packages)")
        for package in packages { #expect(readme.contains(package), "the README does not name \(package), which scripts/setup installs") }
    }

    /// The README's command list (the block under "## Commands").
    @Test func theReadmesCommandsAreWhatTheBinaryTakes() throws {
        let readme = try String(contentsOfFile: Package.root + "/README.md", encoding: .utf8)
        let block = try #require(readme.components(separatedBy: "## Commands\n\n```\n").dropFirst().first?.components(separatedBy: "```").first)
        var lines: [String] = []
        for line in block.split(separator: "\n") {
            if line.hasPrefix("krnative ") { lines.append(String(line)) } else if !lines.isEmpty { lines[lines.count - 1] += " " + line }
        }
        #expect(lines.count >= 15)
        var named = Set<[String]>()
        for line in lines.map(CommandLine.init) {
            let helps = line.commands.map { Self.help($0) }
            for (path, help) in zip(line.commands, helps) {
                #expect(help.contains("USAGE: krnative \(path.joined(separator: " "))"), "README `\(line)`: no command \(path)")
                named.insert(path)
            }
            for option in line.options {
                #expect(helps.contains { Self.accepts($0, option) }, "README `\(line)`: \(option) is not an option of \(line.commands)")
            }
        }
        let unnamed = Self.commands.filter { !named.contains($0) }
        #expect(unnamed.isEmpty, "the README's command list leaves out \(unnamed)")
    }
}
