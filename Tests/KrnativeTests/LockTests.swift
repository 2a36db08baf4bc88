import Build
import Compile
import Foundation
import KrnativeBase
import Lock
import Testing

@Suite("Lock", .timeLimit(.minutes(60)))
struct LockTests {
    func parseError(_ json: String) -> String {
        do {
            _ = try Lockfile.parse(Data(json.utf8), file: "test.lock.json")
            return "parsed"
        } catch { return error.description }
    }

    let wheel = #"{"name": "attrs", "kind": "wheel", "version": "25.4.0", "filename": "attrs-25.4.0-py3-none-any.whl", "sha256": "adcf7e2a1fb3b36ac48d97835bb6d8ade15b8dcce26aba8bf1d14847b57a3373", "urls": ["http://x/a.whl"]}"#

    @Test func theRepositoryLockIsValidAndPinsEveryInput() throws {
        let lock = try Lockfile.load(from: Package.root + "/krnative.lock.json")
        #expect(lock.inputs.filter { $0.kind == .runtime }.count == 4)
        #expect(
            Set(lock.inputs.filter { $0.kind == .source }.map(\.name)) == [
                "ttyd", "zlib", "json-c", "mbedtls", "libuv", "libwebsockets", "dropbear", "openssh", "libevent", "ncurses", "tmux",
            ])
        #expect(lock.inputs.filter { $0.kind == .source }.allSatisfy { $0.treeSha256 != nil })
        for target in Target.allCases {
            let needed = lock.inputs(for: [target], host: HostPlatform(arch: .x86_64))
            #expect(needed.filter { $0.kind == .wheel }.count == 13, "\(target)")
            #expect(needed.filter { $0.kind == .runtime }.count == 1)
            // Zig for the host, and the musl.cc toolchain for the target's arch.
            #expect(Set(needed.filter { $0.kind == .toolchain }.map(\.name)) == ["zig-x86_64-linux", "musl-cross-\(target.ttydTriple)"])
        }
        let onArm = lock.inputs(for: [.musllinuxAarch64], host: HostPlatform(arch: .aarch64))
        #expect(onArm.filter { $0.kind == .toolchain }.map(\.name) == ["zig-aarch64-linux"])
        // The runner binaries' sources (dropbear, OpenSSH, tmux, libevent) are the lock's, not a
        // volume's: a volume build neither needs them in the store nor has them in its key. ncurses
        // is tmux's and the runtime recipe's: a volume whose runtime is compiled here takes it.
        let ttyds: Set = ["ttyd", "zlib", "json-c", "mbedtls", "libuv", "libwebsockets"]
        for (runtime, sources) in [(RuntimeSource.pbs, ttyds), (.source, ttyds.union(["ncurses"]))] {
            let volume = try VolumeBuild.inputs(of: .musllinuxAarch64, in: lock, host: HostPlatform(arch: .x86_64), toolchain: .zig, runtime: runtime)
            #expect(Set(volume.filter { $0.kind == .source }.map(\.name)) == sources, "\(runtime)")
        }
    }

    @Test func encodingRoundTripsAndIsStable() throws {
        let lock = try Lockfile.load(from: Package.root + "/krnative.lock.json")
        let again = try Lockfile.parse(lock.encoded(), file: "again")
        #expect(again == lock)
        #expect(again.encoded() == lock.encoded())
    }

    @Test func malformedJSONNamesTheFileAndPlace() {
        let message = parseError("{\n  \"version\": 1,\n  \"inputs\": [,]\n}")
        #expect(message.contains("test.lock.json"))
        #expect(message.contains("not valid JSON"))
        #expect(message.contains("line 3"), "\(message)")
    }

    @Test func unknownVersionSaysWhichVersionIsRead() {
        let message = parseError(#"{"version": 2, "sourceDateEpoch": 0, "inputs": []}"#)
        #expect(message.contains("format version 2"))
        #expect(message.contains("reads version 1"))
        #expect(parseError(#"{"sourceDateEpoch": 0, "inputs": []}"#).contains("at version: missing"))
        #expect(parseError(#"{"version": true, "sourceDateEpoch": 0, "inputs": []}"#).contains("format version"))
    }

    @Test func missingHashNamesTheEntryAndKey() {
        let json = #"{"version": 1, "sourceDateEpoch": 0, "inputs": [\#(wheel.replacingOccurrences(of: #""sha256": "adcf7e2a1fb3b36ac48d97835bb6d8ade15b8dcce26aba8bf1d14847b57a3373", "#, with: ""))]}"#
        let message = parseError(json)
        #expect(message.contains("inputs[0] (attrs).sha256"), "\(message)")
        #expect(message.contains("krnative lock add"))
    }

    @Test func weakHashIsRefused() {
        let json = #"{"version": 1, "sourceDateEpoch": 0, "inputs": [{"name": "z", "kind": "toolchain", "version": "1", "filename": "z.tgz", "md5": "d41d8cd98f00b204e9800998ecf8427e", "urls": ["http://x/z"]}]}"#
        let message = parseError(json)
        #expect(message.contains("inputs[0] (z).md5"), "\(message)")
        #expect(message.contains("sha256 only"))
    }

    @Test func shortHashAndUnknownKeysAreRefused() {
        let short = #"{"version": 1, "sourceDateEpoch": 0, "inputs": [\#(wheel.replacingOccurrences(of: "adcf7e2a1fb3b36ac48d97835bb6d8ade15b8dcce26aba8bf1d14847b57a3373", with: "adcf7e"))]}"#
        let message = parseError(short)
        #expect(message.contains("inputs[0] (attrs).sha256"), "\(message)")
        #expect(message.contains("64 hex digits"))
        let typo = #"{"version": 1, "sourceDateEpoch": 0, "inputs": [\#(wheel.replacingOccurrences(of: "\"urls\"", with: "\"url\""))]}"#
        #expect(parseError(typo).contains("inputs[0] (attrs).url: unknown key"))
    }

    @Test func sourceNeedsTreeHashAndNamesAreUnique() {
        let source = #"{"name": "zlib", "kind": "source", "version": "1", "filename": "zlib.tar.gz", "urls": ["http://x/z"]}"#
        #expect(parseError(#"{"version": 1, "sourceDateEpoch": 0, "inputs": [\#(source)]}"#).contains("inputs[0] (zlib).treeSha256"))
        #expect(parseError(#"{"version": 1, "sourceDateEpoch": 0, "inputs": [\#(wheel), \#(wheel)]}"#).contains("used twice"))
        #expect(parseError(#"{"version": 1, "sourceDateEpoch": 0, "inputs": [\#(wheel)]}"#) == "parsed")
    }

    @Test func aDuplicatedKeyIsRefusedWithBothPlacesAndValues() {
        let twice = wheel.replacingOccurrences(of: #""urls""#, with: #""version": "9.9", "urls""#)
        let message = parseError(#"{"version": 1, "sourceDateEpoch": 0, "inputs": [\#(twice)]}"#)
        for needle in ["test.lock.json", "inputs[0] (attrs).version", "twice", #"(value "25.4.0")"#, #"(value "9.9")"#, "column"] {
            #expect(message.contains(needle), "\(needle) missing from: \(message)")
        }
        // Escapes spell the same key; Python's reader would take the second.
        let escaped = wheel.replacingOccurrences(of: #""urls""#, with: #""sh\u0061256": "\#(String(repeating: "0", count: 64))", "urls""#)
        #expect(parseError(#"{"version": 1, "sourceDateEpoch": 0, "inputs": [\#(escaped)]}"#).contains("inputs[0] (attrs).sha256"))
        #expect(parseError(#"{"version": 1, "version": 1, "sourceDateEpoch": 0, "inputs": []}"#).contains("the key version twice"))
        let nested = #"{"version": 1, "sourceDateEpoch": 0, "inputs": [{"name": "p", "kind": "wheel", "version": "1", "filename": "p.whl", "sha256": "adcf7e2a1fb3b36ac48d97835bb6d8ade15b8dcce26aba8bf1d14847b57a3373", "pip": {"requirement": "p==1", "requirement": "p==2"}}]}"#
        #expect(parseError(nested).contains("inputs[0] (p).pip.requirement"))
        // The same key in two objects, and keys that only look alike, are fine.
        #expect(DuplicateJSONKey.first(in: Data(#"{"a": {"b": 1}, "c": {"b": 2}, "e\u0301": 1, "\u00e9": 2}"#.utf8)) == nil)
    }

    /// A manifest's volume listing has tens of thousands of keys on as many lines; the scan is
    /// one pass (lines and columns are counted for a duplicate only), so it ends within the limit
    /// where counting them per key took minutes, and still finds the last key written twice.
    @Test(.timeLimit(.minutes(60))) func aManifestSizedDocumentIsScannedInOnePass() {
        let entries = (0..<40_000).map { #"  {"path": "lib/python3.13/file\#($0).py", "type": "file", "mode": 420, "size": \#($0)}"# }
        let clean = "{\n\"volume\": [\n" + entries.joined(separator: ",\n") + "\n]}"
        #expect(DuplicateJSONKey.first(in: Data(clean.utf8)) == nil)
        let twice = String(clean.dropLast()) + #", "volume": []}"#
        #expect(DuplicateJSONKey.first(in: Data(twice.utf8))?.second.line == 40_003)
    }
}
