import Build
import Testing

/// `build --check`'s variations as values: what each does to a run on a machine described by
/// made-up circumstances, and the build a run's plan makes of them. Nothing runs, mounts or builds.
@Suite("Check variations", .timeLimit(.minutes(60)))
struct VariationTests {
    let directory = "/check/run"

    /// An ordinary machine without faketime or disorderfs, its umask 022, its first build with 4 jobs.
    var machine: CheckCircumstances {
        var machine = CheckCircumstances()
        machine.environment = ["PATH": "/usr/bin", "TZ": "UTC"]
        (machine.compileJobs, machine.packThreads) = (4, 4)
        machine.hostname = "krnative-check-1"
        machine.noise = "noise"
        return machine
    }

    /// The same as root, with faketime, disorderfs and an account for the check user.
    var rootMachine: CheckCircumstances {
        var machine = machine
        machine.isRoot = true
        (machine.hasFaketime, machine.hasDisorderfs) = (true, true)
        machine.account = .init(uid: 65534, gid: 65534)
        return machine
    }

    @Test func theEnvironmentVariationsSetVariables() {
        #expect(Variation.timezone.effect(in: machine, directory: directory).environment == ["TZ": "Pacific/Kiritimati"])
        var kiritimati = machine
        kiritimati.environment["TZ"] = "Pacific/Kiritimati"
        #expect(Variation.timezone.effect(in: kiritimati, directory: directory).environment == ["TZ": "America/Adak"])
        #expect(Variation.locale.effect(in: machine, directory: directory).environment == ["LC_ALL": "POSIX", "LANG": "tr_TR.UTF-8"])
        let environment = Variation.environment.effect(in: machine, directory: directory).environment
        #expect(environment["HOME"] == directory + "/home" && environment["TMPDIR"] == directory + "/tmp")
        #expect(environment["SOURCE_DATE_EPOCH"] == "1" && environment["KRNATIVE_CHECK_NOISE"] == "noise")
    }

    @Test func umaskAndJobsTakeTheOtherValue() {
        #expect(Variation.umask.effect(in: machine, directory: directory).execFlags == ["--umask", "077"])
        var strict = machine
        strict.umask = 0o077
        #expect(Variation.umask.effect(in: strict, directory: directory).execFlags == ["--umask", "022"])
        #expect(Variation.jobs.effect(in: machine, directory: directory).buildFlags == ["--compile-jobs", "1", "--pack-threads", "1"])
        var single = machine
        (single.compileJobs, single.packThreads) = (1, 1)
        #expect(Variation.jobs.effect(in: single, directory: directory).buildFlags == ["--compile-jobs", "2", "--pack-threads", "2"])
    }

    /// Without root, the tools or the user, a variation is not applied, says why, and does nothing else.
    @Test func whatTheMachineCannotDoIsNotAppliedWithWhy() {
        for variation in [Variation.user, .hostname, .clock, .fileOrder] {
            let effect = variation.effect(in: machine, directory: directory)
            #expect(effect.notApplied != nil, "\(variation)")
            #expect(effect.wrapper.isEmpty && effect.execFlags.isEmpty && !effect.shuffledOutput && effect.owner == nil, "\(variation)")
        }
        var noUser = rootMachine
        noUser.account = nil
        #expect(Variation.user.effect(in: noUser, directory: directory).notApplied == "there is no user nobody (--check-user)")
        var unreachable = rootMachine
        unreachable.unreachable = ["/root/krnative.lock.json"]
        #expect(Variation.user.effect(in: unreachable, directory: directory).notApplied?.contains("cannot reach /root/krnative.lock.json") == true)
    }

    @Test func asRootWithTheToolsEveryVariationApplies() {
        let user = Variation.user.effect(in: rootMachine, directory: directory)
        #expect(user.wrapper == ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        #expect(user.owner == .init(uid: 65534, gid: 65534) && user.freshStore && user.environment["USER"] == "nobody")
        #expect(Variation.hostname.effect(in: rootMachine, directory: directory).execFlags == ["--hostname", "krnative-check-1"])
        #expect(Variation.clock.effect(in: rootMachine, directory: directory).wrapper == ["faketime", "-f", "+365d"])
        #expect(Variation.fileOrder.effect(in: rootMachine, directory: directory).shuffledOutput)
        #expect(Variation.path.effect(in: rootMachine, directory: directory).freshStore)
        let plan = RunPlan(Variation.allCases, in: rootMachine, directory: directory)
        #expect(plan.notApplied.isEmpty)
    }

    /// The cheap variations together: one build from the request file, under variation-exec and
    /// faketime, with the environment changed and no option that decides the bytes.
    @Test func theRunBuildsFromTheRequestFile() {
        let plan = RunPlan(Variation.together, in: rootMachine, directory: directory)
        #expect(plan.name == "timezone+locale+umask+jobs+environment+hostname+clock")
        #expect(!plan.freshStore && plan.owner == nil && !plan.shuffledOutput)
        #expect(plan.environment["PATH"] == "/usr/bin" && plan.environment["TZ"] == "Pacific/Kiritimati")
        let argv = plan.argv(executable: "/bin/krnative", requestFile: directory + "/request.json", store: "/store", out: directory + "/out")
        #expect(
            argv == [
                "/bin/krnative", "variation-exec", "--umask", "077", "--hostname", "krnative-check-1", "--",
                "faketime", "-f", "+365d", "/bin/krnative", "build", "--request", directory + "/request.json", "--ledger", "none",
                "--store", "/store", "--out", directory + "/out", "--offline", "--force", "--compile-jobs", "1", "--pack-threads", "1",
            ])
    }

    @Test func aUserSwitchGoesOutermostAndFreshStepsGiveAStore() {
        let plan = RunPlan([.clock, .user], in: rootMachine, directory: directory)
        #expect(plan.wrapper == ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "faketime", "-f", "+365d"])
        #expect(plan.freshStore)
        #expect(!RunPlan([.timezone], in: machine, directory: directory).freshStore)
        #expect(RunPlan([.timezone], in: machine, directory: directory, freshSteps: true).freshStore)
        let plain = RunPlan([.timezone], in: machine, directory: directory)
        #expect(plain.argv(executable: "k", requestFile: "r", store: "s", out: "o").prefix(2) == ["k", "build"])
    }
}
