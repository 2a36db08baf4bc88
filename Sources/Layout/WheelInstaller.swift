import Archive
import Foundation
import KrnativeBase

#if canImport(Glibc)
    import Glibc
#endif

/// A wheel that cannot be installed, naming the wheel, the entry and the evidence.
public enum WheelError: KrnativeError {
    case badName(wheel: String)
    case incompatible(wheel: String, reason: String)
    case unsafePath(wheel: String, entry: String)
    case missingMetadata(wheel: String, file: String)
    case recordMismatch(wheel: String, entry: String, problem: String)
    case io(wheel: String, reason: String)

    public var description: String {
        switch self {
        case .badName(let wheel): "\(wheel) is not a wheel file name ({dist}-{version}-{python}-{abi}-{platform}.whl)"
        case .incompatible(let wheel, let reason): "\(wheel) does not fit the target: \(reason); pin the wheel built for it"
        case .unsafePath(let wheel, let entry): "\(wheel): entry '\(entry)' would be installed outside the prefix; refused"
        case .missingMetadata(let wheel, let file): "\(wheel) has no \(file); it is not a valid wheel"
        case .recordMismatch(let wheel, let entry, let problem): "\(wheel): \(entry): \(problem) (RECORD does not match the wheel; refused)"
        case .io(let wheel, let reason): "installing \(wheel): \(reason)"
        }
    }
    public var exitCode: Int32 {
        switch self {
        case .incompatible: ExitStatus.policy
        case .io: ExitStatus.store
        case .badName, .unsafePath, .missingMetadata, .recordMismatch: ExitStatus.integrity
        }
    }
}

/// Installs wheels into a prefix the way `pip install --no-deps --no-compile --prefix` does, without
/// running any Python (docs/design.md §2.9), so cross builds need no emulation. Nothing is moved into the
/// prefix until the whole wheel has been read and every RECORD hash and size checked.
public struct WheelInstaller: Sendable {
    public var target: Target
    /// Where the volume is mounted at run time: console scripts' shebang is `<this>/bin/python3`.
    public var mountPoint = "/opt/backend.ai"
    public var python = (major: 3, minor: 13)
    /// Written to `*.dist-info/INSTALLER`.
    public var installerName = "krnative"

    public init(target: Target) { self.target = target }

    var sitePackages: String { "lib/python\(python.major).\(python.minor)/site-packages" }

    /// The installed files, relative to the prefix.
    @discardableResult
    public func install(_ wheel: String, into prefix: String) throws(WheelError) -> [String] {
        let filename = (wheel as NSString).lastPathComponent
        guard let name = WheelName(filename) else { throw .badName(wheel: filename) }
        if let reason = name.incompatibility(with: target, python: (python.major, python.minor)) {
            throw .incompatible(wheel: filename, reason: reason)
        }
        let staging = prefix + "/.krnative-wheel-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { FileSystem.remove(staging) }
        let (entries, digests) = try unpack(wheel, filename: filename, into: staging)
        let distInfo = try findDistInfo(entries, name: name, filename: filename)
        try verifyRecord(staging: staging, entries: entries, digests: digests, distInfo: distInfo, filename: filename)

        // Map each entry to its place in the prefix (pip's scheme for --prefix).
        var placed: [(from: String, to: String, script: Bool)] = []
        let data = entries.first { $0.hasPrefix(name.dataDirectory + "/") || $0.hasPrefix(distInfo.dropLast(".dist-info".count) + ".data/") }
            .map { String($0.split(separator: "/")[0]) }
        for entry in entries {
            if let data, entry.hasPrefix(data + "/") {
                let parts = entry.dropFirst(data.count + 1).split(separator: "/", maxSplits: 1).map(String.init)
                guard parts.count == 2 else { continue }
                let destination: String
                switch parts[0] {
                case "purelib", "platlib": destination = sitePackages + "/" + parts[1]
                case "scripts": destination = "bin/" + parts[1]
                case "headers": destination = "include/python\(python.major).\(python.minor)/\(name.distribution)/" + parts[1]
                case "data": destination = parts[1]
                default: throw .unsafePath(wheel: filename, entry: entry)
                }
                placed.append((entry, destination, parts[0] == "scripts"))
            } else {
                placed.append((entry, sitePackages + "/" + entry, false))
            }
        }
        let launchers = try consoleScripts(staging + "/" + distInfo + "/entry_points.txt")
        // What RECORD will say of each installed file: the digests read while unpacking, except
        // for the files krnative writes or rewrites (hashed when written).
        var recorded: [String: (String, Int64)] = [:]
        var directories = Set<String>()
        for (from, to, script) in placed where !to.hasSuffix(distInfo + "/RECORD") && !to.hasSuffix(distInfo + "/INSTALLER") {
            guard ArchivePath.contained(to) == to else { throw .unsafePath(wheel: filename, entry: from) }
            try move(staging + "/" + from, to: prefix + "/" + to, filename: filename, made: &directories)
            recorded[to] = script ? try rewriteShebang(prefix + "/" + to, filename: filename) ?? digests[from] : digests[from]
        }
        for (script, contents) in launchers {
            recorded["bin/" + script] = try write(Data(contents.utf8), to: prefix + "/bin/" + script, mode: 0o755, filename: filename)
        }
        let installerPath = sitePackages + "/" + distInfo + "/INSTALLER"
        recorded[installerPath] = try write(Data((installerName + "\n").utf8), to: prefix + "/" + installerPath, mode: 0o644, filename: filename)
        let record = sitePackages + "/" + distInfo + "/RECORD"
        try writeRecord(prefix: prefix, recorded: recorded, record: record, filename: filename)
        return (Array(recorded.keys) + [record]).sorted()
    }

    // MARK: Steps

    private func unpack(_ wheel: String, filename: String, into staging: String) throws(WheelError) -> ([String], [String: (String, Int64)]) {
        var entries: [String] = []
        var digests: [String: (String, Int64)] = [:]
        do {
            let reader = try ArchiveReader(path: wheel)
            try FileSystem.createDirectory(staging)
            var made: Set<String> = [staging]
            while let entry = try reader.next() {
                guard let path = ArchivePath.contained(entry.path) else { throw WheelError.unsafePath(wheel: filename, entry: entry.path) }
                guard entry.kind == .regular else { continue }
                let destination = staging + "/" + path
                let parent = (destination as NSString).deletingLastPathComponent
                if made.insert(parent).inserted { try FileSystem.createDirectory(parent) }
                // One open, the bytes, one close: the file is new in a fresh directory. Zip
                // external attributes: keep the executable bit, as pip does.
                let mode: mode_t = entry.permissions & 0o111 != 0 ? 0o755 : 0o644
                let descriptor = open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
                guard descriptor >= 0 else { throw WheelError.io(wheel: filename, reason: "cannot write \(destination): \(String(cString: strerror(errno)))") }
                defer { close(descriptor) }
                var hasher = StreamingSHA256()
                var size: Int64 = 0
                try reader.readData(entry: entry.path) { chunk in
                    hasher.update(chunk)
                    size += Int64(chunk.count)
                    if let failure = FileSystem.writeAll(descriptor, chunk) {
                        throw WheelError.io(wheel: filename, reason: "cannot write \(destination): \(String(cString: strerror(failure)))")
                    }
                }
                fchmod(descriptor, mode)  // whatever the umask
                entries.append(path)
                digests[path] = (hasher.finalize().recordForm, size)
            }
        } catch let error as WheelError { throw error } catch { throw .io(wheel: filename, reason: "\(error)") }
        return (entries, digests)
    }

    private func findDistInfo(_ entries: [String], name: WheelName, filename: String) throws(WheelError) -> String {
        // The directory's name may be normalised differently from the file name's; take the one that has WHEEL.
        let candidates = Set(entries.compactMap { entry -> String? in
            let top = String(entry.split(separator: "/")[0])
            return top.hasSuffix(".dist-info") && entries.contains(top + "/WHEEL") ? top : nil
        })
        guard candidates.count == 1, let distInfo = candidates.first else { throw .missingMetadata(wheel: filename, file: name.distInfo + "/WHEEL") }
        guard entries.contains(distInfo + "/RECORD") else { throw .missingMetadata(wheel: filename, file: distInfo + "/RECORD") }
        return distInfo
    }

    private func verifyRecord(staging: String, entries: [String], digests: [String: (String, Int64)], distInfo: String, filename: String) throws(WheelError) {
        let rows = (try? String(contentsOfFile: staging + "/" + distInfo + "/RECORD", encoding: .utf8)) ?? ""
        var listed = Set<String>()
        for row in Self.csvRows(rows) where !row.isEmpty && !(row.count == 1 && row[0].isEmpty) {
            let path = row[0]
            listed.insert(path)
            if path == distInfo + "/RECORD" || path.hasSuffix(".jws") || path.hasSuffix(".p7s") { continue }
            guard let (actual, size) = digests[path] else {
                throw .recordMismatch(wheel: filename, entry: path, problem: "listed in RECORD but not in the wheel")
            }
            guard row.count >= 3, row[1].hasPrefix("sha256=") else {
                throw .recordMismatch(wheel: filename, entry: path, problem: "RECORD gives no sha256 for it")
            }
            guard row[1] == "sha256=" + actual else {
                throw .recordMismatch(wheel: filename, entry: path, problem: "RECORD says \(row[1]), the file is sha256=\(actual)")
            }
            if let recorded = Int64(row[2]), recorded != size {
                throw .recordMismatch(wheel: filename, entry: path, problem: "RECORD says \(recorded) bytes, the file has \(size)")
            }
        }
        for entry in entries where !listed.contains(entry) && entry != distInfo + "/RECORD" && !entry.hasSuffix(".jws") && !entry.hasSuffix(".p7s") {
            throw .recordMismatch(wheel: filename, entry: entry, problem: "in the wheel but not listed in RECORD")
        }
    }

    /// A rename within the prefix's file system. No fsync: the prefix is a build's staging tree,
    /// made durable (or thrown away) as a whole by the build.
    private func move(_ from: String, to: String, filename: String, made directories: inout Set<String>) throws(WheelError) {
        let parent = (to as NSString).deletingLastPathComponent
        if directories.insert(parent).inserted {
            do { try FileSystem.createDirectory(parent) } catch { throw .io(wheel: filename, reason: error.description) }
        }
        guard rename(from, to) == 0 else {
            throw .io(wheel: filename, reason: "cannot move \(from) to \(to): \(String(cString: strerror(errno)))")
        }
    }

    /// Writes a file krnative makes; returns its RECORD hash and size.
    @discardableResult
    private func write(_ data: Data, to path: String, mode: mode_t, filename: String) throws(WheelError) -> (String, Int64) {
        do {
            try FileSystem.createDirectory((path as NSString).deletingLastPathComponent)
            try FileSystem.writeAtomically(data, to: path, mode: mode)
        } catch { throw .io(wheel: filename, reason: error.description) }
        return (SHA256Digest.of(data).recordForm, Int64(data.count))
    }

    /// `#!python` (and `#!pythonw`) become the volume's interpreter, as pip does for .data/scripts;
    /// returns the new RECORD hash and size when the file changed.
    private func rewriteShebang(_ path: String, filename: String) throws(WheelError) -> (String, Int64)? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let firstLine = data.prefix { $0 != 0x0a }
        guard firstLine.starts(with: Data("#!python".utf8)) else {
            chmod(path, 0o755)
            return nil
        }
        return try write(Data("#!\(mountPoint)/bin/python3".utf8) + data.dropFirst(firstLine.count), to: path, mode: 0o755, filename: filename)
    }

    /// pip's console-script launchers (distlib's template), one per `console_scripts` and `gui_scripts` entry.
    func consoleScripts(_ entryPoints: String) throws(WheelError) -> [(String, String)] {
        guard let text = try? String(contentsOfFile: entryPoints, encoding: .utf8) else { return [] }
        var section = ""
        var scripts: [(String, String)] = []
        for rawLine in text.replacingOccurrences(of: "\r\n", with: "\n").split(separator: "\n") {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("[") && line.hasSuffix("]") {
                section = String(line.dropFirst().dropLast())
                continue
            }
            guard section == "console_scripts" || section == "gui_scripts", let equals = line.firstIndex(of: "="),
                !line.hasPrefix("#")
            else { continue }
            let name = line[..<equals].trimmingCharacters(in: .whitespaces)
            let reference = line[line.index(after: equals)...].split(separator: "[")[0].trimmingCharacters(in: .whitespaces)
            let parts = reference.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            let module = parts[0]
            let function = parts.count > 1 ? parts[1] : ""
            let importName = String(function.split(separator: ".")[0])
            scripts.append((
                name,
                """
                #!\(mountPoint)/bin/python3
                # -*- coding: utf-8 -*-
                import re
                import sys
                from \(module) import \(importName)
                if __name__ == '__main__':
                    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
                    sys.exit(\(function)())

                """
            ))
        }
        // pip installing itself also writes `pip3.13` (outside ensurepip, which leaves out `pip`).
        if let pip = scripts.first(where: { $0.0 == "pip" }), !scripts.contains(where: { $0.0 == "pip\(python.major).\(python.minor)" }) {
            scripts.append(("pip\(python.major).\(python.minor)", pip.1))
        }
        return scripts.sorted { $0.0 < $1.0 }
    }

    /// RECORD as pip writes it: paths relative to site-packages, sorted, RECORD itself without a
    /// hash, CRLF line ends (Python's csv writer).
    private func writeRecord(prefix: String, recorded: [String: (String, Int64)], record: String, filename: String) throws(WheelError) {
        var rows = recorded.map { path, entry in
            "\(Self.csvField(Self.relative(path, from: sitePackages))),sha256=\(entry.0),\(entry.1)"
        }
        rows.append("\(Self.csvField(Self.relative(record, from: sitePackages))),,")
        try write(Data((rows.sorted().joined(separator: "\r\n") + "\r\n").utf8), to: prefix + "/" + record, mode: 0o644, filename: filename)
    }

    static func relative(_ path: String, from base: String) -> String {
        if path.hasPrefix(base + "/") { return String(path.dropFirst(base.count + 1)) }
        return String(repeating: "../", count: base.split(separator: "/").count) + path
    }

    static func csvField(_ text: String) -> String {
        text.contains(",") || text.contains("\"") ? "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : text
    }

    static func csvRows(_ text: String) -> [[String]] {
        var rows: [[String]] = []
        // "\r\n" is one Character in Swift: normalise line ends before splitting.
        for line in text.replacingOccurrences(of: "\r\n", with: "\n").split(separator: "\n", omittingEmptySubsequences: false) {
            var fields: [String] = []
            var field = ""
            var quoted = false
            var iterator = line.makeIterator()
            while let character = iterator.next() {
                if quoted {
                    if character == "\"" { quoted = false } else { field.append(character) }
                } else if character == "\"" {
                    quoted = true
                } else if character == "," {
                    fields.append(field)
                    field = ""
                } else {
                    field.append(character)
                }
            }
            fields.append(field)
            rows.append(fields)
        }
        return rows
    }
}
