import Crypto
import Foundation
import Synchronization

/// A sha256 digest, written as 64 lowercase hex digits everywhere krnative shows or stores one.
public struct SHA256Digest: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    public let hex: String

    /// Accepts exactly 64 hex digits (either case); anything else is not a sha256.
    public init?(hex: String) {
        let lower = hex.lowercased()
        guard lower.utf8.count == 64, lower.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) })
        else { return nil }
        self.hex = lower
    }

    init(bytes: some Sequence<UInt8>) {
        self.hex = bytes.map { byte in
            let digits = Array("0123456789abcdef".utf8)
            return String(decoding: [digits[Int(byte >> 4)], digits[Int(byte & 0xf)]], as: UTF8.self)
        }.joined()
    }

    public var description: String { hex }

    /// The digest as wheel RECORD files write it: urlsafe base64 without padding (PEP 376/427).
    public var recordForm: String {
        var bytes: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            bytes.append(UInt8(hex[index..<next], radix: 16)!)
            index = next
        }
        return Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
    public static func < (a: Self, b: Self) -> Bool { a.hex < b.hex }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let digest = SHA256Digest(hex: text) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "'\(text)' is not 64 hex digits of sha256"))
        }
        self = digest
    }
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(hex)
    }

    /// The digest of bytes in memory.
    public static func of(_ data: some DataProtocol) -> SHA256Digest {
        var hasher = StreamingSHA256()
        hasher.update(data)
        return hasher.finalize()
    }

    /// The digest of the program at `path` (krnative's own executable, in every key that covers
    /// it), read once per process while the file stays the same (`FileSystem.stamp`): the keys of
    /// one build all name the program that runs it.
    public static func ofExecutable(at path: String) throws(FileSystemError) -> SHA256Digest {
        let stamp = FileSystem.stamp(of: path)
        if let stamp, let known = executables.withLock({ $0[path] }), known.stamp == stamp { return known.digest }
        let digest = try of(fileAt: path).digest
        if let stamp { executables.withLock { $0[path] = (stamp, digest) } }
        return digest
    }
    private static let executables = Mutex<[String: (stamp: SHA256Digest, digest: SHA256Digest)]>([:])

    /// The digest and size of a file, read in chunks.
    public static func of(fileAt path: String) throws(FileSystemError) -> (digest: SHA256Digest, size: Int64) {
        let fd = try FileSystem.openRegularFile(path)
        defer { close(fd) }
        var hasher = StreamingSHA256()
        do {
            let size = try FileSystem.readBlocks(fd) { hasher.update($0) }
            return (hasher.finalize(), size)
        } catch {
            throw .cannotRead(path: path, reason: FileSystem.reason(error))
        }
    }
}

/// sha256 computed while bytes stream past.
public struct StreamingSHA256 {
    private var hasher = SHA256()
    public init() {}
    public mutating func update(_ data: some DataProtocol) { hasher.update(data: data) }
    public mutating func update(_ buffer: UnsafeRawBufferPointer) { hasher.update(bufferPointer: buffer) }
    public func finalize() -> SHA256Digest { SHA256Digest(bytes: hasher.finalize()) }
}
