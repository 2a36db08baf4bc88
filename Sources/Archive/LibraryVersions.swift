import CArchive
import CLZMA

/// The versions of the C libraries this module links, for `krnative doctor` and manifests.
public enum ArchiveLibraries {
    public static var libarchive: String { String(cString: archive_version_string()) }
    public static var liblzma: String { String(cString: lzma_version_string()) }
}
