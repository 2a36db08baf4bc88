import Foundation
import KrnativeBase

/// A patch that does not apply, with the evidence a person needs to fix it.
public enum PatchError: KrnativeError {
    case unreadable(patch: String, reason: String)
    case countMismatch(patch: String, file: String, find: String, expected: Int, found: Int, nearest: String?)
    case missingFile(patch: String, file: String)
    case hunkFailed(patch: String, file: String, hunk: String, nearest: String?)

    public var description: String {
        switch self {
        case .unreadable(let patch, let reason):
            return "cannot read the patch \(patch): \(reason)"
        case .countMismatch(let patch, let file, let find, let expected, let found, let nearest):
            var text = "patch \(patch) does not apply to \(file): expected \(expected) occurrence(s) of\n    \(find)\nfound \(found)."
            if let nearest { text += "\nNearest line: \(nearest)" }
            return text + "\nThe source changed: update the edit's find/replace/count, or narrow the patch's version range."
        case .missingFile(let patch, let file):
            return "patch \(patch) edits \(file), which the source does not have"
        case .hunkFailed(let patch, let file, let hunk, let nearest):
            return "patch \(patch): hunk \(hunk) does not apply to \(file) (no fuzz is allowed)"
                + (nearest.map { "\nNearest line: \($0)" } ?? "")
        }
    }
    public var exitCode: Int32 { ExitStatus.patch }
}

/// One edit of a structured patch: `find` must occur exactly `count` times in `file`.
public struct PatchEdit: Codable, Sendable, Equatable {
    public var file: String
    public var find: String
    public var replace: String
    public var count: Int

    public init(file: String, find: String, replace: String, count: Int = 1) {
        self.file = file
        self.find = find
        self.replace = replace
        self.count = count
    }
}

/// A patch file under `patches/<component>/`: structured (`*.json`) or a unified diff (`*.patch`, `*.diff`).
public struct SourcePatch: Sendable, Equatable {
    public enum Body: Sendable, Equatable {
        case edits([PatchEdit])
        case unifiedDiff(String)
    }
    /// Path as given (for messages).
    public var path: String
    /// `<component>/<file>`: what the manifest records, the same wherever the patches directory is.
    public var name: String
    public var sha256: SHA256Digest
    public var description: String
    /// Versions the patch applies to: at least `minVersion`, below `belowVersion` (either optional).
    public var minVersion: String?
    public var belowVersion: String?
    public var body: Body

    private struct StructuredFile: Codable {
        var format: Int
        var description: String
        var minVersion: String?
        var belowVersion: String?
        var edits: [PatchEdit]
    }

    /// Edits a recipe carries for one of its steps (`BuildStep.edits`), applied and reported as a
    /// patch file's are, named `recipe:<step>`; they are in the step's key with its commands.
    public static func recipeEdits(_ edits: [PatchEdit], step: String) -> SourcePatch {
        let name = "recipe:" + step
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys  // the same bytes in every process: the digest is in the step's key
        let digest = SHA256Digest.of((try? encoder.encode(edits)) ?? Data())
        return SourcePatch(path: name, name: name, sha256: digest, description: "the recipe's edits of \(step)", body: .edits(edits))
    }

    /// Reads one patch file.
    public static func load(_ path: String) throws(PatchError) -> SourcePatch {
        guard let data = (try? FileSystem.readRegularFile(path)) else {
            throw .unreadable(patch: path, reason: "no such file")
        }
        let digest = SHA256Digest.of(data)
        if path.hasSuffix(".json") {
            let file: StructuredFile
            do { file = try DuplicateJSONKey.decode(StructuredFile.self, from: data) } catch {
                throw .unreadable(patch: path, reason: "\(error)")
            }
            guard file.format == 1 else { throw .unreadable(patch: path, reason: "format \(file.format); this krnative reads 1") }
            guard !file.edits.isEmpty, file.edits.allSatisfy({ $0.count > 0 && !$0.find.isEmpty }) else {
                throw .unreadable(patch: path, reason: "every edit needs a non-empty find and a count of at least 1")
            }
            return SourcePatch(
                path: path, name: path, sha256: digest, description: file.description, minVersion: file.minVersion,
                belowVersion: file.belowVersion, body: .edits(file.edits))
        }
        let text = String(decoding: data, as: UTF8.self)
        return SourcePatch(path: path, name: path, sha256: digest, description: "", body: .unifiedDiff(text))
    }

    /// The patches of `component` in `directory/<component>/`, in file-name order.
    public static func series(for component: String, in directory: String) throws(PatchError) -> [SourcePatch] {
        let folder = directory + "/" + component
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [])
            .filter { $0.hasSuffix(".json") || $0.hasSuffix(".patch") || $0.hasSuffix(".diff") }.sorted()
        var patches: [SourcePatch] = []
        for name in names {
            var patch = try load(folder + "/" + name)
            patch.name = component + "/" + name
            patches.append(patch)
        }
        return patches
    }

    /// What applying this patch does (files and edits), for the manifest; the same whether it is
    /// applied now or its result comes from the step cache.
    public var summary: AppliedPatch {
        switch body {
        case .edits(let edits):
            return AppliedPatch(patch: name, sha256: sha256, files: Array(Set(edits.map(\.file))).sorted(), edits: edits.count)
        case .unifiedDiff(let text):
            let files = (try? UnifiedDiff.parse(text, patch: path)) ?? []
            return AppliedPatch(patch: name, sha256: sha256, files: files.map(\.file).sorted(), edits: files.reduce(0) { $0 + $1.hunks.count })
        }
    }

    /// Whether `version` is in the patch's range.
    public func applies(to version: String) -> Bool {
        if let minVersion, Version.compare(version, minVersion) == .orderedAscending { return false }
        if let belowVersion, Version.compare(version, belowVersion) != .orderedAscending { return false }
        return true
    }
}

/// Dotted numeric versions ("4.3.3", "1.7.7-unknown" compares as 1.7.7).
enum Version {
    static func compare(_ a: String, _ b: String) -> ComparisonResult {
        func parts(_ text: String) -> [Int] {
            text.split(whereSeparator: { !$0.isNumber && $0 != "." }).first.map {
                $0.split(separator: ".").map { Int($0) ?? 0 }
            } ?? []
        }
        let left = parts(a), right = parts(b)
        for index in 0..<max(left.count, right.count) {
            let l = index < left.count ? left[index] : 0, r = index < right.count ? right[index] : 0
            if l != r { return l < r ? .orderedAscending : .orderedDescending }
        }
        return .orderedSame
    }
}

/// What was applied, for the build manifest.
public struct AppliedPatch: Codable, Sendable, Equatable {
    public var patch: String
    public var sha256: SHA256Digest
    public var files: [String]
    public var edits: Int
}
