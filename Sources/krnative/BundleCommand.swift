import ArgumentParser
import Bundle
import Foundation
import Inputs
import KrnativeBase
import Lock
import Store

struct BundleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bundle", abstract: "Carry inputs across an air gap: one archive of store entries plus the lock.",
        discussion: helpText(examples: "krnative bundle export inputs.tar --all", "krnative bundle import inputs.tar"),
        subcommands: [Export.self, Import.self])

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write every store entry the targets need, with the lock and a manifest, to one tar file.",
            discussion: helpText(examples: "krnative bundle export inputs.tar --all", "krnative bundle export arm.tar --target musllinux-aarch64 --host aarch64-linux"))
        @OptionGroup var inputs: InputOptions
        @OptionGroup var selection: TargetSelection
        @OptionGroup var output: OutputOptions
        @Argument(help: "The bundle file to write.") var file: String

        func run() throws {
            try perform("bundle export") {
                let (targets, host) = try selection.resolved()
                let lock = try Lockfile.load(from: inputs.lockPath)
                let resolver = InputResolver(store: try Store(root: inputs.storePath))
                let manifest = try AirGapBundle.export(
                    to: file, lock: lock, lockPath: inputs.lockPath, targets: targets, host: host, resolver: resolver)
                if output.json { return printJSON(manifest) }
                let bytes = FileSystem.size(of: file) ?? 0
                print("wrote \(file): \(counted(manifest.inputs.count, "input")), \(bytes) bytes, lock sha256 \(manifest.lockSha256)")
            }
        }
    }

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify every entry of a bundle against its manifest and the local lock, then admit them all (or none).",
            discussion: helpText(examples: "krnative bundle import inputs.tar"))
        @OptionGroup var inputs: InputOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "The bundle file to read.") var file: String

        func run() throws {
            try perform("bundle import") {
                guard FileSystem.exists(inputs.lockPath) else { throw BundleError.noLocalLock(path: inputs.lockPath) }
                let lock = try Lockfile.load(from: inputs.lockPath)
                let resolver = InputResolver(store: try Store(root: inputs.storePath))
                let (_, report) = try AirGapBundle.importBundle(from: file, lock: lock, lockPath: inputs.lockPath, resolver: resolver)
                if output.json { return printJSON(report) }
                print("admitted \(counted(report.admitted.count, "input")), \(report.alreadyPresent.count) already present")
            }
        }
    }
}
