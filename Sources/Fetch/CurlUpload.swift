import CCurl
import CCurlShim
import Foundation
import KrnativeBase

#if canImport(Glibc)
    import Glibc
#endif

/// One HTTP `PUT` of a file or of bytes, as a remote cache takes them (bazel-remote, WebDAV).
/// Redirects are not followed: a cache that moves is a misconfigured cache.
final class CurlUpload {
    let url: String
    let settings: TransferSettings
    private let fd: Int32
    private let size: Int64

    /// Opens `path` for reading; nil with the reason when it cannot.
    init(url: String, file path: String, settings: TransferSettings) throws(FileSystemError) {
        self.url = url
        self.settings = settings
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .cannotOpen(path: path, errno: errno) }
        var info = stat()
        fstat(fd, &info)
        size = Int64(info.st_size)
    }

    deinit { close(fd) }

    /// Sends the file; nil when the server took it (2xx), else what went wrong.
    func run() -> String? {
        guard let handle = curl_easy_init() else { return "curl_easy_init failed" }
        var headers: UnsafeMutablePointer<curl_slist>?
        defer {
            curl_easy_cleanup(handle)
            curl_slist_free_all(headers)
        }
        settings.apply(to: handle, headers: &headers)
        let context = Unmanaged.passUnretained(self).toOpaque()
        krn_curl_setopt_string(handle, CURLOPT_URL, url)
        krn_curl_setopt_long(handle, CURLOPT_UPLOAD, 1)
        krn_curl_setopt_off_t(handle, CURLOPT_INFILESIZE_LARGE, curl_off_t(size))
        krn_curl_setopt_long(handle, CURLOPT_FAILONERROR, 1)
        krn_curl_setopt_long(handle, CURLOPT_NOSIGNAL, 1)
        krn_curl_setopt_string(handle, CURLOPT_USERAGENT, "krnative")
        krn_curl_setopt_string(handle, CURLOPT_PROTOCOLS_STR, "http,https")
        krn_curl_setopt_pointer(handle, CURLOPT_READDATA, context)
        krn_curl_setopt_read_function(handle) { buffer, size, count, context in
            let upload = Unmanaged<CurlUpload>.fromOpaque(context!).takeUnretainedValue()
            let read = Glibc.read(upload.fd, buffer, size * count)
            return read < 0 ? Int(CURL_READFUNC_ABORT) : read
        }
        // The response body (a WebDAV server's HTML) is not wanted.
        krn_curl_setopt_write_function(handle) { _, size, count, _ in size * count }
        let code = curl_easy_perform(handle)
        guard code != CURLE_OK else { return nil }
        var status = 0
        krn_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        return status >= 400 ? "HTTP \(status)" : String(cString: curl_easy_strerror(code))
    }
}

extension CurlUpload {
    /// A `HEAD` request's HTTP status, or what kept it from having one.
    static func status(of url: String, settings: TransferSettings) -> Result<Int, UploadFailure> {
        guard let handle = curl_easy_init() else { return .failure(UploadFailure(reason: "curl_easy_init failed")) }
        var headers: UnsafeMutablePointer<curl_slist>?
        defer {
            curl_easy_cleanup(handle)
            curl_slist_free_all(headers)
        }
        settings.apply(to: handle, headers: &headers)
        krn_curl_setopt_string(handle, CURLOPT_URL, url)
        krn_curl_setopt_long(handle, CURLOPT_NOBODY, 1)
        krn_curl_setopt_long(handle, CURLOPT_NOSIGNAL, 1)
        krn_curl_setopt_string(handle, CURLOPT_USERAGENT, "krnative")
        krn_curl_setopt_string(handle, CURLOPT_PROTOCOLS_STR, "http,https")
        let code = curl_easy_perform(handle)
        guard code == CURLE_OK else { return .failure(UploadFailure(reason: String(cString: curl_easy_strerror(code)))) }
        var status = 0
        krn_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        return .success(status)
    }
}

/// Why a request to a remote cache had no answer.
struct UploadFailure: Error {
    var reason: String
}
