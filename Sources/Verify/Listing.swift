import Archive
import Foundation
import KrnativeBase
import Layout

#if canImport(Glibc)
    import Glibc
#endif

/// One entry of a tree: what `krnative diff` compares and `krnative audit` checks.
public struct ListedFile: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case directory, file, symlink, hardlink, other }
    public var kind: Kind
    /// Permission bits, octal.
    public var mode: String
    public var size: Int64
    public var sha256: SHA256Digest?
    public var linkTarget: String?
    /// For an ELF file: each named section's sha256 (the same name twice gets `name#2`).
    public var sections: [String: SHA256Digest]?
    /// For an ELF file: what the audit needs of it.
    public var elf: ELFFacts?
    /// For a file that starts with `#!`: its first line (at most 256 bytes), the interpreter it names.
    public var interpreterLine: String?

    public init(
        kind: Kind, mode: String, size: Int64, sha256: SHA256Digest? = nil, linkTarget: String? = nil,
        sections: [String: SHA256Digest]? = nil, elf: ELFFacts? = nil
    ) {
        self.kind = kind
        self.mode = mode
        self.size = size
        self.sha256 = sha256
        self.linkTarget = linkTarget
        self.sections = sections
        self.elf = elf
    }
}

/// The parts of an ELF file the audit judges.
public struct ELFFacts: Codable, Sendable, Equatable {
    public var machine: Architecture?
    public var interpreter: String?
    public var neededLibraries: [String]
    public var neededVersions: [ELFFile.NeededVersion]
    public var isStripped: Bool
    /// A dynamic executable at a fixed address (e_type EXEC with a loader): not position-independent.
    public var isFixedAddressExecutable: Bool?
    /// It starts like ELF but is not a 64-bit little-endian ELF file.
    public var unreadable: Bool

    init(_ elf: ELFFile?) {
        machine = elf?.machine
        interpreter = elf?.interpreter
        neededLibraries = elf?.neededLibraries ?? []
        neededVersions = elf?.neededVersions ?? []
        isStripped = elf?.isStripped ?? true
        isFixedAddressExecutable = elf.flatMap { $0.interpreter != nil && !$0.isPositionIndependentExecutable ? true : nil }
        unreadable = elf == nil
    }
}

/// Every entry of a directory, a tar archive (any compression) or a zip/wheel, by relative path
/// without `./`, with content hashes and, for ELF files, per-section hashes.
public struct Listing: Sendable {
    public enum Source: String, Codable, Sendable { case directory, archive }
    public var location: String
    public var source: Source
    public var files: [String: ListedFile]

    public init(location: String, source: Source, files: [String: ListedFile]) {
        self.location = location
        self.source = source
        self.files = files
    }

    /// File names krnative opens as archives when they differ between two output directories.
    public static func isArchiveName(_ name: String) -> Bool {
        [".tar.xz", ".tar.gz", ".tar", ".whl", ".zip"].contains { name.hasSuffix($0) }
    }

    public static func of(_ path: String) throws -> Listing {
        var status = stat()
        guard lstat(path, &status) == 0 else {
            throw UsageError("cannot read \(path): \(String(cString: strerror(errno))); give a volume directory, a .tar.xz or a .whl")
        }
        return (status.st_mode & S_IFMT) == S_IFDIR ? try ofDirectory(path) : try ofArchive(path)
    }

    public static func ofDirectory(_ root: String) throws -> Listing {
        var files: [String: ListedFile] = [:]
        func walk(_ relative: String) throws {
            let directory = relative.isEmpty ? root : root + "/" + relative
            let names = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
            for name in names {
                let path = relative.isEmpty ? name : relative + "/" + name
                let full = root + "/" + path
                var status = stat()
                guard lstat(full, &status) == 0 else { throw FileSystemError.cannotRead(path: full, reason: String(cString: strerror(errno))) }
                let mode = String(status.st_mode & 0o7777, radix: 8)
                switch status.st_mode & S_IFMT {
                case S_IFDIR:
                    files[path] = ListedFile(kind: .directory, mode: mode, size: 0)
                    try walk(path)
                case S_IFLNK:
                    let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: full)) ?? ""
                    files[path] = ListedFile(kind: .symlink, mode: mode, size: 0, linkTarget: target)
                case S_IFREG:
                    guard let data = FileManager.default.contents(atPath: full) else {
                        throw FileSystemError.cannotRead(path: full, reason: String(cString: strerror(errno)))
                    }
                    files[path] = regular(data, mode: mode)
                default:
                    files[path] = ListedFile(kind: .other, mode: mode, size: 0)
                }
            }
        }
        try walk("")
        return Listing(location: root, source: .directory, files: files)
    }

    public static func ofArchive(_ path: String) throws -> Listing {
        let reader = try ArchiveReader(path: path)
        var files: [String: ListedFile] = [:]
        while let entry = try reader.next() {
            let name = normalized(entry.path)
            if name.isEmpty { continue }
            let mode = String(entry.permissions, radix: 8)
            switch entry.kind {
            case .directory: files[name] = ListedFile(kind: .directory, mode: mode, size: 0)
            case .symlink: files[name] = ListedFile(kind: .symlink, mode: mode, size: 0, linkTarget: entry.linkTarget)
            case .hardlink: files[name] = ListedFile(kind: .hardlink, mode: mode, size: 0, linkTarget: entry.linkTarget.map(normalized))
            case .other: files[name] = ListedFile(kind: .other, mode: mode, size: 0)
            case .regular:
                var data = Data(capacity: Int(max(entry.size, 0)))
                try reader.readData(entry: entry.path) { data.append(contentsOf: $0) }
                files[name] = regular(data, mode: mode)
            }
        }
        return Listing(location: path, source: .archive, files: files)
    }

    public static func normalized(_ path: String) -> String {
        var path = Substring(path)
        while path.hasPrefix("./") { path = path.dropFirst(2) }
        while path.hasSuffix("/") { path = path.dropLast() }
        return path == "." ? "" : String(path)
    }

    static func regular(_ data: Data, mode: String) -> ListedFile {
        var file = ListedFile(kind: .file, mode: mode, size: Int64(data.count), sha256: SHA256Digest.of(data))
        if data.starts(with: Data("#!".utf8)) {
            file.interpreterLine = String(decoding: data.prefix(256).prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
        }
        guard ELFFile.hasMagic(data) else { return file }
        let elf = ELFFile(data: data)
        file.elf = ELFFacts(elf)
        if let elf {
            var sections: [String: SHA256Digest] = [:]
            for section in elf.sections where !section.name.isEmpty {
                var key = section.name
                var count = 1
                while sections[key] != nil {
                    count += 1
                    key = "\(section.name)#\(count)"
                }
                sections[key] = SHA256Digest.of(data[data.startIndex + section.bytes.lowerBound..<data.startIndex + section.bytes.upperBound])
            }
            file.sections = sections
        }
        return file
    }
}
