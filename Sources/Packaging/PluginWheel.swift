import Archive
import Foundation
import KrnativeBase

/// The Backend.AI plugin wheel of a target (docs/design.md §1, §2.11): module `ai.backend.krunner.<name>`
/// carrying the volume and ttyd, declaring the `backendai_krunner_v10` entry point, written as a
/// deterministic zip.
public struct PluginWheel: Sendable {
    public var target: Target
    /// The package the volume ships as (`static-gnu`, `alpine`, `static-musl`).
    public var flavour: Flavour
    /// The package version (configuration: `krunner.json`).
    public var version: String
    public var sourceDateEpoch: Int64

    public init(target: Target, flavour: Flavour? = nil, version: String, sourceDateEpoch: Int64) {
        self.target = target
        self.flavour = flavour ?? target.defaultFlavour
        self.version = version
        self.sourceDateEpoch = sourceDateEpoch
    }

    /// `backend_ai_krunner_static_gnu-X.Y.Z-py3-none-manylinux2014_x86_64.musllinux_1_1_x86_64.macosx_11_0_x86_64.whl`:
    /// the wheel spec's normalised name (as published since static-gnu 4.4.0) and the published
    /// packages' platform tags (alpine: `musllinux_1_2`).
    public var filename: String {
        "\(distribution)-\(version)-py3-none-\(platformTags.joined(separator: ".")).whl"
    }

    /// The distribution name normalised for file names: runs of `-_.` become `_`, lower case.
    var distribution: String {
        flavour.packageName.lowercased().split(whereSeparator: { "-_.".contains($0) }).joined(separator: "_")
    }

    var distInfo: String { "\(distribution)-\(version).dist-info" }

    /// The entry-point group the agent scans.
    public static let entryPointGroup = "backendai_krunner_v10"

    /// The wheel's entry point in that group: `<module name> = ai.backend.krunner.<module name>.plugin`.
    public var entryPoint: String { "\(flavour.moduleName) = ai.backend.krunner.\(flavour.moduleName).plugin" }

    /// The published wheels' platform tags: the same three for every flavour but the musllinux
    /// level (static-gnu 4.4.0: `musllinux_1_1`; alpine 5.4.0: `musllinux_1_2`).
    public var platformTags: [String] {
        let arch = target.arch.rawValue
        let mac = target.arch == .aarch64 ? "arm64" : "x86_64"
        let musl = target.libc == .gnu ? "musllinux_1_1" : "musllinux_1_2"
        return ["manylinux2014_\(arch)", "\(musl)_\(arch)", "macosx_11_0_\(mac)"]
    }

    /// Writes the wheel into `directory` with `payload` (file name → path of the file to carry)
    /// in the module directory and, under `.dist-info/licenses/`, the package's own licence and
    /// every file of `licenses` (the volume's `licenses/` directory); returns the wheel's path.
    public func write(into directory: String, payload: [String: String], licenses: String? = nil) throws -> String {
        let module = "ai/backend/krunner/\(flavour.moduleName)"
        var files: [(String, Data)] = [
            (module + "/__init__.py", Data("__version__ = \"\(version)\"\n".utf8)),
            (
                module + "/plugin.py",
                Data(
                    """
                    \"\"\"The Backend.AI agent's krunner plugin for the \(flavour.distro) volumes.\"\"\"


                    async def init(config):
                        \"\"\"Nothing to set up: the agent reads this package's data files.\"\"\"
                        return None

                    """.utf8)
            ),
        ]
        for (name, path) in payload.sorted(by: { $0.key < $1.key }) {
            files.append((module + "/" + name, try Data(contentsOf: URL(fileURLWithPath: path))))
        }
        let licenseFiles = try Self.licenseFiles(in: licenses)
        files.append((distInfo + "/licenses/LICENSE", Data(Self.mitLicense.utf8)))
        for (name, data) in licenseFiles { files.append((distInfo + "/licenses/" + name, data)) }
        files.append((distInfo + "/METADATA", Data(metadata(licenseFiles: ["LICENSE"] + licenseFiles.map(\.0)).utf8)))
        files.append((distInfo + "/WHEEL", Data(wheelFile.utf8)))
        files.append((distInfo + "/entry_points.txt", Data("[\(Self.entryPointGroup)]\n\(entryPoint)\n".utf8)))
        files.append((distInfo + "/top_level.txt", Data("ai\n".utf8)))
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

    /// Every regular file under `directory` as (`volume/<relative path>`, contents), sorted. The
    /// volume's `licenses/` had the `.pyc` step's hands on it: nothing is read through a link,
    /// and a link or special file in it is refused.
    static func licenseFiles(in directory: String?) throws -> [(String, Data)] {
        guard let directory, FileSystem.exists(directory) else { return [] }
        return try StepResultTree(root: directory, madeBy: "the .pyc step (it had the volume writable)").regularFiles().map {
            ("volume/" + $0.path, $0.data)
        }
    }

    /// Core metadata 2.4 (PEP 639 licence fields), matching the published packages' fields.
    func metadata(licenseFiles: [String]) -> String {
        let libc = target.libc == .gnu ? "GNU libc" : "musl libc (Alpine)"
        var lines = [
            "Metadata-Version: 2.4", "Name: \(flavour.packageName)", "Version: \(version)",
            "Summary: Backend.AI Kernel Runner based on \(libc)", "Author-email: Lablup <devops@lablup.com>",
            "License-Expression: MIT",
            "Project-URL: Homepage, \(homepage)",
            "Project-URL: Issues, https://github.com/lablup/backend.ai/issues",
            "Classifier: Programming Language :: Python :: 3", "Classifier: Operating System :: OS Independent",
            "Requires-Python: >=3.9", "Description-Content-Type: text/markdown",
        ]
        lines += licenseFiles.map { "License-File: \($0)" }
        return lines.joined(separator: "\n") + "\n\n" + description
    }

    /// The published packages' own repositories; static-musl has none but Backend.AI's.
    var homepage: String {
        flavour == .staticMusl ? "https://github.com/lablup/backend.ai" : "https://github.com/lablup/backend.ai-krunner-\(flavour.rawValue)"
    }

    var description: String {
        """
        # \(flavour.packageName)

        Backend.AI kernel runner volume for \(target.libc == .gnu ? "glibc" : "musl (Alpine)")-based kernels \
        (\(target.arch.rawValue)): `krunner-env.\(flavour.distro).\(target.arch.rawValue).tar.xz`, a relocatable \
        CPython with the kernel runner's dependencies, and a static ttyd, which the Backend.AI agent \
        extracts and mounts at `/opt/backend.ai` in user containers. It registers the \
        `backendai_krunner_v10` entry point `\(flavour.moduleName)`.

        Built reproducibly by krnative. The licences of everything the volume carries are in this \
        wheel's `.dist-info/licenses/volume/` and in the volume's `licenses/`.

        """
    }

    var wheelFile: String {
        (["Wheel-Version: 1.0", "Generator: krnative", "Root-Is-Purelib: true"] + platformTags.map { "Tag: py3-none-\($0)" })
            .joined(separator: "\n") + "\n\n"
    }

    /// The package's own licence: MIT, as Lablup's upstream krunner packages.
    static let mitLicense = """
        MIT License

        Copyright (c) 2019 Lablup

        Permission is hereby granted, free of charge, to any person obtaining a copy
        of this software and associated documentation files (the "Software"), to deal
        in the Software without restriction, including without limitation the rights
        to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
        copies of the Software, and to permit persons to whom the Software is
        furnished to do so, subject to the following conditions:

        The above copyright notice and this permission notice shall be included in all
        copies or substantial portions of the Software.

        THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
        IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
        FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
        AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
        LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
        OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
        SOFTWARE.

        """
}
