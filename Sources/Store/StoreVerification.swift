import Foundation
import KrnativeBase

#if canImport(Glibc)
    import Glibc
#endif

extension Store {
    /// Something `store verify` found in the store, with the evidence and the fix.
    public struct Problem: Sendable, Codable, Equatable {
        public enum Severity: String, Sendable, Codable {
            /// Contents that no longer match their hash: moved to `quarantine/`; `store verify` exits 76.
            case corrupted
            /// Left behind or set aside (unfinished copies, quarantined files): takes room, harms nothing.
            case warning
        }
        public var severity: Severity
        /// The path inside the store (`steps/<key>.tmp-<pid>`).
        public var path: String
        public var bytes: Int64
        /// What is wrong, with the evidence.
        public var finding: String
        /// The command or step that puts it right.
        public var fix: String
        /// Where a corrupted item was moved (inside the store), if it was.
        public var movedTo: String? = nil
    }

    /// What `store verify` did in one area.
    public struct AreaVerification: Sendable, Codable {
        public var area: Area
        /// Items looked at; copies a running process is still writing are left alone.
        public var checked: Int
        /// What was checked, in words, with counts where the items of an area differ.
        public var checks: String
        public var problems: [Problem]
    }

    /// `store verify`'s report: every area, in `Area` order.
    public struct Verification: Sendable, Codable {
        public var root: String
        public var areas: [AreaVerification]
        /// Problems that make `store verify` fail.
        public var corrupted: Int
        /// Problems that take room and harm nothing.
        public var warnings: Int
    }

    /// Checks every area: entries are hashed again against their names, derived items against the
    /// tree hash recorded when they were made (where one was), and leftovers are reported with the
    /// command that removes them. Corrupted entries and items are moved to `quarantine/`.
    public func verify() -> Verification {
        var areas: [AreaVerification] = []
        for area in Area.allCases {
            switch area {
            case .entries: areas.append(verifyEntries())
            case .trees: areas.append(verifyTreeRecords())
            case .steps, .toolchains, .sysroots, .packs, .bytecode: areas.append(verifyDerived(area))
            case .zigCache: areas.append(verifyLeftovers(area, checks: "none should be here: krnative no longer writes this area"))
            case .quarantine:
                // After every area that moves things there (Area order); what this run moved is
                // reported once, as corrupted, where it was found.
                areas.append(verifyQuarantine(except: Set(areas.flatMap(\.problems).compactMap(\.movedTo))))
            case .tmp: areas.append(verifyLeftovers(area, checks: "each is a resumable download or belongs to a running process"))
            case .locks: areas.append(summary(of: area, checks: "flock files, empty by design: nothing to check"))
            }
        }
        let problems = areas.flatMap(\.problems)
        return Verification(
            root: root, areas: areas, corrupted: problems.count { $0.severity == .corrupted },
            warnings: problems.count { $0.severity == .warning })
    }

    /// Hashes every entry of `sha256/` again against its name; corrupted ones are quarantined.
    public func verifyEntries() -> AreaVerification {
        let entries = entries()
        var problems: [Problem] = []
        for entry in entries {
            var problem = Problem(
                severity: .corrupted, path: relative(path(for: entry.sha256)), bytes: entry.size, finding: "",
                fix: "`krnative fetch` (or `krnative store import FILE`) gets it again")
            do {
                _ = try verifiedPath(for: entry.sha256)
                continue
            } catch .corrupted(_, _, let actual, let quarantinedAt) {
                problem.movedTo = relative(quarantinedAt)
                problem.finding = "found sha256 \(actual); moved to \(relative(quarantinedAt))"
            } catch .missing {
                continue  // removed by a gc while this ran
            } catch {
                problem.finding = "cannot be hashed: \(error.description)"
            }
            problems.append(problem)
        }
        return AreaVerification(area: .entries, checked: entries.count, checks: "each hashed again against its name", problems: problems)
    }

    /// Each `trees/` record names an entry the store holds. One whose entry was quarantined or
    /// collected is harmless (lookups check the entry) and counts again once the file is back.
    func verifyTreeRecords() -> AreaVerification {
        let names = Self.names(in: directory(.trees))
        var problems: [Problem] = []
        for name in names {
            let path = item(.trees, name)
            let text = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            if let file = SHA256Digest(hex: text), contains(file) { continue }
            problems.append(
                Problem(
                    severity: .warning, path: relative(path), bytes: Self.treeBytes(path),
                    finding: "names sha256 \(text.isEmpty ? "(nothing)" : text), which the store does not hold",
                    fix: "`krnative fetch` admits that file again if the lock pins it; if not, remove the record"))
        }
        return AreaVerification(area: .trees, checked: names.count, checks: "each names an entry of sha256/", problems: problems)
    }

    /// The items of an area krnative completes by rename (steps, toolchains, smoke roots): an item
    /// under its own name is complete; one with a tree-hash record is hashed again against it, and
    /// on a mismatch moved to `quarantine/` so the next build makes it again. Unfinished copies and
    /// records without their item are leftovers.
    func verifyDerived(_ area: Area) -> AreaVerification {
        var problems: [Problem] = []
        var hashed = 0
        var unrecorded = 0
        for name in Self.names(in: directory(area)) where !isBeingWritten(area, name) {
            let path = item(area, name)
            guard FileSystem.exists(path) else { continue }  // a record that went with its quarantined item
            if let reason = leftoverReason(area, name) {
                problems.append(leftover(path, reason))
                continue
            }
            if Self.itemName(ofRecord: name) != nil { continue }  // checked with its item
            guard let recorded = recordedTreeHash(area, name) else {
                unrecorded += 1
                continue
            }
            hashed += 1
            let bytes = Self.treeBytes(path)
            let finding: String
            let reason: String
            do {
                let found = try TreeHash.ofDirectory(at: path)
                if found == recorded { continue }
                finding = "tree hash \(found), where \(recorded) was recorded when it was made"
                reason = "found-tree-\(found.hex)"
            } catch {
                finding = "cannot be tree-hashed (\(error.description)); \(recorded) was recorded when it was made"
                reason = "unhashable"
            }
            let quarantined = relative(quarantine(path, reason: reason))
            unlink(treeHashRecord(area, name))
            problems.append(
                Problem(
                    severity: .corrupted, path: relative(path), bytes: bytes, finding: "\(finding); moved to \(quarantined)",
                    fix: "nothing: the next build that needs it makes it again", movedTo: quarantined))
        }
        var checks: [String] = []
        if hashed > 0 { checks.append("\(hashed) tree-hashed again against the record made with \(hashed == 1 ? "it" : "them")") }
        if unrecorded > 0 { checks.append("\(unrecorded) complete, not verified by hash: nothing recorded") }
        return AreaVerification(
            area: area, checked: hashed + unrecorded + problems.count { $0.severity == .warning },
            checks: checks.isEmpty ? "no finished items" : checks.joined(separator: "; "), problems: problems)
    }

    /// Everything in `quarantine/` is reported (it failed verification and is kept for inspection),
    /// but for the paths in `movedNow`, which were reported where they were found.
    func verifyQuarantine(except movedNow: Set<String>) -> AreaVerification {
        let names = Self.names(in: directory(.quarantine))
        let problems = names.filter { !movedNow.contains(relative(item(.quarantine, $0))) }.map { name in
            let path = item(.quarantine, name)
            return Problem(
                severity: .warning, path: relative(path), bytes: Self.treeBytes(path), finding: "failed verification; kept for inspection",
                fix: "`krnative store gc` removes it once it is over --max-age days old (default 30); `rm -r` removes it now")
        }
        return AreaVerification(area: .quarantine, checked: names.count,
            checks: movedNow.isEmpty ? "each reported, with its size" : "each reported, with its size, but what this run moved there",
            problems: problems)
    }

    /// The leftovers among an area's items (`leftoverReason`): in `tmp/`, temp files of processes
    /// that are gone and empty partial downloads (partial downloads with bytes, which a fetch
    /// resumes, and copies being written are fine); in `zig-cache/`, everything.
    func verifyLeftovers(_ area: Area, checks: String) -> AreaVerification {
        let names = Self.names(in: directory(area))
        let problems = names.compactMap { name in leftoverReason(area, name).map { leftover(item(area, name), $0) } }
        return AreaVerification(area: area, checked: names.count, checks: checks, problems: problems)
    }

    /// An area whose items are only counted.
    func summary(of area: Area, checks: String) -> AreaVerification {
        AreaVerification(area: area, checked: itemNames(area).count, checks: checks, problems: [])
    }

    /// A leftover that `store gc` removes (`leftoverReason` decides for both).
    func leftover(_ path: String, _ reason: String) -> Problem {
        Problem(
            severity: .warning, path: relative(path), bytes: Self.treeBytes(path), finding: reason,
            fix: "`krnative store gc` removes it (`--dry-run` lists all it would remove)")
    }

    /// `path` inside the store, without the store's root.
    func relative(_ path: String) -> String {
        path.hasPrefix(root + "/") ? String(path.dropFirst(root.count + 1)) : path
    }
}
