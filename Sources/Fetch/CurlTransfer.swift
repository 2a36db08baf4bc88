import CCurl
import CCurlShim
import Foundation
import KrnativeBase

#if canImport(Glibc)
    import Glibc
#endif

/// Settings every transfer shares.
public struct TransferSettings: Sendable {
    /// Abort a transfer that moves no byte for this long.
    public var stallTimeout: Int = 30
    public var connectTimeout: Int = 30
    /// `SSL_CERT_FILE` / `SSL_CERT_DIR`, which libcurl does not read by itself (it does read the proxy variables).
    public var caFile: String?
    public var caDirectory: String?
    /// Request headers besides libcurl's own (`Authorization: Bearer …` for a remote cache).
    public var headers: [String] = []
    /// Read credentials for the host from ~/.netrc when it has them (a remote cache's login).
    public var netrc = false

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        caFile = environment["SSL_CERT_FILE"].flatMap { $0.isEmpty ? nil : $0 }
        caDirectory = environment["SSL_CERT_DIR"].flatMap { $0.isEmpty ? nil : $0 }
    }
}

extension TransferSettings {
    /// What every request of a transfer or an upload shares: timeouts, CA settings, credentials.
    /// `headers` receives the list libcurl reads until the handle is cleaned up (free it then).
    func apply(to handle: UnsafeMutableRawPointer, headers list: inout UnsafeMutablePointer<curl_slist>?) {
        krn_curl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT, connectTimeout)
        krn_curl_setopt_long(handle, CURLOPT_LOW_SPEED_LIMIT, 1)
        krn_curl_setopt_long(handle, CURLOPT_LOW_SPEED_TIME, stallTimeout)
        if let caFile { krn_curl_setopt_string(handle, CURLOPT_CAINFO, caFile) }
        if let caDirectory { krn_curl_setopt_string(handle, CURLOPT_CAPATH, caDirectory) }
        if netrc { krn_curl_setopt_long(handle, CURLOPT_NETRC, Int(CURL_NETRC_OPTIONAL.rawValue)) }
        for header in headers { list = curl_slist_append(list, header) }
        if let list { krn_curl_setopt_pointer(handle, CURLOPT_HTTPHEADER, UnsafeMutableRawPointer(list)) }
    }
}

/// How one attempt at one URL ended.
enum TransferOutcome: Sendable {
    case complete
    /// Worth trying the same URL again (after a pause): timeouts, resets, 5xx, 429.
    case transient(String)
    /// This URL will not give the file: 404, bad host, unsupported scheme.
    case permanent(String)
    /// The server would not resume; the partial file was discarded and the next attempt starts over.
    case restart(String)
    /// The server sent more than the size cap allows; `seen` counts the bytes it offered (with a resumed partial).
    case oversized(seen: Int64)
    case cancelled
}

/// The most bytes one input may bring.
struct SizeCap: Sendable {
    var bytes: Int64
    /// The lock pins exactly this size (else it is the stated default cap).
    var pinned: Bool
}

/// Where a transfer may be redirected: the mirror config's block rules, and http(s) only.
struct RedirectPolicy: Sendable {
    var mirrors: MirrorConfig
    /// Hops followed before giving up.
    var maximumHops = 10

    /// Why following `from` to `target` is refused, or nil when it may be followed.
    func refusal(from: String, to target: String) -> String? {
        let scheme = target.prefix { $0 != ":" }.lowercased()
        guard scheme == "http" || scheme == "https" else {
            return "\(from) redirected to \(target); only http and https redirects are followed"
        }
        if let prefix = mirrors.blockingPrefix(for: target) {
            return "\(from) redirected to \(target), which the mirror config blocks (rule `block \(prefix)`)"
        }
        return nil
    }
}

/// One HTTP(S) GET into a partial file, resuming at its current size with `Range`.
/// The digest is computed while the bytes arrive (after re-reading what an earlier run left), by
/// `BodyWriter`, on a thread of its own.
/// Redirects are followed here, not by libcurl, so that each target is checked against the block
/// rules before a request goes to it; bytes beyond the size cap abort the transfer.
final class CurlTransfer {
    let url: String
    let partialPath: String
    let settings: TransferSettings
    let cap: SizeCap
    let redirects: RedirectPolicy
    let onProgress: (Int64) -> Void

    private var fd: Int32 = -1
    private var handle: UnsafeMutableRawPointer?
    private var headerList: UnsafeMutablePointer<curl_slist>?
    private var body: BodyWriter!
    private(set) var received: Int64 = 0
    private(set) var resumedFrom: Int64 = 0
    private var writeErrno: Int32 = 0
    private var oversizeSeen: Int64?
    /// The Content-Length of the response being read (libcurl does not keep it when it refuses it).
    private var declaredLength: Int64?
    /// The URL of the request about to go out (the first, or a redirect's target).
    private var requestURL = ""
    /// Why the connection of the last request was dropped before it was sent: a block rule covers where it led.
    private var blockedConnection: String?

    init(
        url: String, partialPath: String, settings: TransferSettings, cap: SizeCap, redirects: RedirectPolicy,
        onProgress: @escaping (Int64) -> Void
    ) {
        self.url = url
        self.partialPath = partialPath
        self.settings = settings
        self.cap = cap
        self.redirects = redirects
        self.onProgress = onProgress
    }

    private static let globalInit: Void = { curl_global_init(Int(CURL_GLOBAL_DEFAULT)) }()

    /// The digest and size of the completed partial file.
    var result: (SHA256Digest, Int64) { (body.digest(), resumedFrom + received) }

    func run() -> TransferOutcome {
        _ = Self.globalInit
        fd = open(partialPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return .permanent("cannot open \(partialPath): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        // Re-hash what an earlier run left, then append.
        var hasher = StreamingSHA256()
        resumedFrom = rehashExisting(into: &hasher)
        body = BodyWriter(fd: fd, hasher: hasher)
        if resumedFrom > cap.bytes || (resumedFrom == cap.bytes && !cap.pinned) { discardPartial() }
        // A partial of exactly the pinned size is the whole file (a run killed before admitting it).
        if cap.pinned && resumedFrom == cap.bytes { return .complete }
        guard let handle = curl_easy_init() else { return .transient("curl_easy_init failed") }
        self.handle = handle
        defer {
            self.handle = nil
            curl_easy_cleanup(handle)
            curl_slist_free_all(headerList)
            headerList = nil
        }
        configure(handle)
        var current = url
        var hops: [String] = []
        while true {
            requestURL = current
            krn_curl_setopt_string(handle, CURLOPT_URL, current)
            let code = curl_easy_perform(handle)
            // What arrived is in the file whatever happened next: a later run resumes after it.
            if let failed = body.flush(), writeErrno == 0 { writeErrno = failed }
            var status = 0
            krn_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
            guard code != CURLE_ABORTED_BY_CALLBACK, oversizeSeen == nil, (300..<400).contains(status),
                let target = redirectTarget(handle)
            else { return classify(code, status: status) }
            let from = hops.isEmpty ? current : "\(url) (via \(hops.joined(separator: ", ")))"
            if let refusal = redirects.refusal(from: from, to: target) { return .permanent(refusal) }
            guard hops.count < redirects.maximumHops else {
                return .permanent("more than \(redirects.maximumHops) redirects (last to \(target))")
            }
            hops.append(target)
            current = target
        }
    }

    private func configure(_ handle: UnsafeMutableRawPointer) {
        let context = Unmanaged.passUnretained(self).toOpaque()
        settings.apply(to: handle, headers: &headerList)
        krn_curl_setopt_long(handle, CURLOPT_FOLLOWLOCATION, 0)
        krn_curl_setopt_long(handle, CURLOPT_FAILONERROR, 1)
        krn_curl_setopt_long(handle, CURLOPT_NOSIGNAL, 1)
        // 512 KiB reads and writes, not libcurl's 16 KiB: fewer system calls and callbacks per
        // megabyte (the curl tool itself asks for 100 KiB).
        krn_curl_setopt_long(handle, CURLOPT_BUFFERSIZE, 512 * 1024)
        krn_curl_setopt_string(handle, CURLOPT_USERAGENT, "krnative")
        krn_curl_setopt_string(handle, CURLOPT_PROTOCOLS_STR, "http,https")
        krn_curl_setopt_string(handle, CURLOPT_REDIR_PROTOCOLS_STR, "http,https")
        // Refuses a declared Content-Length beyond the cap before any body byte; write() catches the rest.
        krn_curl_setopt_off_t(handle, CURLOPT_MAXFILESIZE_LARGE, curl_off_t(cap.bytes - resumedFrom))
        if resumedFrom > 0 { krn_curl_setopt_off_t(handle, CURLOPT_RESUME_FROM_LARGE, curl_off_t(resumedFrom)) }
        krn_curl_setopt_pointer(handle, CURLOPT_WRITEDATA, context)
        krn_curl_setopt_write_function(handle) { data, size, count, context in
            let transfer = Unmanaged<CurlTransfer>.fromOpaque(context!).takeUnretainedValue()
            return transfer.write(UnsafeRawBufferPointer(start: data, count: size * count))
        }
        krn_curl_setopt_pointer(handle, CURLOPT_HEADERDATA, context)
        krn_curl_setopt_header_function(handle) { data, size, count, context in
            let transfer = Unmanaged<CurlTransfer>.fromOpaque(context!).takeUnretainedValue()
            transfer.header(String(decoding: UnsafeRawBufferPointer(start: data, count: size * count), as: UTF8.self))
            return size * count
        }
        // The last word on block rules: where libcurl connected, whatever the URL spelled.
        krn_curl_setopt_pointer(handle, CURLOPT_PREREQDATA, context)
        krn_curl_setopt_prereq_function(handle) { context, address, _, port, _ in
            let transfer = Unmanaged<CurlTransfer>.fromOpaque(context!).takeUnretainedValue()
            return transfer.admitsRequest(to: address.map { String(cString: $0) } ?? "", port: Int(port))
                ? CURL_PREREQFUNC_OK : CURL_PREREQFUNC_ABORT
        }
        krn_curl_setopt_long(handle, CURLOPT_NOPROGRESS, 0)
        krn_curl_setopt_pointer(handle, CURLOPT_XFERINFODATA, context)
        krn_curl_setopt_xferinfo_function(handle) { context, _, _, _, _ in
            Cancellation.requested ? 1 : 0
        }
    }

    /// Whether the request for `requestURL` may go to `address` port `port`, where libcurl has just connected.
    private func admitsRequest(to address: String, port: Int) -> Bool {
        guard let rule = redirects.mirrors.blockingPrefix(for: requestURL, connectedTo: address, port: port) else { return true }
        blockedConnection =
            "\(requestURL) led to a connection to \(address) port \(port), which the mirror config blocks (rule `block \(rule)`); "
            + "no request was sent there"
        return false
    }

    private func redirectTarget(_ handle: UnsafeMutableRawPointer) -> String? {
        var target: UnsafePointer<CChar>?
        krn_curl_getinfo_string(handle, CURLINFO_REDIRECT_URL, &target)
        return target.map { String(cString: $0) }
    }

    /// Hashes what the partial file holds; its length (up to a read that failed: the rest is fetched again).
    private func rehashExisting(into hasher: inout StreamingSHA256) -> Int64 {
        var total: Int64 = 0
        _ = try? FileSystem.readBlocks(fd) { block in
            hasher.update(block)
            total += Int64(block.count)
        }
        return total
    }

    private func header(_ line: String) {
        let lower = line.lowercased()
        if lower.hasPrefix("http/") { declaredLength = nil }
        if lower.hasPrefix("content-length:") {
            declaredLength = Int64(lower.dropFirst("content-length:".count).trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }

    private func write(_ bytes: UnsafeRawBufferPointer) -> Int {
        if let handle {
            var status = 0
            krn_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
            if (300..<400).contains(status) { return bytes.count }  // a redirect's body; run() follows it
        }
        let total = resumedFrom + received + Int64(bytes.count)
        guard total <= cap.bytes else {
            oversizeSeen = total
            return 0
        }
        if let failed = body.append(bytes) {
            writeErrno = failed
            return 0
        }
        received += Int64(bytes.count)
        onProgress(Int64(bytes.count))
        return bytes.count
    }

    private func classify(_ code: CURLcode, status: Int) -> TransferOutcome {
        let message = String(cString: curl_easy_strerror(code))
        if let oversizeSeen { return .oversized(seen: oversizeSeen) }
        if let blockedConnection { return .permanent(blockedConnection) }
        switch code {
        case CURLE_OK where (300..<400).contains(status):
            return .permanent("HTTP \(status) without a Location to follow")
        case CURLE_OK:
            return .complete
        case CURLE_FILESIZE_EXCEEDED:
            return .oversized(seen: resumedFrom + (declaredLength ?? 0))
        case CURLE_ABORTED_BY_CALLBACK:
            return .cancelled
        case CURLE_RANGE_ERROR:
            discardPartial()
            return .restart("the server ignored the Range request; starting over")
        case CURLE_HTTP_RETURNED_ERROR where status == 416:
            discardPartial()
            return .restart("the server refused the resume offset (HTTP 416); starting over")
        case CURLE_HTTP_RETURNED_ERROR where status >= 500 || status == 429 || status == 408:
            return .transient("HTTP \(status)")
        case CURLE_HTTP_RETURNED_ERROR:
            return .permanent("HTTP \(status)")
        case CURLE_WRITE_ERROR where writeErrno != 0:
            return .permanent("cannot write \(partialPath): \(String(cString: strerror(writeErrno)))")
        case CURLE_OPERATION_TIMEDOUT:
            return .transient("stalled: no data for \(settings.stallTimeout) s (\(message))")
        case CURLE_COULDNT_CONNECT, CURLE_PARTIAL_FILE, CURLE_RECV_ERROR, CURLE_SEND_ERROR, CURLE_GOT_NOTHING,
            CURLE_SSL_CONNECT_ERROR, CURLE_HTTP2, CURLE_HTTP2_STREAM:
            return .transient(message)
        default:
            return .permanent(message)
        }
    }

    private func discardPartial() {
        ftruncate(fd, 0)
        lseek(fd, 0, SEEK_SET)
        body = BodyWriter(fd: fd, hasher: StreamingSHA256())
        resumedFrom = 0
    }
}

/// A response body on its way into a file: gathered into 1 MiB blocks, each written with one
/// system call and hashed on a thread of its own while the next block arrives. libcurl hands a
/// body over 16 KiB at a time; written and hashed in line, the hash held the transfer up for a
/// third of its time. At most two blocks wait for the hash (memory stays flat). Each block is
/// started on its way to disk once written, so the fsync at the end waits for little.
/// Used from one thread (the transfer's); the hasher is touched only on `hashing`.
final class BodyWriter: @unchecked Sendable {
    static let blockSize = 1 << 20
    private let fd: Int32
    private var block: Data
    private var hasher: StreamingSHA256
    private let hashing = DispatchQueue(label: "krnative.fetch.hash")
    private let waiting = DispatchSemaphore(value: 2)

    init(fd: Int32, hasher: StreamingSHA256) {
        self.fd = fd
        self.hasher = hasher
        block = Data(capacity: Self.blockSize)
    }

    /// Adds `bytes`; the errno of a write that failed, else nil.
    func append(_ bytes: UnsafeRawBufferPointer) -> Int32? {
        block.append(bytes.assumingMemoryBound(to: UInt8.self))
        return block.count >= Self.blockSize ? flush() : nil
    }

    /// Writes what is gathered and hands it to the hash; the errno of a write that failed, else nil.
    func flush() -> Int32? {
        guard !block.isEmpty else { return nil }
        let full = block
        block = Data(capacity: Self.blockSize)
        let start = lseek(fd, 0, SEEK_CUR)
        if let failed = full.withUnsafeBytes({ FileSystem.writeAll(fd, $0) }) { return failed }
        if start >= 0 { FileSystem.startWriteback(fd, offset: Int64(start), length: full.count) }
        waiting.wait()
        hashing.async {
            self.hasher.update(full)
            self.waiting.signal()
        }
        return nil
    }

    /// The digest of every byte written (after what the hasher started with).
    func digest() -> SHA256Digest {
        _ = flush()
        return hashing.sync { hasher.finalize() }
    }
}

/// The libcurl this module links, for `krnative doctor` and manifests.
public enum CurlLibrary {
    public static var version: String { String(cString: curl_version()) }
}
