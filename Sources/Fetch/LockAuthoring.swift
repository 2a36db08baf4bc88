import Archive
import Foundation
import Inputs
import KrnativeBase
import Lock
import Store

/// Completes lock entries from a file or a URL, so nobody computes hashes by hand
/// (`krnative lock add`). The file is admitted to the store on the way.
public struct LockAuthoring: Sendable {
    public let resolver: InputResolver
    public let options: FetchOptions

    public init(resolver: InputResolver, options: FetchOptions) {
        self.resolver = resolver
        self.options = options
    }

    /// Fills in `draft`'s sha256, size and (for sources) tree hash from `file`, or else by
    /// downloading its first reachable URL. For a source read from a local file only the tree hash
    /// is pinned: the local bytes need not be the bytes its URL serves.
    public func complete(_ draft: LockedInput, file: String?) throws -> LockedInput {
        var input = draft
        let temp = resolver.store.temporaryPath("lock-add")
        defer { FileSystem.remove(temp) }
        let digest: SHA256Digest
        let size: Int64
        if let file {
            (digest, size) = try Store.copyHashing(from: file, to: temp)
        } else if draft.urls.isEmpty, let query = draft.pip {
            let chosen: String
            (digest, size, chosen) = try downloadWithPip(draft, query: query, to: temp)
            input.filename = chosen
        } else {
            (digest, size) = try download(draft, to: temp)
        }
        if input.kind == .source {
            input.treeSha256 = try TreeHash.ofArchive(at: temp)
            input.sha256 = file == nil ? digest : nil
            input.size = file == nil ? size : nil
        } else {
            input.sha256 = digest
            input.size = size
        }
        try resolver.admit(temporary: temp, digest: digest, for: input)
        return input
    }

    /// Has pip download `query` and copies the one file it chose to `temp`; refused under `--offline`.
    private func downloadWithPip(_ draft: LockedInput, query: LockedInput.PipQuery, to temp: String) throws -> (SHA256Digest, Int64, String) {
        guard !options.offline else { throw FetchError.offlineDownload(input: draft.name, urls: ["pip download \(query.requirement)"]) }
        let (directory, files) = try PipDownload(options: options, resolver: resolver).download(draft.name, query: query)
        defer { FileSystem.remove(directory) }
        guard files.count == 1, let chosen = files.first else {
            throw FetchError.pipFailed(input: draft.name, reason: "pip left \(files.count) files (\(files.joined(separator: ", "))) for \(query.requirement); give the exact requirement and platform tags")
        }
        let (digest, size) = try Store.copyHashing(from: directory + "/" + chosen, to: temp)
        return (digest, size, chosen)
    }

    /// Downloads the first reachable URL of `draft` to `temp`; refused under `--offline`.
    private func download(_ draft: LockedInput, to temp: String) throws(FetchError) -> (SHA256Digest, Int64) {
        guard !options.offline else { throw .offlineDownload(input: draft.name, urls: draft.urls) }
        var failures: [String] = []
        for url in options.mirrors.candidates(for: draft.urls) {
            FileSystem.remove(temp)
            let transfer = CurlTransfer(
                url: url, partialPath: temp, settings: options.transfer, cap: options.sizeCap(for: draft),
                redirects: RedirectPolicy(mirrors: options.mirrors)
            ) { _ in }
            switch transfer.run() {
            case .complete: return transfer.result
            case .cancelled: throw .cancelled
            case .oversized(let seen):
                let cap = options.sizeCap(for: draft)
                failures.append(FetchError.oversized(input: draft.name, url: url, cap: cap.bytes, pinned: cap.pinned, seen: seen).description)
            case .transient(let reason), .permanent(let reason), .restart(let reason):
                failures.append(reason.hasPrefix(url) ? reason : "\(url): \(reason)")
            }
        }
        throw .exhausted(input: draft.name, attempts: failures.isEmpty ? ["no URL is left after the mirror config's block rules"] : failures)
    }
}
