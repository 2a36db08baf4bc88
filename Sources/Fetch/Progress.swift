import Foundation
import KrnativeBase

#if canImport(Glibc)
    import Glibc
#endif

/// Tells the person at the terminal what the fetcher does: one redrawn status line on a TTY,
/// plain lines otherwise (CI logs, pipes). Writes to stderr; stdout carries results.
public final class ProgressReporter: @unchecked Sendable {
    private let lock = NSLock()
    private let interactive: Bool
    private let quiet: Bool
    private let emit: @Sendable (String) -> Void
    private var bytes: Int64 = 0
    private var active: [String] = []
    private var finished = 0
    private var total = 0
    private let start = Date()
    private var lastDraw = Date.distantPast

    public init(
        interactive: Bool = isatty(STDERR_FILENO) == 1, quiet: Bool = Reporting.level == .quiet,
        emit: @escaping @Sendable (String) -> Void = { FileHandle.standardError.write(Data($0.utf8)) }
    ) {
        self.interactive = interactive
        self.quiet = quiet
        self.emit = emit
    }

    func plan(count: Int) {
        lock.withLock { total = count }
    }

    func began(_ name: String, from url: String) {
        lock.withLock {
            active.append(name)
            if !interactive && !quiet { emit("fetching \(name) from \(url)\n") }
            draw(force: true)
        }
    }

    func advanced(by count: Int64) {
        lock.withLock {
            bytes += count
            draw(force: false)
        }
    }

    func ended(_ name: String, _ message: String) {
        lock.withLock {
            active.removeAll { $0 == name }
            finished += 1
            if interactive { emit("\r\u{1B}[K") }
            if !quiet { emit(message + "\n") }
            draw(force: true)
        }
    }

    /// A line that is neither the start nor the end of a transfer (a retry, a fallback).
    public func note(_ message: String) {
        lock.withLock {
            if interactive { emit("\r\u{1B}[K") }
            if !quiet { emit(message + "\n") }
            draw(force: true)
        }
    }

    func done() {
        lock.withLock { if interactive && !active.isEmpty { emit("\r\u{1B}[K") } }
    }

    private func draw(force: Bool) {
        guard interactive, !quiet, !active.isEmpty else { return }
        let now = Date()
        guard force || now.timeIntervalSince(lastDraw) > 0.1 else { return }
        lastDraw = now
        let seconds = max(now.timeIntervalSince(start), 0.001)
        let rate = Double(bytes) / seconds
        emit(
            "\r\u{1B}[K[\(finished)/\(total)] \(Self.format(bytes)) at \(Self.format(Int64(rate)))/s  "
                + active.prefix(3).joined(separator: ", "))
    }

    static func format(_ bytes: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
    }
}
