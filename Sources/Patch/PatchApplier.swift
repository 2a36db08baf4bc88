import Foundation
import KrnativeBase

/// Applies a series of patches to a source tree: every patch is checked against the files in
/// memory first, and only when the whole series applies are the files written (docs/design.md §2.5).
public struct PatchApplier: Sendable {
    public init() {}

    /// Applies the patches of `series` that fit `version` to the tree at `root`.
    public func apply(_ series: [SourcePatch], to root: String, version: String) throws(PatchError) -> [AppliedPatch] {
        var contents: [String: String] = [:]
        var applied: [AppliedPatch] = []
        func text(_ file: String, _ patch: SourcePatch) throws(PatchError) -> String {
            if let cached = contents[file] { return cached }
            guard let data = FileManager.default.contents(atPath: root + "/" + file) else {
                throw .missingFile(patch: patch.path, file: file)
            }
            return String(decoding: data, as: UTF8.self)
        }
        for patch in series where patch.applies(to: version) {
            switch patch.body {
            case .edits(let list):
                for edit in list {
                    let current = try text(edit.file, patch)
                    let found = current.components(separatedBy: edit.find).count - 1
                    guard found == edit.count else {
                        throw .countMismatch(
                            patch: patch.path, file: edit.file, find: edit.find, expected: edit.count, found: found,
                            nearest: Self.nearestLine(to: edit.find, in: current))
                    }
                    contents[edit.file] = current.replacingOccurrences(of: edit.find, with: edit.replace)
                }
            case .unifiedDiff(let diff):
                for filePatch in try UnifiedDiff.parse(diff, patch: patch.path) {
                    let current = try text(filePatch.file, patch)
                    contents[filePatch.file] = try filePatch.apply(to: current, patch: patch.path)
                }
            }
            applied.append(patch.summary)
        }
        for (file, text) in contents.sorted(by: { $0.key < $1.key }) {
            let path = root + "/" + file
            let mode = (try? FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int) ?? 0o644
            do { try FileSystem.writeAtomically(Data(text.utf8), to: path, mode: mode_t(mode)) } catch {
                throw .unreadable(patch: series.first?.path ?? "", reason: error.description)
            }
        }
        return applied
    }

    /// The line of `text` most like the first line of `find`, as "N: text".
    static func nearestLine(to find: String, in text: String) -> String? {
        let wanted = find.split(separator: "\n").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        guard !wanted.isEmpty else { return nil }
        let wantedWords = Set(wanted.split(whereSeparator: { !$0.isLetter && !$0.isNumber && $0 != "_" }))
        var best: (score: Int, number: Int, line: Substring)?
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let words = Set(line.split(whereSeparator: { !$0.isLetter && !$0.isNumber && $0 != "_" }))
            let score = wantedWords.intersection(words).count
            if score > 0, score > (best?.score ?? 0) { best = (score, index + 1, line) }
        }
        return best.map { "\($0.number): \($0.line.trimmingCharacters(in: .whitespaces))" }
    }
}

/// A unified diff, applied exactly: every context and removed line must match (no fuzz); a hunk
/// may sit at another line than its header says, as GNU patch allows.
struct UnifiedDiff {
    struct Hunk {
        var header: String
        var oldStart: Int
        var old: [String]
        var new: [String]
    }
    struct FilePatch {
        var file: String
        var hunks: [Hunk]

        func apply(to text: String, patch: String) throws(PatchError) -> String {
            var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            var delta = 0
            for hunk in hunks {
                let expected = max(0, hunk.oldStart - 1 + delta)
                guard let at = Self.locate(hunk.old, in: lines, near: expected) else {
                    throw .hunkFailed(
                        patch: patch, file: file, hunk: hunk.header,
                        nearest: hunk.old.first(where: { !$0.trimmingCharacters(in: .whitespaces).isEmpty }).flatMap {
                            PatchApplier.nearestLine(to: $0, in: text)
                        })
                }
                lines.replaceSubrange(at..<(at + hunk.old.count), with: hunk.new)
                delta += hunk.new.count - hunk.old.count + (at - expected)
            }
            return lines.joined(separator: "\n")
        }

        static func locate(_ old: [String], in lines: [String], near expected: Int) -> Int? {
            func matches(_ at: Int) -> Bool {
                at >= 0 && at + old.count <= lines.count && Array(lines[at..<(at + old.count)]) == old
            }
            for distance in 0...max(lines.count, 1) {
                if matches(expected - distance) { return expected - distance }
                if matches(expected + distance) { return expected + distance }
            }
            return nil
        }
    }

    static func parse(_ diff: String, patch: String) throws(PatchError) -> [FilePatch] {
        var files: [FilePatch] = []
        let lines = diff.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var index = 0
        func stripPrefix(_ path: String) -> String {
            let name = path.split(separator: "\t").first.map(String.init) ?? path
            let parts = name.split(separator: "/", maxSplits: 1)
            return parts.count == 2 && (parts[0] == "a" || parts[0] == "b") ? String(parts[1]) : name
        }
        while index < lines.count {
            let line = lines[index]
            if line.hasPrefix("+++ ") {
                files.append(FilePatch(file: stripPrefix(String(line.dropFirst(4))), hunks: []))
            } else if line.hasPrefix("@@ "), !files.isEmpty {
                let numbers = line.split(separator: " ")
                guard numbers.count >= 3, let oldRange = numbers[1].dropFirst().split(separator: ",").first,
                    let oldStart = Int(oldRange)
                else { throw .unreadable(patch: patch, reason: "bad hunk header '\(line)'") }
                let oldCount = numbers[1].split(separator: ",").dropFirst().first.flatMap { Int($0) } ?? 1
                let newCount = numbers[2].split(separator: ",").dropFirst().first.flatMap { Int($0) } ?? 1
                var hunk = Hunk(header: line, oldStart: oldStart, old: [], new: [])
                index += 1
                while index < lines.count, hunk.old.count < oldCount || hunk.new.count < newCount {
                    let body = lines[index]
                    switch body.first {
                    case " ": hunk.old.append(String(body.dropFirst())); hunk.new.append(String(body.dropFirst()))
                    case "-": hunk.old.append(String(body.dropFirst()))
                    case "+": hunk.new.append(String(body.dropFirst()))
                    case "\\": break
                    case nil: hunk.old.append(""); hunk.new.append("")
                    default: throw .unreadable(patch: patch, reason: "unexpected line in hunk \(line): '\(body)'")
                    }
                    index += 1
                }
                files[files.count - 1].hunks.append(hunk)
                continue
            }
            index += 1
        }
        guard !files.isEmpty else { throw .unreadable(patch: patch, reason: "no file in the diff") }
        return files
    }
}
