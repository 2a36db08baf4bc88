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
    /// The flavours each target's build makes, by target (`"musllinux-aarch64": ["alpine"]`);
    /// a target not named makes every flavour it has a volume number for (musl: alpine and static-musl).
    public var flavours: [String: [String]]?

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

    public func volumeVersion(for flavour: Flavour) throws(UsageError) -> Int {
        guard let version = volumeVersions[flavour.distro] else {
            throw UsageError("krunner config has no volumeVersions[\"\(flavour.distro)\"] (the \(flavour.rawValue) volumes' number)")
        }
        return version
    }

    /// The plugin wheel's version for `flavour`.
    public func packageVersion(for flavour: Flavour) throws(UsageError) -> String {
        guard let version = packageVersions?[flavour.distro] ?? packageVersion else {
            throw UsageError("krunner config has no packageVersions[\"\(flavour.distro)\"] (nor packageVersion)")
        }
        return version
    }

    /// The flavours a build of `target` makes: `flavours[target]` when krunner.json names them, else
    /// those of the target's flavours it gives a volume number (a config written before static-musl
    /// builds alpine alone, as it did), else all (whose missing numbers are then said).
    public func flavours(of target: Target) throws(UsageError) -> [Flavour] {
        guard let names = flavours?[target.rawValue] else {
            let numbered = target.flavours.filter { volumeVersions[$0.distro] != nil }
            return numbered.isEmpty ? target.flavours : numbered
        }
        return try names.map { name throws(UsageError) in
            guard let flavour = Flavour(rawValue: name), target.flavours.contains(flavour) else {
                throw UsageError(
                    "krunner config: flavours[\"\(target.rawValue)\"] names '\(name)'; \(target.rawValue) volumes ship as "
                        + target.flavours.map(\.rawValue).joined(separator: ", "))
            }
            return flavour
        }
    }
}
