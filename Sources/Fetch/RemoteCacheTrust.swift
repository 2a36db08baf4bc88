import Crypto
import Foundation
import KrnativeBase

#if canImport(Glibc)
    import Glibc
#endif

/// Who may say what a key produced. Every `/ac/` entry krnative writes is signed (Ed25519) by the
/// uploading machine's key, over the entry's key and its record together (`CacheSignature`); a
/// reader uses an entry only when a key it trusts signed it. The keys are one text line each, as
/// ssh's and minisign's are: `krnative-cache-key <base64 of the 32-byte public key> <comment>`.
public struct CacheTrust: Sendable {
    /// Each trusted public key (raw 32 bytes) with where it was listed, for messages.
    public var keys: [Data: String]
    /// What was read to make this trust, for the line that says why every entry is a miss.
    public var source: String

    public init(keys: [Data: String] = [:], source: String) {
        self.keys = keys
        self.source = source
    }

    /// The key lines of `path`: blank lines and `#` comments skipped, anything else a usage error
    /// naming the file and the line.
    public static func load(from path: String) throws(UsageError) -> CacheTrust {
        guard let data = (try? FileSystem.readRegularFile(path)) else {
            throw UsageError("cannot read the remote cache trust file \(path); it lists the public keys (.pub lines) of the machines that upload")
        }
        var trust = CacheTrust(source: path)
        for (index, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let text = line.trimmingCharacters(in: .whitespaces)
            if text.isEmpty || text.hasPrefix("#") { continue }
            guard let key = CacheSigner.publicKey(fromLine: text) else {
                throw UsageError(
                    "\(path):\(index + 1) is not a krnative cache key: each line is `\(CacheSigner.publicKeyWord) BASE64 [comment]`, as in the uploader's .pub file")
            }
            trust.keys[key] = "\(path):\(index + 1)"
        }
        return trust
    }

    /// Whether `key` is listed.
    public func trusts(_ key: Data) -> Bool { keys[key] != nil }
}

/// The uploading machine's private key: a file of one line, mode 0600, with the public key beside
/// it as `FILE.pub`.
public struct CacheSigner: Sendable {
    static let publicKeyWord = "krnative-cache-key"
    static let privateKeyWord = "krnative-cache-secret-key"

    public let path: String
    /// The raw private key (Crypto's key type is not `Sendable`).
    let secret: Data
    var privateKey: Curve25519.Signing.PrivateKey {
        // `secret` was read as a valid key when this signer was made.
        try! Curve25519.Signing.PrivateKey(rawRepresentation: secret)
    }

    init(path: String, privateKey: Curve25519.Signing.PrivateKey) {
        self.path = path
        secret = privateKey.rawRepresentation
    }

    public var publicKey: Data { privateKey.publicKey.rawRepresentation }
    /// The `.pub` line: what a reader puts into its trust file.
    public var publicKeyLine: String { "\(Self.publicKeyWord) \(publicKey.base64EncodedString()) \(Self.comment)" }

    /// The key in `path`, refused when others may read it (as ssh refuses).
    public static func load(from path: String) throws(UsageError) -> CacheSigner {
        var status = stat()
        guard lstat(path, &status) == 0, (status.st_mode & S_IFMT) == S_IFREG, let data = FileManager.default.contents(atPath: path) else {
            throw UsageError(
                "cannot read the remote cache signing key \(path); leave --remote-cache-key and KRNATIVE_REMOTE_CACHE_KEY unset to use (and make) this machine's default key")
        }
        guard status.st_mode & 0o077 == 0 else {
            throw UsageError("the remote cache signing key \(path) may be read by others (mode \(String(status.st_mode & 0o777, radix: 8))); chmod 600 \(path)")
        }
        let words = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isWhitespace)
        guard words.count == 2, words[0] == privateKeyWord, let raw = Data(base64Encoded: String(words[1])),
            let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: raw)
        else { throw UsageError("\(path) is not a krnative cache signing key (one line: `\(privateKeyWord) BASE64`)") }
        return CacheSigner(path: path, privateKey: key)
    }

    /// The key in `path`, made (mode 0600, with `path.pub`) when there is none; `created` says
    /// whether it was made now.
    public static func loadOrCreate(at path: String) throws(UsageError) -> (signer: CacheSigner, created: Bool) {
        if FileSystem.exists(path) { return (try load(from: path), false) }
        let key = Curve25519.Signing.PrivateKey()
        let signer = CacheSigner(path: path, privateKey: key)
        let line = Data("\(privateKeyWord) \(key.rawRepresentation.base64EncodedString())\n".utf8)
        do {
            try FileSystem.createDirectory((path as NSString).deletingLastPathComponent)
            // O_EXCL: a key another run made meanwhile is kept, not replaced.
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else {
                if errno == EEXIST { return (try load(from: path), false) }
                throw UsageError("cannot create the remote cache signing key \(path): \(String(cString: strerror(errno)))")
            }
            let written = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            let synced = fsync(fd) == 0
            close(fd)
            guard written == line.count, synced else {
                unlink(path)
                throw UsageError("cannot write the remote cache signing key \(path)")
            }
            try FileSystem.writeAtomically(Data((signer.publicKeyLine + "\n").utf8), to: path + ".pub")
        } catch let error as UsageError {
            throw error
        } catch {
            throw UsageError("cannot create the remote cache signing key \(path): \(error)")
        }
        return (signer, true)
    }

    /// The public key of a `.pub` line (`krnative-cache-key BASE64 [comment]`), nil when it is not one.
    static func publicKey(fromLine line: String) -> Data? {
        let words = line.split(whereSeparator: \.isWhitespace)
        guard words.count >= 2, words[0] == publicKeyWord, let raw = Data(base64Encoded: String(words[1])),
            (try? Curve25519.Signing.PublicKey(rawRepresentation: raw)) != nil
        else { return nil }
        return raw
    }

    /// The `.pub` line's comment: who made the key, where.
    static var comment: String {
        var host = [CChar](repeating: 0, count: 256)
        let name = gethostname(&host, host.count) == 0 ? String(cString: host) : "localhost"
        return (ProcessInfo.processInfo.environment["USER"] ?? "krnative") + "@" + name
    }

    /// `record` under `key`, signed: what `/ac/<key>` holds.
    public func sign(_ record: Data, key: KrnativeBase.SHA256Digest) throws -> Data {
        let signature = try privateKey.signature(for: CacheSignature.message(record, key: key))
        let envelope = CacheSignature.Envelope(publicKey: publicKey, signature: signature, record: record)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return try encoder.encode(envelope)
    }
}

/// The signed form of an `/ac/` entry and its check.
enum CacheSignature {
    /// What `/ac/<key>` holds: the record and who signed it.
    struct Envelope: Codable {
        static let currentFormat = "krnative signed entry v1"
        var format = currentFormat
        var publicKey: Data
        var signature: Data
        var record: Data
    }

    /// What is signed: the key the record answers for, then the record, so that a record signed
    /// for one key is worth nothing under another.
    static func message(_ record: Data, key: KrnativeBase.SHA256Digest) -> Data {
        Data("krnative remote cache entry v1\n\(key.hex)\n".utf8) + record
    }

    /// The record of `document` fetched for `key` when a key in `trust` signed it for `key`; else why not.
    static func open(_ document: Data, key: KrnativeBase.SHA256Digest, trust: CacheTrust) -> Result<Data, Refusal> {
        guard let envelope = try? DuplicateJSONKey.decode(Envelope.self, from: document), envelope.format == Envelope.currentFormat else {
            return .failure(Refusal("is not signed (not a \"\(Envelope.currentFormat)\" document)"))
        }
        guard trust.trusts(envelope.publicKey) else {
            return .failure(Refusal("is signed by \(CacheSigner.publicKeyWord) \(envelope.publicKey.base64EncodedString()), which \(trust.source) does not list"))
        }
        guard let signer = try? Curve25519.Signing.PublicKey(rawRepresentation: envelope.publicKey),
            signer.isValidSignature(envelope.signature, for: message(envelope.record, key: key))
        else { return .failure(Refusal("has a signature that does not match its record and key")) }
        return .success(envelope.record)
    }

    struct Refusal: Error {
        var reason: String
        init(_ reason: String) { self.reason = reason }
    }
}
