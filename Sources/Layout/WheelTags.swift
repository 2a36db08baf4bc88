import KrnativeBase

/// A wheel's file name, split (PEP 427: `{dist}-{version}(-{build})?-{python}-{abi}-{platform}.whl`).
public struct WheelName: Sendable, Equatable {
    public var distribution: String
    public var version: String
    public var pythonTags: [String]
    public var abiTags: [String]
    public var platformTags: [String]

    public init?(_ filename: String) {
        guard filename.hasSuffix(".whl") else { return nil }
        let parts = filename.dropLast(4).split(separator: "-").map(String.init)
        guard parts.count == 5 || parts.count == 6 else { return nil }
        distribution = parts[0]
        version = parts[1]
        pythonTags = parts[parts.count - 3].split(separator: ".").map(String.init)
        abiTags = parts[parts.count - 2].split(separator: ".").map(String.init)
        platformTags = parts[parts.count - 1].split(separator: ".").map(String.init)
    }

    /// `{dist}-{version}.dist-info`.
    public var distInfo: String { "\(distribution)-\(version).dist-info" }
    public var dataDirectory: String { "\(distribution)-\(version).data" }

    /// Whether CPython `major.minor` on `target` can load this wheel; nil when it can, else why not.
    public func incompatibility(with target: Target, python: (Int, Int) = (3, 13)) -> String? {
        let cp = "cp\(python.0)\(python.1)"
        let pythonOK = pythonTags.contains { tag in
            tag == "py3" || tag == "py\(python.0)\(python.1)" || tag == cp
                || (tag.hasPrefix("cp3") && abiTags.contains("abi3") && (Int(tag.dropFirst(3)) ?? 99) <= python.1)
        }
        guard pythonOK else { return "python tag \(pythonTags.joined(separator: ".")) does not fit CPython \(python.0).\(python.1)" }
        guard abiTags.contains(where: { $0 == "none" || $0 == "abi3" || $0 == cp }) else {
            return "ABI tag \(abiTags.joined(separator: ".")) does not fit \(cp)"
        }
        guard platformTags.contains(where: { Self.platform($0, fits: target) }) else {
            return "platform tag \(platformTags.joined(separator: ".")) does not fit \(target.rawValue)"
        }
        return nil
    }

    /// manylinux: glibc ≤ 2.17 (manylinux2014); musllinux: musl ≤ 1.2.
    static func platform(_ tag: String, fits target: Target) -> Bool {
        if tag == "any" { return true }
        let arch = target.arch.rawValue
        guard tag.hasSuffix("_" + arch) else { return false }
        let head = String(tag.dropLast(arch.count + 1))
        switch target.libc {
        case .gnu:
            let legacy = ["manylinux1": 5, "manylinux2010": 12, "manylinux2014": 17]
            if let minor = legacy[head] { return minor <= 17 }
            let parts = head.split(separator: "_")
            guard parts.count == 3, parts[0] == "manylinux", parts[1] == "2", let minor = Int(parts[2]) else { return false }
            return minor <= 17
        case .musl:
            let parts = head.split(separator: "_")
            guard parts.count == 3, parts[0] == "musllinux", parts[1] == "1", let minor = Int(parts[2]) else { return false }
            return minor <= 2
        }
    }
}
