import Foundation
import KrnativeBase

/// One step to run in the sandbox: what it sees and what it runs (docs/design.md §2.8).
public struct SandboxSpec: Codable, Sendable, Equatable {
    /// A host path made visible inside at `target`.
    public struct Mount: Codable, Sendable, Equatable {
        public var source: String
        public var target: String
        public var writable: Bool
        /// Whether `source` may itself be a symbolic link (false for a path a step could have
        /// made: the bind then refuses a link there).
        public var followLink: Bool
        public init(source: String, target: String, writable: Bool, followLink: Bool = true) {
            self.source = source
            self.target = target
            self.writable = writable
            self.followLink = followLink
        }
        public static func readOnly(_ source: String, at target: String? = nil, followLink: Bool = true) -> Mount {
            Mount(source: source, target: target ?? source, writable: false, followLink: followLink)
        }
        public static func writable(_ source: String, at target: String? = nil, followLink: Bool = true) -> Mount {
            Mount(source: source, target: target ?? source, writable: true, followLink: followLink)
        }
    }

    /// The program and its arguments; `argv[0]` is looked up on `path` inside.
    public var argv: [String]
    /// Variables the step declares, added to the fixed ones (PATH, HOME, TZ, LC_ALL, SOURCE_DATE_EPOCH).
    public var environment: [String: String]
    /// Inputs (read-only), the work directory and the prefix (writable), in mount order.
    public var mounts: [Mount]
    /// A directory to use as the root file system (a sysroot); nil gives the host's `/usr`, `/bin`,
    /// `/lib*`, `/sbin` and `/etc`, read-only.
    public var rootDirectory: String?
    /// The step's working directory, inside.
    public var workingDirectory: String
    /// HOME, inside; by default the working directory.
    public var home: String?
    public var path: String
    public var sourceDateEpoch: Int64
    public var hostname: String
    /// How many processes and how much memory the step may take.
    public var limits: StepLimits
    /// For a root of another architecture: its emulator, mounted at `path` inside, which the
    /// sandbox registers with binfmt_misc in its own user namespace (Linux 6.7 and later), so
    /// that the programs the step starts run as they would on that machine. Where the kernel
    /// mounts no binfmt_misc there, only a command that names the emulator runs.
    public var emulator: Emulator?

    public struct Emulator: Codable, Sendable, Equatable {
        public var path: String
        public var arch: Architecture
        public init(path: String, arch: Architecture) {
            self.path = path
            self.arch = arch
        }
    }

    public init(
        argv: [String], environment: [String: String] = [:], mounts: [Mount] = [], rootDirectory: String? = nil,
        workingDirectory: String, home: String? = nil, path: String = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        sourceDateEpoch: Int64 = 0, hostname: String = "krnative", limits: StepLimits = .standard, emulator: Emulator? = nil
    ) {
        self.argv = argv
        self.environment = environment
        self.mounts = mounts
        self.rootDirectory = rootDirectory
        self.workingDirectory = workingDirectory
        self.home = home
        self.path = path
        self.sourceDateEpoch = sourceDateEpoch
        self.hostname = hostname
        self.limits = limits
        self.emulator = emulator
    }

    /// The complete environment of the step: the fixed variables, then the declared ones.
    public var fullEnvironment: [String: String] {
        var full = [
            "PATH": path, "HOME": home ?? workingDirectory, "TZ": "UTC", "LC_ALL": "C.UTF-8",
            "SOURCE_DATE_EPOCH": String(sourceDateEpoch),
        ]
        full.merge(environment) { $1 }
        return full
    }
}

/// What one step may take of the machine, so that a step gone wrong (a fork loop, a runaway
/// allocation) fails alone instead of taking the machine with it.
public struct StepLimits: Codable, Sendable, Equatable {
    /// Processes and threads at once: the sandbox's PID namespace hands out no more than about this
    /// many process ids (its `pid_max`, on kernels from 6.14), and the step's RLIMIT_NPROC is this
    /// (which the kernel applies unless the host user is root).
    public var processes: Int
    /// Private writable memory (heap, anonymous mappings) of each process, in bytes: RLIMIT_DATA.
    /// Not RLIMIT_AS, which counts the large ranges Zig and LLVM reserve without using them.
    public var memoryBytes: Int64

    public init(processes: Int, memoryBytes: Int64) {
        self.processes = processes
        self.memoryBytes = memoryBytes
    }

    /// Enough for `make -j` on this machine with Zig, whose every compile runs a thread per CPU:
    /// 4096 processes and threads plus CPUs × (CPUs + 16); half the physical memory per process,
    /// at least 2 GiB.
    public static var standard: StepLimits {
        let cpus = ProcessInfo.processInfo.activeProcessorCount
        let memory = Int64(ProcessInfo.processInfo.physicalMemory / 2)
        return StepLimits(processes: 4096 + cpus * (cpus + 16), memoryBytes: max(memory, 2 << 30))
    }

    /// `--step-max-processes` and `--step-max-memory`, else `KRNATIVE_STEP_MAX_PROCESSES` and
    /// `KRNATIVE_STEP_MAX_MEMORY`, else `standard`. Memory is bytes, or a number with K, M, G or T.
    public static func chosen(
        processes: Int?, memory: String?, environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(UsageError) -> StepLimits {
        var limits = standard
        let processesText = processes.map(String.init) ?? environment["KRNATIVE_STEP_MAX_PROCESSES"].flatMap { $0.isEmpty ? nil : $0 }
        if let processesText {
            let source = processes == nil ? "KRNATIVE_STEP_MAX_PROCESSES=" : "--step-max-processes "
            guard let count = Int(processesText), count >= 1, count <= 4_000_000 else {
                throw UsageError("\(source)\(processesText) is not a number of processes from 1 to 4000000")
            }
            limits.processes = count
        }
        let memoryText = memory ?? environment["KRNATIVE_STEP_MAX_MEMORY"].flatMap { $0.isEmpty ? nil : $0 }
        if let memoryText {
            let source = memory == nil ? "KRNATIVE_STEP_MAX_MEMORY=" : "--step-max-memory "
            guard let bytes = byteCount(memoryText), bytes >= 1 << 20 else {
                throw UsageError("\(source)\(memoryText) is not a size of at least 1M (bytes, or a number with K, M, G or T: 8G)")
            }
            limits.memoryBytes = bytes
        }
        return limits
    }

    /// `8G` → 8 × 2³⁰; nil for what is not a whole number with an optional K, M, G or T.
    static func byteCount(_ text: String) -> Int64? {
        let units: [Character: Int64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        let trimmed = text.trimmingCharacters(in: .whitespaces).uppercased()
        guard let last = trimmed.last else { return nil }
        let unit = units[last]
        guard let number = Int64(unit == nil ? trimmed : String(trimmed.dropLast())), number >= 0 else { return nil }
        let (bytes, overflow) = number.multipliedReportingOverflow(by: unit ?? 1)
        return overflow ? nil : bytes
    }
}

/// What the entry inside the namespaces reports back through the status file.
struct SandboxStatus: Codable {
    var exited: Int32?
    var signalled: Int32?
    var setupFailed: String?
}
