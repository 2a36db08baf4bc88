import CSystemCalls
import Foundation
import KrnativeBase

#if canImport(Glibc)
    import Glibc
#endif

/// Reads the kernel settings that decide whether an ordinary user may create user namespaces,
/// and turns a refusal into the setting to change.
public enum HostCheck {
    /// A sysctl's value, or nil when this kernel does not have it.
    static func sysctl(_ name: String, root: String = "/proc/sys") -> String? {
        let path = root + "/" + name.replacingOccurrences(of: ".", with: "/")
        return (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The known kernel settings that refuse user namespaces, each with its fix.
    public static func blockingSettings(procSys root: String = "/proc/sys") -> [(reason: String, fix: String)] {
        var found: [(String, String)] = []
        if sysctl("user.max_user_namespaces", root: root) == "0" {
            found.append((
                "user.max_user_namespaces is 0, so no user namespace may be created",
                "sudo sysctl -w user.max_user_namespaces=15000 (persist it in /etc/sysctl.d/)"
            ))
        }
        if sysctl("kernel.unprivileged_userns_clone", root: root) == "0" {
            found.append((
                "kernel.unprivileged_userns_clone is 0, so ordinary users may not create user namespaces",
                "sudo sysctl -w kernel.unprivileged_userns_clone=1 (persist it in /etc/sysctl.d/)"
            ))
        }
        if sysctl("kernel.apparmor_restrict_unprivileged_userns", root: root) == "1" {
            found.append((
                "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1)",
                "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or give krnative an AppArmor profile with `userns,`"
            ))
        }
        return found
    }

    /// Whether each PID namespace has its own `pid_max` (Linux 6.14), the limit on a step's
    /// processes that binds whoever runs krnative; before, `kernel.pid_max` is the machine's.
    public static var pidMaxPerNamespace: Bool {
        var names = utsname()
        uname(&names)
        let release = withUnsafeBytes(of: names.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let version = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        return version.count == 2 && (version[0], version[1]) >= (6, 14)
    }

    /// What bounds a step's processes here, or nil when nothing does (root on a kernel before 6.14,
    /// where RLIMIT_NPROC does not apply to root).
    public static var processLimit: String? {
        if pidMaxPerNamespace { return "the sandbox's PID namespace (pid_max)" + (getuid() == 0 ? "" : " and RLIMIT_NPROC") }
        return getuid() == 0 ? nil : "RLIMIT_NPROC"
    }

    /// Whether this kernel has seccomp, which the step's system call filter needs.
    public static var seccompAvailable: Bool { krn_seccomp_mode() >= 0 }

    /// Whether this kernel has `PR_SET_NO_NEW_PRIVS`, which a filter without privilege needs.
    public static var noNewPrivsAvailable: Bool { krn_no_new_privs() >= 0 }

    /// `dev.tty.legacy_tiocsti`: "1" lets any process type into its controlling terminal, "0"
    /// only privileged ones; nil on kernels before 6.2, which always let it.
    public static func legacyTIOCSTI(procSys root: String = "/proc/sys") -> String? {
        sysctl("dev.tty.legacy_tiocsti", root: root)
    }

    /// What is wrong with a step's confinement, read from its `/proc/self/status`: every
    /// capability set empty, no_new_privs set, a seccomp filter (mode 2). Empty when all hold.
    public static func confinementProblems(status text: String) -> [String] {
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2 { fields[String(parts[0])] = parts[1].trimmingCharacters(in: .whitespaces) }
        }
        var problems: [String] = []
        for name in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] where fields[name].map({ UInt64($0, radix: 16) != 0 }) ?? true {
            problems.append("\(name) is \(fields[name] ?? "missing"), not 0")
        }
        if fields["NoNewPrivs"] != "1" { problems.append("NoNewPrivs is \(fields["NoNewPrivs"] ?? "missing"), not 1") }
        if fields["Seccomp"] != "2" { problems.append("Seccomp is \(fields["Seccomp"] ?? "missing"), not 2 (filter)") }
        return problems
    }

    /// The error for an `unshare` that failed before krnative's entry ran.
    static func diagnoseRefusal(unshareOutput: String, termination: ChildProcess.Termination) -> SandboxError {
        let said = unshareOutput.split(separator: "\n").last.map(String.init) ?? "\(termination)"
        if let (reason, fix) = blockingSettings().first {
            return .refused(reason: "\(reason) (unshare said: \(said))", fix: fix)
        }
        if said.contains("No space left on device") {
            return .refused(
                reason: "the user namespace limit is reached (unshare said: \(said))",
                fix: "raise user.max_user_namespaces (sudo sysctl -w user.max_user_namespaces=15000)")
        }
        return .refused(
            reason: "unshare could not create the namespaces (\(said))",
            fix: "check that user namespaces are enabled (user.max_user_namespaces > 0) and not blocked by a seccomp "
                + "or container policy; inside Docker run with --security-opt seccomp=unconfined or use --sandbox none")
    }
}
