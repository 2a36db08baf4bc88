import Compile
import Foundation
import KrnativeBase
import Lock

/// The project krnative works in: the nearest directory holding `krnative.lock.json`, found from
/// the working directory upwards, as cargo finds `Cargo.toml` (outside any project, the directory
/// of the lock `--lock` or `KRNATIVE_LOCK` names, else the working directory). Its lock,
/// `krunner.json`, `patches/` and `sysroots/` are the defaults of the options that take them, and
/// `out/` is where builds go, wherever in it krnative is run. `--lock` names another lock without
/// leaving the project; paths given on the command line stay relative to the working directory.
struct Project {
    let root: String

    static func discover(lock explicit: String?, from directory: String = FileManager.default.currentDirectoryPath) -> Project {
        var candidate = directory
        while true {
            if FileManager.default.fileExists(atPath: candidate + "/" + Lockfile.defaultFileName) { return Project(root: candidate) }
            let parent = (candidate as NSString).deletingLastPathComponent
            if parent == candidate || parent.isEmpty { break }
            candidate = parent
        }
        return Project(root: explicit.map { (absolute($0) as NSString).deletingLastPathComponent } ?? directory)
    }

    /// The path the user gave, else `relative` inside the project.
    func file(_ explicit: String?, default relative: String) -> String {
        explicit ?? root + "/" + relative
    }

    /// The recipes directory: the one given, else the project's `recipes/` when it has one, else
    /// the recipes this krnative was built with.
    func recipes(_ explicit: String?) -> String { builtInUnlessGiven(explicit, "recipes", builtIn: RecipeFile.builtIn) }

    /// The patches directory, found as the recipes are: a lock outside the project (`--lock
    /// elsewhere/krnative.lock.json`) no longer builds ttyd without its patches.
    func patches(_ explicit: String?) -> String { builtInUnlessGiven(explicit, "patches", builtIn: RecipeFile.builtInSibling("patches")) }

    private func builtInUnlessGiven(_ explicit: String?, _ name: String, builtIn: String) -> String {
        explicit ?? (FileSystem.isDirectory(root + "/" + name) ? root + "/" + name : builtIn)
    }
}
