import Foundation
import KrnativeBase

/// The build key: everything that decides a build's outputs, by name (`VolumeBuild.buildKeyParts`),
/// hashed. The manifest records the parts beside the key, so that a build whose key differs from the
/// manifest's can say which part changed.
public enum BuildKey {
    /// Hashed with the parts: a krnative that names or hashes them otherwise makes other keys.
    static let format = "krnative build key v2"
    /// Starts a part's value that stands for contents (a file, a document): such a part is reported
    /// as changed, not as two hashes.
    static let contentsPrefix = "sha256:"

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
}
