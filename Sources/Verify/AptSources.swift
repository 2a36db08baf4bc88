import Foundation
import KrnativeBase

/// This machine's apt sources, read for the smoke test's root file systems: which entries are
/// Debian's archive (not a third party's), and what mmdebstrap is given to reach a Debian release
/// through them.
public struct AptSources: Sendable, Equatable {
    /// One source: a deb822 paragraph or a one-line `deb` entry.
    public struct Entry: Sendable, Equatable {
        public var types: [String]
        public var uris: [String]
        public var suites: [String]
        public var components: [String]
        /// The keyring file(s) or fingerprints of `Signed-By`/`signed-by=`; nil when not given.
        public var signedBy: String?
        public var enabled = true

        public init(types: [String], uris: [String], suites: [String], components: [String], signedBy: String? = nil, enabled: Bool = true) {
            self.types = types
            self.uris = uris
            self.suites = suites
            self.components = components
            self.signedBy = signedBy
            self.enabled = enabled
        }
    }
    public struct File: Sendable, Equatable {
        public var path: String
        public var entries: [Entry]
    }

    public var files: [File]
    /// The host's Debian release (`VERSION_CODENAME` of /etc/os-release): the suite its sources name.
    public var release: String?

    public init(files: [File], release: String?) {
        self.files = files
        self.release = release
    }

    /// /etc/apt/sources.list and sources.list.d/*.list and *.sources, and /etc/os-release.
    public static func host(etc: String = "/etc") -> AptSources {
        var paths = [etc + "/apt/sources.list"]
        let directory = etc + "/apt/sources.list.d"
        for name in ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
        where name.hasSuffix(".sources") || name.hasSuffix(".list") {
            paths.append(directory + "/" + name)
        }
        let files = paths.compactMap { path in
            (try? String(contentsOfFile: path, encoding: .utf8)).map { parse(path: path, text: $0) }
        }
        let osRelease = (try? String(contentsOfFile: etc + "/os-release", encoding: .utf8)) ?? ""
        return AptSources(files: files, release: osReleaseField("VERSION_CODENAME", in: osRelease))
    }

    /// A field of an os-release file, unquoted.
    public static func osReleaseField(_ name: String, in text: String) -> String? {
        for line in text.split(separator: "\n") where line.hasPrefix(name + "=") {
            let value = line.dropFirst(name.count + 1).trimmingCharacters(in: CharacterSet(charactersIn: "\"' "))
            return value.isEmpty ? nil : value
        }
        return nil
    }

    /// A sources file: deb822 paragraphs when it is a `.sources` file, else one-line entries.
    public static func parse(path: String, text: String) -> File {
        File(path: path, entries: path.hasSuffix(".sources") ? parseDeb822(text) : parseOneLine(text))
    }

    static func parseDeb822(_ text: String) -> [Entry] {
        var entries: [Entry] = []
        var fields: [String: String] = [:], last: String?
        func finish() {
            defer { fields = [:]; last = nil }
            guard !fields.isEmpty else { return }
            func words(_ key: String) -> [String] { (fields[key] ?? "").split(whereSeparator: \.isWhitespace).map(String.init) }
            entries.append(
                Entry(
                    types: words("types"), uris: words("uris"), suites: words("suites"), components: words("components"),
                    signedBy: fields["signed-by"], enabled: fields["enabled"]?.lowercased() != "no"))
        }
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.trimmingCharacters(in: .whitespaces).isEmpty { finish(); continue }
            if line.hasPrefix("#") { continue }
            if line.first == " " || line.first == "\t" {
                // A continuation line (an inline key's armour, say).
                if let last { fields[last, default: ""] += "\n" + line.trimmingCharacters(in: .whitespaces) }
                continue
            }
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = line[..<colon].lowercased()
            fields[key] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            last = key
        }
        finish()
        return entries
    }

    static func parseOneLine(_ text: String) -> [Entry] {
        text.split(separator: "\n").compactMap { line -> Entry? in
            let content = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            var words = content.split(whereSeparator: \.isWhitespace).map(String.init)
            guard let type = words.first, type == "deb" || type == "deb-src" else { return nil }
            words.removeFirst()
            var options: [String] = []
            if words.first?.hasPrefix("[") == true {
                while let word = words.first {
                    words.removeFirst()
                    options.append(word)
                    if word.hasSuffix("]") { break }
                }
            }
            let signedBy = options.joined(separator: " ").trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
                .split(separator: " ").first { $0.hasPrefix("signed-by=") }.map { String($0.dropFirst("signed-by=".count)) }
            guard words.count >= 2 else { return nil }
            return Entry(types: [type], uris: [words[0]], suites: [words[1]], components: Array(words.dropFirst(2)), signedBy: signedBy)
        }
    }

    /// Which part of the host's release a suite of its sources is: the release itself (""), or
    /// its `-updates` or `-security` pocket (named so from bullseye on). Backports and the rest
    /// are not the release: nil.
    func pocket(of hostSuite: String) -> String? {
        guard let release else { return nil }
        return ["", "-updates", "-security"].first { hostSuite == release + $0 }
    }

    /// Debian's own archive: an entry signed by a debian-archive keyring or, with no Signed-By,
    /// one with Debian's `main` for this machine's release. A third party's (its own key, its own
    /// suites) is not.
    public func isDebianArchive(_ entry: Entry) -> Bool {
        if let signedBy = entry.signedBy {
            return signedBy.split(whereSeparator: \.isWhitespace).contains { ($0.split(separator: "/").last ?? "").hasPrefix("debian-archive-") }
        }
        return entry.components.contains("main") && entry.suites.contains { pocket(of: $0) != nil }
    }

    /// `deb` lines for `suite` through the entry's URIs, one per URI and pocket. Another release
    /// than the host's gets no `-security` pocket: its root is the release as published (its last
    /// point release and `-updates`), which decides what a volume may expect of it as well; an old
    /// release's security pocket keeps moving (LTS), and a mirror need not carry every
    /// architecture of it (bullseye-security's arm64 packages are partly missing from some).
    func lines(_ entry: Entry, for suite: String) -> [String] {
        // An inline key (several lines) cannot go on one line; apt's trusted keys verify then.
        var options = ""
        if let keys = entry.signedBy, !keys.contains("\n") {
            options = "[signed-by=\(keys.split(whereSeparator: \.isWhitespace).joined(separator: ","))] "
        }
        let pockets = entry.suites.compactMap(pocket(of:)).filter { suite == release || $0 != "-security" }
        let components = entry.components.joined(separator: " ")
        return entry.uris.flatMap { uri in pockets.map { "deb \(options)\(uri) \(suite + $0) \(components)" } }
    }

    /// mmdebstrap's mirror arguments for a root of `suite`, from Debian's archive only: for the
    /// host's own release, each sources file as it is (when all its binary entries are Debian's;
    /// else `deb` lines of those that are); for another release, a `deb` line per URI and pocket
    /// of the host's Debian entries with the release's suite in place of the host's (the same
    /// archive serves the releases it still keeps): `deb URI bullseye main`.
    public func mirrors(for suite: String) throws -> [String] {
        guard let release else {
            throw UsageError("/etc/os-release names no release (VERSION_CODENAME): krnative smoke reaches Debian through this machine's Debian apt sources")
        }
        var mirrors: [String] = []
        for file in files {
            let binary = file.entries.filter { $0.enabled && $0.types.contains("deb") }
            let debian = binary.filter(isDebianArchive)
            if debian.isEmpty { continue }
            if suite == release && debian.count == binary.count {
                mirrors.append(file.path)
            } else {
                mirrors += debian.flatMap { lines($0, for: suite) }
            }
        }
        guard !mirrors.isEmpty else {
            throw UsageError(
                "no Debian archive among this machine's apt sources (/etc/apt) for \(suite): mmdebstrap needs one to make the smoke root file system")
        }
        return mirrors
    }
}
