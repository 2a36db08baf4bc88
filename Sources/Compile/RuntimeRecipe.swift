import Foundation
import KrnativeBase
import Patch

/// CPython 3.13 and the libraries python-build-standalone links into it, from source, as a value:
/// first a Python for the build machine (the cross build runs it), then zlib, bzip2, xz, libffi,
/// libuuid, ncurses, readline, SQLite and OpenSSL as static, position-independent archives under
/// `stage/deps`, then CPython for the target (`--enable-shared`, the extension modules in
/// `lib-dynload` with those archives linked in), installed under `stage/runtime/install`.
public struct RuntimeRecipe: Recipe {
    public var layout: BuildLayout
    public var target: Target
    /// The architecture of the machine that builds (and runs the build Python).
    public var buildArch: Architecture
    public var jobs: Int

    public init(layout: BuildLayout, target: Target, buildArch: Architecture, jobs: Int) {
        self.layout = layout
        self.target = target
        self.buildArch = buildArch
        self.jobs = jobs
    }

    public var seed: String { "krnative runtime recipe v1" }

    /// The lock's source entries, in build order (`cpython` is built twice).
    public static let components = ["cpython", "zlib", "bzip2", "xz", "libffi", "util-linux", "ncurses", "readline", "sqlite", "openssl"]

    /// Zig's target for `target`: manylinux2014's glibc, or musl (dynamic, so musllinux wheels load).
    public static func zigTriple(for target: Target) -> String {
        "\(target.arch.rawValue)-linux-" + (target.libc == .gnu ? "gnu.2.17" : "musl")
    }

    /// The autoconf names of the build machine and the target.
    var buildTriple: String { "\(buildArch.rawValue)-pc-linux-gnu" }
    var hostTriple: String { "\(target.arch.rawValue)-pc-linux-" + (target.libc == .gnu ? "gnu" : "musl") }

    public var deps: String { layout.stage + "/deps" }
    public var buildPython: String { layout.stage + "/build-python" }
    /// Where `make install` puts the target's CPython (its prefix is `/install`, as python-build-standalone's).
    public var installRoot: String { layout.stage + "/runtime" }

    var reproducibleFlags: String { "-ffile-prefix-map=\(layout.build)=/build" }

    /// What every library step compiles with: the target wrappers, PIC, the deps prefix.
    var environment: [String: String] {
        let wrappers = layout.wrappers
        return [
            "CC": wrappers + "/cc", "CXX": wrappers + "/c++", "AR": wrappers + "/ar", "RANLIB": wrappers + "/ranlib",
            "CFLAGS": "-O2 -fPIC \(reproducibleFlags)", "CPPFLAGS": "-I\(deps)/include", "LDFLAGS": "-L\(deps)/lib",
            "PKG_CONFIG_LIBDIR": deps + "/lib/pkgconfig", "PKG_CONFIG_PATH": "",
        ]
    }

    func make(_ targets: String...) -> [String] { ["make", "-j\(jobs)"] + targets }

    /// An autoconf library: static only, for the target, into the deps prefix.
    func autoconf(_ component: String, _ options: [String], environment extra: [String: String] = [:], adaptation: String) -> BuildStep {
        let configure = ["./configure", "--build=\(buildTriple)", "--host=\(hostTriple)", "--prefix=\(deps)", "--disable-shared", "--enable-static"]
        // The extracted files' times are not the archive's: make must not think the generated
        // autotools files stale and run automake (which the sandbox need not have).
        let keep = ["ACLOCAL=true", "AUTOCONF=true", "AUTOMAKE=true", "AUTOHEADER=true", "MAKEINFO=true"]
        return BuildStep(
            component: component, commands: [configure + options, make() + keep, make("install") + keep],
            environment: environment.merging(extra) { $1 }, adaptation: adaptation)
    }

    public var steps: [BuildStep] {
        [buildPythonStep] + libraries + [cpythonStep]
    }

    /// CPython for the build machine, with Zig for it (`build-cc`), installed at `stage/build-python`.
    var buildPythonStep: BuildStep {
        let wrappers = layout.wrappers
        return BuildStep(
            component: "cpython",
            commands: [
                ["./configure", "--prefix=\(buildPython)", "--without-ensurepip", "--disable-test-modules"], make(), make("install"),
            ],
            environment: [
                "CC": wrappers + "/build-cc", "CXX": wrappers + "/build-c++", "AR": wrappers + "/build-ar",
                "RANLIB": wrappers + "/build-ranlib", "CFLAGS": "-O2 \(reproducibleFlags) \(Self.dateTimeFlag)",
                // No pkg-config answers from the host: its libraries are not Zig's to link.
                "PKG_CONFIG_LIBDIR": layout.build + "/no-pkg-config", "PKG_CONFIG_PATH": "",
            ],
            adaptation: "the build Python (--with-build-python) comes from the same source, compiled by Zig for the build machine, never a host Python",
            directory: "cpython-build")
    }

    var libraries: [BuildStep] {
        let wrappers = layout.wrappers
        let flags = environment["CFLAGS"]!
        return [
            BuildStep(
                component: "zlib",
                commands: [["./configure", "--static", "--prefix=\(deps)"], make("install")],
                environment: environment.merging(["CHOST": target.arch.rawValue + "-linux"]) { $1 },
                adaptation: "zlib's own configure (not autoconf): static, CHOST names the target"),
            BuildStep(
                component: "bzip2",
                commands: [
                    make("install", "PREFIX=\(deps)", "CC=\(wrappers)/cc", "AR=\(wrappers)/ar", "RANLIB=\(wrappers)/ranlib",
                        "CFLAGS=\(flags) -D_FILE_OFFSET_BITS=64")
                ],
                environment: environment,
                adaptation: "bzip2's Makefile takes CC/AR/CFLAGS on the command line; `install` does not run its tests (they would need the target)"),
            autoconf(
                "xz",
                ["--disable-xz", "--disable-xzdec", "--disable-lzmadec", "--disable-lzmainfo", "--disable-lzma-links", "--disable-scripts", "--disable-doc", "--disable-nls"],
                adaptation: "liblzma only: the xz programs are not part of the runtime"),
            autoconf(
                "libffi", ["--disable-docs", "--disable-multi-os-directory", "--with-pic", "--disable-exec-static-tramp"],
                adaptation: "lib/, not lib64/; no docs; no static trampolines (3.4.4's tramp.c does not compile with clang 16 and later)"),
            autoconf(
                "util-linux",
                ["--disable-all-programs", "--enable-libuuid", "--without-systemd", "--without-udev", "--without-python", "--disable-nls", "--disable-bash-completion", "--disable-asciidoc"],
                adaptation: "libuuid only"),
            autoconf(
                "ncurses",
                [
                    "--with-build-cc=\(wrappers)/build-cc", "--without-shared", "--with-normal", "--without-debug", "--without-ada", "--without-cxx",
                    "--without-cxx-binding", "--without-manpages", "--without-tests", "--without-progs", "--enable-widec", "--enable-pc-files",
                    "--with-pkg-config-libdir=\(deps)/lib/pkgconfig", "--disable-db-install", "--with-default-terminfo-dir=/usr/share/terminfo",
                    "--with-terminfo-dirs=/etc/terminfo:/lib/terminfo:/usr/share/terminfo", "--disable-stripping",
                ],
                adaptation: "wide-character ncursesw, static; the terminal database is the target system's (/etc/terminfo, /lib/terminfo, /usr/share/terminfo), as python-build-standalone's default search path"),
            autoconf("readline", ["--with-curses"], adaptation: "static, over ncursesw"),
            autoconf(
                "sqlite", ["--disable-tcl", "--enable-threadsafe", "--disable-readline", "--disable-editline"],
                environment: [
                    "BUILD_CC": wrappers + "/build-cc",
                    "CFLAGS": flags + " " + Self.sqliteFeatures.map { "-DSQLITE_\($0)" }.joined(separator: " "),
                ],
                adaptation: "the amalgamation is generated with the build machine's tclsh and build-cc; the feature set is python-build-standalone's"),
            BuildStep(
                component: "openssl",
                commands: [
                    [
                        "perl", "./Configure", "linux-\(target.arch.rawValue)", "--prefix=\(deps)", "--libdir=lib", "--openssldir=/etc/ssl", "no-shared",
                        "no-tests", "no-legacy", "no-docs", "no-engine",
                    ] + (target.libc == .musl ? ["no-async"] : []) + ["-fPIC", reproducibleFlags],
                    make("build_libs"), ["make", "install_dev"],
                ],
                environment: environment.filter { !["CFLAGS", "CPPFLAGS", "LDFLAGS"].contains($0.key) },
                adaptation: "OPENSSLDIR=/etc/ssl, so ssl finds the target system's CA certificates; libraries and headers only; musl has no makecontext (no-async)"),
        ]
    }

    /// CPython's sources as Zig needs them: shared libraries named with `-Wl,-soname` (Zig's
    /// linker has no `-h`); `libpython3.so` linked with an empty C file (from no object at all,
    /// `zig cc` hands the link to the host's `ld`, which names glibc's `libc.so.6` whatever the
    /// target, and knows no other architecture); on musl, the platform triplet (`x86_64-linux-musl`, in every extension module's
    /// name) found although `<stdarg.h>` is clang's, not musl's, whose `__DEFINED_va_list` CPython
    /// looks for — without it the suffix is `.cpython-313.so` and musllinux wheels' modules do not load.
    var cpythonEdits: [PatchEdit] {
        var edits = [
            PatchEdit(
                file: "Makefile.pre.in", find: "\t$(BLDSHARED) $(NO_AS_NEEDED) -o $@ -Wl,-h$@ $^\n",
                replace: "\t: > Modules/libpython3-stub.c\n\t$(BLDSHARED) $(NO_AS_NEEDED) -o $@ -Wl,-soname,$@ Modules/libpython3-stub.c $^\n"),
            PatchEdit(file: "Makefile.pre.in", find: "-Wl,-h$(INSTSONAME)", replace: "-Wl,-soname,$(INSTSONAME)"),
        ]
        if target.libc == .musl {
            edits.append(
                PatchEdit(file: "Misc/platform_triplet.c", find: "#  ifdef __DEFINED_va_list\n", replace: "#  if 1  /* musl: Linux, and not glibc, uClibc or dietlibc */\n"))
        }
        return edits
    }

    /// python-build-standalone's `install_only_stripped`: every ELF file of the installed tree
    /// without its debug information (Zig compiles with DWARF unless told otherwise, and the static
    /// libraries bring theirs), by the toolchain's `strip-debug` wrapper, which knows every target
    /// and keeps each file's mode; find fails when it does.
    var stripDebugInformation: [String] {
        [
            "find", installRoot + "/install", "-type", "f", "(", "-name", "*.so", "-o", "-name", "*.so.*", "-o", "-name", "python3.13", ")",
            "-exec", layout.wrappers + "/strip-debug", "{}", "+",
        ]
    }

    /// python-build-standalone's relocatable scripts: every Python script of the installed tree
    /// that names the build's interpreter (`#!/install/bin/python3.13`: `bin/idle3.13`,
    /// `bin/pydoc3.13`, the config directory's `python-config.py`) starts instead as a shell
    /// script that runs the `python3.13` found relative to the script's real place, so the tree
    /// works from any prefix. Run by the build Python; it fails on a Python interpreter line it
    /// does not expect, and follows no link (an install tree that is one is the step boundary's
    /// to refuse). Unlike python-build-standalone's, the path is relative to each script's
    /// directory (theirs names `python3.13` beside every script, which only `bin/` has).
    var relocatableScripts: [String] {
        let program = #"""
            import os, sys
            root = sys.argv[1]
            if os.path.islink(root):
                sys.exit(print(f'{root} is a link: not followed (the step boundary refuses it)'))
            python = os.path.join(root, 'bin', 'python3.13')
            for directory, names, files in os.walk(root):
                names.sort()
                for name in sorted(files):
                    path = os.path.join(directory, name)
                    if os.path.islink(path):
                        continue
                    with open(path, 'rb') as f:
                        head = f.readline(512)
                        rest = f.read()
                    line = head.rstrip(b'\n')
                    if not line.startswith(b'#!') or any(s in line for s in (b'bin/env', b'bin/sh', b'bin/bash')):
                        continue
                    if not line.startswith(b'#!/install/bin/python'):
                        sys.exit(f'{path}: an interpreter line the recipe does not expect: {line!r}')
                    relative = os.path.relpath(python, directory).encode()
                    launcher = b"#!/bin/sh\n'''exec' \"$(dirname -- \"$(realpath -- \"$0\")\")/" + relative + b"\" \"$0\" \"$@\"\n' '''\n"
                    with open(path, 'wb') as f:
                        f.write(launcher + rest)
                    print('relocatable:', os.path.relpath(path, root))
            """#
        return [buildPython + "/bin/python3.13", "-I", "-c", program, installRoot + "/install"]
    }

    /// Zig makes `__DATE__` an error; CPython's build info uses it, and clang takes it from SOURCE_DATE_EPOCH.
    static let dateTimeFlag = "-Wno-date-time"

    static let sqliteFeatures = [
        "ENABLE_FTS3", "ENABLE_FTS3_PARENTHESIS", "ENABLE_FTS4", "ENABLE_FTS5", "ENABLE_RTREE", "ENABLE_GEOPOLY", "ENABLE_DBSTAT_VTAB",
        "ENABLE_MATH_FUNCTIONS", "ENABLE_COLUMN_METADATA", "ENABLE_LOAD_EXTENSION",
    ]

    /// Answers for the checks configure cannot run when cross-compiling (python-build-standalone's).
    static let configSite = [
        "ac_cv_file__dev_ptmx=yes", "ac_cv_file__dev_ptc=no", "ac_cv_buggy_getaddrinfo=no", "ac_cv_working_tzset=yes", "ac_cv_pthread=yes",
        "ac_cv_aligned_required=no", "ac_cv_broken_sem_getvalue=no",
        // Zig's musl is 1.2.5; musllinux_1_2 systems may have 1.2.3 (Debian bookworm), without these.
        "ac_cv_func_preadv2=no", "ac_cv_func_pwritev2=no",
    ]

    /// CPython for the target, found libraries named explicitly (no host pkg-config answers).
    var cpythonStep: BuildStep {
        let lib = "-L\(deps)/lib"
        let extra = target.libc == .gnu ? " -lpthread -ldl -lm" : ""
        let modules: [String: String] = [
            "LIBFFI_CFLAGS": "-I\(deps)/include", "LIBFFI_LIBS": "\(lib) -lffi",
            "LIBSQLITE3_CFLAGS": "-I\(deps)/include", "LIBSQLITE3_LIBS": "\(lib) -lsqlite3" + extra,
            "ZLIB_CFLAGS": "-I\(deps)/include", "ZLIB_LIBS": "\(lib) -lz",
            "BZIP2_CFLAGS": "-I\(deps)/include", "BZIP2_LIBS": "\(lib) -lbz2",
            "LIBLZMA_CFLAGS": "-I\(deps)/include", "LIBLZMA_LIBS": "\(lib) -llzma" + extra,
            "LIBUUID_CFLAGS": "-I\(deps)/include/uuid", "LIBUUID_LIBS": "\(lib) -luuid",
            "CURSES_CFLAGS": "-I\(deps)/include/ncursesw", "CURSES_LIBS": "\(lib) -lncursesw",
            "PANEL_CFLAGS": "-I\(deps)/include/ncursesw", "PANEL_LIBS": "\(lib) -lpanelw -lncursesw",
            // configure reads readline from LIBREADLINE_* (pkg-config's names); READLINE_* it sets itself.
            "LIBREADLINE_CFLAGS": "-I\(deps)/include", "LIBREADLINE_LIBS": "\(lib) -lreadline -lncursesw",
        ]
        var environment = self.environment.merging(modules) { $1 }
        environment["CFLAGS"]! += " " + Self.dateTimeFlag
        // `\$$ORIGIN`: make turns `$$` into `$`, the shell's backslash keeps `$ORIGIN` for the linker.
        environment["LDFLAGS"] = "\(lib) -Wl,-rpath,\\$$ORIGIN/../lib"
        // Zig links executables at a fixed address unless told: python3.13 is PIE, as
        // python-build-standalone's is (configure takes LINKFORSHARED as given; Android's is this).
        environment["LINKFORSHARED"] = "-pie -Xlinker -export-dynamic"
        let configure =
            [
                "./configure", "--build=\(buildTriple)", "--host=\(hostTriple)", "--prefix=/install", "--enable-shared", "--without-static-libpython",
                "--with-build-python=\(buildPython)/bin/python3.13", "--with-openssl=\(deps)", "--with-openssl-rpath=no", "--with-ensurepip=no",
                "--disable-test-modules", "--with-readline=readline", "--without-system-expat", "--without-system-libmpdec",
            ] + Self.configSite
        return BuildStep(
            component: "cpython", commands: [configure, make(), make("install", "DESTDIR=\(installRoot)"), stripDebugInformation, relocatableScripts],
            environment: environment,
            adaptation: "the Makefile and platform triplet edited for Zig (cpythonEdits); extension modules are shared objects in lib-dynload (python-build-standalone links them into libpython); their C libraries are linked in statically all the same",
            edits: cpythonEdits)
    }
}
