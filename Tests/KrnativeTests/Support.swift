import Archive
import Compile
import Fetch
import Foundation
import KrnativeBase
import Lock
import Testing

#if canImport(Glibc)
    import Glibc
#endif

extension Tag {
    /// Starts a loopback HTTP server.
    @Tag static var network: Self
    /// Runs the krnative binary as a child process.
    @Tag static var process: Self
    /// Needs user namespaces (`unshare`).
    @Tag static var namespaces: Self
    /// Needs PyPI through pip.
    @Tag static var pypi: Self
}

/// Paths of the package under test.
enum Package {
    static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// The krnative executable: `KRNATIVE_BIN`, else the debug build. The fast tier never
    /// launches it: a test of that tier asking for it is reported as mislabelled.
    static var binary: String {
        if Machine.fastTier {
            Issue.record("the fast tier (scripts/test --fast) asked for the krnative binary: this test belongs to the end-to-end tier (.endToEnd)")
        }
        if let explicit = ProcessInfo.processInfo.environment["KRNATIVE_BIN"], !explicit.isEmpty { return explicit }
        return root + "/.build/debug/krnative"
    }

    static var supportDirectory: String { root + "/Tests/KrnativeTests/Support" }
}

/// A fresh directory removed when the value goes away.
final class TemporaryDirectory {
    let path: String
    init(_ label: String = "krnative-test") {
        let template = NSTemporaryDirectory() + "/\(label).XXXXXX"
        var bytes = Array(template.utf8CString)
        path = bytes.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }

    func file(_ name: String, _ contents: Data) -> String {
        let full = path + "/" + name
        try? FileManager.default.createDirectory(
            atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: full, contents: contents)
        return full
    }
    func file(_ name: String, _ text: String) -> String { file(name, Data(text.utf8)) }

    /// A small source tree `top/` as an upstream tarball holds one: a file, a nested source, an
    /// executable `configure`, and `LICENSE`, a link to `README`. Returns its path.
    func sourceTree(_ top: String) -> String {
        _ = file(top + "/README", "hello\n")
        _ = file(top + "/src/main.c", "int main(void) { return 0; }\n")
        chmod(file(top + "/configure", "#!/bin/sh\necho ok\n"), 0o755)
        symlink("README", path + "/" + top + "/LICENSE")
        return path + "/" + top
    }

    /// Writes a lock of `inputs` (epoch 1,700,000,000) as `name` here; returns its path.
    func lock(_ inputs: [LockedInput], name: String = "krnative.lock.json") throws -> String {
        let lockPath = path + "/" + name
        try Lockfile(sourceDateEpoch: 1_700_000_000, inputs: inputs).write(to: lockPath)
        return lockPath
    }
}

/// Random bytes (not compressible, so transfer sizes mean something).
func randomData(_ count: Int) -> Data {
    var generator = SystemRandomNumberGenerator()
    return Data((0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) })
}

/// The loopback fault server (Support/fault_server.py), stopped on deinit.
final class FaultServer: @unchecked Sendable {
    let root: TemporaryDirectory
    let logPath: String
    let port: Int
    private let process: Process

    init() throws {
        root = TemporaryDirectory("krnative-served")
        logPath = root.path + "/../" + (root.path as NSString).lastPathComponent + ".log"
        process = Process()
        process.executableURL = URL(fileURLWithPath: ChildProcess.resolve("python3"))
        process.arguments = [Package.supportDirectory + "/fault_server.py", "--root", root.path, "--log", logPath]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        var line = Data()
        while !line.contains(0x0a) {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        let text = String(decoding: line, as: UTF8.self)
        guard text.hasPrefix("PORT "), let port = Int(text.dropFirst(5).trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw UsageError("fault server did not start: \(text)")
        }
        self.port = port
    }

    deinit {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        unlink(logPath)
    }

    /// Serves `data` as `name`; returns its sha256.
    @discardableResult
    func serve(_ name: String, _ data: Data) -> SHA256Digest {
        _ = root.file(name, data)
        return SHA256Digest.of(data)
    }

    func url(_ path: String) -> String { "http://127.0.0.1:\(port)/\(path)" }

    struct Request: Decodable {
        var path: String
        var range: String?
        var status: Int
        var bytes: Int
        var proxied: Bool
    }

    /// Every request so far. The server logs a request after its last byte, a moment after the
    /// client may have finished; so this waits until the log has been still for 300 ms.
    func requests() -> [Request] {
        func read() -> [Request] {
            guard let text = try? String(contentsOfFile: logPath, encoding: .utf8) else { return [] }
            return text.split(separator: "\n").compactMap { try? JSONDecoder().decode(Request.self, from: Data($0.utf8)) }
        }
        var last = read()
        while true {
            usleep(300_000)
            let now = read()
            if now.count == last.count { return now }
            last = now
        }
    }
}

/// Runs the krnative binary.
@discardableResult
func krnative(_ arguments: [String], environment extra: [String: String] = [:]) -> ChildProcess.Result {
    var environment = ProcessInfo.processInfo.environment
    environment.merge(extra) { $1 }
    return ChildProcess.run([Package.binary] + arguments, environment: environment)
}

/// A lock entry for a test file.
func wheelInput(_ name: String, sha256: SHA256Digest, urls: [String], size: Int64? = nil) -> LockedInput {
    LockedInput(name: name, kind: .wheel, version: "1.0", filename: "\(name)-1.0-py3-none-any.whl", sha256: sha256, size: size, urls: urls)
}

/// nginx (Debian's nginx-light) on loopback with WebDAV `PUT`: Bazel's HTTP cache protocol as a
/// team serves it without a cache daemon (`/cas/<sha256>`, `/ac/<key>`, files under `data`).
/// One process (no master), as whoever runs the tests.
final class WebDAVCache: @unchecked Sendable {
    static let nginx = "/usr/sbin/nginx"
    let directory = TemporaryDirectory("krnative-webdav")
    let port: Int
    private let process = Process()

    var url: String { "http://127.0.0.1:\(port)" }
    var data: String { directory.path + "/data" }
    /// The signing key of the machines that upload (made beside the server), and what trusts it.
    var keyFile: String { directory.path + "/machine-key" }
    var signer: CacheSigner { try! CacheSigner.loadOrCreate(at: keyFile).signer }
    var trust: CacheTrust { _ = signer; return try! CacheTrust.load(from: keyFile + ".pub") }
    /// The options that sign uploads with that key and trust it.
    var keyOptions: [String] {
        _ = signer
        return ["--remote-cache-key", keyFile, "--remote-cache-trust", keyFile + ".pub"]
    }
    /// Serves `manifest` as the build `key` made, as an uploading machine would: the manifest in
    /// `/cas/`, and the record pointing to it in `/ac/<key>`, signed by this server's key.
    func serveBuild(manifest: Data, key: SHA256Digest) throws {
        let digest = SHA256Digest.of(manifest)
        try manifest.write(to: URL(fileURLWithPath: data + "/cas/" + digest.hex))
        let record = "{\"manifest\":{\"file\":\"manifest.json\",\"sha256\":\"\(digest.hex)\",\"size\":\(manifest.count)}}"
        try signer.sign(Data(record.utf8), key: key).write(to: URL(fileURLWithPath: data + "/ac/" + key.hex))
    }
    var accessLog: [String] {
        ((try? String(contentsOfFile: directory.path + "/access.log", encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    init() throws {
        port = try freeLoopbackPort()
        let root = directory.path
        try FileManager.default.createDirectory(atPath: root + "/data", withIntermediateDirectories: true)
        let temporaries = ["body", "proxy", "fastcgi", "uwsgi", "scgi"].map { "  \($0 == "body" ? "client_body" : $0)_temp_path \(root)/\($0);" }
        _ = directory.file(
            "nginx.conf",
            """
            daemon off;
            master_process off;
            pid \(root)/nginx.pid;
            error_log \(root)/error.log;
            events { worker_connections 64; }
            http {
              access_log \(root)/access.log;
            \(temporaries.joined(separator: "\n"))
              server {
                listen 127.0.0.1:\(port);
                root \(root)/data;
                client_max_body_size 0;
                location / { dav_methods PUT; create_full_put_path on; dav_access user:rw group:r all:r; }
              }
            }
            """)
        process.executableURL = URL(fileURLWithPath: Self.nginx)
        process.arguments = ["-p", root, "-c", root + "/nginx.conf", "-e", root + "/error.log"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(10)
        while !loopbackAccepts(port) {
            guard Date() < deadline, process.isRunning else {
                throw UsageError("nginx did not start: \((try? String(contentsOfFile: root + "/error.log", encoding: .utf8)) ?? "")")
            }
            usleep(20_000)
        }
    }

    /// Stops the server, as a cache that goes away in the middle of a build.
    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    deinit { stop() }
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
func freeLoopbackPort() throws -> Int {
    let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(socket) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socket, $0, length) == 0 && getsockname(socket, $0, &length) == 0 }
    }
    guard bound else { throw UsageError("no free loopback port: \(String(cString: strerror(errno)))") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// Whether something accepts connections on 127.0.0.1:`port`.
func loopbackAccepts(_ port: Int) -> Bool {
    let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(socket) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
}

/// A lock holding one source, `lib` 1.0 (a tarball of `lib-1.0/src/a.c` that `server` serves),
/// pinned by its tree alone, written to `path`; returns the input.
@discardableResult
func writeServedSourceLock(to path: String, server: FaultServer) throws -> LockedInput {
    let tree = TemporaryDirectory()
    _ = tree.file("lib-1.0/src/a.c", "int a;\n")
    try ChildProcess.check(["tar", "-czf", "lib.tar.gz", "lib-1.0"], directory: tree.path)
    server.serve("lib.tar.gz", try Data(contentsOf: URL(fileURLWithPath: tree.path + "/lib.tar.gz")))
    let source = LockedInput(
        name: "lib", kind: .source, version: "1.0", filename: "lib-1.0.tar.gz",
        treeSha256: try TreeHash.ofDirectory(at: tree.path + "/lib-1.0"), urls: [server.url("files/lib.tar.gz")])
    try Lockfile(sourceDateEpoch: 1_700_000_000, inputs: [source]).write(to: path)
    return source
}

/// The project's recipes (`recipes/`), as a build reads them.
let ttydRecipeFile = try! RecipeFile.load("ttyd", from: Package.root + "/recipes")
let runtimeRecipeFile = try! RecipeFile.load("runtime", from: Package.root + "/recipes")

/// ttyd's recipe for the musl target of `triple`'s architecture.
func ttydRecipe(layout: BuildLayout, triple: String, jobs: Int, versions: [String: String]) -> RenderedRecipe {
    let target: Target = triple.hasPrefix("aarch64") ? .musllinuxAarch64 : .musllinuxX86_64
    return try! ttydRecipeFile.recipe(for: .init(layout: layout, target: target, buildArch: .x86_64, triple: triple, jobs: jobs, versions: versions))
}

/// The runtime's recipe for `target`, built on a `buildArch` machine.
func runtimeRecipe(layout: BuildLayout, target: Target, buildArch: Architecture, jobs: Int) -> RenderedRecipe {
    try! runtimeRecipeFile.recipe(for: .init(layout: layout, target: target, buildArch: buildArch, triple: RuntimeBuild.zigTriple(for: target), jobs: jobs, versions: [:]))
}
