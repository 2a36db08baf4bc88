import Foundation
import KrnativeBase
import Store
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A shared cache on an existing server, in the HTTP protocol of Bazel's remote cache
/// (bazel-remote; nginx with WebDAV `PUT`; an S3 gateway): `/cas/<sha256>` holds content by its
/// hash, `/ac/<key>` what a key produced. Never required: a miss, an unreachable, slow or wrong
/// cache costs a line on stderr and a local build, never a failed or a different one. Content is
/// hashed before use; an entry that does not match is discarded and reported. An `/ac/` entry
/// (what a key produced) is used only when signed for its key by a key in `trust`
/// (`CacheTrust`); an unsigned or wrongly signed one is a miss, reported. Writes only with a
/// `signer` (`--remote-cache-upload`), which signs every `/ac/` entry it puts.
public final class RemoteCache: Sendable {
    public let base: String
    public let signer: CacheSigner?
    public let trust: CacheTrust
    public var upload: Bool { signer != nil }
    let settings: TransferSettings
    let store: Store
    let note: @Sendable (String) -> Void
    private let state = Mutex(State())

    private struct State {
        /// Why the cache is left alone for the rest of the run, once it failed.
        var unreachable: String?
        var counts = Counts()
        /// The `/cas/` entries this run found holding other bytes: `ensure` replaces them.
        var wrongContent: Set<SHA256Digest> = []
        /// Whether the line saying that no key is trusted was printed.
        var saidNoTrust = false
    }

    /// What the cache did in this run, for summaries.
    public struct Counts: Sendable, Codable, Equatable {
        public var hits = 0
        public var misses = 0
        public var rejected = 0
        public var uploads = 0
    }

    /// `url` with or without a trailing slash. The token (`KRNATIVE_REMOTE_CACHE_TOKEN`) goes
    /// out as `Authorization: Bearer`; without one, ~/.netrc is read for the host. With a
    /// `signer`, what the run made goes up, its `/ac/` entries signed.
    public init(
        url: String, store: Store, signer: CacheSigner? = nil, trust: CacheTrust, environment: [String: String] = ProcessInfo.processInfo.environment,
        note: @escaping @Sendable (String) -> Void = Reporting.note
    ) {
        base = url.hasSuffix("/") ? String(url.dropLast()) : url
        self.signer = signer
        self.trust = trust
        self.store = store
        self.note = note
        var settings = TransferSettings(environment: environment)
        // A cache is worth a few seconds, not the minutes a mirror may take.
        settings.connectTimeout = 5
        settings.stallTimeout = 10
        if let token = environment["KRNATIVE_REMOTE_CACHE_TOKEN"], !token.isEmpty {
            settings.headers = ["Authorization: Bearer \(token)"]
        } else {
            settings.netrc = true
        }
        self.settings = settings
    }

    public var summary: Counts { state.withLock { $0.counts } }

    /// `/cas/<digest>` into `destination` (else a temporary file of the store), verified by the
    /// hash taken as the bytes arrived; nil on a miss or any failure. The caller admits or removes
    /// the file. Wrong bytes are quarantined, where the store's file system allows, else removed.
    public func content(_ digest: SHA256Digest, sizeCap: Int64, what: String, into destination: String? = nil) -> String? {
        guard let download = get("cas/\(digest.hex)", sizeCap: sizeCap, what: what, into: destination) else { return nil }
        guard download.sha256 == digest else {
            state.withLock { _ = $0.wrongContent.insert(digest) }
            let kept = store.quarantine(download.file, reason: "found-\(download.sha256.hex)")
            let fate = FileSystem.exists(kept) ? "kept in \(kept)" : "removed"
            reject("\(base)/cas/\(digest.hex) (\(what)) has other bytes (sha256 \(download.sha256.hex)); \(fate), ignored")
            return nil
        }
        count(\.hits)
        return download.file
    }

    /// `/ac/<key>`: the small record a key produced (at most 1 MiB: records point to what is
    /// larger, which `/cas/` holds), or nil: a miss, an entry larger than that, or one that a
    /// trusted key did not sign for `key` (each reported, one line).
    public func actionResult(_ key: SHA256Digest, what: String) -> Data? {
        guard !trust.keys.isEmpty else {
            count(\.misses)
            let first = state.withLock { state in
                defer { state.saidNoTrust = true }
                return !state.saidNoTrust
            }
            if first {
                note(
                    "remote cache: no key is trusted (\(trust.source)), so no /ac/ entry is used (inputs by sha256 still are): "
                        + "put the uploading machine's .pub line into a file and pass it with --remote-cache-trust FILE (env KRNATIVE_REMOTE_CACHE_TRUST)")
            }
            return nil
        }
        guard let download = get("ac/\(key.hex)", sizeCap: 1 << 20, what: what) else { return nil }
        defer { FileSystem.remove(download.file) }
        guard let document = FileManager.default.contents(atPath: download.file) else { return nil }
        switch CacheSignature.open(document, key: key, trust: trust) {
        case .success(let record): return record
        case .failure(let refusal):
            reject("\(base)/ac/\(key.hex) (\(what)) \(refusal.reason); taken as a miss")
            return nil
        }
    }

    /// Whether `url` may be a remote cache: https, or http to this machine (127.0.0.0/8, ::1,
    /// localhost) unless `allowHTTP`; anything else is a usage error naming the URL and the option.
    /// The URL is read by libcurl's parser (`BlockedLocation`), as the transfer will read it.
    public static func checkScheme(_ url: String, allowHTTP: Bool) throws(UsageError) {
        let location = BlockedLocation(url)
        if location?.scheme == "https" { return }
        guard location?.scheme == "http" else {
            throw UsageError("the remote cache \(url) is not an http:// or https:// URL (from --remote-cache, KRNATIVE_REMOTE_CACHE or the mirror config)")
        }
        if allowHTTP || location?.isThisMachine == true { return }
        throw UsageError(
            "the remote cache \(url) is plain http:// to another machine: anyone on the way can read the token and change the answers; "
                + "use https://, or pass --remote-cache-allow-http (env KRNATIVE_REMOTE_CACHE_ALLOW_HTTP=1) to accept it")
    }

    /// Puts `file` at `/cas/<digest>` when uploading is allowed; a failure is reported, not thrown.
    public func put(file: String, digest: SHA256Digest, what: String) {
        state.withLock { _ = $0.wrongContent.remove(digest) }
        put("cas/\(digest.hex)", file: file, what: what)
    }

    /// Puts `file` at `/cas/<digest>` unless the cache has it (`HEAD`): what a build used but did
    /// not download this time still reaches the machines that read the cache. An entry this run
    /// found holding other bytes is put over.
    public func ensure(file: String, digest: SHA256Digest, what: String) {
        guard upload, isReachable else { return }
        if state.withLock({ $0.wrongContent.contains(digest) }) { return put(file: file, digest: digest, what: what) }
        switch CurlUpload.status(of: "\(base)/cas/\(digest.hex)", settings: settings) {
        case .success(200): return
        case .success: put(file: file, digest: digest, what: what)
        case .failure(let failure): give(up: "\(base)/cas/\(digest.hex) (\(what)): \(failure.reason)")
        }
    }

    /// Whether the cache answers `/ac/<key>` (a `HEAD`), so that a result made earlier is uploaded
    /// only when the cache lacks it.
    public func hasActionResult(_ key: SHA256Digest) -> Bool {
        guard isReachable else { return true }
        switch CurlUpload.status(of: "\(base)/ac/\(key.hex)", settings: settings) {
        case .success(let status): return status == 200
        case .failure(let failure):
            give(up: "\(base)/ac/\(key.hex): \(failure.reason)")
            return true
        }
    }

    /// For `krnative doctor`: whether the cache answers, and how (`HEAD` of an entry it may lack).
    public func probe() -> String? {
        let empty = SHA256Digest.of(Data())
        switch CurlUpload.status(of: "\(base)/cas/\(empty.hex)", settings: settings) {
        case .success(let status) where status == 200 || status == 404: return nil
        case .success(let status): return "HTTP \(status) for \(base)/cas/\(empty.hex) (200 or 404 expected)"
        case .failure(let failure): return "\(base): \(failure.reason)"
        }
    }

    /// Puts `record` at `/ac/<key>`, signed for `key`, when uploading is allowed.
    public func put(actionResult record: Data, key: SHA256Digest, what: String) {
        guard let signer, isReachable else { return }
        let temporary = store.temporaryPath("remote-ac")
        defer { FileSystem.remove(temporary) }
        do { try FileSystem.writeAtomically(try signer.sign(record, key: key), to: temporary) } catch {
            note("remote cache: cannot stage \(what) for upload: \(error)")
            return
        }
        put("ac/\(key.hex)", file: temporary, what: what)
    }

    /// A rejected entry: the bytes were not what their key says.
    public func reject(_ message: String) {
        count(\.rejected)
        note("remote cache: " + message)
    }

    private var isReachable: Bool { state.withLock { $0.unreachable == nil } }

    private func count(_ field: WritableKeyPath<Counts, Int> & Sendable) { state.withLock { $0.counts[keyPath: field] += 1 } }

    /// The file `path` names in the cache, in `destination` (else a temporary file of the store),
    /// with the sha256 of its bytes; nil on a miss or any failure.
    private func get(_ path: String, sizeCap: Int64, what: String, into destination: String? = nil) -> (file: String, sha256: SHA256Digest)? {
        guard isReachable else { return nil }
        let url = "\(base)/\(path)"
        let temporary = destination ?? store.temporaryPath("remote")
        do { try FileSystem.createDirectory((temporary as NSString).deletingLastPathComponent) } catch { return nil }
        let transfer = CurlTransfer(
            url: url, partialPath: temporary, settings: settings, cap: SizeCap(bytes: sizeCap, pinned: false),
            redirects: RedirectPolicy(mirrors: MirrorConfig(), maximumHops: 0)
        ) { _ in }
        let outcome = transfer.run()
        switch outcome {
        case .complete:
            Reporting.detail("remote cache: hit \(url) (\(what))")
            let (sha256, _) = transfer.result
            return (temporary, sha256)
        case .permanent(let reason) where reason == "HTTP 404":
            Reporting.detail("remote cache: miss \(url) (\(what))")
            count(\.misses)
        case .cancelled:
            break
        case .oversized(let seen):
            // This entry's fault, not the cache's: the others may still be good.
            reject("\(url) (\(what)) is larger than the \(sizeCap) bytes it may have (\(seen) seen); taken as a miss")
        default:
            give(up: "\(url) (\(what)): \(Self.describe(outcome))")
        }
        FileSystem.remove(temporary)
        return nil
    }

    private func put(_ path: String, file: String, what: String) {
        guard upload, isReachable else { return }
        let url = "\(base)/\(path)"
        let failure: String?
        do { failure = try CurlUpload(url: url, file: file, settings: settings).run() } catch { failure = error.description }
        if let failure {
            // bazel-remote refuses what is not Bazel's ActionResult unless told not to check.
            let hint = failure == "HTTP 400" && path.hasPrefix("ac/") ? " (a bazel-remote cache needs --disable_http_ac_validation for krnative's /ac/ entries)" : ""
            give(up: "uploading \(what) to \(url): \(failure)\(hint)")
        } else {
            Reporting.detail("remote cache: uploaded \(what) to \(url)")
            count(\.uploads)
        }
    }

    /// After a failure that is not a miss the cache is left alone for the rest of the run: one
    /// warning, not one wait per step.
    private func give(up reason: String) {
        let first = state.withLock { state in
            defer { state.unreachable = state.unreachable ?? reason }
            return state.unreachable == nil
        }
        if first { note("remote cache: \(reason); going on without it for this run") }
    }

    static func describe(_ outcome: TransferOutcome) -> String {
        switch outcome {
        case .complete: "complete"
        case .transient(let reason), .permanent(let reason), .restart(let reason): reason
        case .oversized(let seen): "larger than expected (\(seen) bytes)"
        case .cancelled: "cancelled"
        }
    }
}
