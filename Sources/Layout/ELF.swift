import Foundation
import KrnativeBase

/// The facts krnative checks in an ELF file: machine, program interpreter, symbol table.
public struct ELFFile: Sendable {
    public var machine: Architecture?
    /// PT_INTERP: the loader a dynamic executable names; nil for a static one.
    public var interpreter: String?
    public var hasSymbolTable: Bool

    public var isStatic: Bool { interpreter == nil }
    public var isStripped: Bool { !hasSymbolTable }

    /// Reads a 64-bit little-endian ELF file; nil when it is not one.
    public init?(data: Data) {
        let bytes = [UInt8](data)
        guard bytes.count > 64, bytes[0..<4] == [0x7f, 0x45, 0x4c, 0x46], bytes[4] == 2, bytes[5] == 1 else { return nil }
        func u16(_ at: Int) -> Int { at + 2 <= bytes.count ? Int(bytes[at]) | Int(bytes[at + 1]) << 8 : 0 }
        func u32(_ at: Int) -> Int { u16(at) | u16(at + 2) << 16 }
        func u64(_ at: Int) -> Int { u32(at) | u32(at + 4) << 32 }
        machine = [62: .x86_64, 183: .aarch64][u16(18)]
        let (phoff, phentsize, phnum) = (u64(32), u16(54), u16(56))
        interpreter = nil
        for index in 0..<phnum where u32(phoff + index * phentsize) == 3 {  // PT_INTERP
            let header = phoff + index * phentsize
            let (offset, size) = (u64(header + 8), u64(header + 32))
            guard offset + size <= bytes.count else { break }
            interpreter = String(decoding: bytes[offset..<(offset + size)].prefix { $0 != 0 }, as: UTF8.self)
        }
        let (shoff, shentsize, shnum) = (u64(40), u16(58), u16(60))
        hasSymbolTable = (0..<shnum).contains { u32(shoff + $0 * shentsize + 4) == 2 }  // SHT_SYMTAB
    }

    public init?(path: String) {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        self.init(data: data)
    }
}
