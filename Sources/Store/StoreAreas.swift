import Foundation
import KrnativeBase
import Synchronization

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
        /// Zig caches that the steps of every build once shared, per Zig version and target
        /// triple: a step could plant objects there that later builds linked. Each build now has
        /// its own (`StepRunner.Workspace.zigCache`); what is left here nothing reads, and gc removes.
        case zigCache = "zig-cache"
        /// Root file systems of `krnative smoke`.
        case sysroots
        /// Packed volumes (`volume.tar.xz` and its entries) by what decides their bytes: the
        /// tree's content key (`DeterministicTarXz.contentKey`) and the krnative that packed it.
        /// A rebuild whose volume tree is unchanged copies the archive instead of compressing again.
        case packs
        /// The `.pyc` a volume's bytecode stage added, by the tree before it and the interpreter:
        /// a rebuild of the same tree copies them instead of compiling again.
        case bytecode
        /// Files that failed verification, kept for inspection.
        case quarantine
        /// Ingests in progress and resumable `.partial` downloads.
        case tmp
        /// Per-entry `flock` files.
        case locks

        /// Areas whose items are made from inputs and can be made again: gc removes the ones not
        /// used for a while.
        public var isDerived: Bool { [.steps, .toolchains, .zigCache, .sysroots, .packs, .bytecode].contains(self) }
    }

    public func directory(_ area: Area) -> String { root + "/" + area.rawValue }

    /// An item of an area (`steps/<key>`, `toolchains/<sha256>`, …).
    public func item(_ area: Area, _ name: String) -> String { directory(area) + "/" + name }

    /// Takes the lock of `area/name` (`locks/<area>-<name>.lock`), blocking while another holds
    /// it: every writer of the item holds it while making it, and gc while removing it.
    public func lock(_ area: Area, _ name: String) throws(StoreError) -> FileLock { try lock("\(area.rawValue)-\(name)") }

    /// The file beside a derived item (`steps/<key>.tree-sha256`) holding the tree hash
    /// (docs/tree-hash.md) of the item's contents when it was completed; `store verify` hashes the
    /// item again against it. Items made before krnative wrote these have none.
    public func treeHashRecord(_ area: Area, _ name: String) -> String { item(area, name) + Self.treeHashRecordSuffix }

    static let treeHashRecordSuffix = ".tree-sha256"

    /// The tree hash recorded beside `area/name`, if there is one.
    public func recordedTreeHash(_ area: Area, _ name: String) -> SHA256Digest? {
        guard let text = try? String(contentsOfFile: treeHashRecord(area, name), encoding: .utf8) else { return nil }
        return SHA256Digest(hex: text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Puts a finished staging copy (a directory on the store's file system) in place as
    /// `area/name` and records its tree hash beside it. The hash is taken before the rename; an
    /// older item and its record go first and the new record is written last, so a record never
    /// stands beside contents it does not describe. `recordingTreeHash` false records none, for
    /// items the tree hash cannot describe (a smoke root's device files).
    public func complete(_ area: Area, _ name: String, from staging: String, recordingTreeHash: Bool = true) throws(FileSystemError) {
        let digest = recordingTreeHash ? try TreeHash.ofDirectory(at: staging) : nil
        let destination = item(area, name)
        unlink(treeHashRecord(area, name))
        FileSystem.removeTree(destination)
        try FileSystem.rename(staging, to: destination)
        guard let digest else { return }
        try FileSystem.writeAtomically(Data((digest.hex + "\n").utf8), to: treeHashRecord(area, name), mode: 0o444)
    }

    /// `area/name` when it is there and still hashes to the tree hash recorded when it was
    /// completed (and marked used for gc); nil when it is not there. An item that no longer
    /// matches, or has no record, is moved to quarantine with `log` told, and nil returned: the
    /// caller makes it again rather than building on contents nobody vouches for. An item this
    /// process found intact before is hashed again only when its stamp (`FileSystem.stamp`: every
    /// entry's inode, size and times) or its record changed since: a toolchain of 14,690 files
    /// that every recipe of a build uses is read once. `treeHash` is `TreeHash.ofDirectory` but
    /// where a test counts the readings.
    public func intactItem(
        _ area: Area, _ name: String, treeHash: (String) throws(FileSystemError) -> SHA256Digest = TreeHash.ofDirectory(at:),
        log: (String) -> Void = Reporting.note
    ) -> String? {
        let path = item(area, name)
        guard FileSystem.exists(path) else { return nil }
        let recorded = recordedTreeHash(area, name)
        let stamp = FileSystem.stamp(of: path)
        if let recorded, let stamp, Self.foundIntact.withLock({ $0[path] }) == IntactCheck(recorded: recorded, stamp: stamp) {
            markUsed(area, name)
            return path
        }
        let actual = try? treeHash(path)
        if let recorded, recorded == actual {
            if let stamp { Self.foundIntact.withLock { $0[path] = IntactCheck(recorded: recorded, stamp: stamp) } }
            markUsed(area, name)
            return path
        }
        let why = recorded == nil ? "has no tree-hash record" : "no longer hashes to its recorded tree \(recorded!.hex.prefix(12))"
        let kept = quarantine(path, reason: "\(area.rawValue)-changed")
        unlink(treeHashRecord(area, name))
        log("\(area.rawValue)/\(name.prefix(12)) \(why): moved to \(kept); it is made again")
        return nil
    }

    /// An item found intact by this process: the record it matched, and its stamp taken before it was hashed.
    struct IntactCheck: Equatable {
        var recorded: SHA256Digest
        var stamp: SHA256Digest
    }
    private static let foundIntact = Mutex<[String: IntactCheck]>([:])

    /// Names of the items of an area: everything in its directory but tree-hash records, which
    /// belong to the item they stand beside.
    public func itemNames(_ area: Area) -> [String] {
        Self.names(in: directory(area)).filter { Self.itemName(ofRecord: $0) == nil }
    }

    /// `<item>.tree-sha256` → `<item>`; nil for a name that is not a tree-hash record.
    static func itemName(ofRecord name: String) -> String? {
        guard name.hasSuffix(treeHashRecordSuffix), name.count > treeHashRecordSuffix.count else { return nil }
        return String(name.dropLast(treeHashRecordSuffix.count))
    }

    /// Why gc removes `name` of `area` whatever its age, or nil when it is not a leftover: a temp
    /// or staging copy whose writing process is gone, an empty partial download, a tree-hash record
    /// whose item is gone. In `tmp/`, all that is neither a resumable download nor being written is.
    /// `store verify` reports the same things, so the fix it names is the gc that removes them.
    public func leftoverReason(_ area: Area, _ name: String) -> String? {
        switch area {
        case .tmp:
            if name.hasPrefix(Self.workPrefix) {
                return StagingDirectory.isHeld(item(area, name)) ? nil : "left by a build that was killed (its lock is free)"
            }
            if name.hasSuffix(".partial") { return Self.treeBytes(item(area, name)) == 0 ? "an empty partial download" : nil }
            if let writer = Self.writingProcess(of: name), Self.isRunning(writer) { return nil }
            return "left by a process that is gone"
        case .steps, .toolchains, .sysroots, .packs, .bytecode:
            if let writer = Self.writingProcess(of: name) {
                return Self.isRunning(writer) ? nil : "an unfinished copy left by process \(writer), which is gone"
            }
            if let recorded = Self.itemName(ofRecord: name), !FileSystem.exists(item(area, recorded)) {
                return "the tree-hash record of \(area.rawValue)/\(recorded), which the store no longer holds"
            }
            return nil
        case .zigCache:
            return "a Zig cache that the steps of earlier builds shared and wrote; each build now has its own, and nothing reads this one"
        case .entries, .trees, .quarantine, .locks:
            return nil
        }
    }

    /// The prefix of a running build's work directory in `tmp/` (`StagingDirectory`: its lock is
    /// held while the build runs).
    public static let workPrefix = ".krnative-work-"

    /// Whether `name` of `area` is a copy that a running process is still writing.
    public func isBeingWritten(_ area: Area, _ name: String) -> Bool {
        if area == .tmp && name.hasPrefix(Self.workPrefix) { return StagingDirectory.isHeld(item(area, name)) }
        guard area == .tmp || area.isDerived, let writer = Self.writingProcess(of: name) else { return false }
        return Self.isRunning(writer)
    }

    /// Records that an item of a derived area was just used, so gc keeps it (its mtime is the mark).
    public func markUsed(_ area: Area, _ name: String) {
        _ = utimensat(AT_FDCWD, item(area, name), nil, AT_SYMLINK_NOFOLLOW)
    }

    public struct AreaUsage: Sendable, Codable, Equatable {
        public var area: Area
        public var items: Int
        public var bytes: Int64
    }

    /// Items and bytes in each area (links are not followed; a file is counted at its size; a
    /// tree-hash record counts with its item).
    public func usage() -> [AreaUsage] {
        Area.allCases.map { area in
            let bytes = Self.names(in: directory(area)).reduce(Int64(0)) { $0 + Self.treeBytes(item(area, $1)) }
            return AreaUsage(area: area, items: itemNames(area).count, bytes: bytes)
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
    /// items unused for `maxAge` go (with their tree-hash records); quarantined files older than
    /// `maxAge` go; leftovers (`leftoverReason`) go whatever their age. Nothing is touched.
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
                if let reason = leftoverReason(area, name) {
                    plan.remove.append(CollectionItem(area: area, name: name, bytes: Self.treeBytes(path), reason: reason))
                    continue
                }
                if Self.itemName(ofRecord: name) != nil { continue }  // goes with its item
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
            var item = CollectionItem(area: .tmp, name: name, bytes: Self.treeBytes(item(.tmp, name)), reason: "")
            if let reason = leftoverReason(.tmp, name) {
                item.reason = reason
                plan.remove.append(item)
            } else {
                item.reason =
                    name.hasPrefix(Self.workPrefix)
                    ? "the work directory of a running build" : Self.writingProcess(of: name).map { "written by the running process \($0)" } ?? "a partial download a fetch resumes"
                plan.keep.append(item)
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
                let itemLock = try? lock(item.area, item.name)
                FileSystem.removeTree(self.item(item.area, item.name))
                if item.area.isDerived { unlink(treeHashRecord(item.area, item.name)) }
                itemLock?.unlock()
            }
        }
    }

    // MARK: Helpers

    /// The process that writes a temp or staging copy, from its name: `<hint>.<pid>.<random>.tmp`
    /// in `tmp/` (`temporaryPath`), `<item>.tmp-<pid>` (step snapshots), `<item>.partial-<pid>`
    /// (smoke roots) and `.<file>.tmp-<pid>-<random>` (`FileSystem.writeAtomically`); nil for others.
    static func writingProcess(of name: String) -> pid_t? {
        let parts = name.split(separator: ".")
        if parts.count >= 3, parts.last == "tmp" { return pid_t(parts[parts.count - 3]) }
        for marker in [".tmp-", ".partial-"] {
            if let range = name.range(of: marker, options: .backwards) {
                return pid_t(name[range.upperBound...].prefix { $0 != "-" })
            }
        }
        return nil
    }

    /// Whether a process with this id runs (one of another user's counts).
    static func isRunning(_ process: pid_t) -> Bool { kill(process, 0) == 0 || errno == EPERM }

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

    /// Gives the owner write permission on every directory of a tree (files keep their modes).
    static func makeDirectoriesWritable(_ path: String) {
        var info = stat()
        guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else { return }
        chmod(path, (info.st_mode & 0o7777) | S_IRWXU)
        for name in names(in: path) { makeDirectoriesWritable(path + "/" + name) }
    }
}

/// A copy of `value` changed by `change`.
private func with<T>(_ value: T, _ change: (inout T) -> Void) -> T {
    var copy = value
    change(&copy)
    return copy
}
