import ArgumentParser
import Build
import Fetch
import Foundation
import Inputs
import KrnativeBase
import Lock
import Store

/// Options of every command that may download.
struct NetworkOptions: ParsableArguments {
    @Flag(help: "Open no socket and run no pip; fail, naming each input the store lacks. Default: off; env KRNATIVE_OFFLINE (1, true, yes, on).")
    var offline = false

    @Option(parsing: .unconditional, help: "Transfers at once.")
    var jobs = 4

    @Option(parsing: .unconditional, help: "Attempts per URL before the next mirror.")
    var retries = 3

    @Option(help: "Seconds before the first retry; doubles each time.")
    var retryDelay: Double = 1

    @Option(parsing: .unconditional, help: "Abort a transfer that receives nothing for this many seconds.")
    var stallTimeout = 30

    @Option(help: "Mirror config: lines `rewrite PREFIX REPLACEMENT` and `block PREFIX`. Default: none; env KRNATIVE_MIRRORS.")
    var mirrors: String?

    @Option(help: "The Python whose pip fetches wheels. Default: python3; env KRNATIVE_PYTHON.")
    var python: String?

    @Option(
        help: ArgumentHelp(
            "A shared cache in Bazel's HTTP remote cache protocol (bazel-remote, nginx WebDAV), tried before the lock's URLs and for build steps. Default: none; env KRNATIVE_REMOTE_CACHE, or `remote-cache URL` in the mirror config.",
            valueName: "url"))
    var remoteCache: String?

    @Flag(help: "Also write what this run fetched and built to the remote cache, its /ac/ entries signed. Default: off; env KRNATIVE_REMOTE_CACHE_UPLOAD.")
    var remoteCacheUpload = false

    @Option(
        help: ArgumentHelp(
            "The private key that signs what this machine uploads (made, mode 0600, with FILE.pub beside it, on the first upload when the default is absent). Default: $XDG_CACHE_HOME/krnative/remote-cache-key, else ~/.cache/krnative/remote-cache-key; env KRNATIVE_REMOTE_CACHE_KEY.",
            valueName: "file"))
    var remoteCacheKey: String?

    @Option(
        help: ArgumentHelp(
            "The public keys (.pub lines) whose signed /ac/ entries this machine uses; others are misses. Default: this machine's own key's .pub, if there is one; env KRNATIVE_REMOTE_CACHE_TRUST.",
            valueName: "file"))
    var remoteCacheTrust: String?

    @Flag(help: "Accept a plain http:// remote cache on another machine (http:// to this machine is always accepted). Default: off; env KRNATIVE_REMOTE_CACHE_ALLOW_HTTP.")
    var remoteCacheAllowHttp = false

    func validate() throws {
        try requirePositive(["--jobs": jobs, "--retries": retries, "--stall-timeout": stallTimeout])
        if retryDelay < 0 { throw ValidationError("--retry-delay must not be negative (got \(retryDelay))") }
    }

    /// The remote cache the command line, the environment or the mirror config names; none offline.
    func remoteCache(store: Store) throws -> RemoteCache? {
        let environment = ProcessInfo.processInfo.environment
        guard try !(offline || EnvironmentSetting.flag("KRNATIVE_OFFLINE") == true) else { return nil }
        let configured = try remoteCache ?? environment["KRNATIVE_REMOTE_CACHE"].flatMap { $0.isEmpty ? nil : $0 } ?? mirrorConfig()?.remoteCache
        guard let url = configured else { return nil }
        try RemoteCache.checkScheme(url, allowHTTP: remoteCacheAllowHttp || EnvironmentSetting.flag("KRNATIVE_REMOTE_CACHE_ALLOW_HTTP") == true)
        let upload = try remoteCacheUpload || EnvironmentSetting.flag("KRNATIVE_REMOTE_CACHE_UPLOAD") == true
        let explicitKey = remoteCacheKey ?? environment["KRNATIVE_REMOTE_CACHE_KEY"].flatMap { $0.isEmpty ? nil : $0 }
        let keyPath = explicitKey ?? Store.cacheDirectory() + "/remote-cache-key"
        var signer: CacheSigner?
        if upload {
            if explicitKey != nil {
                signer = try CacheSigner.load(from: keyPath)
            } else {
                let (made, created) = try CacheSigner.loadOrCreate(at: keyPath)
                if created {
                    Reporting.note(
                        "remote cache: made this machine's signing key \(keyPath); readers trust what it uploads by listing its public key "
                            + "(\(keyPath).pub) in their --remote-cache-trust file:\n  \(made.publicKeyLine)")
                }
                signer = made
            }
        }
        return RemoteCache(url: url, store: store, signer: signer, trust: try trust(ownKey: keyPath))
    }

    /// The keys this machine trusts: --remote-cache-trust / KRNATIVE_REMOTE_CACHE_TRUST, else its own key's `.pub`.
    func trust(ownKey: String) throws -> CacheTrust {
        let environment = ProcessInfo.processInfo.environment
        if let file = remoteCacheTrust ?? environment["KRNATIVE_REMOTE_CACHE_TRUST"].flatMap({ $0.isEmpty ? nil : $0 }) {
            return try CacheTrust.load(from: file)
        }
        guard FileSystem.exists(ownKey + ".pub") else {
            return CacheTrust(source: "no --remote-cache-trust, no KRNATIVE_REMOTE_CACHE_TRUST, no \(ownKey).pub")
        }
        return try CacheTrust.load(from: ownKey + ".pub")
    }

    func mirrorConfig() throws -> MirrorConfig? {
        let environment = ProcessInfo.processInfo.environment
        return try (mirrors ?? environment["KRNATIVE_MIRRORS"].flatMap({ $0.isEmpty ? nil : $0 })).map { try MirrorConfig.load(from: $0) }
    }

    func fetchOptions(lockPath: String, remoteCache: RemoteCache? = nil) throws -> FetchOptions {
        let environment = ProcessInfo.processInfo.environment
        var options = FetchOptions()
        options.remoteCache = remoteCache
        options.offline = try offline || EnvironmentSetting.flag("KRNATIVE_OFFLINE") == true
        options.jobs = max(1, jobs)
        options.attemptsPerURL = max(1, retries)
        options.retryDelay = max(0, retryDelay)
        options.transfer.stallTimeout = max(1, stallTimeout)
        options.python = python ?? environment["KRNATIVE_PYTHON"] ?? "python3"
        options.lockPath = lockPath
        if let config = try mirrorConfig() { options.mirrors = config }
        return options
    }
}

/// Which targets and host a command works for.
struct TargetSelection: ParsableArguments {
    @Option(name: .customLong("target"), help: "A target to work for (repeatable).")
    var targets: [Target] = []

    @Flag(help: "Every target.")
    var all = false

    @Option(help: "The machine the build will run on, for toolchains: x86_64-linux or aarch64-linux. Default: this machine.")
    var host: String?

    func resolved() throws -> (targets: [Target], host: HostPlatform) {
        guard all || !targets.isEmpty else { throw UsageError("name at least one --target, or --all") }
        guard !(all && !targets.isEmpty) else {
            throw UsageError("--all and --target \(targets.map(\.rawValue).joined(separator: ", ")) contradict each other: give one or the other")
        }
        return (all ? Target.allCases : targets, try resolvedHost())
    }

    /// The machine named by --host, else this one.
    func resolvedHost() throws -> HostPlatform {
        guard let host else { return .current }
        guard let parsed = HostPlatform(rawValue: host) else { throw UsageError("unknown --host '\(host)'; use x86_64-linux or aarch64-linux") }
        return parsed
    }
}

struct FetchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fetch",
        abstract: "Download every input the targets need into the store, verified by hash.",
        discussion: helpText(
            "Honours HTTPS_PROXY, HTTP_PROXY, NO_PROXY (through libcurl) and SSL_CERT_FILE / SSL_CERT_DIR.",
            examples: "krnative fetch --target manylinux-x86_64", "krnative fetch --all --jobs 8 --mirrors mirrors.conf", "krnative fetch --all --offline   # what is missing, without a connection"))

    @OptionGroup var inputs: InputOptions
    @OptionGroup var selection: TargetSelection
    @OptionGroup(title: "Which build (narrows the fetch to the inputs it uses)") var choices: InputChoiceOptions
    @OptionGroup var runner: RunnerChoice
    @OptionGroup var network: NetworkOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        try perform("fetch") {
            let (targets, host) = try selection.resolved()
            let lock = try Lockfile.load(from: inputs.lockPath)
            let hostOption = host == .current ? "" : " --host \(host)"
            // Without --toolchain or --runtime: every input any build of the targets may use there.
            let (wanted, options) =
                try runner.buildInputs(of: targets, host: host, lock: lock, project: inputs.project, choices: choices)
                ?? (lock.inputs(for: targets, host: host), Target.options(for: targets))
            _ = try fetchInputs(wanted, for: options + hostOption, inputs: inputs, network: network, json: output.json, rehashPresent: true)
        }
    }
}

/// Fetches `wanted`, which the options `selection` name (`--target T`: said in the advice when
/// inputs are missing), and reports; throws when anything is missing (naming `lockPath`, by
/// default the options' lock). `rehashPresent`: what the store holds is hashed again first.
func fetchInputs(
    _ wanted: [LockedInput], for selection: String, inputs: InputOptions, network: NetworkOptions, json: Bool, remoteCache: RemoteCache? = nil,
    lockPath: String? = nil, rehashPresent: Bool = false, summary: (String) -> Void = { print($0) }
) throws -> FetchReport {
    let store = try Store(root: inputs.storePath)
    let resolver = InputResolver(store: store)
    let cache = try remoteCache ?? network.remoteCache(store: store)
    var options = try network.fetchOptions(lockPath: lockPath ?? inputs.lockPath, remoteCache: cache)
    options.rehashPresent = rehashPresent
    let fetcher = Fetcher(resolver: resolver, options: options)
    let report = fetcher.fetch(wanted)
    if json {
        printJSON(report)
    } else {
        let counts = Dictionary(grouping: report.items, by: \.status).mapValues(\.count)
        summary(
            "\(counted(report.items.count, "input")): \(counts[.present] ?? 0) already in the store, \(counts[.fetched] ?? 0) fetched, "
                + "\(counts[.missing] ?? 0) missing, \(counts[.failed] ?? 0) failed")
    }
    if !report.failures.isEmpty { throw FetchReport.Failed(report.failures, selection: selection) }
    return report
}
