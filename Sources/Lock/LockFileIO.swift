import Foundation
import KrnativeBase

/// A lock file that cannot be used, naming the file and the key.
public enum LockError: KrnativeError {
    case unreadable(file: String, reason: String)
    case malformed(file: String, reason: String)
    case unsupportedVersion(file: String, found: String)
    case invalid(file: String, key: String, problem: String)
    /// A key written twice in one object, which JSON readers resolve differently.
    case duplicateKey(file: String, key: String, first: DuplicateJSONKey.Occurrence, second: DuplicateJSONKey.Occurrence)

    public var description: String {
        switch self {
        case .unreadable(let file, let reason):
            "cannot read the lock \(file): \(reason)\n"
                + "Run krnative in the project (the directory holding \(Lockfile.defaultFileName), or any directory below it), or pass --lock FILE (env KRNATIVE_LOCK)."
        case .malformed(let file, let reason):
            "the lock \(file) is not valid JSON: \(reason)"
        case .unsupportedVersion(let file, let found):
            "the lock \(file) has format version \(found); this krnative reads version \(Lockfile.formatVersion). "
                + "Use the krnative release that wrote it, or rewrite the lock with `krnative lock add`."
        case .invalid(let file, let key, let problem):
            "the lock \(file) is invalid at \(key): \(problem)"
        case .duplicateKey(let file, let key, let first, let second):
            "the lock \(file) writes the key \(key) twice, at \(first) and at \(second); JSON readers disagree about "
                + "which counts (Python's takes the last, Foundation's the first), so krnative uses neither: remove one"
        }
    }
    public var exitCode: Int32 { ExitStatus.lock }
}

extension Lockfile {
    private struct Document: Codable {
        var version: Int
        var sourceDateEpoch: Int64
        var inputs: [LockedInput]
    }

    private static let weakHashKeys = ["md5", "sha1", "sha224", "sha384", "sha512", "hash", "checksum", "integrity"]

    /// Reads and validates the lock at `path`.
    public static func load(from path: String) throws(LockError) -> Lockfile {
        let data: Data
        do { data = try FileSystem.readRegularFile(path) } catch {
            throw .unreadable(file: path, reason: FileSystem.whyUnreadable(path))
        }
        return try parse(data, file: path)
    }

    /// Parses lock bytes; `file` names them in errors.
    public static func parse(_ data: Data, file: String) throws(LockError) -> Lockfile {
        let object: Any
        do { object = try JSONSerialization.jsonObject(with: data) } catch {
            let debug = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)"
            throw .malformed(file: file, reason: debug + position(in: data, describedBy: debug))
        }
        guard let top = object as? [String: Any] else {
            throw .invalid(file: file, key: "(top level)", problem: "expected an object with version, sourceDateEpoch, inputs")
        }
        if let duplicate = DuplicateJSONKey.first(in: data) {
            throw .duplicateKey(file: file, key: render(duplicate.path, in: top), first: duplicate.first, second: duplicate.second)
        }
        guard let version = top["version"] else {
            throw .invalid(file: file, key: "version", problem: "missing; this krnative writes \"version\": \(Lockfile.formatVersion)")
        }
        struct VersionOnly: Decodable { var version: Int }
        guard (try? JSONDecoder().decode(VersionOnly.self, from: data))?.version == formatVersion else {
            throw .unsupportedVersion(file: file, found: "\(version)")
        }
        try checkKeys(top, allowed: ["version", "sourceDateEpoch", "inputs"], at: "", file: file)
        for (index, entry) in ((top["inputs"] as? [Any]) ?? []).enumerated() {
            guard let entry = entry as? [String: Any] else { continue }
            let key = "inputs[\(index)]" + ((entry["name"] as? String).map { " (\(escaped($0)))" } ?? "")
            if let weak = weakHashKeys.first(where: { entry[$0] != nil }), entry["sha256"] == nil {
                throw .invalid(
                    file: file, key: "\(key).\(weak)",
                    problem: "krnative accepts sha256 only; replace it with \"sha256\" (`krnative lock add` computes it)")
            }
            try checkKeys(entry, allowed: LockedInput.CodingKeys.allCases.map(\.rawValue), at: key + ".", file: file)
        }
        let document: Document
        do { document = try JSONDecoder().decode(Document.self, from: data) } catch let error as DecodingError {
            throw describe(error, file: file, top: top)
        } catch {
            throw .malformed(file: file, reason: "\(error)")
        }
        let lock = Lockfile(sourceDateEpoch: document.sourceDateEpoch, inputs: document.inputs)
        try lock.validate(file: file)
        return lock
    }

    /// Checks what JSON types alone cannot: unique names, the hash each kind needs, somewhere to
    /// fetch from. `lock add` runs it before writing, so it never writes a lock `load` refuses.
    public func validate(file: String) throws(LockError) {
        guard Self.sourceDateEpochRange.contains(sourceDateEpoch) else {
            throw .invalid(
                file: file, key: "sourceDateEpoch",
                problem: "\(sourceDateEpoch) is outside \(Self.sourceDateEpochRange.lowerBound)...\(Self.sourceDateEpochRange.upperBound) "
                    + "(1970-01-01 to 2106-02-07 UTC); tar, zip and the manifest must all be able to write it")
        }
        var seen = Set<String>()
        for (index, input) in inputs.enumerated() {
            if let problem = Self.problem(withName: input.name) {
                throw .invalid(file: file, key: "inputs[\(index)].name", problem: problem)
            }
            let key = "inputs[\(index)] (\(input.name))"
            guard seen.insert(input.name).inserted else {
                throw .invalid(file: file, key: key + ".name", problem: "the name '\(input.name)' is used twice; names are unique")
            }
            switch input.kind {
            case .source:
                guard input.treeSha256 != nil else {
                    throw .invalid(
                        file: file, key: key + ".treeSha256",
                        problem: "a source needs its tree hash; compute it with `krnative lock add --kind source --file ARCHIVE …`")
                }
            case .runtime, .toolchain, .wheel:
                guard input.sha256 != nil else {
                    throw .invalid(
                        file: file, key: key + ".sha256",
                        problem: "missing; every \(input.kind.rawValue) is pinned by sha256 (`krnative lock add` computes it)")
                }
            }
            if input.urls.isEmpty && input.pip == nil {
                throw .invalid(file: file, key: key + ".urls", problem: "no URL and no pip query: there is nowhere to fetch it from")
            }
            if input.filename.contains("/") || input.filename.isEmpty || input.filename.hasPrefix(".")
                || input.filename.unicodeScalars.contains(where: Self.isUnsafe)
            {
                throw .invalid(
                    file: file, key: key + ".filename",
                    problem: "\(Self.quoted(input.filename)) must be a plain file name (no '/', no leading '.', no control or bidi characters)")
            }
            if let size = input.size, !Self.sizeRange.contains(size) {
                throw .invalid(
                    file: file, key: key + ".size",
                    problem: "\(size) bytes is outside 0...\(Self.sizeRange.upperBound) (64 GiB); record the file's real size (`krnative lock add` does)")
            }
        }
    }

    /// Seconds since 1970 a lock may give as `sourceDateEpoch`: what every output can record. A zip's
    /// DOS dates run from 1980 (earlier is clamped to it, as libarchive does) to 2107, and its "UT"
    /// extra field holds the epoch in 32 bits, which ends the range at 2106-02-07T06:28:15Z.
    public static let sourceDateEpochRange: ClosedRange<Int64> = 0...4_294_967_295

    /// Sizes a lock may record: up to 64 GiB, beyond any input krnative needs.
    public static let sizeRange: ClosedRange<Int64> = 0...(64 << 30)

    /// The characters of an input name, which becomes a directory name (licenses, store records).
    public static let nameCharacters = "ASCII letters, digits and . _ + -, starting with a letter or digit, at most 128 characters"

    /// Why `name` cannot name an input, or nil when it can.
    public static func problem(withName name: String) -> String? {
        let scalars = Array(name.unicodeScalars)
        let allowed = { (scalar: Unicode.Scalar) in
            scalar.isASCII && (scalar.properties.isAlphabetic || ("0"..."9").contains(scalar) || "._+-".unicodeScalars.contains(scalar))
        }
        guard let first = scalars.first, first.isASCII, first.properties.isAlphabetic || ("0"..."9").contains(first),
            scalars.count <= 128, scalars.allSatisfy(allowed)
        else {
            return "the name \(quoted(name)) is not allowed; a name uses \(nameCharacters)"
        }
        return nil
    }

    /// `text` in quotes, escaped.
    static func quoted(_ text: String) -> String { "\"" + escaped(text) + "\"" }

    /// `text` with every scalar outside printable ASCII (and the quote and backslash) as `\u{XXXX}`: a name that holds
    /// a NUL, a newline or a bidi override is shown as it is stored, not as a terminal would render it.
    static func escaped(_ text: String) -> String {
        text.unicodeScalars.map { scalar in
            (0x20..<0x7f).contains(scalar.value) && scalar != "\"" && scalar != "\\"
                ? String(scalar) : "\\u{" + String(format: "%04X", scalar.value) + "}"
        }.joined()
    }

    /// Control characters (NUL included) and the bidirectional overrides that make text read other than it is stored.
    private static func isUnsafe(_ scalar: Unicode.Scalar) -> Bool {
        scalar.properties.generalCategory == .control || scalar.properties.generalCategory == .format
            || scalar.properties.isBidiControl
    }

    /// " (line L, column C)" for a parser message that names a character offset.
    private static func position(in data: Data, describedBy message: String) -> String {
        guard let range = message.range(of: #"character \d+"#, options: .regularExpression),
            let offset = Int(message[range].dropFirst("character ".count)), offset <= data.count
        else { return "" }
        let before = data.prefix(offset)
        let line = before.filter { $0 == 0x0a }.count + 1
        let column = offset - (before.lastIndex(of: 0x0a).map { $0 + 1 } ?? 0) + 1
        return " (line \(line), column \(column))"
    }

    private static func checkKeys(_ object: [String: Any], allowed: [String], at prefix: String, file: String) throws(LockError) {
        for key in object.keys.sorted() where !allowed.contains(key) {
            throw .invalid(
                file: file, key: prefix + key,
                problem: "unknown key; the keys here are: \(allowed.joined(separator: ", "))")
        }
    }

    /// `inputs[3] (zlib).sha256`: a path, with the name of each listed entry.
    private static func render(_ path: [DuplicateJSONKey.Component], in top: [String: Any]) -> String {
        var text = ""
        var node: Any? = top
        for component in path {
            switch component {
            case .index(let index):
                text += "[\(index)]"
                node = (node as? [Any]).flatMap { index < $0.count ? $0[index] : nil }
                if let name = (node as? [String: Any])?["name"] as? String { text += " (\(escaped(name)))" }
            case .key(let key):
                text += (text.isEmpty ? "" : ".") + key
                node = (node as? [String: Any])?[key]
            }
        }
        return text.isEmpty ? "(top level)" : text
    }

    private static func describe(_ error: DecodingError, file: String, top: [String: Any]) -> LockError {
        func render(_ path: [any CodingKey]) -> String {
            Self.render(path.map { key in key.intValue.map { .index($0) } ?? .key(key.stringValue) }, in: top)
        }
        switch error {
        case .keyNotFound(let key, let context):
            return .invalid(file: file, key: render(context.codingPath + [key]), problem: "missing")
        case .typeMismatch(let type, let context):
            return .invalid(file: file, key: render(context.codingPath), problem: "expected \(describe(type))")
        case .valueNotFound(let type, let context):
            return .invalid(file: file, key: render(context.codingPath), problem: "expected \(describe(type)), found null")
        case .dataCorrupted(let context):
            return .invalid(file: file, key: render(context.codingPath), problem: context.debugDescription)
        @unknown default:
            return .malformed(file: file, reason: "\(error)")
        }
    }

    private static func describe(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Int.Type, is Int64.Type: "an integer"
        case is [Any].Type: "a list"
        default: "\(type)"
        }
    }

    /// The lock as krnative writes it: keys sorted, two-space indent, trailing newline.
    public func encoded() -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let document = Document(version: Lockfile.formatVersion, sourceDateEpoch: sourceDateEpoch, inputs: inputs)
        var data = (try? encoder.encode(document)) ?? Data()
        data.append(0x0a)
        return data
    }

    /// Writes the lock atomically.
    public func write(to path: String) throws(FileSystemError) {
        try FileSystem.writeAtomically(encoded(), to: path)
    }

    /// The digest of the lock as written, recorded in manifests and bundles.
    public var digest: SHA256Digest { SHA256Digest.of(encoded()) }
}
