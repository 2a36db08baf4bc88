import Archive
import Compile
import Fetch
import Foundation
import Inputs
import KrnativeBase
import Lock
import Store
import Toolchain
import Verify

#if canImport(Glibc)
    import Glibc
#endif

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
        var flavour: Flavour { request.chosenFlavour }
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
        if options.runs.joined().contains(.user) { try Self.letThrough(options.workDirectory) }
        let reference = try Self.outputs(in: options.reference, of: options.target, flavour: options.flavour)
        var runs: [Run] = []
        for variations in options.runs {
            if Cancellation.requested { break }
            runs.append(try run(variations))
        }
        return Report(target: options.target, reference: options.reference, referenceOutputs: reference, runs: runs)
    }

    /// Lets others through `directory` (g+x, o+x), whatever the umask made it: the check user
    /// reaches its run directory through it. A link there is refused, never followed (its target's
    /// mode would change).
    static func letThrough(_ directory: String) throws {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            var info = stat()
            let isLink = lstat(directory, &info) == 0 && info.st_mode & S_IFMT == S_IFLNK
            let reason = isLink ? "it is a symbolic link" : String(cString: strerror(code))
            throw UsageError("the check's directory \(directory) cannot be opened for the check user: \(reason); remove it, or build into another --out")
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, fchmod(fd, (info.st_mode & 0o7777) | 0o011) == 0 else {
            // Another user's directory: the check user's run would fail later, as "not applied".
            throw UsageError(
                "the check's directory \(directory) cannot be opened for the check user: \(String(cString: strerror(errno))); remove it, or build into another --out")
        }
    }

    /// The output files of `target`'s build in `directory` and their hashes, from its manifest (the
    /// directory may hold other targets' outputs too).
    static func outputs(in directory: String, of target: Target, flavour: Flavour) throws -> [String: SHA256Digest] {
        let name = BuildManifest.fileName(for: target, flavour: flavour)
        guard let data = try? FileSystem.readRegularFile(directory + "/" + name),
            let manifest = try? DuplicateJSONKey.decode(BuildManifest.self, from: data)
        else { throw UsageError("\(directory) holds no \(name): build \(target.rawValue) there first") }
        return Dictionary(uniqueKeysWithValues: manifest.outputs.map { ($0.file, $0.sha256) })
    }

    /// One run: its plan, the run directory set up for it, the build, the comparison.
    func run(_ variations: [Variation]) throws -> Run {
        let directory = options.workDirectory + "/" + variations.map(\.rawValue).joined(separator: "+")
        let plan = RunPlan(variations, in: circumstances(for: variations), directory: directory, freshSteps: options.freshSteps)
        options.log("check: building \(options.target.rawValue) again with \(plan.name): " + variations.map(\.summary).joined(separator: "; "))
        let store = try setUp(plan, in: directory)
        let policy = ["--sandbox", options.request.isolation.rawValue, "--audit", options.request.auditMode.rawValue]
        let argv = plan.argv(executable: options.executable, requestFile: directory + "/request.json", store: store, out: directory + "/out", policy: policy)
        let started = Date()
        let result = ChildProcess.run(argv, environment: plan.environment, directory: directory)
        let seconds = Date().timeIntervalSince(started)
        try tearDown(plan, in: directory)
        var run = Run(
            name: plan.name, variations: variations, notApplied: plan.notApplied, outputs: [:], identical: false, differences: [], seconds: seconds)
        if result.succeeded {
            try compare(directory + "/out", into: &run)
        } else {
            let tail = result.stderr.split(separator: "\n").suffix(15).joined(separator: "\n")
            run.error = "\(argv.map(ChildProcess.quote).joined(separator: " ")) ended with \(result.termination):\n\(tail)"
        }
        if run.identical && !options.keep { FileSystem.remove(directory) } else { run.directory = directory }
        options.log("check: \(plan.name): " + (run.error != nil ? "build failed" : run.identical ? "identical" : "DIFFERENT") + String(format: " (%.0f s)", seconds))
        return run
    }

    /// This machine now, as the plan of a run of `variations` needs it.
    func circumstances(for variations: [Variation]) -> CheckCircumstances {
        // The check user must reach the lock, the executable and its own run directory.
        let reachable = [
            ("-r", options.request.locations.lockPath), ("-r", options.request.locations.recipesDirectory), ("-x", options.executable),
            ("-x", options.workDirectory),
        ]
        return .probe(for: variations, user: options.user, reachable: reachable, jobs: (options.compileJobs, options.packThreads))
    }

    /// The run directory as `plan` needs it before the build: empty but for a home, a temporary
    /// directory and the request file; the disorderfs mount; a fresh store; the owner. Returns the store.
    func setUp(_ plan: RunPlan, in directory: String) throws -> String {
        FileSystem.remove(directory)
        for path in [directory, directory + "/home", directory + "/tmp"] { try FileSystem.createDirectory(path) }
        try FileSystem.writeAtomically(try options.request.encoded(), to: directory + "/request.json")
        var store = options.store
        if plan.freshStore {
            store = directory + "/store"
            try seedStore(at: store)
        }
        if let owner = plan.owner { try Self.chown(directory, to: owner) }
        if plan.shuffledOutput {
            let (lower, out) = (directory + "/out.lower", directory + "/out")
            try FileSystem.createDirectory(lower)
            try FileSystem.createDirectory(out)
            try ChildProcess.check(["disorderfs", "--shuffle-dirents=yes", "--quiet", lower, out])
        }
        return store
    }

    /// Undoes what `setUp` mounted: the outputs go back from under disorderfs to `out`.
    func tearDown(_ plan: RunPlan, in directory: String) throws {
        guard plan.shuffledOutput else { return }
        let out = directory + "/out"
        _ = ChildProcess.run(["fusermount", "-u", out])
        FileSystem.remove(out)
        try FileSystem.rename(out + ".lower", to: out)
    }

    /// The run's outputs against the reference, every output of the target and its manifest entry
    /// by entry; other targets' outputs in the reference directory are not looked at. A file
    /// another target's build replaced since (`ttyd_linux.<arch>.bin` is named alike; `versions.txt`
    /// was, before it was named by distro) is compared by the hash the two manifests record for it.
    func compare(_ out: String, into run: inout Run) throws {
        run.outputs = try Self.outputs(in: out, of: options.target, flavour: options.flavour)
        let recorded = try Self.outputs(in: options.reference, of: options.target, flavour: options.flavour)
        let unreplaced = recorded.filter { (try? SHA256Digest.of(fileAt: options.reference + "/" + $0.key).digest) == $0.value }.keys
        let names = Set(run.outputs.keys).subtracting(recorded.keys).union(unreplaced).union([BuildManifest.fileName(for: options.target, flavour: options.flavour)])
        let report = try DiffReport.compare(options.reference, out, only: names)
        run.identical = report.identical
        run.differences = report.differences
    }

    /// A new store holding copies of the inputs this build needs, and nothing else: no step cache,
    /// no unpacked trees, no toolchains.
    func seedStore(at root: String) throws {
        let source = InputResolver(store: try Store(root: options.store))
        let store = try Store(root: root)
        let request = options.request
        let lock = try Lockfile.load(from: request.locations.lockPath)
        let inputs = try BuildPlan(request: request, lock: lock, executable: options.executable).inputs
        for input in inputs {
            guard let digest = source.located(input) else {
                throw UsageError("the check needs \(input.name) in the store \(options.store); run `krnative fetch --target \(options.target.rawValue)` first")
            }
            try store.ingest(copying: source.store.path(for: digest), expected: digest)
            if let tree = input.treeSha256 { try store.recordTree(tree, file: digest) }
        }
        try seedZigWarmUp(from: source.store, into: store, toolchains: inputs.filter { $0.kind == .toolchain })
    }

    /// Copies Zig's warmed libraries (`StepRunner.warmUpKeys`) that `source` holds for the
    /// request's builds into the fresh store: a run from an empty step cache compiles every step
    /// of its recipes again, not Zig's C library and compiler runtime, which the sandbox builds at
    /// the same paths whatever the run's path or user.
    func seedZigWarmUp(from source: Store, into store: Store, toolchains: [LockedInput]) throws {
        let request = options.request
        guard request.toolchain == .zig, let zig = toolchains.first(where: { $0.name == ToolchainKind.zig.lockName(triple: "", host: .current) }),
            let digest = zig.sha256
        else { return }
        var builds: [(triple: String, buildTriple: String?)] = [(request.target.ttydTriple, nil)]
        if request.runtime == .source { builds.append((RuntimeBuild.zigTriple(for: request.target), RuntimeBuild.buildMachineTriple(host: .current))) }
        for build in builds {
            let toolchain = Toolchain(kind: .zig, version: zig.version, archiveSha256: digest, triple: build.triple, hostRoot: "")
            for key in StepRunner.warmUpKeys(toolchain, buildTriple: build.buildTriple)
            where !FileSystem.exists(store.item(.steps, key.hex))
                && source.intactItem(.steps, key.hex, log: { _ in }) != nil {
                let temp = store.temporaryPath("warm-up")
                try StepResultTree(root: source.item(.steps, key.hex), madeBy: "krnative's Zig warm-up").copy(to: temp)
                try FileSystem.createDirectory(store.directory(.steps))
                try store.complete(.steps, key.hex, from: temp)
            }
        }
    }

    static func chown(_ root: String, to owner: CheckCircumstances.Account) throws {
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
