import CCurl
import Foundation
import KrnativeBase

/// URL rewriting rules, like Bazel's downloader config.
///
/// A file of lines, `#` starting a comment:
/// - `rewrite PREFIX REPLACEMENT`: a URL that starts with PREFIX is first tried with PREFIX replaced;
/// - `block URL`: URLs under URL (after rewriting) are never tried, nor followed as redirects, nor
///   requested from the address and port URL names, whatever the request's URL spelled (see `BlockedLocation`);
/// - `remote-cache URL`: the shared cache (as `--remote-cache URL`, which wins over it).
/// Read from `--mirrors FILE` or the file named by `KRNATIVE_MIRRORS`.
public struct MirrorConfig: Sendable, Equatable {
    public enum Rule: Sendable, Equatable {
        case rewrite(prefix: String, replacement: String)
        case block(prefix: String)
    }
    public var rules: [Rule]
    public var remoteCache: String?

    public init(rules: [Rule] = [], remoteCache: String? = nil) {
        self.rules = rules
        self.remoteCache = remoteCache
    }

    public static func load(from path: String) throws(UsageError) -> MirrorConfig {
        guard let data = try? FileSystem.readRegularFile(path), let text = String(data: data, encoding: .utf8) else {
            throw UsageError("cannot read the mirror config \(path) (from --mirrors or KRNATIVE_MIRRORS): \(FileSystem.whyUnreadable(path))")
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws(UsageError) -> MirrorConfig {
        var rules: [Rule] = []
        var remoteCache: String?
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let words = line.split(whereSeparator: \.isWhitespace).map(String.init)
            switch (words.first, words.count) {
            case (nil, _): continue
            case ("rewrite", 3): rules.append(.rewrite(prefix: words[1], replacement: words[2]))
            case ("block", 2): rules.append(.block(prefix: words[1]))
            case ("remote-cache", 2): remoteCache = words[1]
            default:
                throw UsageError(
                    "\(file):\(number + 1): cannot read '\(line.trimmingCharacters(in: .whitespaces))'; "
                        + "a line is `rewrite PREFIX REPLACEMENT`, `block PREFIX` or `remote-cache URL`")
            }
        }
        return MirrorConfig(rules: rules, remoteCache: remoteCache)
    }

    /// The URLs to try for `urls`, in order: each URL's rewrites first, then the URL itself,
    /// leaving out blocked ones and repeats.
    public func candidates(for urls: [String]) -> [String] {
        var result: [String] = []
        for url in urls {
            for case .rewrite(let prefix, let replacement) in rules where url.hasPrefix(prefix) {
                result.append(replacement + url.dropFirst(prefix.count))
            }
            result.append(url)
        }
        var seen = Set<String>()
        return result.filter { url in blockingPrefix(for: url) == nil && seen.insert(url).inserted }
    }

    /// The text of the first `block` rule that covers `url`; redirect targets are checked with it too.
    public func blockingPrefix(for url: String) -> String? {
        let location = BlockedLocation(url)
        for case .block(let prefix) in rules {
            guard let rule = BlockedLocation(prefix), let location else {
                if url.hasPrefix(prefix) { return prefix }
                continue
            }
            if location.isCovered(by: rule) { return prefix }
        }
        return nil
    }

    /// The text of the first `block` rule that covers a request for `url` sent to `address` port
    /// `port`: what libcurl connected to, checked before each request goes out, so a name that
    /// resolves to a blocked address reaches it no more than the address itself.
    public func blockingPrefix(for url: String, connectedTo address: String, port: Int) -> String? {
        guard var location = BlockedLocation(url) else { return nil }
        location.host = BlockedLocation.canonicalHost(address)
        location.port = port
        for case .block(let prefix) in rules {
            if let rule = BlockedLocation(prefix), location.isCovered(by: rule) { return prefix }
        }
        return nil
    }
}

/// A URL as the server it reaches sees it, parsed by libcurl's own parser (so a block rule reads a
/// URL exactly as the transfer will): scheme, host, port (defaulted by scheme), path. User info is
/// left out; a numeric host is the address it names (`2130706433`, `0x7f.1` and `127.0.0.1` are
/// one), and `localhost`, `127.0.0.1`, `::1`, `0.0.0.0` and `::` are all this machine's loopback.
/// The path has its dot segments removed and its escapes decoded.
public struct BlockedLocation: Sendable, Equatable {
    public var scheme: String
    public var host: String
    public var port: Int
    public var path: String

    /// nil when libcurl cannot parse `url` or it names no host.
    public init?(_ url: String) {
        guard let handle = curl_url() else { return nil }
        defer { curl_url_cleanup(handle) }
        guard curl_url_set(handle, CURLUPART_URL, url, UInt32(CURLU_NON_SUPPORT_SCHEME)) == CURLUE_OK else { return nil }
        func part(_ which: CURLUPart, _ flags: Int32 = 0) -> String? {
            var value: UnsafeMutablePointer<CChar>?
            guard curl_url_get(handle, which, &value, UInt32(flags)) == CURLUE_OK, let value else { return nil }
            defer { curl_free(value) }
            return String(cString: value)
        }
        guard let scheme = part(CURLUPART_SCHEME), let host = part(CURLUPART_HOST), !host.isEmpty else { return nil }
        self.scheme = scheme.lowercased()
        self.host = Self.canonicalHost(host)
        port = part(CURLUPART_PORT, CURLU_DEFAULT_PORT).flatMap { Int($0) } ?? 0
        path = part(CURLUPART_PATH, CURLU_URLDECODE) ?? "/"
    }

    /// Whether the location is this machine, as written (no lookup): a loopback name or any
    /// 127.0.0.0/8 address in whatever numeric spelling.
    public var isThisMachine: Bool {
        var address = in_addr()
        return host == "localhost" || (inet_pton(AF_INET, host, &address) == 1 && UInt32(bigEndian: address.s_addr) >> 24 == 127)
    }

    /// Whether a request for this location is one `rule` blocks: same scheme, host and port, and a path under the rule's.
    public func isCovered(by rule: BlockedLocation) -> Bool {
        scheme == rule.scheme && host == rule.host && port == rule.port && path.hasPrefix(rule.path)
    }

    /// The host as the address it names where that needs no DNS: IPv4 in any numeric spelling and IPv6
    /// in canonical form (an IPv4-mapped one as IPv4), loopback as `localhost`; other names case-folded.
    static func canonicalHost(_ text: String) -> String {
        var name = text.lowercased()
        if name.hasPrefix("["), name.hasSuffix("]") { name = String(name.dropFirst().dropLast()) }
        if let zone = name.firstIndex(of: "%") { name = String(name[..<zone]) }
        while name.hasSuffix(".") { name.removeLast() }
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_aton(name, &v4) != 0 {
            name = dotted(v4)
        } else if inet_pton(AF_INET6, name, &v6) == 1 {
            let bytes = withUnsafeBytes(of: v6) { Array($0) }
            if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff {
                name = bytes[12...].map(String.init).joined(separator: ".")
            } else {
                var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
                name = inet_ntop(AF_INET6, &v6, &buffer, socklen_t(buffer.count)).map { String(cString: $0) } ?? name
            }
        }
        let loopback: Set<String> = ["localhost", "127.0.0.1", "::1", "0.0.0.0", "::"]
        return loopback.contains(name) || name.hasSuffix(".localhost") ? "localhost" : name
    }

    private static func dotted(_ address: in_addr) -> String {
        withUnsafeBytes(of: address.s_addr) { $0.map(String.init).joined(separator: ".") }
    }
}
