import Build
import Foundation
import KrnativeBase
import Layout
import Testing

/// The agent's runner binaries beyond ttyd (`src/ai/backend/runner/*.bin`), each built by its
/// recipe (`krnative build-recipe NAME`) from Debian's sources with Zig in the sandbox, and run for
/// real under qemu-user, on loopback only. For aarch64, the agent's other architecture and a cross
/// build here: x86_64's are the same recipes for another triple, whose Zig the ttyd and runtime
/// tests compile with, and a second set would cost the suite some ten minutes of both cores.
@Suite("Runner binaries, built and run", .timeLimit(.minutes(60)), .tags(.compile, .namespaces, .pypi), .endToEnd, .serialized, .needsRunnerSources)
struct RunnerBinaryTests {
    /// Builds `recipe` for `arch` into `work/out` with `lock` (the suite shares the compile tests'
    /// store: Zig and its warmed cache once) and checks what every runner binary must be: static, stripped, no
    /// build id, for its architecture. Returns the argv prefix that runs it.
    func build(_ recipe: String, _ arch: Architecture, output: String, lock: String, work: TemporaryDirectory) throws -> [String] {
        let target: Target = arch == .x86_64 ? .musllinuxX86_64 : .musllinuxAarch64
        let built = krnative(
            ["build-recipe", recipe, "--target", target.rawValue, "--lock", lock, "--store", CompileTests.store.path, "--out", work.path + "/out"])
        try #require(built.succeeded, "\(built.stderr)")
        let binary = work.path + "/out/\(output).\(arch.rawValue).bin"
        let elf = try #require(ELFFile(path: binary), "\(binary) is no ELF file")
        #expect(elf.machine == arch)
        #expect(elf.isStatic, "\(binary) asks for an interpreter or libraries: \(elf.interpreter ?? "") \(elf.neededLibraries)")
        #expect(elf.isStripped)
        #expect(!elf.sections.contains { $0.name.hasPrefix(".note.gnu.build-id") }, "\(binary) has a build id")
        return arch == HostPlatform.current.arch ? [binary] : ["qemu-\(arch.rawValue)-static", binary]
    }

    /// dropbear as the agent starts it (`-F -E -p ADDR:PORT -r KEY`), with a host key its own
    /// dropbearkey made: OpenSSH's client logs in with a key and runs commands, which see the
    /// server's environment (patches/dropbear/60) and may be longer than 9000 bytes (40); the
    /// multi binary's scp copies a file up and back; OpenSSH's sftp moves 10 MiB through the SFTP
    /// subsystem, which runs the built sftp-server from /opt/kernel/sftp-server (dropbear's 30; put
    /// there in a mount namespace of the test's own).
    /// As root: dropbear, root itself, sets the group list of the user who logs in, which a user
    /// namespace (where an ordinary user could be root) does not allow (setgroups is denied there).
    @Test(.enabled(if: geteuid() == 0, "dropbear logs a user in only as root (CI runs the tests as root)"), arguments: [Architecture.aarch64])
    func dropbearServesOpenSSH(arch: Architecture) throws {
        let work = TemporaryDirectory("krnative-dropbear")
        let (_, lock) = try CompileTests.makeLock(in: work, sources: Machine.runnerSources)
        let sftpServer = try build("sftp-server", arch, output: "sftp-server", lock: lock, work: work)
        let run = try build("dropbear", arch, output: "dropbearmulti", lock: lock, work: work)
        let version = ChildProcess.run(run + ["dropbear", "-V"])
        let pinned = try #require(Machine.runnerSources["dropbear"]).version
        #expect((version.stdout + version.stderr).contains("Dropbear v\(pinned)"), "\(version.stdout)\(version.stderr)")

        let hostKey = work.path + "/host_key", identity = work.path + "/id"
        try ChildProcess.check(run + ["dropbearkey", "-t", "ed25519", "-f", hostKey])
        try ChildProcess.check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", identity])

        let port = try freeLoopbackPort()
        // Another architecture's sftp-server is started by the session's shell through qemu.
        var subsystem = sftpServer[0]
        if sftpServer.count > 1 {
            subsystem = work.file("sftp-server", "#!/bin/sh\nexec \(sftpServer.map { "'\($0)'" }.joined(separator: " ")) \"$@\"\n")
            chmod(subsystem, 0o755)
        }
        let server = try startDropbear(
            run + ["dropbear", "-F", "-E", "-s", "-p", "127.0.0.1:\(port)", "-r", hostKey, "-D", "/opt/keys"], sftpServer: subsystem,
            authorizedKeys: identity + ".pub", work: work)
        defer { server.terminate(); kill(server.processIdentifier, SIGKILL); server.waitUntilExit() }
        let options = ["-F", "/dev/null", "-i", identity, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                       "-o", "LogLevel=ERROR"]
        let ssh = ["ssh"] + options + ["-p", String(port), "root@127.0.0.1"]
        // dropbear listens once its host key is read (under qemu, a second or two).
        var login = ChildProcess.run(ssh + ["echo logged in; echo $KRNATIVE_RUNNER_MARK"])
        for _ in 0..<100 where !login.succeeded {
            usleep(200_000)
            login = ChildProcess.run(ssh + ["echo logged in; echo $KRNATIVE_RUNNER_MARK"])
        }
        let serverLog = (try? String(contentsOfFile: work.path + "/dropbear.log", encoding: .utf8)) ?? ""
        try #require(login.succeeded, "ssh to the built dropbear failed: \(login.stderr); its log: \(serverLog)")
        #expect(login.stdout == "logged in\nkept\n", "the session lost the server's environment: \(login.stdout)")
        let long = ChildProcess.run(ssh + [": " + String(repeating: "x", count: 15_000) + "; echo long command ran"])
        #expect(long.stdout == "long command ran\n", "a 15000-byte command was refused: \(long.stderr)")

        // scp, the multi binary's, as the client; the server end is the system's scp.
        let original = work.file("original", Data((0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }))
        let scp = run + ["scp", "-S", "/usr/bin/ssh"] + options + ["-P", String(port)]
        try ChildProcess.check(scp + [original, "root@127.0.0.1:" + work.path + "/uploaded"])
        try ChildProcess.check(scp + ["root@127.0.0.1:" + work.path + "/uploaded", work.path + "/downloaded"])
        #expect(try SHA256Digest.of(fileAt: work.path + "/downloaded").digest == SHA256Digest.of(fileAt: original).digest)

        // sftp: 10 MiB up and back through the built sftp-server at /opt/kernel/sftp-server.
        let big = work.file("big", Data((0..<(10 << 20)).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13) }))
        let batch = work.file("batch", "put \(big) \(work.path)/big-uploaded\nget \(work.path)/big-uploaded \(work.path)/big-downloaded\n")
        let sftp = ChildProcess.run(["sftp"] + options + ["-P", String(port), "-b", batch, "root@127.0.0.1"])
        #expect(sftp.succeeded, "sftp through /opt/kernel/sftp-server failed: \(sftp.stderr)")
        #expect(try SHA256Digest.of(fileAt: work.path + "/big-downloaded").digest == SHA256Digest.of(fileAt: big).digest)
    }

    /// tmux as the agent runs it in a kernel: a detached session runs a command, `ls` lists the
    /// session and `capture-pane` shows what the command printed; the terminal database is the
    /// machine's (/usr/share/terminfo, where the recipe's ncurses looks).
    @Test(arguments: [Architecture.aarch64])
    func tmuxRunsADetachedSession(arch: Architecture) throws {
        let work = TemporaryDirectory("krnative-tmux")
        let (_, lock) = try CompileTests.makeLock(in: work, sources: Machine.runnerSources)
        let tmux = try build("tmux", arch, output: "tmux", lock: lock, work: work)
        let version = ChildProcess.run(tmux + ["-V"])
        let pinned = try #require(Machine.runnerSources["tmux"]).version
        #expect(version.stdout == "tmux \(pinned)\n", "\(version.stdout)\(version.stderr)")

        let session = tmux + ["-S", work.path + "/socket", "-f", "/dev/null"]
        var environment = ProcessInfo.processInfo.environment
        environment["TERM"] = "xterm-256color"
        let started = ChildProcess.run(
            session + ["new-session", "-d", "-s", "krnative", "-x", "100", "-y", "30", "echo made by a $((6 * 7))-byte tmux; exec sleep 300"],
            environment: environment)
        try #require(started.succeeded, "tmux new-session failed: \(started.stderr)")
        defer { _ = ChildProcess.run(session + ["kill-server"], environment: environment) }
        let listed = ChildProcess.run(session + ["ls"], environment: environment)
        #expect(listed.stdout.hasPrefix("krnative: 1 windows"), "\(listed.stdout)\(listed.stderr)")
        var pane = ChildProcess.run(session + ["capture-pane", "-p", "-t", "krnative"], environment: environment)
        for _ in 0..<50 where !pane.stdout.contains("made by a 42-byte tmux") {
            usleep(200_000)
            pane = ChildProcess.run(session + ["capture-pane", "-p", "-t", "krnative"], environment: environment)
        }
        #expect(pane.stdout.contains("made by a 42-byte tmux"), "the pane shows: \(pane.stdout)\(pane.stderr)")
    }

    /// `build-runner`: the agent's file names, a manifest whose hashes are the files', an SBOM
    /// naming every source; `--check` builds again with every step compiled and finds the same
    /// bytes; `verify` of a manifest whose hash is not the binary's says which file differs.
    /// Last in the suite: the binaries' steps are in the step cache by then (sftp-server is the
    /// one compiled again, the cheapest).
    @Test func buildRunnerLeavesTheAgentsFilesAManifestAndAnSBOM() throws {
        let work = TemporaryDirectory("krnative-runner-set")
        let (_, lock) = try CompileTests.makeLock(in: work, sources: Machine.runnerSources.merging(Machine.testSources) { runner, _ in runner })
        let common = ["--arch", "aarch64", "--lock", lock, "--store", CompileTests.store.path]
        let out = work.path + "/out"
        let built = krnative(["build-runner", "--out", out] + common)
        try #require(built.succeeded, "\(built.stderr)")
        let names = try FileManager.default.contentsOfDirectory(atPath: out).sorted()
        #expect(
            names == [
                "dropbearmulti.aarch64.bin", "krnative-runner-manifest.aarch64.json", "krnative-runner-sbom.aarch64.spdx.json", "sftp-server.aarch64.bin",
                "tmux.aarch64.bin", "ttyd_linux.aarch64.bin",
            ])
        let manifest = try RunnerManifest.load(from: out + "/krnative-runner-manifest.aarch64.json")
        #expect(manifest.binaries.map(\.recipe) == RunnerSet.recipes)
        for binary in manifest.binaries {
            #expect(try SHA256Digest.of(fileAt: out + "/" + binary.file).digest == binary.sha256, "\(binary.file)")
        }
        #expect(manifest.binaries.first { $0.recipe == "tmux" }?.sources.map(\.name) == ["libevent", "ncurses", "tmux"])
        #expect(manifest.binaries.first { $0.recipe == "dropbear" }?.patches.count == 6)
        let sbom = try JSONSerialization.jsonObject(with: FileSystem.readRegularFile(out + "/krnative-runner-sbom.aarch64.spdx.json")) as? [String: Any]
        let packages = Set((sbom?["packages"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String })
        #expect(packages.isSuperset(of: ["ttyd", "libwebsockets", "dropbear", "zlib", "openssh", "tmux", "libevent", "ncurses"]), "\(packages)")

        let checked = krnative(["build-runner", "--only", "sftp-server", "--check", "--out", work.path + "/checked"] + common)
        #expect(checked.succeeded, "\(checked.stdout)\(checked.stderr)")
        #expect(checked.stdout.contains("same bytes: every binary of"), "\(checked.stdout)")
        #expect(!FileSystem.exists(work.path + "/checked/check.aarch64"))

        // A published manifest that another sftp-server went into: verify names it and exits 1.
        let published = work.path + "/checked/krnative-runner-manifest.aarch64.json"
        let text = try String(contentsOfFile: published, encoding: .utf8)
        let real = try #require(try RunnerManifest.load(from: published).binaries.first?.sha256.hex)
        try text.replacingOccurrences(of: real, with: String(repeating: "0", count: 64)).write(toFile: published, atomically: true, encoding: .utf8)
        let verified = krnative(["verify", "--manifest", published, "--lock", lock, "--store", CompileTests.store.path, "--out", work.path + "/verify"])
        #expect(verified.termination == .exited(1), "\(verified.stdout)\(verified.stderr)")
        #expect(verified.stdout.contains("differ: sftp-server.aarch64.bin"), "\(verified.stdout)")
    }

    /// Starts `argv` in a mount namespace of its own where a tmpfs on /opt holds `sftpServer` as /opt/kernel/sftp-server and
    /// `authorizedKeys` in /opt/keys, a directory dropbear accepts (it refuses keys below a
    /// directory others may write to, as /tmp).
    func startDropbear(_ argv: [String], sftpServer: String, authorizedKeys: String, work: TemporaryDirectory) throws -> Process {
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/unshare")
        let setup = """
            mount -t tmpfs -o mode=755 tmpfs /opt && mkdir /opt/kernel && mkdir -m 700 /opt/keys && cp "$0" /opt/kernel/sftp-server \
            && cp "$1" /opt/keys/authorized_keys && shift && exec "$@"
            """
        server.arguments = ["--mount", "sh", "-c", setup, sftpServer, authorizedKeys] + argv
        var environment = ProcessInfo.processInfo.environment
        environment["KRNATIVE_RUNNER_MARK"] = "kept"
        server.environment = environment
        server.standardOutput = FileHandle(forWritingAtPath: work.file("dropbear.log", ""))
        server.standardError = server.standardOutput
        try server.run()
        return server
    }
}
