// swift-tools-version: 6.0
import PackageDescription

/// krnative: builds the Backend.AI kernel-runner volumes reproducibly and offline.
///
/// The library targets follow the pipeline (docs/design.md §2, docs/architecture.md): each imports only the stages before it.
/// Each C library is reached by exactly one module: libcurl by `Fetch`, libarchive by `Archive`,
/// liblzma by `Archive`.
///
/// Linux only (glibc): the sandbox is Linux namespaces, and the code calls Glibc directly. SwiftPM
/// has no way to declare Linux as the only platform, so none is declared rather than a false one.
let package = Package(
    name: "krnative",
    products: [
        .executable(name: "krnative", targets: ["krnative"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.11.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
    ],
    targets: [
        // C libraries from Debian, one thin module each.
        .systemLibrary(
            name: "CCurl", pkgConfig: "libcurl",
            providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(
            name: "CArchive", pkgConfig: "libarchive",
            providers: [.apt(["libarchive-dev"])]),
        .systemLibrary(
            name: "CLZMA", pkgConfig: "liblzma",
            providers: [.apt(["liblzma-dev"])]),
        // Typed wrappers for libcurl's variadic curl_easy_setopt / curl_easy_getinfo.
        .target(name: "CCurlShim", dependencies: ["CCurl"]),
        // pivot_root(2), which glibc does not wrap.
        .target(name: "CSystemCalls"),

        // The pipeline.
        .target(
            name: "KrnativeBase",
            dependencies: [
                "CSystemCalls", .product(name: "Crypto", package: "swift-crypto"), .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        .target(name: "Lock", dependencies: ["KrnativeBase"]),
        .target(name: "Store", dependencies: ["KrnativeBase"]),
        .target(name: "Archive", dependencies: ["KrnativeBase", "CArchive", "CLZMA"]),
        .target(name: "Inputs", dependencies: ["KrnativeBase", "Lock", "Store", "Archive"]),
        .target(
            name: "Fetch",
            dependencies: ["KrnativeBase", "Lock", "Store", "Archive", "Inputs", "CCurl", "CCurlShim", .product(name: "Crypto", package: "swift-crypto")]),
        .target(name: "Bundle", dependencies: ["KrnativeBase", "Lock", "Store", "Archive", "Inputs"]),
        .target(name: "Patch", dependencies: ["KrnativeBase"]),
        .target(name: "Sandbox", dependencies: ["KrnativeBase", "CSystemCalls"]),
        .target(name: "Toolchain", dependencies: ["KrnativeBase"]),
        .target(name: "Layout", dependencies: ["KrnativeBase", "Archive", "Sandbox"]),
        .target(name: "Packaging", dependencies: ["KrnativeBase", "Archive"]),
        .target(name: "Verify", dependencies: ["KrnativeBase", "Archive", "Layout", "Sandbox", "Store"]),
        .target(
            name: "Build",
            dependencies: [
                "KrnativeBase", "Lock", "Store", "Archive", "Inputs", "Fetch", "Patch", "Sandbox", "Toolchain", "Compile", "Layout", "Packaging",
                "Verify",
            ]),
        .target(
            name: "Compile",
            dependencies: ["KrnativeBase", "Lock", "Store", "Archive", "Inputs", "Fetch", "Patch", "Sandbox", "Toolchain"]),

        // The command line: parses the arguments, calls the library stages, prints their results
        // and picks the exit status from the error; no build logic of its own.
        .executableTarget(
            name: "krnative",
            dependencies: [
                "KrnativeBase", "Lock", "Store", "Archive", "Inputs", "Fetch", "Bundle", "Patch", "Sandbox", "Toolchain", "Compile", "Layout", "Packaging",
                "Verify", "Build",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            plugins: ["RecordCommit"]),
        // Writes the commit the binary is built from into it (`krnative --version`).
        .plugin(name: "RecordCommit", capability: .buildTool()),

        .testTarget(
            name: "KrnativeTests",
            dependencies: [
                "KrnativeBase", "Lock", "Store", "Archive", "Inputs", "Fetch", "Bundle", "Patch", "Sandbox", "Toolchain", "Compile",
                "Layout", "Packaging", "Verify", "Build",
            ],
            exclude: ["Support"]),
    ],
    swiftLanguageModes: [.v6]
)
