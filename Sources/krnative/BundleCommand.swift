import ArgumentParser
import Build
import Compile
import Bundle
import Foundation
import Inputs
import KrnativeBase
import Lock
import Store
import Toolchain

struct BundleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bundle", abstract: "Carry inputs across an air gap: one archive of store entries plus the lock.",
        discussion: helpText(examples: "krnative bundle export inputs.tar --all", "krnative bundle import inputs.tar"),
        subcommands: [Export.self, Import.self])

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the store entries a build uses, with the lock and a manifest, to one tar file.",
            discussion: helpText(
                """
                The build is named as for `krnative build`: --target (or --all), --toolchain, --runtime \
                and --config, or --request FILE; or --runner: `build-runner`'s, for the targets' arches. \
                The bundle holds exactly the inputs it uses. --host: the machine that will build, when it \
                is not this one.
                """,
                examples: "krnative bundle export inputs.tar --all", "krnative bundle export arm.tar --target musllinux-aarch64 --runtime source", "krnative bundle export runner.tar --target musllinux-aarch64 --runner",
                "krnative bundle export arm.tar --target musllinux-aarch64 --host aarch64-linux"))
        @OptionGroup var inputs: InputOptions
        @OptionGroup var selection: TargetSelection
        @OptionGroup var choices: InputChoiceOptions
        @OptionGroup var runner: RunnerChoice
        @Option(name: .customLong("request"), help: "A build request file (as --check writes for its runs): the inputs of that build.")
        var requestFile: String?
        @OptionGroup var output: OutputOptions
        @Argument(help: "The bundle file to write.") var file: String

        func run() throws {
            try perform("bundle export") {
                let (targets, host, build, lock, lockPath) = try chosenBuild()
                let resolver = InputResolver(store: try Store(root: inputs.storePath))
                let fetchOptions = build.options + (host == .current ? "" : " --host \(host)")
                let manifest = try AirGapBundle.export(
                    build.inputs, to: file, lock: lock, lockPath: lockPath, targets: targets, host: host, build: build.options,
                    fetchOptions: fetchOptions, resolver: resolver)
                if output.json { return printJSON(manifest) }
                let bytes = FileSystem.size(of: file) ?? 0
                print("wrote \(file): \(counted(manifest.inputs.count, "input")) for \(build.options), \(bytes) bytes, lock sha256 \(manifest.lockSha256)")
            }
        }

        /// The build the options or the request file name, and the lock it reads.
        func chosenBuild() throws -> (
            targets: [Target], host: HostPlatform, build: (inputs: [LockedInput], options: String), lock: Lockfile, lockPath: String
        ) {
            guard let requestFile else {
                let (targets, host) = try selection.resolved()
                let lock = try Lockfile.load(from: inputs.lockPath)
                let build =
                    try runner.buildInputs(of: targets, host: host, lock: lock, project: inputs.project, choices: choices)
                    ?? choices.buildInputs(of: targets, host: host, lock: lock, project: inputs.project)
                return (targets, host, build, lock, inputs.lockPath)
            }
            let given = [("--target", !selection.targets.isEmpty), ("--all", selection.all), ("--lock", inputs.lock != nil),
                ("--config", choices.config != nil), ("--toolchain", choices.toolchain != nil), ("--runtime", choices.runtime != nil),
                ("--recipes", choices.recipes != nil), ("--runner", runner.runner)]
                .filter(\.1).map(\.0)
            guard given.isEmpty else { throw UsageError("--request FILE names the build and its lock: drop \(given.joined(separator: ", "))") }
            let request = try BuildRequest.load(from: requestFile)
            let host = try selection.resolvedHost()
            let lock = try Lockfile.load(from: request.locations.lockPath)
            let build = try InputChoiceOptions.buildInputs(
                of: [request.target], host: host, toolchain: request.toolchain, runtime: request.runtime,
                recipes: request.locations.recipesDirectory, lock: lock)
            return ([request.target], host, build, lock, request.locations.lockPath)
        }
    }

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify every entry of a bundle against its manifest and the local lock, then admit them all (or none).",
            discussion: helpText(
                """
                The local lock is what the entries are checked against. Where there is none (a new \
                machine across the air gap), --take-lock checks against the lock the bundle carries and \
                writes it to --lock's path once every entry has passed: the bundle's word, so compare its \
                sha256 with the one `bundle export` printed.
                """,
                examples: "krnative bundle import inputs.tar", "krnative bundle import inputs.tar --lock site.lock.json --take-lock"))
        @OptionGroup var inputs: InputOptions
        @Flag(help: "Where the local lock is absent, check against the bundle's own lock and, once every entry has passed, write it there.") var takeLock = false
        @OptionGroup var output: OutputOptions
        @Argument(help: "The bundle file to read.") var file: String

        func run() throws {
            try perform("bundle import") {
                let lockPath = inputs.lockPath
                let hadLock = FileSystem.exists(lockPath)
                guard hadLock || takeLock else {
                    throw BundleError.noLocalLock(path: lockPath, file: file, bundleLock: AirGapBundle.lockSha256(of: file))
                }
                let carried = takeLock ? try AirGapBundle.carriedLock(of: file, replacing: lockPath) : nil
                let lock = try carried?.lock ?? Lockfile.load(from: lockPath)
                let resolver = InputResolver(store: try Store(root: inputs.storePath))
                let (manifest, report) = try AirGapBundle.importBundle(from: file, lock: lock, lockPath: lockPath, resolver: resolver)
                // The bundle's lock becomes the local one only once every entry has passed against it.
                if let carried, !hadLock {
                    try FileSystem.writeAtomically(carried.data, to: lockPath)
                    Reporting.note("wrote the lock \(file) carries to \(lockPath) (sha256 \(lock.digest))")
                }
                if output.json { return printJSON(report) }
                print("admitted \(counted(report.admitted.count, "input")), \(report.alreadyPresent.count) already present")
                if let text = manifest.build {
                    // The manifest is the bundle's word: only options krnative writes are said, rebuilt from their values.
                    guard let commands = Self.buildCommands(text) else {
                        return print("the bundle's build options are not ones krnative writes; not shown (`\(file)`'s manifest says: \(String(text.prefix(200)).debugDescription))")
                    }
                    let lockOption = inputs.lock == nil ? "" : " --lock \(ChildProcess.quote(lockPath))"
                    let storeOption = inputs.store == nil ? "" : " --store \(ChildProcess.quote(inputs.storePath))"
                    for command in commands { print("build them with: krnative \(command)\(lockOption)\(storeOption) --offline") }
                }
            }
        }

        /// The commands that build what a bundle carries, from `text` as `bundle export` writes it —
        /// `--target T` … or `--all`, then `--toolchain K --runtime R`, or `--runner` (one
        /// `build-runner` per arch), each value a known one — written again from the values; nil otherwise.
        static func buildCommands(_ text: String) -> [String]? {
            var targets: [Target] = []
            var (toolchain, runtime, runner): (ToolchainKind?, RuntimeSource?, Bool) = (nil, nil, false)
            var words = text.split(separator: " ").map(String.init)[...]
            while let option = words.popFirst() {
                switch option {
                case "--all" where targets.isEmpty: targets = Target.allCases
                case "--target": guard let target = words.popFirst().flatMap(Target.init(rawValue:)) else { return nil }; targets.append(target)
                case "--toolchain" where toolchain == nil: toolchain = words.popFirst().flatMap(ToolchainKind.init(rawValue:))
                case "--runtime" where runtime == nil: runtime = words.popFirst().flatMap(RuntimeSource.init(rawValue:))
                case "--runner" where !runner: runner = true
                default: return nil
                }
            }
            guard !targets.isEmpty else { return nil }
            if runner {
                guard toolchain == nil, runtime == nil else { return nil }
                return Architecture.allCases.filter { arch in targets.contains { $0.arch == arch } }.map { "build-runner --arch \($0.rawValue)" }
            }
            guard let toolchain, let runtime else { return nil }
            return ["build " + Target.options(for: targets) + " --toolchain \(toolchain.rawValue) --runtime \(runtime.rawValue)"]
        }
    }
}
