import Foundation
import KrnativeBase
import Verify

/// `krnative verify`: a rebuild's manifest against one published by another machine, by the
/// hashes both record: every output file, and for a volume that differs, every entry in it.
public enum ManifestComparison {
    public static func load(_ path: String) throws -> BuildManifest {
        guard let data = try? FileSystem.readRegularFile(path) else {
            throw UsageError("cannot read the manifest \(path) (\(FileSystem.whyUnreadable(path))); give the krnative-manifest.{distro}.{arch}.json a build wrote")
        }
        do { return try DuplicateJSONKey.decode(BuildManifest.self, from: data) } catch {
            throw UsageError("\(path) is not a krnative manifest: \(error)")
        }
    }

    public static func compare(_ published: BuildManifest, at publishedPath: String, with rebuilt: BuildManifest, at rebuiltPath: String) -> DiffReport {
        var differences = DiffReport.compare(outputs(published), outputs(rebuilt))
        for index in differences.indices where differences[index].path.hasPrefix("krunner-env.") && differences[index].change == .changed {
            differences[index].inner = DiffReport.compare(volume(published), volume(rebuilt))
        }
        return DiffReport(left: publishedPath, right: rebuiltPath, differences: differences)
    }

    static func outputs(_ manifest: BuildManifest) -> Listing {
        Listing(
            location: "manifest", source: .archive,
            files: Dictionary(uniqueKeysWithValues: manifest.outputs.map { ($0.file, ListedFile(kind: .file, mode: "644", size: $0.size, sha256: $0.sha256)) }))
    }

    static func volume(_ manifest: BuildManifest) -> Listing {
        let kinds: [String: ListedFile.Kind] = ["directory": .directory, "file": .file, "symlink": .symlink, "hardlink": .hardlink]
        var files: [String: ListedFile] = [:]
        for entry in manifest.volume {
            let path = Listing.normalized(entry.path)
            if path.isEmpty { continue }
            files[path] = ListedFile(
                kind: kinds[entry.type.rawValue] ?? .other, mode: entry.mode, size: entry.size, sha256: entry.sha256, linkTarget: entry.target)
        }
        return Listing(location: "manifest", source: .archive, files: files)
    }
}
