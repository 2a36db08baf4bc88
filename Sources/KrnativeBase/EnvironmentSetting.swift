import Foundation

/// krnative's `KRNATIVE_*` environment variables, read strictly: a value that is not one of the
/// accepted spellings is a usage error naming the variable and what it takes, never a silent default.
public enum EnvironmentSetting {
    static let yes: Set<String> = ["1", "true", "yes", "on"]
    static let no: Set<String> = ["0", "false", "no", "off", ""]

    /// A boolean variable: 1/true/yes/on or 0/false/no/off (any case; empty is off); nil when unset.
    public static func flag(_ name: String, in environment: [String: String] = ProcessInfo.processInfo.environment) throws(UsageError) -> Bool? {
        guard let raw = environment[name] else { return nil }
        let value = raw.trimmingCharacters(in: .whitespaces).lowercased()
        if yes.contains(value) { return true }
        if no.contains(value) { return false }
        throw UsageError("\(name)=\(raw) is neither on nor off; it takes 1, true, yes or on, or 0, false, no or off (or unset it)")
    }

    /// A whole number from 1; nil when unset or empty.
    public static func positiveInteger(_ name: String, in environment: [String: String] = ProcessInfo.processInfo.environment) throws(UsageError) -> Int64? {
        guard let raw = environment[name], !raw.isEmpty else { return nil }
        guard let value = Int64(raw.trimmingCharacters(in: .whitespaces)), value >= 1 else {
            throw UsageError("\(name)=\(raw) is not a whole number from 1 (or unset it)")
        }
        return value
    }

    /// A variable naming one of `T`'s cases; nil when unset or empty.
    public static func choice<T: RawRepresentable & CaseIterable>(
        _ name: String, as type: T.Type, in environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(UsageError) -> T? where T.RawValue == String {
        guard let raw = environment[name], !raw.isEmpty else { return nil }
        guard let value = T(rawValue: raw) else {
            throw UsageError("\(name)=\(raw) is not one of \(T.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return value
    }
}
