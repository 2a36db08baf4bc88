import Foundation
import KrnativeBase

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

/// What the check knows of this machine when it plans a run, found out once (`probe`) so that
/// planning (`Variation.effect`, `RunPlan`) has no side effects and is tested with made-up values.
public struct CheckCircumstances: Sendable, Equatable {
    public struct Account: Sendable, Equatable {
        public var uid: UInt32
        public var gid: UInt32
        public init(uid: UInt32, gid: UInt32) { (self.uid, self.gid) = (uid, gid) }
    }

    public var isRoot = false
    public var umask: UInt32 = 0o022
    public var environment: [String: String] = [:]
    public var hasFaketime = false
    /// disorderfs is installed and /dev/fuse is there.
    public var hasDisorderfs = false
    /// The ordinary user the `user` variation builds as, and its account (nil: there is none).
    public var checkUser = "nobody"
    public var account: Account?
    /// What the check user cannot reach of what its build needs (the lock, the executable, the runs).
    public var unreachable: [String] = []
    /// The first build's compile jobs and pack threads.
    public var compileJobs = 1
    public var packThreads = 1
    /// The host name the `hostname` variation gives, and the value of the `environment` variation's random variable.
    public var hostname = "krnative-check"
    public var noise = ""

    public init() {}

    /// This machine as it is now; `reachable` are the paths the check user must reach (asked
    /// only as root, with `setpriv`, when `variations` include `user`).
    public static func probe(for variations: [Variation], user: String, reachable: [(test: String, path: String)], jobs: (compile: Int, pack: Int)) -> Self {
        var found = Self()
        found.isRoot = geteuid() == 0
        let current = Glibc.umask(0o022)
        Glibc.umask(current)
        found.umask = UInt32(current)
        found.environment = ProcessInfo.processInfo.environment
        found.hasFaketime = ChildProcess.resolve("faketime").hasPrefix("/")
        found.hasDisorderfs = ChildProcess.resolve("disorderfs").hasPrefix("/") && FileSystem.exists("/dev/fuse")
        found.checkUser = user
        found.account = getpwnam(user).map { Account(uid: $0.pointee.pw_uid, gid: $0.pointee.pw_gid) }
        (found.compileJobs, found.packThreads) = jobs
        found.hostname = "krnative-check-\(getpid())"
        found.noise = UUID().uuidString
        if variations.contains(.user), found.isRoot, let account = found.account {
            let switchUser = Variation.switchUser(to: account)
            found.unreachable = reachable.filter { !ChildProcess.run(switchUser + ["test", $0.test, $0.path]).succeeded }.map(\.path)
        }
        return found
    }
}

/// What one variation does to a run, as a value: nothing here runs, mounts or writes.
public struct VariationEffect: Sendable, Equatable {
    /// Variables set in the build's environment.
    public var environment: [String: String] = [:]
    /// Commands the build runs under (faketime, setpriv).
    public var wrapper: [String] = []
    /// Flags for `krnative variation-exec`, which sets what the environment cannot (umask, hostname).
    public var execFlags: [String] = []
    /// Flags added to the build's own.
    public var buildFlags: [String] = []
    /// The run starts from a store of its own, its step cache empty.
    public var freshStore = false
    /// The output directory is a disorderfs mount that shuffles directory listings: mounted
    /// before the build, unmounted after.
    public var shuffledOutput = false
    /// The run's directory is handed to this account before the build.
    public var owner: CheckCircumstances.Account?
    /// Why this machine cannot apply the variation (then it has no other effect).
    public var notApplied: String?

    public init() {}

    static func notApplied(_ reason: String) -> Self {
        var effect = Self()
        effect.notApplied = reason
        return effect
    }
}

extension Variation {
    /// What this variation does to a run in `directory` under `circumstances`.
    public func effect(in circumstances: CheckCircumstances, directory: String) -> VariationEffect {
        var effect = VariationEffect()
        let environment = circumstances.environment
        switch self {
        case .path: effect.freshStore = true
        case .clock:
            guard circumstances.hasFaketime else { return .notApplied("faketime is not installed (Debian package faketime)") }
            effect.wrapper = ["faketime", "-f", "+365d"]
        case .timezone: effect.environment["TZ"] = environment["TZ"] == "Pacific/Kiritimati" ? "America/Adak" : "Pacific/Kiritimati"
        case .locale:
            effect.environment = ["LC_ALL": environment["LC_ALL"] == "POSIX" ? "C.UTF-8" : "POSIX", "LANG": "tr_TR.UTF-8"]
        case .umask: effect.execFlags = ["--umask", circumstances.umask == 0o077 ? "022" : "077"]
        case .user: return userEffect(in: circumstances, directory: directory)
        case .jobs:
            effect.buildFlags = [
                "--compile-jobs", circumstances.compileJobs == 1 ? "2" : "1", "--pack-threads", circumstances.packThreads == 1 ? "2" : "1",
            ]
        case .environment:
            effect.environment = [
                "HOME": directory + "/home", "TMPDIR": directory + "/tmp", "CFLAGS": "-O0 -g", "LDFLAGS": "-Wl,--build-id=sha1",
                "PYTHONHASHSEED": "12345", "PYTHONDONTWRITEBYTECODE": "1", "SOURCE_DATE_EPOCH": "1", "KRNATIVE_CHECK_NOISE": circumstances.noise,
            ]
        case .hostname:
            guard circumstances.isRoot else { return .notApplied("a UTS namespace needs root here; run the check as root to vary it") }
            effect.execFlags = ["--hostname", circumstances.hostname]
        case .fileOrder:
            guard circumstances.hasDisorderfs else { return .notApplied("disorderfs (Debian package disorderfs) and /dev/fuse are needed") }
            effect.shuffledOutput = true
        }
        return effect
    }

    /// The `user` variation: the build as the check user, with a store and a home of its own.
    func userEffect(in circumstances: CheckCircumstances, directory: String) -> VariationEffect {
        guard circumstances.isRoot else { return .notApplied("switching user needs root; run the check as root to vary it") }
        let user = circumstances.checkUser
        guard let account = circumstances.account else { return .notApplied("there is no user \(user) (--check-user)") }
        guard circumstances.unreachable.isEmpty else {
            let paths = circumstances.unreachable.joined(separator: ", ")
            return .notApplied("\(user) cannot reach \(paths): make the directories above them traversable (chmod o+x)")
        }
        var effect = VariationEffect()
        effect.wrapper = Self.switchUser(to: account)
        effect.environment = ["HOME": directory + "/home", "USER": user]
        effect.freshStore = true
        effect.owner = account
        return effect
    }

    /// `setpriv` to `account`, then the command after it.
    static func switchUser(to account: CheckCircumstances.Account) -> [String] {
        ["setpriv", "--reuid=\(account.uid)", "--regid=\(account.gid)", "--clear-groups", "--"]
    }
}

/// A run of the check as a value: its variations' effects together, and the build they make of it.
public struct RunPlan: Sendable, Equatable {
    public var name: String
    /// The build's whole environment.
    public var environment: [String: String]
    public var wrapper: [String] = []
    public var execFlags: [String] = []
    public var buildFlags: [String] = []
    public var freshStore: Bool
    public var shuffledOutput = false
    public var owner: CheckCircumstances.Account?
    /// The variations this machine could not apply, with why.
    public var notApplied: [String: String] = [:]

    /// The effects of `variations` in `directory` together; `freshSteps` gives the run a store of its own too.
    public init(_ variations: [Variation], in circumstances: CheckCircumstances, directory: String, freshSteps: Bool = false) {
        name = variations.map(\.rawValue).joined(separator: "+")
        environment = circumstances.environment
        freshStore = freshSteps
        for variation in variations {
            let effect = variation.effect(in: circumstances, directory: directory)
            if let reason = effect.notApplied { notApplied[variation.rawValue] = reason }
            environment.merge(effect.environment) { _, new in new }
            // A user switch goes outermost, so that everything inside it runs as that user.
            wrapper = effect.owner != nil ? effect.wrapper + wrapper : wrapper + effect.wrapper
            execFlags += effect.execFlags
            buildFlags += effect.buildFlags
            freshStore = freshStore || effect.freshStore
            shuffledOutput = shuffledOutput || effect.shuffledOutput
            owner = effect.owner ?? owner
        }
    }

    /// The build of the run: `executable build --request requestFile` into `out` with `store`,
    /// offline and forced, under the wrapper and, when something needs it, `variation-exec`.
    /// `policy` is the check's own `--sandbox` and `--audit`: the child never takes them from the file.
    public func argv(executable: String, requestFile: String, store: String, out: String, policy: [String] = []) -> [String] {
        // The runs are compared with the reference build, which was checked against the ledger.
        var argv = wrapper + [executable, "build", "--request", requestFile, "--ledger", "none"] + policy
        argv += ["--store", store, "--out", out, "--offline", "--force"] + buildFlags
        return execFlags.isEmpty ? argv : [executable, "variation-exec"] + execFlags + ["--"] + argv
    }
}
