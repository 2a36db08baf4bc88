import Foundation
import KrnativeBase

/// URL rewriting rules, like Bazel's downloader config.
///
/// A file of lines, `#` starting a comment:
/// - `rewrite PREFIX REPLACEMENT`: a URL that starts with PREFIX is first tried with PREFIX replaced;
/// - `block PREFIX`: URLs that start with PREFIX (after rewriting) are never tried, nor followed as redirects;
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
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw UsageError("cannot read the mirror config \(path) (from --mirrors or KRNATIVE_MIRRORS)")
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

    /// The prefix of the first `block` rule that `url` matches; redirect targets are checked with it too.
    public func blockingPrefix(for url: String) -> String? {
        for case .block(let prefix) in rules where url.hasPrefix(prefix) { return prefix }
        return nil
    }
}
