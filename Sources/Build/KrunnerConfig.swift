import Foundation
import Compile
import KrnativeBase

/// The versions a release bumps without touching code: `krunner.json` at the repository root.
public struct KrunnerConfig: Codable, Sendable, Equatable {
    /// The plugin wheel's version.
    public var packageVersion: String
    /// The integer volume version per distro (`krunner-version.{distro}.txt`): bump it when the
    /// volume changes, so agents unpack it anew.
    public var volumeVersions: [String: Int]
    /// Where the Python runtime comes from (`pbs` when absent); `--runtime` on build overrides it.
    public var runtime: RuntimeSource?

    public static let defaultFileName = "krunner.json"

    public init(packageVersion: String, volumeVersions: [String: Int]) {
        self.packageVersion = packageVersion
        self.volumeVersions = volumeVersions
    }

    public static func load(from path: String) throws(UsageError) -> KrunnerConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw UsageError("cannot read \(path); it names packageVersion and volumeVersions (see the README), or pass --config FILE")
        }
        do { return try JSONDecoder().decode(KrunnerConfig.self, from: data) } catch {
            throw UsageError("\(path) is not a valid krunner config: \(error)")
        }
    }

    public func volumeVersion(for target: Target) throws(UsageError) -> Int {
        guard let version = volumeVersions[target.distro] else {
            throw UsageError("krunner config has no volumeVersions[\"\(target.distro)\"]")
        }
        return version
    }
}
