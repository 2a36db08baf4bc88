import Foundation
import KrnativeBase

/// How one path differs between two trees.
public struct Difference: Codable, Sendable, Equatable {
    public enum Change: String, Codable, Sendable { case added, removed, changed }
    public struct Field: Codable, Sendable, Equatable {
        public var name: String
        public var left: String
        public var right: String
    }
    public var path: String
    public var change: Change
    /// For `changed`: type, mode, size, sha256, link target, each with both values.
    public var fields: [Field] = []
    /// For two ELF files: the sections whose bytes differ, or that only one of them has.
    public var sections: [String]?
    /// For two archives that differ: how their contents differ.
    public var inner: [Difference]?
}

/// `krnative diff A B`: two volume directories, two output directories, two tar archives or two
/// wheels, compared entry by entry.
public struct DiffReport: Codable, Sendable {
    public var left: String
    public var right: String
    public let differences: [Difference]
    /// No differences (kept as a field so the JSON says it).
    public private(set) var identical: Bool

    public init(left: String, right: String, differences: [Difference]) {
        self.left = left
        self.right = right
        self.differences = differences
        identical = differences.isEmpty
    }

    /// `only`: the top-level paths to compare (a build's outputs in a directory that holds more).
    public static func compare(_ left: String, _ right: String, only: Set<String>? = nil) throws -> DiffReport {
        // A wheel holds the volume, not its tree: against a volume every entry would differ.
        let (leftIsWheel, rightIsWheel) = (isWheel(left), isWheel(right))
        if leftIsWheel != rightIsWheel {
            func kind(_ isWheel: Bool) -> String { isWheel ? "a wheel" : "a volume or output directory" }
            throw UsageError(
                "\(left) is \(kind(leftIsWheel)) and \(right) \(kind(rightIsWheel)): diff compares two of one kind "
                    + "(two wheels; two volumes, each a directory or a tar archive; two output directories)")
        }
        var (a, b) = (try Listing.of(left), try Listing.of(right))
        if let only {
            a.files = a.files.filter { only.contains($0.key) }
            b.files = b.files.filter { only.contains($0.key) }
        }
        var differences = compare(a, b)
        if a.source == .directory && b.source == .directory {
            for index in differences.indices where differences[index].change == .changed && Listing.isArchiveName(differences[index].path) {
                let path = differences[index].path
                guard a.files[path]?.kind == .file, b.files[path]?.kind == .file else { continue }
                differences[index].inner = try compare(left + "/" + path, right + "/" + path).differences
            }
        }
        return DiffReport(left: left, right: right, differences: differences)
    }

    static func isWheel(_ path: String) -> Bool { path.hasSuffix(".whl") || path.hasSuffix(".zip") }

    public static func compare(_ a: Listing, _ b: Listing) -> [Difference] {
        Set(a.files.keys).union(b.files.keys).sorted().compactMap { path in
            switch (a.files[path], b.files[path]) {
            case (nil, nil): return nil
            case (nil, .some): return Difference(path: path, change: .added)
            case (.some, nil): return Difference(path: path, change: .removed)
            case (.some(let x), .some(let y)):
                var fields: [Difference.Field] = []
                func field(_ name: String, _ left: String?, _ right: String?) {
                    if left != right { fields.append(.init(name: name, left: left ?? "-", right: right ?? "-")) }
                }
                field("type", x.kind.rawValue, y.kind.rawValue)
                field("mode", x.mode, y.mode)
                field("size", String(x.size), String(y.size))
                field("sha256", x.sha256?.hex, y.sha256?.hex)
                field("link target", x.linkTarget, y.linkTarget)
                guard !fields.isEmpty else { return nil }
                var difference = Difference(path: path, change: .changed, fields: fields)
                if let left = x.sections, let right = y.sections {
                    difference.sections = Set(left.keys).union(right.keys).filter { left[$0] != right[$0] }.sorted()
                }
                return difference
            }
        }
    }

    /// The per-file report: one line a difference, archives' contents indented below them.
    public var text: String {
        var lines = ["--- \(left)", "+++ \(right)"]
        func render(_ differences: [Difference], indent: String) {
            for difference in differences {
                switch difference.change {
                case .added: lines.append("\(indent)+ \(difference.path)")
                case .removed: lines.append("\(indent)- \(difference.path)")
                case .changed:
                    var line = "\(indent)~ \(difference.path): " + difference.fields.map { "\($0.name) \($0.left) → \($0.right)" }.joined(separator: ", ")
                    if let sections = difference.sections, !sections.isEmpty { line += "; ELF sections differ: " + sections.joined(separator: " ") }
                    lines.append(line)
                }
                if let inner = difference.inner { render(inner, indent: indent + "    ") }
            }
        }
        render(differences, indent: "")
        lines.append(identical ? "identical" : counted(differences.count, "entry", "entries") + (differences.count == 1 ? " differs" : " differ"))
        return lines.joined(separator: "\n") + "\n"
    }
}
