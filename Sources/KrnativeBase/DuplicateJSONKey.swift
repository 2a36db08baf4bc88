import Foundation

/// A key written twice in one JSON object.
///
/// JSON readers disagree about such a document: Foundation's keeps the first value, Python's the
/// last. A lock or manifest that reads differently in two tools is refused, not resolved.
public struct DuplicateJSONKey: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Component: Sendable, Equatable {
        case key(String)
        case index(Int)
    }

    /// One place the key is written.
    public struct Occurrence: Sendable, Equatable, CustomStringConvertible {
        public var line: Int
        public var column: Int
        /// The value's JSON text, shortened.
        public var value: String
        public var description: String { "line \(line), column \(column) (value \(value))" }
    }

    /// From the top of the document to the key itself.
    public var path: [Component]
    public var first: Occurrence
    public var second: Occurrence

    /// `inputs[3].sha256`.
    public var renderedPath: String {
        path.reduce(into: "") { text, component in
            switch component {
            case .index(let index): text += "[\(index)]"
            case .key(let key): text += (text.isEmpty ? "" : ".") + key
            }
        }
    }

    public var description: String {
        "the key \(renderedPath) is written twice, at \(first) and at \(second); "
            + "JSON readers disagree about which counts (Python's takes the last, Foundation's the first), so neither is used: remove one"
    }

    /// The first duplicated key in `data`, which must already be valid JSON; nil when there is none.
    /// Keys are compared as Python compares them: by code points after escapes are decoded.
    public static func first(in data: Data) -> DuplicateJSONKey? {
        var scanner = Scanner(bytes: [UInt8](data))
        return scanner.value()
    }

    /// Decodes `data` as `type`, refusing a document that writes a key twice: every JSON file krnative
    /// reads (configs, ledgers, manifests, requests, cache records) goes through here, so no two tools
    /// read one file differently. Throws the decoder's error, or the `DuplicateJSONKey`.
    public static func decode<T: Decodable>(_ type: T.Type, from data: Data, with decoder: JSONDecoder = JSONDecoder()) throws -> T {
        let value = try decoder.decode(type, from: data)
        if let duplicate = first(in: data) { throw duplicate }
        return value
    }
}

/// Walks valid JSON, tracking the keys of each object.
private struct Scanner {
    static let spaces = Array(" \t\r\n".utf8)
    static let endOfLiteral = Array(",]} \t\r\n".utf8)
    let bytes: [UInt8]
    var index = 0
    var path: [DuplicateJSONKey.Component] = []

    init(bytes: [UInt8]) { self.bytes = bytes }

    mutating func value() -> DuplicateJSONKey? {
        skipSpace()
        guard index < bytes.count else { return nil }
        switch bytes[index] {
        case UInt8(ascii: "{"): return object()
        case UInt8(ascii: "["): return array()
        case UInt8(ascii: "\""):
            _ = string()
            return nil
        default:
            while index < bytes.count, !Self.endOfLiteral.contains(bytes[index]) { index += 1 }
            return nil
        }
    }

    private mutating func object() -> DuplicateJSONKey? {
        index += 1
        // Where each key and its value stand; lines and columns are counted only for a duplicate
        // (counting them for every key made a manifest's scan quadratic: minutes for one volume listing).
        var seen: [[UInt8]: (key: Int, value: Range<Int>)] = [:]
        while true {
            skipSpace()
            guard index < bytes.count else { return nil }
            if bytes[index] == UInt8(ascii: "}") {
                index += 1
                return nil
            }
            if bytes[index] == UInt8(ascii: ",") {
                index += 1
                continue
            }
            let keyOffset = index
            let key = string()
            skipSpace()
            index += 1  // the colon
            skipSpace()
            let valueStart = index
            path.append(.key(String(decoding: key, as: UTF8.self)))
            if let found = value() { return found }
            if let earlier = seen[key] {
                return DuplicateJSONKey(
                    path: path, first: occurrence(at: earlier.key, value: earlier.value), second: occurrence(at: keyOffset, value: valueStart..<index))
            }
            path.removeLast()
            seen[key] = (keyOffset, valueStart..<index)
        }
    }

    private mutating func array() -> DuplicateJSONKey? {
        index += 1
        var position = 0
        while true {
            skipSpace()
            guard index < bytes.count else { return nil }
            if bytes[index] == UInt8(ascii: "]") {
                index += 1
                return nil
            }
            if bytes[index] == UInt8(ascii: ",") {
                index += 1
                position += 1
                continue
            }
            path.append(.index(position))
            if let found = value() { return found }
            path.removeLast()
        }
    }

    /// The string at `index` with its escapes decoded, as UTF-8 bytes.
    private mutating func string() -> [UInt8] {
        var result: [UInt8] = []
        index += 1
        while index < bytes.count, bytes[index] != UInt8(ascii: "\"") {
            guard bytes[index] == UInt8(ascii: "\\"), index + 1 < bytes.count else {
                result.append(bytes[index])
                index += 1
                continue
            }
            let escaped = bytes[index + 1]
            index += 2
            switch escaped {
            case UInt8(ascii: "b"): result.append(0x08)
            case UInt8(ascii: "f"): result.append(0x0c)
            case UInt8(ascii: "n"): result.append(0x0a)
            case UInt8(ascii: "r"): result.append(0x0d)
            case UInt8(ascii: "t"): result.append(0x09)
            case UInt8(ascii: "u"): result += unicodeEscape()
            default: result.append(escaped)
            }
        }
        index += 1
        return result
    }

    /// The UTF-8 of `XXXX` (with a following low surrogate's `\uXXXX`) after `\u`.
    private mutating func unicodeEscape() -> [UInt8] {
        let high = hex4()
        if (0xD800..<0xDC00).contains(high), index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"),
            bytes[index + 1] == UInt8(ascii: "u")
        {
            let saved = index
            index += 2
            let low = hex4()
            if (0xDC00..<0xE000).contains(low), let scalar = Unicode.Scalar(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)) {
                return Array(String(Character(scalar)).utf8)
            }
            index = saved
        }
        if let scalar = Unicode.Scalar(high) { return Array(String(Character(scalar)).utf8) }
        // A lone surrogate, in the three bytes UTF-8 would give it: distinct from every real character.
        return [UInt8(0xE0 | (high >> 12)), UInt8(0x80 | ((high >> 6) & 0x3F)), UInt8(0x80 | (high & 0x3F))]
    }

    private mutating func hex4() -> UInt32 {
        let end = min(index + 4, bytes.count)
        let text = String(decoding: bytes[index..<end], as: UTF8.self)
        index = end
        return UInt32(text, radix: 16) ?? 0xFFFD
    }

    private mutating func skipSpace() {
        while index < bytes.count, Self.spaces.contains(bytes[index]) { index += 1 }
    }

    private func occurrence(at offset: Int, value: Range<Int>) -> DuplicateJSONKey.Occurrence {
        let before = bytes[..<offset]
        let line = before.filter { $0 == 0x0a }.count + 1
        let column = offset - (before.lastIndex(of: 0x0a).map { $0 + 1 } ?? 0) + 1
        var text = String(decoding: bytes[value], as: UTF8.self)
        if text.count > 72 { text = text.prefix(69) + "..." }
        return DuplicateJSONKey.Occurrence(line: line, column: column, value: text)
    }
}
