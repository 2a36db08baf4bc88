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
/// hashed before use; an entry that does not match is discarded and reported. Writes only with
/// `upload` (`--remote-cache-upload`), and what is written is trusted by every reader: give
/// write access to the machines that build, as with Bazel's cache.
public final class RemoteCache: Sendable {
    public let base: String
    public let upload: Bool
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
    }

    /// What the cache did in this run, for summaries.
    public struct Counts: Sendable, Codable, Equatable {
        public var hits = 0
        public var misses = 0
        public var rejected = 0
        public var uploads = 0
    }

    /// `url` with or without a trailing slash. The token (`KRNATIVE_REMOTE_CACHE_TOKEN`) goes
    /// out as `Authorization: Bearer`; without one, ~/.netrc is read for the host.
    public init(
        url: String, store: Store, upload: Bool, environment: [String: String] = ProcessInfo.processInfo.environment,
        note: @escaping @Sendable (String) -> Void = Reporting.note
    ) {
        base = url.hasSuffix("/") ? String(url.dropLast()) : url
        self.upload = upload
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

    /// `/ac/<key>`: the small document a key produced (at most 1 MiB), or nil.
    public func actionResult(_ key: SHA256Digest, what: String) -> Data? {
        guard let download = get("ac/\(key.hex)", sizeCap: 1 << 20, what: what) else { return nil }
        defer { FileSystem.remove(download.file) }
        return FileManager.default.contents(atPath: download.file)
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

    /// Puts `document` at `/ac/<key>` when uploading is allowed.
    public func put(actionResult document: Data, key: SHA256Digest, what: String) {
        guard upload, isReachable else { return }
        let temporary = store.temporaryPath("remote-ac")
        defer { FileSystem.remove(temporary) }
        do { try FileSystem.writeAtomically(document, to: temporary) } catch {
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
