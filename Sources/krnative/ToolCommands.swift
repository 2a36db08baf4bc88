import ArgumentParser
import Archive
import Foundation
import KrnativeBase
import Layout

/// `krnative pack DIR OUT`: the pack stage alone, for a tree made elsewhere (and for the benchmarks).
struct PackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pack", abstract: "Pack a directory as a deterministic tar.xz (the volume's format).",
        discussion: helpText(examples: "krnative pack volume/ krunner-env.tar.xz --source-date-epoch 1700000000"))
    @Argument(help: "The directory to pack.") var directory: String
    @Argument(help: "The tar.xz to write.") var output: String
    @Option(parsing: .unconditional, help: "Compression threads; the bytes are the same for any number. Default: the number of CPUs.")
    var threads: Int?
    @Option(help: "Clamp every mtime to this. Default: env SOURCE_DATE_EPOCH, else 0.") var sourceDateEpoch: Int64?
    @OptionGroup var reporting: OutputOptions

    struct Packed: Encodable {
        var archive: String
        var sha256: SHA256Digest
        var size: Int64
        var entries: Int
    }

    func validate() throws { try requirePositive(["--threads": threads]) }

    func run() throws {
        try perform("pack") {
            try FileSystem.requireReplaceable(output)
            var packer = DeterministicTarXz(sourceDateEpoch: try sourceDateEpoch ?? sourceDateEpochFromEnvironment() ?? 0)
            if let threads { packer.threads = max(1, threads) }
            let entries = try packer.pack(directory, to: output)
            let (digest, size) = try SHA256Digest.of(fileAt: output)
            if reporting.json { return printJSON(Packed(archive: output, sha256: digest, size: size, entries: entries.count)) }
            print("\(digest)  \(output)  (\(counted(entries.count, "entry", "entries")), \(counted(Int(size), "byte")))")
        }
    }
}

/// `krnative wheel install`: the wheel installer alone.
struct WheelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wheel", abstract: "Install wheels as a volume build does.",
        discussion: helpText(examples: "krnative wheel install --target manylinux-x86_64 --prefix prefix *.whl"),
        subcommands: [Install.self])

    struct Install: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Install wheels into a prefix (pip's --prefix scheme, no Python run), checking tags and RECORD.",
            discussion: helpText(examples: "krnative wheel install --target manylinux-x86_64 --prefix prefix\nattrs-24.2.0-py3-none-any.whl"))
        @Option(help: "The target whose tags the wheels must fit.") var target: Target
        @Option(help: "The prefix (the volume root).") var prefix: String
        @Argument(help: "Wheel files, under their wheel names.") var wheels: [String]
        @OptionGroup var output: OutputOptions

        func run() throws {
            try perform("wheel install") {
                let installer = WheelInstaller(target: target)
                var installed: [String: Int] = [:]
                for wheel in wheels { installed[wheel] = try installer.install(wheel, into: prefix).count }
                if output.json { return printJSON(installed) }
                let files = installed.values.reduce(0, +)
                print("installed \(counted(wheels.count, "wheel")), \(counted(files, "file")), into \(prefix)")
            }
        }
    }
}
