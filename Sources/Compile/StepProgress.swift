import Foundation
import KrnativeBase
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// What a build says while a step compiles, which takes minutes: on a terminal, a status line
/// redrawn every second with the step, its time so far and its last line of output (as cargo and
/// Bazel show theirs); elsewhere (a CI log, a pipe), a heartbeat line every `heartbeat` seconds
/// with the same. Each step begins and ends with a line of its own; `-q` leaves all of it out.
public final class StepProgress: Sendable {
    private let emit: @Sendable (String) -> Void
    private let terminal: Bool
    private let heartbeat: TimeInterval
    private let state = Mutex(State())

    private struct State {
        var label: String?
        var started = Date()
        var lastLine = ""
        var pending = Data()
        /// Bumped by each step, so that a ticker of a step that ended stops.
        var generation = 0
    }

    /// `emit` takes whole lines (without their newline); the status line goes to stderr itself.
    public init(
        emit: @escaping @Sendable (String) -> Void = Reporting.note, terminal: Bool = Console.isTerminal && Reporting.level != .quiet,
        heartbeat: TimeInterval = 30
    ) {
        self.emit = emit
        self.terminal = terminal
        self.heartbeat = heartbeat
    }

    /// A step begins: `label` says which (`[3/6] mbedtls 2.28.5: building for …`).
    public func begin(_ label: String) {
        let generation = state.withLock { state in
            state = State(label: label, started: Date(), generation: state.generation + 1)
            return state.generation
        }
        emit(label)
        let thread = Thread { [self] in tick(generation) }
        thread.name = "krnative step progress"
        thread.start()
    }

    /// Output of the running step; its last non-empty line is shown.
    public func output(_ chunk: Data) {
        state.withLock { state in
            state.pending.append(chunk)
            guard let end = state.pending.lastIndex(of: UInt8(ascii: "\n")) else {
                if state.pending.count > 4096 { state.pending.removeFirst(state.pending.count - 4096) }
                return
            }
            let complete = state.pending[..<end]
            state.pending.removeSubrange(...end)
            let lines = String(decoding: complete, as: UTF8.self).split(whereSeparator: { $0 == "\n" || $0 == "\r" })
            if let last = lines.last(where: { !$0.trimmingCharacters(in: .whitespaces).isEmpty }) {
                state.lastLine = String(last.trimmingCharacters(in: .whitespaces).prefix(200))
            }
        }
    }

    /// The step ended: its status line goes, `summary` says how it went.
    public func end(_ summary: String) {
        state.withLock { state in
            state.generation += 1
            state.label = nil
            if terminal { Console.error("\r\u{1B}[K") }
        }
        emit(summary)
    }

    /// `[3/6] mbedtls 2.28.5: building … · 1 min 5 s · CC library/aes.o`.
    static func status(_ label: String, seconds: Double, lastLine: String) -> String {
        "\(label) · \(Console.duration(seconds))" + (lastLine.isEmpty ? "" : " · \(lastLine)")
    }

    /// Redraws the status line each second, or says it every `heartbeat` seconds, until the step
    /// of `generation` ends (checked and drawn under the lock `end` clears it under).
    private func tick(_ generation: Int) {
        var lastBeat = Date()
        while true {
            Thread.sleep(forTimeInterval: terminal ? 1 : min(1, heartbeat))
            let running = state.withLock { state -> Bool in
                guard state.generation == generation, let label = state.label else { return false }
                let line = Self.status(label, seconds: Date().timeIntervalSince(state.started), lastLine: state.lastLine)
                if terminal {
                    Console.error("\r\u{1B}[K" + String(line.prefix(max(20, Console.terminalWidth() - 1))))
                } else if Date().timeIntervalSince(lastBeat) >= heartbeat {
                    lastBeat = Date()
                    emit("… still " + line)
                }
                return true
            }
            guard running else { return }
        }
    }
}
