import Foundation
import KrnativeBase

#if canImport(Glibc)
    import Glibc
#endif

extension Store {
    /// The store's areas. Inputs live under `sha256/`; everything else is derived from them and
    /// can be made again, so `store gc` treats the two kinds differently.
    public enum Area: String, CaseIterable, Sendable, Codable {
        /// Admitted inputs by sha256; kept while the lock names them.
        case entries = "sha256"
        /// Tree hash → the entry it unpacks to; goes with its entry.
        case trees
        /// The step cache: each compile step's install tree, by step key.
        case steps
        /// Unpacked toolchains, by their archive's sha256.
        case toolchains
        /// Zig's own compile cache, per Zig version and target triple.
        case zigCache = "zig-cache"
        /// Root file systems of `krnative smoke`.
        case sysroots
        /// Files that failed verification, kept for inspection.
        case quarantine
        /// Ingests in progress and resumable `.partial` downloads.
        case tmp
        /// Per-entry `flock` files.
        case locks

        /// Areas whose items are made from inputs and can be made again: gc removes the ones not
        /// used for a while.
        public var isDerived: Bool { [.steps, .toolchains, .zigCache, .sysroots].contains(self) }
    }

    public func directory(_ area: Area) -> String { root + "/" + area.rawValue }

    /// An item of an area (`steps/<key>`, `toolchains/<sha256>`, …).
    public func item(_ area: Area, _ name: String) -> String { directory(area) + "/" + name }

    /// Records that an item of a derived area was just used, so gc keeps it (its mtime is the mark).
    public func markUsed(_ area: Area, _ name: String) {
        _ = utimensat(AT_FDCWD, item(area, name), nil, AT_SYMLINK_NOFOLLOW)
    }

    public struct AreaUsage: Sendable, Codable, Equatable {
        public var area: Area
        public var items: Int
        public var bytes: Int64
    }

    /// Items and bytes in each area (links are not followed; a file is counted at its size).
    public func usage() -> [AreaUsage] {
        Area.allCases.map { area in
            let names = Self.names(in: directory(area))
            let bytes = names.reduce(Int64(0)) { $0 + Self.treeBytes(item(area, $1)) }
            return AreaUsage(area: area, items: names.count, bytes: bytes)
        }
    }

    /// One thing `store gc` removes or keeps, and why.
    public struct CollectionItem: Sendable, Codable, Equatable {
        public var area: Area
        public var name: String
        public var bytes: Int64
        public var reason: String
    }

    public struct CollectionPlan: Sendable, Codable {
        public var remove: [CollectionItem] = []
        public var keep: [CollectionItem] = []
        public var bytesRemoved: Int64 { remove.reduce(0) { $0 + $1.bytes } }
    }

    /// What a gc would do: entries the lock does not name go (with their tree records); derived
    /// items unused for `maxAge` go; quarantined files older than `maxAge` go; temp files of dead
    /// processes and empty `.partial` downloads go. Nothing is touched.
    public func planCollection(keepEntries: Set<SHA256Digest>, maxAge: TimeInterval, now: Date = Date()) -> CollectionPlan {
        var plan = CollectionPlan()
        let days = Int(maxAge / 86_400)
        for entry in entries() {
            let item = CollectionItem(area: .entries, name: entry.sha256.hex, bytes: entry.size, reason: "")
            if keepEntries.contains(entry.sha256) {
                plan.keep.append(with(item) { $0.reason = "named by the lock" })
            } else {
                plan.remove.append(with(item) { $0.reason = "named by no input of the lock" })
            }
        }
        for area in Area.allCases where area.isDerived || area == .quarantine {
            for name in Self.names(in: directory(area)) {
                let path = item(area, name)
                let age = now.timeIntervalSince(Self.modified(path) ?? now)
                var item = CollectionItem(area: area, name: name, bytes: Self.treeBytes(path), reason: "")
                if age > maxAge {
                    item.reason = "\(area == .quarantine ? "quarantined" : "last used") \(Int(age / 86_400)) days ago (over \(days))"
                    plan.remove.append(item)
                } else {
                    item.reason = "\(area == .quarantine ? "quarantined" : "used") within \(days) days"
                    plan.keep.append(item)
                }
            }
        }
        for name in Self.names(in: directory(.tmp)) {
            let path = item(.tmp, name)
            let bytes = Self.treeBytes(path)
            if name.hasSuffix(".partial") {
                let item = CollectionItem(area: .tmp, name: name, bytes: bytes, reason: bytes == 0 ? "an empty partial download" : "a partial download a fetch resumes")
                if bytes == 0 { plan.remove.append(item) } else { plan.keep.append(item) }
            } else if let owner = Self.owningProcess(ofTemporary: name), kill(owner, 0) == 0 || errno == EPERM {
                plan.keep.append(CollectionItem(area: .tmp, name: name, bytes: bytes, reason: "written by the running process \(owner)"))
            } else {
                plan.remove.append(CollectionItem(area: .tmp, name: name, bytes: bytes, reason: "left by a process that is gone"))
            }
        }
        return plan
    }

    /// Carries out a plan: each entry removed under its lock, each derived item under the lock
    /// its writers take (`<area>-<name>`), so nothing in use is pulled away.
    public func collect(_ plan: CollectionPlan) {
        for item in plan.remove {
            switch item.area {
            case .entries:
                guard let digest = SHA256Digest(hex: item.name) else { continue }
                let entryLock = try? lock(digest.hex)
                let trees = entries().first { $0.sha256 == digest }?.trees ?? []
                unlink(path(for: digest))
                for tree in trees { unlink(self.item(.trees, tree.hex)) }
                entryLock?.unlock()
            default:
                let itemLock = try? lock("\(item.area.rawValue)-\(item.name)")
                Self.removeTree(self.item(item.area, item.name))
                itemLock?.unlock()
            }
        }
    }

    // MARK: Helpers

    /// `<hint>.<pid>.<random>.tmp` (see `temporaryPath`) → pid.
    static func owningProcess(ofTemporary name: String) -> pid_t? {
        let parts = name.split(separator: ".")
        guard parts.count >= 3, parts.last == "tmp" else { return nil }
        return pid_t(parts[parts.count - 3])
    }

    static func names(in directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
    }

    static func modified(_ path: String) -> Date? {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        return Date(timeIntervalSince1970: TimeInterval(info.st_mtim.tv_sec))
    }

    /// Bytes of a file, or of every file below a directory; links count as nothing.
    static func treeBytes(_ path: String) -> Int64 {
        var info = stat()
        guard lstat(path, &info) == 0 else { return 0 }
        switch info.st_mode & S_IFMT {
        case S_IFREG: return Int64(info.st_size)
        case S_IFDIR: return names(in: path).reduce(0) { $0 + treeBytes(path + "/" + $1) }
        default: return 0
        }
    }

    /// Removes a tree even where its directories were made read-only (step snapshots are).
    static func removeTree(_ path: String) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        if (info.st_mode & S_IFMT) == S_IFDIR {
            chmod(path, 0o700)
            for name in names(in: path) { removeTree(path + "/" + name) }
            rmdir(path)
        } else {
            unlink(path)
        }
    }
}

/// A copy of `value` changed by `change`.
private func with<T>(_ value: T, _ change: (inout T) -> Void) -> T {
    var copy = value
    change(&copy)
    return copy
}
