import CSystemCalls
import Foundation
import KrnativeBase

#if canImport(Glibc)
    import Glibc
#endif

/// What `krnative variation-exec` changes about itself before it becomes the command it was given:
/// the file creation mask and, in a UTS namespace of its own, the hostname. The variation harness
/// uses it for what an environment variable cannot vary.
public enum ProcessVariation {
    public static func exec(argv: [String], umask mask: mode_t?, hostname: String?) -> Never {
        func fail(_ what: String) -> Never {
            Reporting.error("krnative: variation-exec: \(what): \(String(cString: strerror(errno)))")
            exit(ExitStatus.process)
        }
        if let mask { umask(mask) }
        if let hostname, krn_enter_uts_namespace(hostname) != 0 {
            fail("cannot set the hostname to \(hostname) in a new UTS namespace (needs root)")
        }
        let program = ChildProcess.resolve(argv[0])
        var cArguments = argv.map { strdup($0) } + [nil]
        execv(program, &cArguments)
        fail("cannot run \(argv.joined(separator: " "))")
    }
}
