import Foundation
import KrnativeBase
import Lock

/// The build key: everything that decides a build's outputs, by name (`BuildKey.parts`),
/// hashed. The manifest records the parts beside the key, so that a build whose key differs from the
/// manifest's can say which part changed ("audit mode report → enforce") instead of rebuilding silently.
public enum BuildKey {
    /// Hashed with the parts: a krnative that names or hashes them otherwise makes other keys.
    static let format = "krnative build key v2"
    /// Starts a part's value that stands for contents (a file, a document): such a part is reported
    /// as changed, not as two hashes.
    static let contentsPrefix = "sha256:"

    /// Everything that decides a build's outputs, by name: the request's choices (each field a
    /// part, `BuildRequest.Choices.keyParts`), the krnative executable, the lock, and each file
    /// under the patches directory ("patch NAME") and the recipes directory ("recipe NAME"). Files
    /// are there by their hash, never their path.
    public static func parts(of request: BuildRequest, lock: Lockfile, executable: String) throws -> [String: String] {
        var parts = try request.choices.keyParts()
        parts["krnative executable"] = contents(try SHA256Digest.ofExecutable(at: executable))
        parts["lock"] = contents(lock.digest)
        for (kind, directory) in [("patch", request.locations.patchesDirectory), ("recipe", request.locations.recipesDirectory)] {
            let names = (FileManager.default.enumerator(atPath: directory)?.allObjects as? [String] ?? []).sorted()
            for name in names where !FileSystem.isDirectory(directory + "/" + name) {
                parts[kind + " " + name] = contents(try SHA256Digest.of(fileAt: directory + "/" + name).digest)
            }
        }
        return parts
    }

    /// The key of `parts`: the format, then the parts as JSON with sorted names, hashed.
    public static func digest(of parts: [String: String]) -> SHA256Digest {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        // A dictionary of strings always encodes.
        let document = (try? encoder.encode(parts)) ?? Data()
        return SHA256Digest.of(Data((format + "\n").utf8) + document)
    }

    /// A part's value for contents with this hash.
    static func contents(_ digest: SHA256Digest) -> String { contentsPrefix + digest.hex }

    /// What changed from `recorded` (a manifest's parts) to `current` (this build's), one phrase
    /// per part in name order: "audit mode report → enforce", "the lock changed",
    /// "patch ttyd/10-version.json added".
    public static func differences(from recorded: [String: String], to current: [String: String]) -> [String] {
        Set(recorded.keys).union(current.keys).sorted().compactMap { name in
            let (old, new) = (recorded[name], current[name])
            let isContents = [old, new].contains { $0?.hasPrefix(contentsPrefix) == true }
            // Patches go by their file name; the executable, the lock and the policy by "the".
            let subject = isContents && !name.hasPrefix("patch ") ? "the " + name : name
            switch (old, new) {
            case (nil, _): return "\(subject) added"
            case (_, nil): return "\(subject) removed"
            case let (old?, new?) where old != new: return isContents ? "\(subject) changed" : "\(name) \(old) → \(new)"
            default: return nil
            }
        }
    }
}
