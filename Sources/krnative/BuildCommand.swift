import ArgumentParser
import Fetch
import Foundation
import KrnativeBase

struct BuildCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Build the volume of a target.",
        discussion: """
            Today this runs the stages that exist: lock, store and fetch — every input of the target \
            is brought into the store and verified. Extraction, ttyd, layout, pack and the plugin \
            wheel follow as they land.
            """)

    @OptionGroup var inputs: InputOptions
    @OptionGroup var selection: TargetSelection
    @OptionGroup var network: NetworkOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        try perform("build") {
            let (targets, host) = try selection.resolved()
            let report = try fetchInputs(targets: targets, host: host, inputs: inputs, network: network, json: output.json)
            if !output.json {
                print("inputs of \(targets.map(\.rawValue).joined(separator: ", ")) are in the store, verified (\(report.items.count) files)")
            }
        }
    }
}
