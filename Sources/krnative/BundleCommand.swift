import ArgumentParser
import Bundle
import Fetch
import Foundation
import KrnativeBase
import Lock
import Store

struct BundleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bundle", abstract: "Carry inputs across an air gap: one archive of store entries plus the lock.",
        subcommands: [Export.self, Import.self])

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write every store entry the targets need, with the lock and a manifest, to one tar file.")
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
                print("wrote \(file): \(manifest.inputs.count) inputs, \(bytes) bytes, lock sha256 \(manifest.lockSha256)")
            }
        }
    }

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Verify every entry of a bundle and admit it into the store.")
        @OptionGroup var inputs: InputOptions
        @OptionGroup var output: OutputOptions
        @Argument(help: "The bundle file to read.") var file: String

        func run() throws {
            try perform("bundle import") {
                let resolver = InputResolver(store: try Store(root: inputs.storePath))
                let (manifest, report) = try AirGapBundle.importBundle(from: file, resolver: resolver)
                if output.json { return printJSON(report) }
                print("admitted \(report.admitted.count) inputs, \(report.alreadyPresent.count) already present")
                if let lock = try? Lockfile.load(from: inputs.lockPath), lock.digest != manifest.lockSha256 {
                    print("note: the bundle was made from a lock with sha256 \(manifest.lockSha256); \(inputs.lockPath) has \(lock.digest)")
                }
            }
        }
    }
}
