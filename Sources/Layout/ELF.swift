import Foundation
import KrnativeBase

/// The facts krnative checks in an ELF file: machine, program interpreter, the libraries and
/// symbol versions it asks the loader for, its sections. 64-bit little-endian only: the four
/// targets are x86_64 and aarch64.
public struct ELFFile: Sendable {
    public struct Section: Sendable, Equatable {
        public var name: String
        public var type: UInt32
        /// Where its bytes are in the file; an empty range for SHT_NOBITS (`.bss`).
        public var bytes: Range<Int>
    }
    /// A symbol version the file needs from a library (`.gnu.version_r`): `GLIBC_2.17` from `libc.so.6`.
    public struct NeededVersion: Codable, Sendable, Equatable, Hashable {
        public var library: String
        public var version: String
        /// The undefined dynamic symbols bound to this version (`.gnu.version` over `.dynsym`).
        public var symbols: [String] = []
    }

    public var machine: Architecture?
    /// e_type: 2 an executable at a fixed address, 3 a shared object or a position-independent executable.
    public var fileType = 0
    /// PT_INTERP: the loader a dynamic executable names; nil for a static one or a shared library.
    public var interpreter: String?
    /// DT_NEEDED, in order.
    public var neededLibraries: [String] = []
    public var neededVersions: [NeededVersion] = []
    public var sections: [Section] = []

    public var hasSymbolTable: Bool { sections.contains { $0.type == Self.symbolTable } }
    /// Neither a loader nor a library to load: a static executable.
    public var isStatic: Bool { interpreter == nil && neededLibraries.isEmpty }
    public var isStripped: Bool { !hasSymbolTable }
    /// A dynamic executable the loader may place anywhere (ASLR): `readelf -h` says "DYN (Position-Independent Executable file)".
    public var isPositionIndependentExecutable: Bool { fileType == 3 && interpreter != nil }

    static let symbolTable: UInt32 = 2, dynamic: UInt32 = 6, noBits: UInt32 = 8, dynamicSymbols: UInt32 = 11
    static let versionNeeds: UInt32 = 0x6fff_fffe, versionSymbols: UInt32 = 0x6fff_ffff

    /// Whether `data` starts like an ELF file (of any class): worth a closer look.
    public static func hasMagic(_ data: Data) -> Bool { data.prefix(4).elementsEqual([0x7f, 0x45, 0x4c, 0x46]) }

    /// Reads a 64-bit little-endian ELF file; nil when it is not one. Offsets that point outside
    /// the file are ignored, never trusted.
    public init?(data: Data) {
        let bytes = [UInt8](data)
        guard bytes.count > 64, Self.hasMagic(data), bytes[4] == 2, bytes[5] == 1 else { return nil }
        func u16(_ at: Int) -> Int { at >= 0 && at + 2 <= bytes.count ? Int(bytes[at]) | Int(bytes[at + 1]) << 8 : 0 }
        func u32(_ at: Int) -> Int { u16(at) | u16(at + 2) << 16 }
        func u64(_ at: Int) -> Int { u32(at) | u32(at + 4) << 32 }
        func string(at offset: Int) -> String {
            guard offset >= 0, offset < bytes.count else { return "" }
            return String(decoding: bytes[offset...].prefix { $0 != 0 }, as: UTF8.self)
        }
        func clamped(_ offset: Int, _ size: Int) -> Range<Int> {
            let start = min(max(offset, 0), bytes.count)
            return start..<min(start + max(size, 0), bytes.count)
        }
        machine = [62: .x86_64, 183: .aarch64][u16(18)]
        fileType = u16(16)

        let (phoff, phentsize, phnum) = (u64(32), u16(54), u16(56))
        for index in 0..<phnum where u32(phoff + index * phentsize) == 3 {  // PT_INTERP
            let header = phoff + index * phentsize
            interpreter = String(decoding: bytes[clamped(u64(header + 8), u64(header + 32))].prefix { $0 != 0 }, as: UTF8.self)
        }

        struct Header { var name, type, link, info: Int; var bytes: Range<Int> }
        let (shoff, shentsize, shnum, shstrndx) = (u64(40), u16(58), u16(60), u16(62))
        let headers = (0..<shnum).map { index -> Header in
            let at = shoff + index * shentsize
            let type = u32(at + 4)
            return Header(
                name: u32(at), type: type, link: u32(at + 40), info: u32(at + 44),
                bytes: type == Int(Self.noBits) ? 0..<0 : clamped(u64(at + 24), u64(at + 32)))
        }
        let names = headers.indices.contains(shstrndx) ? headers[shstrndx].bytes.lowerBound : -1
        sections = headers.map { Section(name: names < 0 ? "" : string(at: names + $0.name), type: UInt32($0.type), bytes: $0.bytes) }

        for header in headers where header.type == Int(Self.dynamic) && headers.indices.contains(header.link) {
            let strings = headers[header.link].bytes.lowerBound
            for entry in stride(from: header.bytes.lowerBound, to: header.bytes.upperBound - 15, by: 16) {
                let tag = u64(entry)
                if tag == 0 { break }
                if tag == 1 { neededLibraries.append(string(at: strings + u64(entry + 8))) }  // DT_NEEDED
            }
        }
        for header in headers where header.type == Int(Self.versionNeeds) && headers.indices.contains(header.link) {
            // Elf64_Verneed { half version, cnt; word file, aux, next } → Elf64_Vernaux { word hash; half flags, other; word name, next }
            let strings = headers[header.link].bytes.lowerBound
            var need = header.bytes.lowerBound
            var indexOf: [Int: Int] = [:]  // vna_other → position in neededVersions
            for _ in 0..<min(header.info, 4096) where header.bytes.contains(need) {
                let library = string(at: strings + u32(need + 4))
                var aux = need + u32(need + 8)
                for _ in 0..<min(u16(need + 2), 4096) where header.bytes.contains(aux) {
                    indexOf[u16(aux + 6)] = neededVersions.count
                    neededVersions.append(NeededVersion(library: library, version: string(at: strings + u32(aux + 8))))
                    let next = u32(aux + 12)
                    if next == 0 { break }
                    aux += next
                }
                let next = u32(need + 12)
                if next == 0 { break }
                need += next
            }
            // Which undefined symbols ask for which version: .gnu.version holds one index per .dynsym entry.
            guard let versym = headers.first(where: { $0.type == Int(Self.versionSymbols) }),
                let dynsym = headers.first(where: { $0.type == Int(Self.dynamicSymbols) }), headers.indices.contains(dynsym.link)
            else { continue }
            let names = headers[dynsym.link].bytes.lowerBound
            for (number, entry) in stride(from: dynsym.bytes.lowerBound, to: dynsym.bytes.upperBound - 23, by: 24).enumerated() {
                let slot = versym.bytes.lowerBound + number * 2
                guard slot + 2 <= versym.bytes.upperBound, u16(entry + 6) == 0,  // st_shndx SHN_UNDEF
                    let index = indexOf[u16(slot) & 0x7fff]
                else { continue }
                neededVersions[index].symbols.append(string(at: names + u32(entry)))
            }
        }
    }

    public init?(path: String) {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        self.init(data: data)
    }
}
