import Foundation
import KrnativeBase
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Tells the person at the terminal what the fetcher does: one redrawn status line on a TTY,
/// plain lines otherwise (CI logs, pipes). Writes to stderr; stdout carries results.
public final class ProgressReporter: Sendable {
    private let interactive: Bool
    private let quiet: Bool
    private let emit: @Sendable (String) -> Void
    private let start = Date()
    private let state = Mutex(State())

    private struct State {
        var bytes: Int64 = 0
        var active: [String] = []
        var finished = 0
        var total = 0
        /// The bytes the planned transfers bring, when the lock pins every size.
        var expectedBytes: Int64?
        var lastDraw = Date.distantPast
    }

    public init(
        interactive: Bool = isatty(STDERR_FILENO) == 1, quiet: Bool = Reporting.level == .quiet,
        emit: @escaping @Sendable (String) -> Void = { Console.error($0) }
    ) {
        self.interactive = interactive
        self.quiet = quiet
        self.emit = emit
    }

    /// `count` inputs, of which those not yet in the store bring `bytes` when every size is pinned.
    func plan(count: Int, bytes: Int64? = nil) {
        state.withLock { state in
            state.total = count
            state.expectedBytes = bytes.flatMap { $0 > 0 ? $0 : nil }
        }
    }

    func began(_ name: String, from url: String) {
        state.withLock { state in
            state.active.append(name)
            if !interactive && !quiet { emit("fetching \(name) from \(url)\n") }
            draw(&state, force: true)
        }
    }

    /// Bytes that arrived (a transfer's chunk, or a whole file pip brought).
    func advanced(by count: Int64) {
        state.withLock { state in
            state.bytes += count
            draw(&state, force: false)
        }
    }

    func ended(_ name: String, _ message: String) {
        state.withLock { state in
            state.active.removeAll { $0 == name }
            state.finished += 1
            if interactive { emit("\r\u{1B}[K") }
            if !quiet { emit(message + "\n") }
            draw(&state, force: true)
        }
    }

    /// A line that is neither the start nor the end of a transfer (a retry, a fallback).
    public func note(_ message: String) {
        state.withLock { state in
            if interactive { emit("\r\u{1B}[K") }
            if !quiet { emit(message + "\n") }
            draw(&state, force: true)
        }
    }

    func done() {
        state.withLock { state in if interactive && !state.active.isEmpty { emit("\r\u{1B}[K") } }
    }

    private func draw(_ state: inout State, force: Bool) {
        guard interactive, !quiet, !state.active.isEmpty else { return }
        let now = Date()
        guard force || now.timeIntervalSince(state.lastDraw) > 0.1 else { return }
        state.lastDraw = now
        let line = Self.line(
            finished: state.finished, total: state.total, bytes: state.bytes, expected: state.expectedBytes,
            seconds: now.timeIntervalSince(start), active: state.active)
        emit("\r\u{1B}[K" + String(line.prefix(max(20, Console.terminalWidth() - 1))))
    }

    /// `[2/5] 12.0 MiB of 40.0 MiB (30%) at 4.0 MiB/s, 7 s left  name, name`: the share and
    /// the time left only where the lock pins every size.
    static func line(finished: Int, total: Int, bytes: Int64, expected: Int64?, seconds: Double, active: [String]) -> String {
        let rate = Double(bytes) / max(seconds, 0.001)
        var text = "[\(finished)/\(total)] \(format(bytes))"
        if let expected {
            text += " of \(format(expected)) (\(min(100, Int(100 * Double(bytes) / Double(expected))))%)"
        }
        text += " at \(format(Int64(rate)))/s"
        if let expected, rate > 0, bytes < expected {
            text += ", \(Console.duration(Double(expected - bytes) / rate)) left"
        }
        return text + "  " + active.prefix(3).joined(separator: ", ")
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
