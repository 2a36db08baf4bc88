import Compile
import Fetch
import Foundation
import KrnativeBase
import Lock
import Store
import Toolchain
import Verify

#if canImport(Glibc)
    import Glibc
#endif

/// One way a second build's circumstances differ from the first's (reprotest's variations).
public enum Variation: String, CaseIterable, Codable, Sendable {
    case path, clock, timezone, locale, umask, user, jobs, environment, hostname
    case fileOrder = "file-order"

    public var summary: String {
        switch self {
        case .path: "another output directory and another store at another path, its step cache empty (ttyd compiled again)"
        case .clock: "the clock a year ahead (faketime +365d around krnative; sandboxed steps get their fixed environment)"
        case .timezone: "TZ=Pacific/Kiritimati (UTC+14)"
        case .locale: "LC_ALL=POSIX, LANG=tr_TR.UTF-8"
        case .umask: "umask 077 (or 022 where the first build had 077)"
        case .user: "an ordinary user (setpriv), with a store of its own, its step cache empty"
        case .jobs: "--compile-jobs 1 and --pack-threads 1 (2 where the first build had 1)"
        case .environment: "HOME, TMPDIR elsewhere; unrelated variables set (CFLAGS, PYTHONHASHSEED, SOURCE_DATE_EPOCH=1, …)"
        case .hostname: "another hostname, in a UTS namespace"
        case .fileOrder: "directory listings shuffled (disorderfs under the output directory)"
        }
    }

    /// The variations `build --check` applies together in its one second build: the cheap ones.
    public static let together: [Variation] = [.timezone, .locale, .umask, .jobs, .environment, .hostname, .clock]
}

/// `krnative build --check`: builds again, offline, with the circumstances varied, and compares
/// every output with the first build's, entry by entry. Identical runs are removed; a run that
/// differs is kept beside the first for inspection.
public struct ReproducibilityCheck: Sendable {
    public struct Options: Sendable {
        /// What both builds make, its locations absolute: each run builds from it as a file (`build --request`).
        public var request: BuildRequest
        public var executable: String
        /// The first build's output directory.
        public var reference: String
        /// Where the runs go, each in a directory of its own.
        public var workDirectory: String
        public var store: String
        /// The runs: each a set of variations applied together.
        public var runs: [[Variation]]
        /// Every run gets a fresh store (empty step cache), not just `path` and `user`.
        public var freshSteps = false
        public var keep = false
        public var user = "nobody"
        public var compileJobs = ProcessInfo.processInfo.activeProcessorCount
        public var packThreads = ProcessInfo.processInfo.activeProcessorCount
        public var log: @Sendable (String) -> Void = Reporting.note

        public init(request: BuildRequest, executable: String, reference: String, workDirectory: String, store: String, runs: [[Variation]]) {
            self.request = request
            self.executable = executable
            self.reference = reference
            self.workDirectory = workDirectory
            self.store = store
            self.runs = runs
        }

        var target: Target { request.target }
    }

    public struct Run: Codable, Sendable {
        public var name: String
        public var variations: [Variation]
        /// Variations this machine could not apply, with why.
        public var notApplied: [String: String]
        public var outputs: [String: SHA256Digest]
        public var identical: Bool
        public var differences: [Difference]
        public var seconds: Double
        /// Kept when the outputs differ (or with --keep).
        public var directory: String?
        public var error: String?
    }

    public struct Report: Codable, Sendable {
        public var target: Target
        public var reference: String
        public var referenceOutputs: [String: SHA256Digest]
        public var runs: [Run]
        public var reproducible: Bool { runs.allSatisfy { $0.identical } }
    }

    public let options: Options
    public init(options: Options) { self.options = options }

    public func run() throws -> Report {
        try FileSystem.createDirectory(options.workDirectory)
        let reference = try Self.outputs(in: options.reference)
        var runs: [Run] = []
        for variations in options.runs {
            if Cancellation.requested { break }
            runs.append(try run(variations))
        }
        return Report(target: options.target, reference: options.reference, referenceOutputs: reference, runs: runs)
    }

    /// The output files of a build and their hashes, from its manifest.
    static func outputs(in directory: String) throws -> [String: SHA256Digest] {
        guard let name = try? FileManager.default.contentsOfDirectory(atPath: directory).first(where: { $0.hasPrefix("krnative-manifest.") }),
            let data = FileManager.default.contents(atPath: directory + "/" + name),
            let manifest = try? JSONDecoder().decode(BuildManifest.self, from: data)
        else { throw UsageError("\(directory) holds no krnative manifest: build there first") }
        return Dictionary(uniqueKeysWithValues: manifest.outputs.map { ($0.file, $0.sha256) })
    }

    static func manifestNames(_ directories: String...) throws -> [String] {
        try directories.flatMap { try FileManager.default.contentsOfDirectory(atPath: $0).filter { $0.hasPrefix("krnative-manifest.") } }
    }

    func run(_ variations: [Variation]) throws -> Run {
        let name = variations.map(\.rawValue).joined(separator: "+")
        let directory = options.workDirectory + "/" + name
        FileSystem.remove(directory)
        try FileSystem.createDirectory(directory)
        options.log("check: building \(options.target.rawValue) again with \(name): " + variations.map(\.summary).joined(separator: "; "))
        var notApplied: [String: String] = [:]
        var environment = ProcessInfo.processInfo.environment
        var wrapper: [String] = []
        var exec: [String] = []
        var extra: [String] = []
        var store = options.store
        var owner: (uid: uid_t, gid: gid_t)?
        let isRoot = geteuid() == 0
        let fresh = options.freshSteps || variations.contains(.path) || variations.contains(.user)
        let out = directory + "/out"
        var mounted: String?

        for variation in variations {
            switch variation {
            case .path: break  // its own directory and store, below
            case .clock:
                if ChildProcess.resolve("faketime").hasPrefix("/") {
                    wrapper += ["faketime", "-f", "+365d"]
                } else {
                    notApplied[variation.rawValue] = "faketime is not installed (Debian package faketime)"
                }
            case .timezone: environment["TZ"] = environment["TZ"] == "Pacific/Kiritimati" ? "America/Adak" : "Pacific/Kiritimati"
            case .locale:
                environment["LC_ALL"] = environment["LC_ALL"] == "POSIX" ? "C.UTF-8" : "POSIX"
                environment["LANG"] = "tr_TR.UTF-8"
            case .umask:
                let current = umask(0o022)
                umask(current)
                exec += ["--umask", current == 0o077 ? "022" : "077"]
            case .user:
                guard isRoot else {
                    notApplied[variation.rawValue] = "switching user needs root; run the check as root to vary it"
                    continue
                }
                guard let entry = getpwnam(options.user) else {
                    notApplied[variation.rawValue] = "there is no user \(options.user) (--check-user)"
                    continue
                }
                let switchUser = ["setpriv", "--reuid=\(entry.pointee.pw_uid)", "--regid=\(entry.pointee.pw_gid)", "--clear-groups", "--"]
                // It must reach the lock, the executable and its own run directory.
                let unreachable = [("-r", options.request.locations.lockPath), ("-x", options.executable), ("-x", options.workDirectory)].filter {
                    !ChildProcess.run(switchUser + ["test", $0.0, $0.1]).succeeded
                }.map(\.1)
                guard unreachable.isEmpty else {
                    notApplied[variation.rawValue] =
                        "\(options.user) cannot reach \(unreachable.joined(separator: ", ")): make the directories above them traversable (chmod o+x)"
                    continue
                }
                owner = (entry.pointee.pw_uid, entry.pointee.pw_gid)
                wrapper = switchUser + wrapper
                environment["HOME"] = directory + "/home"
                environment["USER"] = options.user
            case .jobs:
                extra += ["--compile-jobs", options.compileJobs == 1 ? "2" : "1", "--pack-threads", options.packThreads == 1 ? "2" : "1"]
            case .environment:
                environment["HOME"] = directory + "/home"
                environment["TMPDIR"] = directory + "/tmp"
                environment["CFLAGS"] = "-O0 -g"
                environment["LDFLAGS"] = "-Wl,--build-id=sha1"
                environment["PYTHONHASHSEED"] = "12345"
                environment["PYTHONDONTWRITEBYTECODE"] = "1"
                environment["SOURCE_DATE_EPOCH"] = "1"
                environment["KRNATIVE_CHECK_NOISE"] = UUID().uuidString
            case .hostname:
                guard isRoot else {
                    notApplied[variation.rawValue] = "a UTS namespace needs root here; run the check as root to vary it"
                    continue
                }
                exec += ["--hostname", "krnative-check-\(getpid())"]
            case .fileOrder:
                guard ChildProcess.resolve("disorderfs").hasPrefix("/"), FileSystem.exists("/dev/fuse") else {
                    notApplied[variation.rawValue] = "disorderfs (Debian package disorderfs) and /dev/fuse are needed"
                    continue
                }
                let lower = directory + "/out.lower"
                try FileSystem.createDirectory(lower)
                try FileSystem.createDirectory(out)
                try ChildProcess.check(["disorderfs", "--shuffle-dirents=yes", "--quiet", lower, out])
                mounted = out
            }
        }
        for path in [directory + "/home", directory + "/tmp"] { try FileSystem.createDirectory(path) }
        if fresh {
            store = directory + "/store"
            try seedStore(at: store)
        }
        let requestFile = directory + "/request.json"
        try FileSystem.writeAtomically(try options.request.encoded(), to: requestFile)
        if let owner { try Self.chown(directory, to: owner) }
        defer {
            if let mounted { _ = ChildProcess.run(["fusermount", "-u", mounted]) }
        }

        // The runs are compared with the reference build, which was checked against the ledger.
        var argv = wrapper + [options.executable, "build", "--request", requestFile, "--ledger", "none"]
        argv += ["--store", store, "--out", out, "--offline", "--force"] + extra
        if !exec.isEmpty { argv = [options.executable, "variation-exec"] + exec + ["--"] + argv }
        let started = Date()
        let result = ChildProcess.run(argv, environment: environment, directory: directory)
        let seconds = Date().timeIntervalSince(started)
        if let mounted {
            _ = ChildProcess.run(["fusermount", "-u", mounted])
            FileSystem.remove(out)
            try FileSystem.rename(mounted + ".lower", to: out)
        }
        mounted = nil
        var run = Run(
            name: name, variations: variations, notApplied: notApplied, outputs: [:], identical: false, differences: [], seconds: seconds)
        if result.succeeded {
            run.outputs = try Self.outputs(in: out)
            let names = Set(run.outputs.keys).union(try Self.outputs(in: options.reference).keys).union(try Self.manifestNames(options.reference, out))
            let report = try DiffReport.compare(options.reference, out, only: names)
            run.identical = report.identical
            run.differences = report.differences
        } else {
            let tail = result.stderr.split(separator: "\n").suffix(15).joined(separator: "\n")
            run.error = "\(argv.map(ChildProcess.quote).joined(separator: " ")) ended with \(result.termination):\n\(tail)"
        }
        if run.identical && !options.keep {
            FileSystem.remove(directory)
        } else {
            run.directory = directory
        }
        options.log("check: \(name): " + (run.error != nil ? "build failed" : run.identical ? "identical" : "DIFFERENT") + String(format: " (%.0f s)", seconds))
        return run
    }

    /// A new store holding copies of the inputs this build needs, and nothing else: no step cache,
    /// no unpacked trees, no toolchains.
    func seedStore(at root: String) throws {
        let source = InputResolver(store: try Store(root: options.store))
        let store = try Store(root: root)
        let request = options.request
        let lock = try Lockfile.load(from: request.locations.lockPath)
        for input in VolumeBuild.inputs(of: request.target, in: lock, host: .current, toolchain: request.toolchain, runtime: request.runtime) {
            guard let digest = source.located(input) else {
                throw UsageError("the check needs \(input.name) in the store \(options.store); run `krnative fetch --target \(options.target.rawValue)` first")
            }
            try store.ingest(copying: source.store.path(for: digest), expected: digest)
            if let tree = input.treeSha256 { try store.recordTree(tree, file: digest) }
        }
    }

    static func chown(_ root: String, to owner: (uid: uid_t, gid: gid_t)) throws {
        var paths = [root]
        if let more = FileManager.default.enumerator(atPath: root)?.allObjects as? [String] { paths += more.map { root + "/" + $0 } }
        for path in paths where lchown(path, owner.uid, owner.gid) != 0 {
            throw FileSystemError.cannotWrite(path: path, errno: errno)
        }
    }

    /// The report as a table: one row a run.
    public static func text(_ report: Report) -> String {
        var lines = ["reproducibility of \(report.target.rawValue) against \(report.reference):"]
        let volume = report.referenceOutputs.keys.first { $0.hasPrefix("krunner-env.") } ?? ""
        lines.append("  reference: \(volume) \(report.referenceOutputs[volume]?.hex ?? "-")")
        for run in report.runs {
            let verdict = run.error != nil ? "FAILED" : run.identical ? "identical" : "DIFFERENT"
            var line = "  \(run.name): \(verdict), volume \(run.outputs[volume]?.hex ?? "-")" + String(format: ", %.0f s", run.seconds)
            if !run.notApplied.isEmpty {
                line += "; not applied: " + run.notApplied.sorted { $0.key < $1.key }.map { "\($0.key) (\($0.value))" }.joined(separator: ", ")
            }
            lines.append(line)
            if let error = run.error { lines.append("    " + error.replacingOccurrences(of: "\n", with: "\n    ")) }
            if !run.identical, run.error == nil {
                let diff = DiffReport(left: report.reference, right: run.directory.map { $0 + "/out" } ?? "-", differences: run.differences)
                lines.append(diff.text.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n"))
            }
        }
        lines.append(report.reproducible ? "reproducible: every run gave the same bytes" : "NOT reproducible: see the runs above (kept for inspection)")
        return lines.joined(separator: "\n") + "\n"
    }
}
