import Foundation
import Inputs
import KrnativeBase
import Lock
import Store

/// Fetches a wheel with `pip download` of the exact file, so no index host is named by krnative:
/// pip's own configuration (index, proxy, certificates) decides where it comes from.
struct PipDownload {
    let options: FetchOptions
    let resolver: InputResolver

    func argv(for query: LockedInput.PipQuery, destination: String) -> [String] {
        var argv = [
            options.python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "--dest", destination,
        ]
        for platform in query.platforms { argv += ["--platform", platform] }
        if let version = query.pythonVersion { argv += ["--python-version", version] }
        if let implementation = query.implementation { argv += ["--implementation", implementation] }
        if let abi = query.abi { argv += ["--abi", abi] }
        return argv + [query.requirement]
    }

    /// Runs pip into a fresh directory in the store's tmp/ and returns it with the one file pip
    /// chose; the caller removes the directory.
    func download(_ name: String, query: LockedInput.PipQuery) throws(FetchError) -> (directory: String, files: [String]) {
        let directory = resolver.store.temporaryPath("pip-\(name)")
        do { try FileSystem.createDirectory(directory) } catch { throw .pipFailed(input: name, reason: error.description) }
        do { try ChildProcess.check(argv(for: query, destination: directory)) } catch {
            FileSystem.remove(directory)
            throw .pipFailed(input: name, reason: error.description)
        }
        return (directory, ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted())
    }

    func fetch(_ input: LockedInput, query: LockedInput.PipQuery, progress: ProgressReporter) throws(FetchError) -> SHA256Digest {
        progress.began(input.name, from: "pip \(query.requirement)")
        let directory: String, chosen: [String]
        do { (directory, chosen) = try download(input.name, query: query) } catch {
            progress.ended(input.name, "pip could not download \(input.name)")
            throw error
        }
        defer { FileSystem.remove(directory) }
        let file = directory + "/" + input.filename
        guard FileSystem.exists(file) else {
            progress.ended(input.name, "pip chose another file for \(input.name)")
            throw .pipFailed(
                input: input.name,
                reason: "pip chose \(chosen.joined(separator: ", ")), the lock pins \(input.filename); check the platform tags in the lock's pip query")
        }
        let digest: SHA256Digest
        do { digest = try SHA256Digest.of(fileAt: file).digest } catch { throw .pipFailed(input: input.name, reason: error.description) }
        guard case .accepted = resolver.check(file: file, digest: digest, for: input) else {
            let quarantined = resolver.store.quarantine(file, reason: "from-pip")
            throw .hashMismatch(input: input.name, url: "pip: \(query.requirement)", expected: input.sha256 ?? digest, actual: digest, quarantinedAt: quarantined)
        }
        do { try resolver.admit(temporary: file, digest: digest, for: input) } catch {
            throw .pipFailed(input: input.name, reason: error.description)
        }
        progress.advanced(by: FileSystem.size(of: resolver.store.path(for: digest)) ?? 0)
        progress.ended(input.name, "fetched \(input.name) \(input.version) with pip, sha256 \(digest)")
        return digest
    }
}
