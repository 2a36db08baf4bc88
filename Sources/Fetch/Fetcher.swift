import Foundation
import Inputs
import KrnativeBase
import Lock
import Store
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// How `krnative fetch` behaves.
public struct FetchOptions: Sendable {
    /// Open no socket and run no pip: report what the store lacks.
    public var offline = false
    /// Transfers at once.
    public var jobs = 4
    /// Attempts per URL before moving to the next mirror.
    public var attemptsPerURL = 3
    /// First pause between attempts; doubles each time.
    public var retryDelay: Double = 1
    public var mirrors = MirrorConfig()
    public var transfer = TransferSettings()
    /// The Python whose pip downloads wheels.
    public var python = "python3"
    /// The lock's path, for the commands printed when an input is missing.
    public var lockPath = Lockfile.defaultFileName
    /// The most bytes a download may bring when the lock pins no exact size (sources are pinned
    /// by tree, so their recorded size is not exact either): 1 GiB.
    public var unpinnedSizeCap: Int64 = 1 << 30
    /// A shared cache tried before the lock's URLs and given what they bring (`--remote-cache`).
    public var remoteCache: RemoteCache?
    /// Hash an input the store holds again before saying it is there (`krnative fetch`): a
    /// corrupted entry is quarantined, then fetched again, or with `offline` reported. A build
    /// leaves this off: it hashes each input again where it uses it.
    public var rehashPresent = false

    public init() {}

    /// The pinned size of `input`, or the default cap.
    func sizeCap(for input: LockedInput) -> SizeCap {
        if let size = input.size, input.kind != .source { return SizeCap(bytes: size, pinned: true) }
        return SizeCap(bytes: unpinnedSizeCap, pinned: false)
    }
}

/// What happened to each input.
public struct FetchReport: Sendable, Codable {
    public struct Item: Sendable, Codable {
        public enum Status: String, Sendable, Codable { case present, fetched, missing, failed }
        public var name: String
        public var kind: LockedInput.Kind
        public var version: String
        public var status: Status
        public var sha256: SHA256Digest?
        public var size: Int64?
        public var from: String?
        public var error: String?
        /// Why it is missing or failed, as a value (`error` says it in words; only that is encoded).
        public var cause: (any KrnativeError)? = nil

        enum CodingKeys: String, CodingKey { case name, kind, version, status, sha256, size, from, error }
    }
    public var items: [Item]
    public var failures: [Item] { items.filter { $0.status == .missing || $0.status == .failed } }

    /// The inputs that could not be had, each with its cause. Its exit status is the causes':
    /// integrity when any source sent wrong bytes (that is what a script must not retry blindly),
    /// else the one they share (66: all missing offline), else a fetch failure.
    public struct Failed: KrnativeError {
        public var failures: [Item]
        /// The options that chose what was fetched (`--target T`, `--all`), for the advice.
        public var selection: String
        public init(_ failures: [Item], selection: String) {
            self.failures = failures
            self.selection = selection
        }
        /// Each failure in a line (its own words), and what `--offline` lacks as one table with
        /// the one command that brings it.
        public var description: String {
            var (lines, missing, lockPath) = ([String](), [LockedInput](), "")
            for failure in failures {
                if case .missingOffline(let input, let path)? = failure.cause as? FetchError {
                    (missing, lockPath) = (missing + [input], path)
                } else {
                    lines.append("\(failure.name): \(failure.error ?? "failed")")
                }
            }
            if !missing.isEmpty { lines.append(FetchError.offlineReport(missing: missing, lockPath: lockPath, selection: selection)) }
            return lines.joined(separator: "\n")
        }
        public var exitCode: Int32 {
            let statuses = Set(failures.map { $0.cause?.exitCode ?? ExitStatus.fetch })
            if statuses.contains(ExitStatus.integrity) { return ExitStatus.integrity }
            return statuses.count == 1 ? statuses.first! : ExitStatus.fetch
        }
    }
}

/// Brings every input of a lock into the store (docs/design.md §2.3): mirrors in order, retries with
/// backoff, resume with `Range` (also after the process was killed), bounded parallelism, one
/// `flock` per entry so concurrent krnative processes never download the same file twice.
public struct Fetcher: Sendable {
    public let resolver: InputResolver
    public let options: FetchOptions
    public let progress: ProgressReporter

    public init(resolver: InputResolver, options: FetchOptions, progress: ProgressReporter = ProgressReporter()) {
        self.resolver = resolver
        self.options = options
        self.progress = progress
    }

    /// Fetches `inputs`, `options.jobs` at a time; never throws: the report says what failed.
    public func fetch(_ inputs: [LockedInput]) -> FetchReport {
        let located = inputs.map { resolver.located($0) }
        let sizes = zip(inputs, located).compactMap { input, digest in digest == nil ? options.sizeCap(for: input) : nil }
        progress.plan(count: inputs.count, bytes: sizes.allSatisfy(\.pinned) ? sizes.reduce(0) { $0 + $1.bytes } : nil)
        let results = ResultSlots<FetchReport.Item>(count: inputs.count)
        let next = Counter()
        let workers = max(1, min(options.jobs, inputs.count))
        let group = DispatchGroup()
        for _ in 0..<workers {
            group.enter()
            let thread = Thread {
                while let index = next.take(below: inputs.count) {
                    results[index] = fetchOne(inputs[index], located: located[index])
                }
                group.leave()
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
        group.wait()
        progress.done()
        return FetchReport(items: results.values)
    }

    /// `digest`: the store entry that holds `input`, if one does.
    private func item(_ input: LockedInput, _ status: FetchReport.Item.Status, digest: SHA256Digest? = nil, from: String? = nil, error: (any Error)? = nil) -> FetchReport.Item {
        FetchReport.Item(
            name: input.name, kind: input.kind, version: input.version, status: status,
            sha256: digest ?? input.sha256, size: digest.flatMap { FileSystem.size(of: resolver.store.path(for: $0)) },
            from: from, error: error.map { "\($0)" }, cause: error as? any KrnativeError)
    }

    /// `located`: the store entry that held `input` when the fetch began.
    func fetchOne(_ input: LockedInput, located: SHA256Digest?) -> FetchReport.Item {
        if let digest = located {
            if options.rehashPresent {
                do { _ = try resolver.store.verifiedPath(for: digest) } catch {
                    progress.note("\(input.name): \(error)")
                    return options.offline ? item(input, .failed, error: error) : fetchOne(input, located: nil)
                }
            }
            if let cache = options.remoteCache, cache.upload { share(input, digest: digest, with: cache, knownMissing: false) }
            return item(input, .present, digest: digest)
        }
        if options.offline {
            return item(input, .missing, error: FetchError.missingOffline(input: input, lockPath: options.lockPath))
        }
        let entryLock: FileLock
        do { entryLock = try resolver.store.lock(resolver.key(for: input)) } catch { return item(input, .failed, error: error) }
        defer { entryLock.unlock() }
        // Another process may have admitted it while this one waited for the lock.
        if let digest = resolver.located(input) { return item(input, .present, digest: digest) }
        do {
            let (digest, from) = try download(input)
            return item(input, .fetched, digest: digest, from: from)
        } catch {
            return item(input, .failed, error: error)
        }
    }

    private func download(_ input: LockedInput) throws(FetchError) -> (SHA256Digest, String) {
        if let cache = options.remoteCache, let digest = input.sha256 ?? Self.treeRecord(input, in: cache),
            let found = fromRemoteCache(input, digest: digest, cache: cache)
        {
            return (found, cache.base)
        }
        let (digest, from) = try downloadFromSources(input)
        if let cache = options.remoteCache, cache.upload { share(input, digest: digest, with: cache, knownMissing: true) }
        return (digest, from)
    }

    /// A source pinned by its tree alone is found in the cache through `/ac/<tree key>`, which
    /// names the archive's sha256 (the archive is then checked against the tree as a download is).
    static func treeKey(_ tree: SHA256Digest) -> SHA256Digest { SHA256Digest.of(Data("krnative source tree v1 \(tree.hex)".utf8)) }

    static func treeRecord(_ input: LockedInput, in cache: RemoteCache) -> SHA256Digest? {
        guard input.kind == .source, let tree = input.treeSha256,
            let record = cache.actionResult(treeKey(tree), what: "\(input.name) \(input.version)'s archive")
        else { return nil }
        return SHA256Digest(hex: String(decoding: record, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Gives the cache the input's file (unless it has it) and, for a source, the tree record.
    private func share(_ input: LockedInput, digest: SHA256Digest, with cache: RemoteCache, knownMissing: Bool) {
        let what = "\(input.name) \(input.version)"
        let file = resolver.store.path(for: digest)
        if knownMissing { cache.put(file: file, digest: digest, what: what) } else { cache.ensure(file: file, digest: digest, what: what) }
        if input.kind == .source, let tree = input.treeSha256 {
            cache.put(actionResult: Data("\(digest.hex)\n".utf8), key: Self.treeKey(tree), what: "\(what)'s tree record")
        }
    }

    /// The input from the remote cache's `/cas/`, checked as a download is (a source's tree too).
    private func fromRemoteCache(_ input: LockedInput, digest: SHA256Digest, cache: RemoteCache) -> SHA256Digest? {
        guard let file = cache.content(digest, sizeCap: options.sizeCap(for: input).bytes, what: "\(input.name) \(input.version)") else {
            return nil
        }
        guard case .accepted = resolver.check(file: file, digest: digest, for: input) else {
            cache.reject("\(cache.base)/cas/\(digest.hex) matches its hash but is not \(input.name)'s archive as the lock pins it; ignored")
            FileSystem.remove(file)
            return nil
        }
        do { try resolver.admit(temporary: file, digest: digest, for: input) } catch {
            FileSystem.remove(file)
            return nil
        }
        progress.ended(input.name, "fetched \(input.name) \(input.version) from the remote cache, sha256 \(digest)")
        return digest
    }

    private func downloadFromSources(_ input: LockedInput) throws(FetchError) -> (SHA256Digest, String) {
        var attempts = Attempts()
        for url in options.mirrors.candidates(for: input.urls) {
            if let digest = try fetch(input, from: url, attempts: &attempts) { return (digest, url) }
        }
        if let pip = input.pip {
            do { return (try PipDownload(options: options, resolver: resolver).fetch(input, query: pip, progress: progress), "pip") } catch {
                attempts.append("pip \(pip.requirement): \(error)")
            }
        }
        if attempts.lines.isEmpty { attempts.append("no URL is left after the mirror config's block rules") }
        throw .exhausted(input: "\(input.name) \(input.version)", attempts: attempts.lines, wrongBytes: attempts.wrongBytes)
    }

    /// Tries one URL up to `attemptsPerURL` times; nil when it gave up on this URL.
    private func fetch(_ input: LockedInput, from url: String, attempts: inout Attempts) throws(FetchError) -> SHA256Digest? {
        let partial = resolver.store.partialPath(for: resolver.key(for: input))
        let started = Date()
        progress.began(input.name, from: url)
        for attempt in 1...max(1, options.attemptsPerURL) {
            let transfer = CurlTransfer(
                url: url, partialPath: partial, settings: options.transfer, cap: options.sizeCap(for: input),
                redirects: RedirectPolicy(mirrors: options.mirrors)
            ) { [progress] in progress.advanced(by: $0) }
            let outcome = transfer.run()
            // A partial is kept to resume from; an empty one holds nothing to resume.
            if case .complete = outcome {} else if FileSystem.size(of: partial) == 0 { FileSystem.remove(partial) }
            switch outcome {
            case .complete:
                let resumed = transfer.resumedFrom > 0
                switch verify(input, transfer: transfer, from: url, started: started, attempts: &attempts) {
                case .admitted(let digest): return digest
                case .rejected where resumed && attempt < options.attemptsPerURL: continue  // maybe a stale partial: once more from zero
                case .rejected, .failed:
                    progress.ended(input.name, "trying the next source for \(input.name)")
                    return nil
                }
            case .cancelled:
                progress.ended(input.name, "cancelled \(input.name); \(FileSystem.size(of: partial) ?? 0) bytes kept for resume")
                throw .cancelled
            case .oversized(let seen):
                FileSystem.remove(partial)
                let cap = options.sizeCap(for: input)
                let error = FetchError.oversized(input: input.name, url: url, cap: cap.bytes, pinned: cap.pinned, seen: seen)
                attempts.sentWrongBytes(error.description)
                progress.ended(input.name, error.description + "; trying the next source")
                return nil
            case .restart(let reason):
                progress.note("\(input.name): \(url): \(reason)")
                attempts.append("\(url): \(reason)")
            case .transient(let reason):
                attempts.append("\(url): \(reason) (attempt \(attempt) of \(options.attemptsPerURL))")
                guard attempt < options.attemptsPerURL else { break }
                let pause = options.retryDelay * pow(2, Double(attempt - 1)) * Double.random(in: 0.8...1.2)
                progress.note("\(input.name): \(url): \(reason); retrying in \(String(format: "%.1f", pause)) s")
                Thread.sleep(forTimeInterval: pause)
            case .permanent(let reason):
                attempts.append(reason.hasPrefix(url) ? reason : "\(url): \(reason)")
                progress.ended(input.name, "\(input.name): \(url): \(reason); trying the next source")
                return nil
            }
        }
        progress.ended(input.name, "\(input.name): giving up on \(url)")
        return nil
    }

    /// What each source gave, in words, and how many of them sent bytes that are not the input.
    private struct Attempts {
        var lines: [String] = []
        var wrongBytes = 0
        mutating func append(_ line: String) { lines.append(line) }
        mutating func sentWrongBytes(_ line: String) {
            lines.append(line)
            wrongBytes += 1
        }
    }

    private enum Verification {
        case admitted(SHA256Digest)
        /// The bytes are not the input's; they were quarantined.
        case rejected
        /// The bytes were right but could not be admitted.
        case failed
    }

    /// Checks a complete partial file and admits it, or quarantines it under the hash it has.
    private func verify(
        _ input: LockedInput, transfer: CurlTransfer, from url: String, started: Date, attempts: inout Attempts
    ) -> Verification {
        let partial = transfer.partialPath
        let (digest, size) = transfer.result
        let verdict = resolver.check(file: partial, digest: digest, for: input)
        guard case .accepted = verdict else {
            let quarantined = resolver.store.quarantine(partial, reason: "found-sha256-\(digest.hex)")
            let error: String =
                switch verdict {
                case .wrongTree(let expected, let actual):
                    FetchError.treeMismatch(input: input.name, url: url, expected: expected, actual: actual, quarantinedAt: quarantined)
                        .description
                case .unreadable(let reason):
                    "\(url): the file (sha256 \(digest)) is not a readable archive (\(reason)); kept in \(quarantined)"
                default:
                    FetchError.hashMismatch(
                        input: input.name, url: url, expected: input.sha256 ?? digest, actual: digest, quarantinedAt: quarantined
                    ).description
                }
            progress.note(error)
            attempts.sentWrongBytes(error)
            return .rejected
        }
        do { try resolver.admit(temporary: partial, digest: digest, for: input) } catch {
            attempts.append("\(url): \(error)")
            progress.ended(input.name, "failed \(input.name): \(error)")
            return .failed
        }
        let seconds = String(format: "%.1f", Date().timeIntervalSince(started))
        let resumed = transfer.resumedFrom > 0 ? ", resumed at byte \(transfer.resumedFrom)" : ""
        progress.ended(input.name, "fetched \(input.name) \(input.version): \(size) bytes in \(seconds) s\(resumed), sha256 \(digest)")
        return .admitted(digest)
    }
}

/// A fixed number of result slots filled from several threads.
final class ResultSlots<Value: Sendable>: Sendable {
    private let slots: Mutex<[Value?]>
    init(count: Int) { slots = Mutex(Array(repeating: nil, count: count)) }
    subscript(index: Int) -> Value? {
        get { slots.withLock { $0[index] } }
        set { slots.withLock { $0[index] = newValue } }
    }
    var values: [Value] { slots.withLock { $0.compactMap { $0 } } }
}

/// Hands out 0, 1, 2, … to worker threads.
final class Counter: Sendable {
    private let next = Mutex(0)
    func take(below limit: Int) -> Int? {
        next.withLock { value in
            guard value < limit else { return nil }
            defer { value += 1 }
            return value
        }
    }
}
