import Foundation
import KrnativeBase
import Layout
import Testing
import Verify

/// `krnative diff` and `krnative audit` on real ELF files of this machine, checked against
/// binutils' own reading of them.
@Suite("Diff and audit", .timeLimit(.minutes(60)))
struct VerifyTests {
    static let elfFiles = ["/bin/ls", "/usr/bin/python3", "/usr/lib/x86_64-linux-gnu/libcurl.so.4"]

    /// Our ELF reader against readelf: needed libraries, needed symbol versions and, for one of
    /// them, the symbols bound to it (objdump -T).
    @Test(
        .enabled(
            if: HostPlatform.current.arch == .x86_64 && elfFiles.allSatisfy(FileManager.default.fileExists(atPath:)),
            "needs an x86_64 machine with python3 and libcurl4 (scripts/setup installs them)"),
        arguments: elfFiles)
    func readsWhatReadelfReads(path: String) throws {
        let elf = try #require(ELFFile(path: path))
        // Whole outputs: ChildProcess keeps only the last 64 KiB by default.
        func output(_ argv: [String]) throws -> String {
            let result = ChildProcess.run(argv, captureLimit: 1 << 26)
            try #require(result.succeeded, "\(argv): \(result.stderr)")
            return result.stdout
        }
        let dynamic = try output(["readelf", "--wide", "--dynamic", path])
        let needed = dynamic.split(separator: "\n").compactMap { line -> String? in
            guard line.contains("(NEEDED)"), let open = line.firstIndex(of: "["), let close = line.lastIndex(of: "]") else { return nil }
            return String(line[line.index(after: open)..<close])
        }
        #expect(elf.neededLibraries == needed)
        // readelf -V: "  0x0020: Name: GLIBC_2.34  Flags: none  Version: 5" under "File: libc.so.6".
        let versionInfo = try output(["readelf", "--wide", "--version-info", path])
        var expected: Set<String> = []
        var file = ""
        var inNeeds = false
        for line in versionInfo.split(separator: "\n") {
            if line.hasPrefix("Version needs section") { inNeeds = true } else if line.hasPrefix("Version") { inNeeds = false }
            guard inNeeds else { continue }
            let words = line.split(separator: " ")
            if let at = words.firstIndex(of: "File:") { file = String(words[at + 1]) }
            if let at = words.firstIndex(of: "Name:") { expected.insert("\(file):\(words[at + 1])") }
        }
        #expect(Set(elf.neededVersions.map { "\($0.library):\($0.version)" }) == expected)
        #expect(!expected.isEmpty)
        // objdump -T: "0000000000000000      DF *UND*  0000000000000000 (GLIBC_2.34) __libc_start_main"
        // objdump names the version, not the library: two libraries may share a version name.
        let symbols = try output(["objdump", "-T", path])
        for version in Set(elf.neededVersions.map(\.version)) {
            let listed = Set(
                symbols.split(separator: "\n").filter { $0.contains("*UND*") && $0.contains("(\(version))") }
                    .compactMap { $0.split(whereSeparator: { $0 == " " || $0 == "\t" }).last.map(String.init) })
            let ours = Set(elf.neededVersions.filter { $0.version == version }.flatMap(\.symbols))
            #expect(ours == listed, "\(path) \(version)")
        }
        #expect(elf.machine == .x86_64)
    }

    /// A volume made of this machine's binaries: each rule of the policy fires, names the file
    /// and what it asks for, and stops firing when the cause goes.
    @Test(
        .enabled(
            if: HostPlatform.current.arch == .x86_64 && FileManager.default.fileExists(atPath: "/usr/bin/qemu-aarch64-static"),
            "needs an x86_64 machine with qemu-user-static (its static binary stands for ttyd)"), .tags(.process), .endToEnd)
    func auditFlagsEachRuleAndNamesFileAndSymbol() throws {
        let work = TemporaryDirectory()
        let volume = work.path + "/volume"
        for directory in ["bin", "lib"] { try FileManager.default.createDirectory(atPath: volume + "/" + directory, withIntermediateDirectories: true) }
        // A static, stripped x86_64 executable stands for ttyd; Debian's ls for a runtime built on a new glibc.
        try FileManager.default.copyItem(atPath: "/usr/bin/qemu-aarch64-static", toPath: volume + "/bin/ttyd")
        try FileManager.default.copyItem(atPath: "/bin/ls", toPath: volume + "/bin/python3")
        let policy = Package.root + "/sysroots/audit-policy.json"
        func audit(_ target: String) -> (ChildProcess.Result, [String]) {
            let result = krnative(["audit", volume, "--target", target, "--policy", policy, "--json"])
            let report = (try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8))) as? [String: Any]
            let violations = (report?["violations"] as? [[String: Any]] ?? []).map { "\($0["file"]!): \($0["problem"]!)" }
            return (result, violations)
        }

        var (result, violations) = audit("manylinux-x86_64")
        #expect(result.termination == .exited(ExitStatus.policy))
        #expect(violations.contains { $0.hasPrefix("bin/python3: needs GLIBC_2.3") && $0.contains("__libc_start_main") && $0.contains("up to 2.17") })
        #expect(violations.contains("bin/python3: needs libselinux.so.1, which manylinux_2_17 does not allow and the volume does not carry"))
        #expect(!violations.contains { $0.hasPrefix("bin/ttyd") })
        #expect(result.stderr.contains("bin/python3: needs GLIBC_2.3"))

        // Bundled, a library is the volume's own business.
        _ = FileManager.default.createFile(atPath: volume + "/lib/libselinux.so.1", contents: Data("not even ELF".utf8))
        (result, violations) = audit("manylinux-x86_64")
        #expect(!violations.contains { $0.contains("libselinux") })

        // ttyd dynamic and with a symbol table; every file the wrong machine for aarch64.
        try FileManager.default.removeItem(atPath: volume + "/bin/ttyd")
        try FileManager.default.copyItem(atPath: Package.binary, toPath: volume + "/bin/ttyd")
        (result, violations) = audit("manylinux-x86_64")
        #expect(violations.contains { $0.hasPrefix("bin/ttyd: ttyd is not static") })
        #expect(violations.contains("bin/ttyd: ttyd is not stripped (it has a .symtab)"))
        (result, violations) = audit("manylinux-aarch64")
        #expect(violations.contains("bin/python3: ELF machine is x86_64, the target's is aarch64"))
        #expect(violations.contains("bin/python3: asks for the loader /lib64/ld-linux-x86-64.so.2; manylinux-aarch64 has /lib/ld-linux-aarch64.so.1"))
        (result, violations) = audit("musllinux-x86_64")
        #expect(violations.contains { $0.hasPrefix("bin/python3: needs libc.so.6, which musllinux_1_2 does not allow") })

        // Scripts in bin/: the build's interpreter is flagged; the volume's, /bin/sh and env are not.
        let scripts = [
            "pydoc3.13": "#!/install/bin/python3.13\nimport pydoc\n", "jupyter": "#!/opt/backend.ai/bin/python3\n",
            "idle3.13": #"#!/bin/sh\n'''exec' "$(dirname -- "$(realpath -- "$0")")/python3.13" "$0" "$@"\n' '''\n"#, "tool": "#! /usr/bin/env python3\n",
        ]
        for (name, text) in scripts { try text.write(toFile: volume + "/bin/" + name, atomically: false, encoding: .utf8) }
        (result, violations) = audit("musllinux-x86_64")
        #expect(violations.contains { $0.hasPrefix("bin/pydoc3.13: is a script for /install/bin/python3.13, which is neither in the volume (/opt/backend.ai)") })
        #expect(!violations.contains { ["bin/jupyter", "bin/idle3.13", "bin/tool"].contains(String($0.prefix { $0 != ":" })) }, "\(violations)")
        try FileManager.default.removeItem(atPath: volume + "/bin/pydoc3.13")

        // A dynamic executable at a fixed address (e_type EXEC, as Zig links without -pie); Debian's ls is PIE.
        var fixed = try Data(contentsOf: URL(fileURLWithPath: "/bin/ls"))
        fixed[16] = 2
        try fixed.write(to: URL(fileURLWithPath: volume + "/bin/python3.13"))
        (result, violations) = audit("manylinux-x86_64")
        #expect(violations.contains("bin/python3.13: is an executable at a fixed address, not position-independent (link it with -pie, as python-build-standalone's are)"))
        #expect(!violations.contains { $0.hasPrefix("bin/python3:") && $0.contains("fixed address") }, "\(violations)")
        try FileManager.default.removeItem(atPath: volume + "/bin/python3.13")

        // Nothing wrong: a volume of just a static, stripped ttyd (and scripts that run) passes.
        try FileManager.default.removeItem(atPath: volume + "/bin/python3")
        try FileManager.default.removeItem(atPath: volume + "/bin/ttyd")
        try FileManager.default.copyItem(atPath: "/usr/bin/qemu-aarch64-static", toPath: volume + "/bin/ttyd")
        (result, violations) = audit("manylinux-x86_64")
        #expect(result.succeeded, "\(result.stderr)")
        #expect(violations.isEmpty)
    }

    /// Two trees that differ in each way diff reports; the same trees packed as tar.xz; the same
    /// tree against itself.
    @Test(.tags(.process), .endToEnd) func diffReportsEachKindOfDifference() throws {
        let work = TemporaryDirectory()
        let (a, b) = (work.path + "/a", work.path + "/b")
        for root in [a, b] { try FileManager.default.createDirectory(atPath: root + "/bin", withIntermediateDirectories: true) }
        var elf = try Data(contentsOf: URL(fileURLWithPath: "/bin/true"))
        try elf.write(to: URL(fileURLWithPath: a + "/bin/tool"))
        let parsed = try #require(ELFFile(data: elf))
        let rodata = try #require(parsed.sections.first { $0.name == ".rodata" })
        elf[rodata.bytes.lowerBound + 1] ^= 0xff
        try elf.write(to: URL(fileURLWithPath: b + "/bin/tool"))
        try "same\n".write(toFile: a + "/same", atomically: false, encoding: .utf8)
        try "same\n".write(toFile: b + "/same", atomically: false, encoding: .utf8)
        try "gone\n".write(toFile: a + "/gone", atomically: false, encoding: .utf8)
        try "new\n".write(toFile: b + "/new", atomically: false, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: a + "/link", withDestinationPath: "same")
        try FileManager.default.createSymbolicLink(atPath: b + "/link", withDestinationPath: "new")
        chmod(a + "/same", 0o644)
        chmod(b + "/same", 0o600)

        let result = krnative(["diff", a, b, "--json"])
        #expect(result.termination == .exited(1))
        let report = try JSONDecoder().decode(DiffReport.self, from: Data(result.stdout.utf8))
        let byPath = Dictionary(uniqueKeysWithValues: report.differences.map { ($0.path, $0) })
        #expect(byPath["gone"]?.change == .removed)
        #expect(byPath["new"]?.change == .added)
        #expect(byPath["link"]?.fields.map(\.name) == ["link target"])
        #expect(byPath["same"]?.fields.map(\.name) == ["mode"])
        #expect(byPath["bin/tool"]?.fields.map(\.name) == ["sha256"])
        #expect(byPath["bin/tool"]?.sections == [".rodata"])
        #expect(report.differences.count == 5)

        // The same, packed: the archives differ in the same entries (pack keeps permission bits).
        for (tree, archive) in [(a, work.path + "/a.tar.xz"), (b, work.path + "/b.tar.xz")] {
            #expect(krnative(["pack", tree, archive, "--threads", "1"]).succeeded)
        }
        let packed = krnative(["diff", work.path + "/a.tar.xz", work.path + "/b.tar.xz"])
        #expect(packed.termination == .exited(1))
        #expect(packed.stdout.contains("~ bin/tool: sha256 ") && packed.stdout.contains("ELF sections differ: .rodata"))
        #expect(packed.stdout.contains("- gone") && packed.stdout.contains("+ new"))
        #expect(packed.stdout.contains("~ link: link target same → new"))

        let same = krnative(["diff", a, a])
        #expect(same.succeeded)
        #expect(same.stdout.hasSuffix("identical\n"))
        let missing = krnative(["diff", a, work.path + "/nothing-here"])
        #expect(missing.termination == .exited(ExitStatus.usage))
        #expect(missing.stderr.contains("nothing-here"))
    }
}
