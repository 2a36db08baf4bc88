import Foundation
import Compile
import KrnativeBase

/// The versions a release bumps without touching code: `krunner.json` at the repository root.
public struct KrunnerConfig: Codable, Sendable, Equatable {
    /// The plugin wheel's version for a distro without an entry in `packageVersions`.
    public var packageVersion: String?
    /// The plugin wheel's version per distro: each flavour continues its published line
    /// (static-gnu 4.x, musllinux_1_2 — the alpine package — 5.x), which Backend.AI's requirements pin.
    public var packageVersions: [String: String]?
    /// The integer volume version per distro (`krunner-version.{distro}.txt`): bump it when the
    /// volume changes, so agents unpack it anew; `krunner-volumes.json` records what each number holds.
    public var volumeVersions: [String: Int]
    /// Where the Python runtime comes from (`pbs` when absent); `--runtime` on build overrides it.
    public var runtime: RuntimeSource?

    public static let defaultFileName = "krunner.json"

    public init(packageVersion: String, volumeVersions: [String: Int]) {
        self.packageVersion = packageVersion
        self.volumeVersions = volumeVersions
    }

    public init(packageVersions: [String: String], volumeVersions: [String: Int]) {
        self.packageVersions = packageVersions
        self.volumeVersions = volumeVersions
    }

    public static func load(from path: String) throws(UsageError) -> KrunnerConfig {
        guard let data = try? FileSystem.readRegularFile(path) else {
            throw UsageError("cannot read \(path) (\(FileSystem.whyUnreadable(path))); it names packageVersions and volumeVersions (see the README), or pass --config FILE")
        }
        do { return try DuplicateJSONKey.decode(KrunnerConfig.self, from: data) } catch {
            throw UsageError("\(path) is not a valid krunner config: \(error)")
        }
    }

    public func volumeVersion(for target: Target) throws(UsageError) -> Int {
        guard let version = volumeVersions[target.distro] else {
            throw UsageError("krunner config has no volumeVersions[\"\(target.distro)\"]")
        }
        return version
    }

    /// The plugin wheel's version for `target`'s distro.
    public func packageVersion(for target: Target) throws(UsageError) -> String {
        guard let version = packageVersions?[target.distro] ?? packageVersion else {
            throw UsageError("krunner config has no packageVersions[\"\(target.distro)\"] (nor packageVersion)")
        }
        return version
    }
}
