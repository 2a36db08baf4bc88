import Foundation
import KrnativeBase
import Sandbox
import Store
import Testing
import Verify

/// What `krnative smoke` makes its root file systems of, without making one: the Debian release
/// per libc, the mirrors mmdebstrap gets from this machine's apt sources, the release a root names.
@Suite("Smoke root file systems", .timeLimit(.minutes(60)))
struct SmokeRootTests {
    static let archive = "http://archive.example/debian", security = "http://archive.example/debian-security"

    /// An /etc of a bookworm machine: Debian's archive (deb822, with deb-src beside it), a
    /// third party's repository, a one-line list mixing Debian's backports with a third party's.
    func bookwormEtc(_ work: TemporaryDirectory) -> String {
        _ = work.file("etc/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n")
        _ = work.file(
            "etc/apt/sources.list.d/debian.sources",
            """
            Types: deb
            # a comment
            URIs: \(Self.archive)
            Suites: bookworm bookworm-updates
            Components: main
            Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

            Types: deb
            URIs: \(Self.security)
            Suites: bookworm-security
            Components: main
            Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

            Types: deb-src
            URIs: \(Self.archive)
            Suites: bookworm trixie
            Components: main
            Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

            """)
        _ = work.file(
            "etc/apt/sources.list.d/nodesource.sources",
            "Types: deb\nURIs: http://vendor.example/node\nSuites: nodistro\nComponents: main\nSigned-By: /usr/share/keyrings/nodesource.gpg\n")
        _ = work.file(
            "etc/apt/sources.list.d/mixed.list",
            """
            # Debian's backports (not the release) and an old-style third party that names bookworm
            deb \(Self.archive) bookworm-backports main
            deb [arch=amd64 signed-by=/etc/apt/keyrings/vendor.gpg] http://vendor.example/apt bookworm stable
            deb-src \(Self.archive) bookworm main

            """)
        _ = work.file("etc/apt/sources.list.d/sdk.list.disabled", "deb http://vendor.example/sdk cloud-sdk main\n")
        return work.path + "/etc"
    }

    @Test func readsDebiansArchiveAndLeavesThirdPartiesOut() throws {
        let work = TemporaryDirectory()
        let sources = AptSources.host(etc: bookwormEtc(work))
        #expect(sources.release == "bookworm")
        #expect(sources.files.map { ($0.path as NSString).lastPathComponent } == ["debian.sources", "mixed.list", "nodesource.sources"])
        let debian = try #require(sources.files.first { $0.path.hasSuffix("debian.sources") })
        #expect(debian.entries.count == 3)
        #expect(debian.entries[0] == AptSources.Entry(
            types: ["deb"], uris: [Self.archive], suites: ["bookworm", "bookworm-updates"], components: ["main"],
            signedBy: "/usr/share/keyrings/debian-archive-keyring.gpg"))
        #expect(debian.entries.allSatisfy(sources.isDebianArchive))
        let mixed = try #require(sources.files.first { $0.path.hasSuffix("mixed.list") })
        #expect(mixed.entries.map(sources.isDebianArchive) == [false, false, true])
        #expect(mixed.entries[1].signedBy == "/etc/apt/keyrings/vendor.gpg" && mixed.entries[1].suites == ["bookworm"])
        #expect(!sources.files.contains { $0.path.hasSuffix("nodesource.sources") && $0.entries.contains(where: sources.isDebianArchive) })

        // The host's own release: the all-Debian file as it is; the mixed file's Debian entry as a line.
        #expect(try sources.mirrors(for: "bookworm") == [work.path + "/etc/apt/sources.list.d/debian.sources"])
        // Another release: lines of the Debian entries with its suites, its release and -updates
        // pockets only (not -security, not backports); no third party.
        #expect(
            try sources.mirrors(for: "bullseye") == [
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \(Self.archive) bullseye main",
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \(Self.archive) bullseye-updates main",
            ])
    }

    @Test func aMixedFileGivesLinesAndNoDebianArchiveIsAnError() throws {
        let work = TemporaryDirectory()
        _ = work.file("etc/os-release", "VERSION_CODENAME=\"bookworm\"\n")
        _ = work.file(
            "etc/apt/sources.list",
            "deb \(Self.archive) bookworm main contrib\ndeb [signed-by=/k/vendor.gpg] http://vendor.example/apt nodistro main\n")
        let sources = AptSources.host(etc: work.path + "/etc")
        #expect(try sources.mirrors(for: "bookworm") == ["deb \(Self.archive) bookworm main contrib"])
        #expect(try sources.mirrors(for: "bullseye") == ["deb \(Self.archive) bullseye main contrib"])

        let thirdPartyOnly = AptSources(files: [AptSources.parse(path: "/x.list", text: "deb [signed-by=/k/vendor.gpg] http://vendor.example/apt nodistro main\n")], release: "bookworm")
        #expect(throws: UsageError.self) { try thirdPartyOnly.mirrors(for: "bullseye") }
        let noRelease = AptSources(files: sources.files, release: nil)
        #expect(throws: UsageError.self) { try noRelease.mirrors(for: "bullseye") }
    }

    /// Issue #23: the root is taken (or made) under the lock gc takes for `sysroots/<name>`, and
    /// its use is marked for gc. Before, the smoke test built its store path itself and took no lock.
    @Test(.timeLimit(.minutes(60)), .tags(.process), .endToEnd) func aRootIsTakenUnderTheLockGcTakes() throws {
        let work = TemporaryDirectory()
        let store = try Store(root: work.path + "/store")
        var test = SmokeTest(
            target: .manylinuxX86_64, description: try SmokeDescription.load(from: Package.root + "/sysroots/smoke.json"), store: store,
            runner: SandboxRunner(entryExecutable: Package.binary))
        test.aptSources = AptSources.host(etc: bookwormEtc(work))
        let name = try test.rootName()
        let root = store.item(.sysroots, name)
        try FileSystem.createDirectory(root)  // made before: no mmdebstrap runs
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(-40 * 86_400)], ofItemAtPath: root)
        let held = try store.lock(.sysroots, name)
        let finished = DispatchSemaphore(value: 0)
        let taken = Collected()
        Thread { [test] in
            taken.append(Data(((try? test.rootFilesystem()) ?? "failed").utf8))
            finished.signal()
        }.start()
        let early = finished.wait(timeout: .now() + 2)
        #expect(early == .timedOut, "the root was taken while gc's lock on it was held")
        held.unlock()
        if early == .timedOut { #expect(finished.wait(timeout: .now() + 10) == .success) }
        #expect(taken.text == root)
        let used = try FileManager.default.attributesOfItem(atPath: root)[.modificationDate] as? Date
        #expect(used.map { Date().timeIntervalSince($0) < 3600 } == true, "gc would count the root as unused for 40 days")
    }

    /// sysroots/smoke.json: glibc volumes on bullseye, musl volumes on bookworm; mmdebstrap is
    /// given the suite and the mirror lines (the root's key is made of this command).
    @Test(.tags(.process), .endToEnd) func theSuiteIsPerLibc() throws {
        let work = TemporaryDirectory()
        let description = try SmokeDescription.load(from: Package.root + "/sysroots/smoke.json")
        #expect(description.suite(for: .gnu) == "bullseye" && description.suite(for: .musl) == "bookworm")
        var test = SmokeTest(
            target: .manylinuxX86_64, description: description, store: try Store(root: work.path + "/store"),
            runner: SandboxRunner(entryExecutable: Package.binary))
        test.aptSources = AptSources.host(etc: bookwormEtc(work))
        let command = try test.rootFilesystemCommand(into: "/root")
        if HostPlatform.current.arch == .x86_64 {
            #expect(command.prefix(3) == ["mmdebstrap", "--variant=minbase", "--architectures=amd64"])
            #expect(command.contains("--include=ca-certificates"))
        }
        #expect(Array(command.suffix(4)) == ["bullseye", "/root"] + (try test.aptSources.mirrors(for: "bullseye")))
        test.target = .musllinuxAarch64
        #expect(Array(try test.rootFilesystemCommand(into: "/root").suffix(3)) == ["bookworm", "/root", work.path + "/etc/apt/sources.list.d/debian.sources"])

        // A description older than "suites": one suite for every libc.
        var old = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Package.root + "/sysroots/smoke.json"))) as! [String: Any]
        old["suites"] = nil
        old["suite"] = "bookworm"
        let path = work.file("old.json", try JSONSerialization.data(withJSONObject: old))
        let loaded = try SmokeDescription.load(from: path)
        #expect(loaded.suite(for: .gnu) == "bookworm" && loaded.suite(for: .musl) == "bookworm")
    }

    /// After mmdebstrap: the mount points and the CA certificates (linked, hashed, bundled) are
    /// written through the root's real directories only. Its links come from a mirror's packages:
    /// one that leads out of the root is refused, and nothing is written or read where it points.
    @Test(.tags(.process), .endToEnd) func finishingARootFollowsNoneOfItsLinks() throws {
        let work = TemporaryDirectory()
        let test = SmokeTest(
            target: .musllinuxAarch64, description: try SmokeDescription.load(from: Package.root + "/sysroots/smoke.json"),
            store: try Store(root: work.path + "/store"), runner: SandboxRunner(entryExecutable: Package.binary))
        let outside = work.path + "/outside", secret = work.file("secret.crt", "host file\n")
        try FileSystem.createDirectory(outside)
        /// A root holding one real CA certificate, named as Debian's are.
        func root(_ name: String) throws -> String {
            let root = work.path + "/" + name, certificates = root + "/usr/share/ca-certificates/mozilla"
            try FileSystem.createDirectory(certificates)
            try ChildProcess.check([
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                "-subj", "/CN=krnative test root", "-keyout", work.path + "/\(name).key", "-out", certificates + "/Test_Root_(1).crt",
            ])
            return root
        }

        let good = try root("good")
        try test.finish(root: good)
        #expect(FileSystem.kind(of: "opt/backend.ai", beneath: good) == S_IFDIR)
        if test.isForeign { #expect(FileSystem.kind(of: SmokeTest.emulatorInside, beneath: good) == S_IFREG) }
        let certs = good + "/etc/ssl/certs"
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: certs + "/Test_Root_=1=.pem")
            == "../../../usr/share/ca-certificates/mozilla/Test_Root_(1).crt")
        let names = try FileManager.default.contentsOfDirectory(atPath: certs)
        #expect(names.contains { $0.range(of: #"^[0-9a-f]{8}\.0$"#, options: .regularExpression) != nil }, "no subject-hash link: \(names)")
        #expect(FileManager.default.contents(atPath: certs + "/ca-certificates.crt")
            == FileManager.default.contents(atPath: good + "/usr/share/ca-certificates/mozilla/Test_Root_(1).crt"))

        // /etc/ssl, /opt: links out of the root. A certificate: a link to a host file.
        let linkedEtc = try root("linked-etc")
        try FileSystem.createDirectory(linkedEtc + "/etc")
        #expect(symlink(outside, linkedEtc + "/etc/ssl") == 0)
        let linkedOpt = try root("linked-opt")
        #expect(symlink(outside, linkedOpt + "/opt") == 0)
        let linkedCertificate = try root("linked-certificate")
        #expect(symlink(secret, linkedCertificate + "/usr/share/ca-certificates/mozilla/Host.crt") == 0)
        for hostile in [linkedEtc, linkedOpt, linkedCertificate] {
            let error = #expect(throws: (any Error).self) { try test.finish(root: hostile) }
            #expect("\(error.map { "\($0)" } ?? "")".contains(hostile == linkedCertificate ? "Host.crt" : "symbolic link"))
            #expect(try FileManager.default.contentsOfDirectory(atPath: outside).isEmpty)
        }
        #expect(!FileSystem.exists(linkedCertificate + "/etc/ssl/certs/ca-certificates.crt"))
    }

    /// The report names the release: base-files' /etc/debian_version, else os-release.
    @Test func theReleaseIsNamed() {
        let work = TemporaryDirectory()
        _ = work.file("a/etc/debian_version", "11.11\n")
        #expect(SmokeTest.release(of: work.path + "/a", suite: "bullseye") == "Debian 11.11 (bullseye)")
        _ = work.file("b/usr/lib/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n")
        #expect(SmokeTest.release(of: work.path + "/b", suite: "bookworm") == "Debian GNU/Linux 12 (bookworm)")
        #expect(SmokeTest.release(of: work.path + "/c", suite: "bookworm") == "Debian bookworm")
    }
}
