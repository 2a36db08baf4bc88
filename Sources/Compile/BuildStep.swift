import Foundation
import KrnativeBase
import Patch
import Toolchain

/// Where things are during a build, as the steps see them. Inside the sandbox these are fixed
/// paths, the same on every machine; with `--sandbox none` they are the host paths.
public struct BuildLayout: Sendable, Codable, Equatable {
    /// The work directory: sources under `src/`, the install tree under `stage/`.
    public var build: String
    public var toolchain: String
    public var zigCache: String

    public init(build: String, toolchain: String, zigCache: String) {
        self.build = build
        self.toolchain = toolchain
        self.zigCache = zigCache
    }

    public static let sandboxed = BuildLayout(build: "/build", toolchain: Toolchain.insideRoot, zigCache: "/zig-cache")

    /// Zig's cache of a build without the sandbox: in its work directory, so it goes with it.
    public static func zigCache(inWork work: String) -> String { work + "/zig-cache" }

    public var stage: String { build + "/stage" }
    public var wrappers: String { build + "/wrappers" }
    public var cmakeToolchainFile: String { build + "/toolchain.cmake" }
    public func source(_ component: String) -> String { build + "/src/" + component }
}

/// One library (or ttyd itself) of the recipe: commands run in order in its source directory.
public struct BuildStep: Sendable, Codable, Equatable {
    /// The lock's source entry, and the `patches/` folder.
    public var component: String
    public var commands: [[String]]
    public var environment: [String: String]
    /// Where and why this step differs from its upstream recipe.
    public var adaptation: String?
    /// The directory under `src/` it builds in, when not the component's name (a source built twice).
    public var directory: String? = nil
    /// Edits of the source the recipe makes before the commands run (after `patches/`), each
    /// checked as a structured patch's edit is: the step fails when a `find` is not there `count` times.
    public var edits: [PatchEdit]? = nil
    /// The step compiles for the machine that builds (the build Python), not the target: as the
    /// first step of a recipe, its key names the toolchain and this machine, not the target, so
    /// the four targets' builds on one machine share it.
    public var forBuildMachine: Bool? = nil
    /// The steps (by name, each before this one) whose install trees this step builds on: it
    /// sees those and theirs, nothing else, and its key hashes theirs only. Nil: every step
    /// before it (a chain).
    public var needs: [String]? = nil

    /// The step's name: its directory under `src/`, its log, its line in the report.
    public var name: String { directory ?? component }
}
