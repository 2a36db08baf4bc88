import Foundation
import KrnativeBase
import Lock

/// Why an input could not be had.
public enum FetchError: KrnativeError {
    /// Every URL was tried; `attempts` says what each gave; `wrongBytes` of them sent bytes that are
    /// not the input (another hash or tree, not an archive, more than the pinned size).
    case exhausted(input: String, attempts: [String], wrongBytes: Int = 0)
    case hashMismatch(input: String, url: String, expected: SHA256Digest, actual: SHA256Digest, quarantinedAt: String)
    case treeMismatch(input: String, url: String, expected: SHA256Digest, actual: SHA256Digest, quarantinedAt: String)
    /// `--offline`, and the store lacks it.
    case missingOffline(input: LockedInput, lockPath: String)
    case pipFailed(input: String, reason: String)
    /// The server offered more bytes than the lock pins (or than the default cap where it pins none).
    case oversized(input: String, url: String, cap: Int64, pinned: Bool, seen: Int64)
    /// `--offline`, and an entry could only be completed by downloading it.
    case offlineDownload(input: String, urls: [String])
    case cancelled

    public var description: String {
        switch self {
        case .exhausted(let input, let attempts, _):
            return "could not fetch \(input); every source failed:\n" + attempts.map { "  - \($0)" }.joined(separator: "\n")
        case .hashMismatch(let input, let url, let expected, let actual, let quarantine):
            return "\(input): \(url) sent a file whose sha256 is \(actual), but the lock pins \(expected); "
                + "not admitted (kept in \(quarantine))"
        case .treeMismatch(let input, let url, let expected, let actual, let quarantine):
            return "\(input): the archive from \(url) unpacks to tree \(actual), but the lock pins tree \(expected); "
                + "not admitted (kept in \(quarantine))"
        case .missingOffline(let input, _):
            return "\(input.name) \(input.version) (\(input.filename), \(Self.pin(of: input))) is not in the store and --offline forbids downloading it; "
                + "it comes from \(Self.sources(of: input).joined(separator: " | "))"
        case .pipFailed(let input, let reason):
            return "\(input): pip download failed: \(reason)"
        case .oversized(let input, let url, let cap, let pinned, let seen):
            let limit = pinned ? "the lock pins \(cap) bytes" : "the cap for an entry without a pinned size is \(cap) bytes"
            return "\(input): \(url) sent more than the input's size: \(limit), the server offered \(seen) bytes; "
                + "the transfer was stopped and its partial file removed"
        case .offlineDownload(let input, let urls):
            return "\(input): --offline forbids downloading \(urls.joined(separator: " | ")); "
                + "give --file with a local copy to hash it, or drop --offline"
        case .cancelled:
            return "cancelled; partial downloads are kept in the store and resume on the next run"
        }
    }
    /// "sha256 H", "tree T" or both: what the lock pins `input` by.
    static func pin(of input: LockedInput) -> String {
        [input.sha256.map { "sha256 \($0)" }, input.treeSha256.map { "tree \($0)" }].compactMap { $0 }.joined(separator: ", ")
    }

    static func sources(of input: LockedInput) -> [String] {
        input.urls.isEmpty ? (input.pip.map { ["pip: \($0.requirement)"] } ?? ["no URL"]) : input.urls
    }

    /// What `--offline` lacks as one table, and the one way to bring it: `selection` (`--target T`,
    /// `--all`) fetched on a machine with network and carried here in a bundle.
    static func offlineReport(missing inputs: [LockedInput], lockPath: String, selection: String) -> String {
        let width = inputs.map(\.name.count).max() ?? 0
        var lines = [(inputs.count == 1 ? "1 input is" : "\(inputs.count) inputs are") + " not in the store, and --offline forbids downloading:"]
        for input in inputs {
            lines.append("  " + input.name.padding(toLength: width, withPad: " ", startingAt: 0) + "  \(input.filename)  \(pin(of: input))  from \(sources(of: input)[0])")
        }
        lines.append("On a machine with network, fetch them and carry them here in a bundle:")
        lines.append("  krnative fetch --lock \(lockPath) \(selection) && krnative bundle export inputs.tar --lock \(lockPath) \(selection)")
        lines.append("Then here: krnative bundle import inputs.tar   (or a file at a time: krnative store import --lock \(lockPath) FILE)")
        return lines.joined(separator: "\n")
    }

    public var exitCode: Int32 {
        switch self {
        case .missingOffline, .offlineDownload: ExitStatus.missingInput
        case .hashMismatch, .treeMismatch, .oversized: ExitStatus.integrity
        case .exhausted(_, _, let wrongBytes) where wrongBytes > 0: ExitStatus.integrity
        case .cancelled: ExitStatus.interrupted
        default: ExitStatus.fetch
        }
    }
}
