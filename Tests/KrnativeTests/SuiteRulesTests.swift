import Foundation
import Testing

/// The test suite's own rules, read from its sources.
@Suite("Test suite rules", .timeLimit(.minutes(60)))
struct SuiteRulesTests {
    /// Every suite has the README's hang guard, 60 minutes, and no test a shorter one. A limit
    /// counts from the test's start, and a started test may wait for a thread: on two cores the
    /// long compiles hold both for most of a cold run. PackedVolumeBuildTests had 30 minutes and
    /// failed so in CI after 13 s of work of its own.
    @Test func everySuiteHasTheHourLongHangGuard() throws {
        let directory = Package.root + "/Tests/KrnativeTests"
        var suites = 0
        // Spelt in two pieces, so that this file's own words are not taken for a trait.
        let limit = ".time" + "Limit(", hour = limit + ".minutes(60))"
        for name in try FileManager.default.contentsOfDirectory(atPath: directory).sorted() where name.hasSuffix(".swift") {
            let text = try String(contentsOfFile: directory + "/" + name, encoding: .utf8)
            let limits = text.components(separatedBy: limit).dropFirst().map { limit + $0.prefix { $0 != ")" } + "))" }
            #expect(limits.allSatisfy { $0 == hour }, "\(name): \(limits)")
            for declaration in text.components(separatedBy: "\n@Suite(").dropFirst() {
                suites += 1
                let traits = declaration.components(separatedBy: "\nstruct ").first ?? declaration
                #expect(traits.contains(hour), "\(name): @Suite(\(traits.prefix(80))… has no \(hour)")
            }
        }
        #expect(suites >= 40, "only \(suites) suites found in \(directory)")
    }
}
