import Foundation
import KrnativeBase
import Sandbox
import Testing

/// What this machine offers the tests. A test that needs something missing is disabled with a
/// trait naming it, so the report shows it as skipped rather than passed; `scripts/test` installs
/// or fetches all of these, so on CI nothing is skipped.
enum Machine {
    /// Debian's upstream tarballs of ttyd and its libraries (`scripts/debian-sources`), named by
    /// the lock's component names, with the upstream version read from the file name.
    static let testSources = debianTarballs([
        "zlib": "zlib_", "json-c": "json-c_", "libuv": "libuv1_", "mbedtls": "mbedtls_", "libwebsockets": "libwebsockets_", "ttyd": "ttyd_",
    ])

    /// The tarballs in KRNATIVE_TEST_SOURCES whose names start with the prefixes given (a package
    /// name, `_`, perhaps the start of a version: the directory may hold other versions), by
    /// component, with the upstream version read from the file name.
    static func debianTarballs(_ prefixes: [String: String]) -> [String: (file: String, version: String)] {
        guard let directory = ProcessInfo.processInfo.environment["KRNATIVE_TEST_SOURCES"],
            let names = try? FileManager.default.contentsOfDirectory(atPath: directory)
        else { return [:] }
        var found: [String: (String, String)] = [:]
        for (component, prefix) in prefixes {
            guard let name = names.first(where: { $0.hasPrefix(prefix) && $0.contains(".orig.tar.") && !$0.hasSuffix(".asc") }) else { continue }
            // zlib_1.3.dfsg+really1.3.1.orig.tar.gz → 1.3.1; json-c_0.18+ds → 0.18
            let package = prefix.prefix { $0 != "_" } + "_"
            var version = name.dropFirst(package.count).components(separatedBy: ".orig").first ?? ""
            if let really = version.range(of: "really") { version = String(version[really.upperBound...]) }
            version = version.components(separatedBy: "+").first ?? version
            found[component] = (directory + "/" + name, version)
        }
        return found
    }

    /// All six source tarballs are at hand.
    static var hasTestSources: Bool { testSources.count == 6 }

    static var userNamespaces: Bool { Sandbox.userNamespacesWork }

    /// Real sources, the sandbox: what compiling ttyd needs.
    static var canCompile: Bool { hasTestSources && userNamespaces }

    static func hasExecutable(_ path: String) -> Bool { FileManager.default.isExecutableFile(atPath: path) }

    /// `scripts/test --fast` (`KRNATIVE_TEST_TIER=fast`): only the tests that run in this process,
    /// never the krnative binary, a compiler, a sandbox or pip.
    static var fastTier: Bool { tier == "fast" }

    /// `scripts/test --full` (`KRNATIVE_TEST_TIER=full`): the end-to-end tier and the runtime
    /// compiled from source, which alone takes some 25 minutes of both cores on a two-core machine
    /// and would not let the rest end within the suites' hour there.
    static var fullTier: Bool { tier == "full" }

    /// The tier `scripts/test` asks for (`KRNATIVE_TEST_TIER`): nil for the default, end-to-end tier.
    static var tier: String? { ProcessInfo.processInfo.environment["KRNATIVE_TEST_TIER"] }
}

extension Trait where Self == ConditionTrait {
    /// The end-to-end tier: the test launches the krnative binary, a compiler, a sandbox or pip
    /// (its tags say which). `scripts/test` runs it; `scripts/test --fast` skips it, saying so.
    static var endToEnd: Self {
        .enabled(if: !Machine.fastTier, "end-to-end (launches krnative, a compiler, a sandbox or pip): scripts/test without --fast runs it")
    }
    static var fullTierOnly: Self {
        .enabled(if: Machine.fullTier, "compiles the runtime from source (some 25 minutes of two cores): scripts/test --full runs it")
    }
    static var needsNamespaces: Self {
        .enabled(if: Machine.userNamespaces, "user namespaces do not work here; `krnative doctor` says why")
    }
    static var needsCompile: Self {
        .enabled(
            if: Machine.canCompile,
            "needs KRNATIVE_TEST_SOURCES with Debian's ttyd, zlib, json-c, libuv, mbedtls and libwebsockets tarballs (scripts/test fetches them) and user namespaces"
        )
    }
}

extension Machine {
    /// Debian's upstream tarballs of CPython and its libraries (`scripts/debian-sources`), by the
    /// runtime recipe's component names.
    static let runtimeSources = debianTarballs([
        "cpython": "python3.13_3.13.15", "zlib": "zlib_1.3", "bzip2": "bzip2_1.0.8", "xz": "xz-utils_5.8.1", "libffi": "libffi_3.4.4",
        "util-linux": "util-linux_2.41.5", "ncurses": "ncurses_6.5+", "readline": "readline_8.2", "sqlite": "sqlite3_3.46.1",
        "openssl": "openssl_3.5.7",
    ])

    /// All ten sources of the runtime recipe, and the sandbox.
    static var canCompileRuntime: Bool { runtimeSources.count == 10 && userNamespaces }
}

extension Trait where Self == ConditionTrait {
    static var needsCompileRuntime: Self {
        .enabled(
            if: Machine.canCompileRuntime,
            "needs KRNATIVE_TEST_SOURCES with Debian's CPython 3.13, OpenSSL, SQLite, libffi, xz, bzip2, ncurses, readline, util-linux and zlib tarballs (scripts/debian-sources) and user namespaces"
        )
    }
}

extension Machine {
    /// Debian's upstream tarballs of the agent's other runner binaries and what they link
    /// (`scripts/debian-sources`), by their recipes' component names.
    static let runnerSources = debianTarballs([
        "zlib": "zlib_1.3", "dropbear": "dropbear_2025.89", "openssh": "openssh_10.0p1", "libevent": "libevent_2.1.12", "ncurses": "ncurses_6.5",
        "tmux": "tmux_3.5a",
    ])

    /// OpenSSH's client (Debian's: ssh, scp, sftp, ssh-keygen), which logs in to the built dropbear.
    static var hasOpenSSH: Bool { ["ssh", "scp", "sftp", "ssh-keygen"].allSatisfy { hasExecutable("/usr/bin/" + $0) } }
}

extension Trait where Self == ConditionTrait {
    static var needsRunnerSources: Self {
        .enabled(
            if: Machine.runnerSources.count == 6 && Machine.userNamespaces && Machine.hasOpenSSH,
            "needs KRNATIVE_TEST_SOURCES with Debian's dropbear, OpenSSH, zlib, tmux, libevent and ncurses tarballs (scripts/debian-sources), OpenSSH's client (scripts/setup) and user namespaces"
        )
    }
}
