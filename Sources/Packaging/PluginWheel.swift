import Archive
import Foundation
import KrnativeBase

/// The Backend.AI plugin wheel of a target (docs/design.md §1, §2.11): module `ai.backend.krunner.<name>`
/// carrying the volume and ttyd, declaring the `backendai_krunner_v10` entry point, written as a
/// deterministic zip.
public struct PluginWheel: Sendable {
    public var target: Target
    /// The package version (configuration: `krunner.json`).
    public var version: String
    public var sourceDateEpoch: Int64

    public init(target: Target, version: String, sourceDateEpoch: Int64) {
        self.target = target
        self.version = version
        self.sourceDateEpoch = sourceDateEpoch
    }

    /// `backend.ai_krunner_static_gnu-X.Y.Z-py3-none-manylinux2014_x86_64.musllinux_1_1_x86_64.macosx_11_0_x86_64.whl`.
    public var filename: String {
        let arch = target.arch.rawValue
        let mac = target.arch == .aarch64 ? "arm64" : "x86_64"
        let distribution = target.packageName.replacingOccurrences(of: "-", with: "_")
        return "\(distribution)-\(version)-py3-none-manylinux2014_\(arch).musllinux_1_1_\(arch).macosx_11_0_\(mac).whl"
    }

    var distInfo: String { "\(target.packageName.replacingOccurrences(of: "-", with: "_"))-\(version).dist-info" }

    /// Writes the wheel into `directory` with `payload` (file name → path of the file to carry)
    /// in the module directory; returns the wheel's path.
    public func write(into directory: String, payload: [String: String]) throws -> String {
        let module = "ai/backend/krunner/\(target.moduleName)"
        var files: [(String, Data)] = [
            (module + "/__init__.py", Data("__version__ = \"\(version)\"\n".utf8)),
            (
                module + "/plugin.py",
                Data(
                    """
                    \"\"\"The Backend.AI agent's krunner plugin for the \(target.distro) volumes.\"\"\"


                    async def init(config):
                        \"\"\"Nothing to set up: the agent reads this package's data files.\"\"\"
                        return None

                    """.utf8)
            ),
        ]
        for (name, path) in payload.sorted(by: { $0.key < $1.key }) {
            files.append((module + "/" + name, try Data(contentsOf: URL(fileURLWithPath: path))))
        }
        files.append((distInfo + "/METADATA", Data(metadata.utf8)))
        files.append((distInfo + "/WHEEL", Data(wheelFile.utf8)))
        files.append((distInfo + "/entry_points.txt", Data("[backendai_krunner_v10]\n\(target.moduleName) = ai.backend.krunner.\(target.moduleName).plugin\n".utf8)))
        files.sort { Array($0.0.utf8).lexicographicallyPrecedes(Array($1.0.utf8)) }
        var record = files.map { name, data in
            "\(name),sha256=\(SHA256Digest.of(data).recordForm),\(data.count)"
        }
        record.append("\(distInfo)/RECORD,,")
        files.append((distInfo + "/RECORD", Data((record.joined(separator: "\n") + "\n").utf8)))

        let path = directory + "/" + filename
        let temp = directory + "/." + filename + ".partial"
        FileSystem.remove(temp)
        do {
            let zip = try ZipWriter(path: temp, mtime: sourceDateEpoch)
            for (name, data) in files {
                try zip.add(name, data: data, executable: name.hasSuffix(".bin"))
            }
            try zip.close()
            try FileSystem.rename(temp, to: path)
        } catch {
            FileSystem.remove(temp)
            throw error
        }
        return path
    }

    var metadata: String {
        """
        Metadata-Version: 2.1
        Name: \(target.packageName)
        Version: \(version)
        Summary: Backend.AI kernel runner volume for \(target.distro) (\(target.arch.rawValue)) containers, built by krnative
        License: LGPL-3.0-or-later
        Requires-Python: >=3.8

        """
    }

    var wheelFile: String {
        let arch = target.arch.rawValue
        let mac = target.arch == .aarch64 ? "arm64" : "x86_64"
        return """
            Wheel-Version: 1.0
            Generator: krnative
            Root-Is-Purelib: true
            Tag: py3-none-manylinux2014_\(arch)
            Tag: py3-none-musllinux_1_1_\(arch)
            Tag: py3-none-macosx_11_0_\(mac)

            """
    }
}
