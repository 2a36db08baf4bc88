import Archive
import Foundation
import KrnativeBase
import Patch
import Testing

@Suite("Patches", .timeLimit(.minutes(60)))
struct PatchTests {
    static let contextC = """
        \tcontext->default_retry.retry_ms_table = default_backoff_table;
        \tcontext->default_retry.conceal_count =
        \t\t\tcontext->default_retry.retry_ms_table_count =
        \t\t\t\tLWS_ARRAY_SIZE(default_backoff_table);
        \tcontext->default_retry.jitter_percent = 20;
        \tcontext->default_retry.secs_since_valid_ping = 300;
        \tcontext->default_retry.secs_since_valid_hangup = 310;

        """

    /// The whole shipped series, and the ping/pong patch alone (the synthetic tree has only context.c).
    var shipped: [SourcePatch] { get throws { try SourcePatch.series(for: "libwebsockets", in: Package.root + "/patches") } }
    var pingPong: [SourcePatch] { get throws { [try SourcePatch.load(Package.root + "/patches/libwebsockets/10-ping-pong.json")] } }

    func tree(_ contextC: String = contextC) -> TemporaryDirectory {
        let work = TemporaryDirectory()
        _ = work.file("lib/core/context.c", contextC)
        return work
    }

    @Test func shippedPingPongPatchApplies() throws {
        let work = tree()
        let applied = try PatchApplier().apply(try pingPong, to: work.path, version: "4.3.3")
        #expect(applied.map(\.edits) == [2])
        #expect(applied.first?.files == ["lib/core/context.c"])
        let text = try String(contentsOfFile: work.path + "/lib/core/context.c", encoding: .utf8)
        #expect(text.contains("secs_since_valid_ping = 20;"))
        #expect(text.contains("secs_since_valid_hangup = 30;"))
        #expect(!text.contains("= 300;") && !text.contains("= 310;"))
    }

    /// What a user sees when libwebsockets changed the line the patch edits.
    @Test func driftIsReportedWithCountsAndTheNearestLine() throws {
        let work = tree(Self.contextC.replacingOccurrences(of: "secs_since_valid_ping = 300", with: "secs_since_valid_ping = 600"))
        do {
            _ = try PatchApplier().apply(try pingPong, to: work.path, version: "4.3.3")
            Issue.record("a drifted source was patched")
        } catch {
            let message = "\(error)"
            print("--- the error a user gets ---\n\(message)")
            #expect((error as? PatchError)?.exitCode == ExitStatus.patch)
            #expect(message.contains("10-ping-pong.json"))
            #expect(message.contains("lib/core/context.c"))
            #expect(message.contains("expected 1 occurrence(s)"))
            #expect(message.contains("found 0"))
            #expect(message.contains("Nearest line: 6: context->default_retry.secs_since_valid_ping = 600;"))
        }
        // All or nothing: the hang-up edit, which would apply, was not written either.
        #expect(try String(contentsOfFile: work.path + "/lib/core/context.c", encoding: .utf8).contains("hangup = 310"))
    }

    @Test func versionRangeSkipsPatchesThatDoNotFit() throws {
        let work = tree()
        #expect(try PatchApplier().apply(try shipped, to: work.path, version: "3.2.0").isEmpty)
        #expect(try PatchApplier().apply(try pingPong, to: work.path, version: "5.0.0").isEmpty)
        #expect(try String(contentsOfFile: work.path + "/lib/core/context.c", encoding: .utf8) == Self.contextC)
    }

    @Test func unifiedDiffAppliesWithoutFuzz() throws {
        let work = tree()
        let diff = """
            --- a/lib/core/context.c
            +++ b/lib/core/context.c
            @@ -5,3 +5,3 @@
             \tcontext->default_retry.jitter_percent = 20;
            -\tcontext->default_retry.secs_since_valid_ping = 300;
            +\tcontext->default_retry.secs_since_valid_ping = 20;
             \tcontext->default_retry.secs_since_valid_hangup = 310;

            """
        let patchFile = work.file("p/ping.patch", diff)
        _ = try PatchApplier().apply([try SourcePatch.load(patchFile)], to: work.path, version: "4.3.3")
        #expect(try String(contentsOfFile: work.path + "/lib/core/context.c", encoding: .utf8).contains("ping = 20;"))
        // Applying it again fails: the removed line is gone, and no fuzz lets it through.
        do {
            _ = try PatchApplier().apply([try SourcePatch.load(patchFile)], to: work.path, version: "4.3.3")
            Issue.record("a diff applied twice")
        } catch {
            #expect("\(error)".contains("@@ -5,3 +5,3 @@"))
            #expect("\(error)".contains("no fuzz"))
        }
    }

    /// The real libwebsockets source from Debian (scripts/debian-sources), when the test run has it.
    @Test(.enabled(if: Machine.testSources["libwebsockets"] != nil, "KRNATIVE_TEST_SOURCES has no libwebsockets tarball (scripts/test fetches it)"))
    func shippedPatchAppliesToTheRealLibwebsockets() throws {
        let (tarball, version) = try #require(Machine.testSources["libwebsockets"])
        let name = (tarball as NSString).lastPathComponent
        let work = TemporaryDirectory()
        try SafeExtractor(stripComponents: 1).extract(tarball, into: work.path + "/src")
        let applied = try PatchApplier().apply(try shipped, to: work.path + "/src", version: version)
        #expect(applied.map(\.edits) == [4, 2], "\(name) → \(version)")
        let text = try String(contentsOfFile: work.path + "/src/lib/core/context.c", encoding: .utf8)
        #expect(text.contains("context->default_retry.secs_since_valid_ping = 20"))
        #expect(text.contains("context->default_retry.secs_since_valid_hangup = 30"))
    }
}
