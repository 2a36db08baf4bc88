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

    public init(
        argv: [String], environment: [String: String] = [:], mounts: [Mount] = [], rootDirectory: String? = nil,
        workingDirectory: String, home: String? = nil, path: String = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        sourceDateEpoch: Int64 = 0, hostname: String = "krnative"
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

/// What the entry inside the namespaces reports back through the status file.
struct SandboxStatus: Codable {
    var exited: Int32?
    var signalled: Int32?
    var setupFailed: String?
}
