import Foundation
import Lock

/// The project krnative works in: the directory holding `krnative.lock.json` — the one `--lock`
/// (or `KRNATIVE_LOCK`) names, else the nearest one found from the working directory upwards, as
/// cargo finds `Cargo.toml`. Its `krunner.json`, `patches/` and `sysroots/` are the defaults of
/// the options that take them, and `out/` is where builds go, wherever in it krnative is run.
/// Paths given on the command line stay relative to the working directory.
struct Project {
    let root: String

    static func discover(lock explicit: String?, from directory: String = FileManager.default.currentDirectoryPath) -> Project {
        if let explicit {
            return Project(root: (absolute(explicit) as NSString).deletingLastPathComponent)
        }
        var candidate = directory
        while true {
            if FileManager.default.fileExists(atPath: candidate + "/" + Lockfile.defaultFileName) { return Project(root: candidate) }
            let parent = (candidate as NSString).deletingLastPathComponent
            if parent == candidate || parent.isEmpty { return Project(root: directory) }
            candidate = parent
        }
    }

    /// The path the user gave, else `relative` inside the project.
    func file(_ explicit: String?, default relative: String) -> String {
        explicit ?? root + "/" + relative
    }
}
