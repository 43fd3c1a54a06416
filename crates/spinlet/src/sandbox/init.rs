//! The sandbox helper: `spinforge __spinlet-init`, started by the sandbox
//! spawner with a [`Plan`] on stdin. It runs as two processes:
//!
//! - the **helper** joins the app's network namespace and cgroups, makes a
//!   new PID namespace, forks the init, forwards stop signals to it and
//!   exits with its status, so the supervisor sees one ordinary child;
//! - the **init** (PID 1 of the new namespace) makes the mount, IPC, UTS
//!   and cgroup namespaces, builds the root, drops every privilege, adds
//!   Landlock and seccomp, then forks the app and reaps until it exits.
//!   When the init exits the kernel kills whatever is left in the
//!   namespace, so no app child outlives a stop.

use super::fs;
use super::plan::{Plan, NETNS_FD};
use super::profile::{self, Profile};
use super::{seccomp, sys};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Gid, Pid, Uid};
use std::ffi::CString;
use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::process::ExitCode;

/// Exit status when the sandbox itself could not be set up.
const SETUP_FAILED: u8 = 125;
/// Exit status when the app's program could not be run.
const EXEC_FAILED: i32 = 127;

/// Signals the helper and the init wait for instead of dying of them.
fn handled() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGCHLD,
    ] {
        set.add(signal);
    }
    set
}

/// The helper's entry point; `spinforge` calls it for `__spinlet-init`
/// before anything else (in particular before any thread exists).
pub fn helper_main() -> ExitCode {
    match helper() {
        Ok(never) => match never {},
        Err(message) => {
            eprintln!("spinlet sandbox: {message}");
            ExitCode::from(SETUP_FAILED)
        }
    }
}

enum Never {}

fn helper() -> Result<Never, String> {
    let mut text = Vec::new();
    std::io::stdin()
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read the plan: {e}"))?;
    let mut plan: Plan = serde_json::from_slice(&text).map_err(|e| format!("bad plan: {e}"))?;
    if plan.reexec {
        return reexec(plan);
    }
    plan.helper_pid = std::process::id();
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    nix::unistd::dup2_stdin(&null).map_err(|e| format!("cannot redirect stdin: {e}"))?;
    drop(null);

    if plan.netns {
        // The spawner placed the namespace there (sys::pass_fd).
        let netns = take_fd(NETNS_FD)?;
        nix::sched::setns(&netns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| layer("network namespace", e))?;
    }
    for dir in &plan.cgroups {
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| layer("cgroup", format!("{}: {e}", dir.display())))?;
    }

    let signals = handled();
    signals
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| layer("PID namespace", e))?;

    match sys::fork_single_threaded().map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let code = match init(&plan) {
                Ok(never) => match never {},
                Err(message) => {
                    eprintln!("spinlet sandbox: {message}");
                    i32::from(SETUP_FAILED)
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => loop {
            match signals.wait() {
                Ok(Signal::SIGCHLD) => {
                    if let Some(code) = reap(child) {
                        std::process::exit(code);
                    }
                }
                Ok(signal) => {
                    let _ = kill(child, signal);
                }
                Err(_) => {}
            }
        },
    }
}

/// A warm helper, now that it has its plan: runs this program again as
/// a cold start would have (the app's command line for `ps`, the release
/// as working folder, only the instance's tag in the environment), with
/// the plan in a fresh memfd as stdin. The namespace descriptor stays at
/// [`NETNS_FD`] (not close-on-exec) and the cgroup membership stays too.
fn reexec(mut plan: Plan) -> Result<Never, String> {
    plan.reexec = false;
    let bytes = serde_json::to_vec(&plan).map_err(|e| format!("plan: {e}"))?;
    // The plan goes into an in-memory file, not a pipe: only this process
    // reads it (after the exec), so a pipe would block this write forever
    // once the plan outgrew its buffer (64 KiB; a site's secrets alone may
    // be larger). A memfd takes any size and is read like the cold start's
    // pipe, from the start to its end.
    let mut file = std::fs::File::from(
        nix::sys::memfd::memfd_create(c"spinlet-plan", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| format!("cannot pass the plan on: memfd: {e}"))?,
    );
    file.write_all(&bytes)
        .and_then(|()| file.seek(std::io::SeekFrom::Start(0)).map(drop))
        .map_err(|e| format!("cannot pass the plan on: {e}"))?;
    // dup2 clears close-on-exec on the copy at 0, which the exec keeps.
    nix::unistd::dup2_stdin(&file).map_err(|e| format!("cannot pass the plan on: {e}"))?;
    drop(file);
    nix::unistd::chdir(&plan.release).map_err(|e| format!("cannot enter the release: {e}"))?;
    // argv[0] as a cold start's: the binary's path.
    let path = std::fs::read_link("/proc/self/exe").map_err(|e| format!("/proc/self/exe: {e}"))?;
    let mut argv = vec![
        cstring(&path.to_string_lossy())?,
        cstring(super::HELPER_ARG)?,
        cstring("--")?,
    ];
    argv.push(cstring(&plan.program)?);
    for arg in &plan.args {
        argv.push(cstring(arg)?);
    }
    let env: Vec<CString> = plan
        .env
        .iter()
        .filter(|(name, _)| name == "SPINFORGE_SPINLET")
        .map(|(name, value)| cstring(&format!("{name}={value}")))
        .collect::<Result<_, _>>()?;
    // The running binary itself, even if a newer one replaced its file.
    let exe = cstring("/proc/self/exe")?;
    let Err(e) = nix::unistd::execve(&exe, &argv, &env);
    Err(format!("cannot run the helper again: {e}"))
}

/// Adopts a descriptor the spawner passed at a fixed number: opening its
/// /proc entry gives an owned descriptor to the same object without
/// `unsafe`, then the number itself is closed.
fn take_fd(fd: i32) -> Result<OwnedFd, String> {
    let file = std::fs::File::open(format!("/proc/self/fd/{fd}"))
        .map_err(|e| format!("descriptor {fd}: {e}"))?;
    let _ = nix::unistd::close(fd);
    Ok(OwnedFd::from(file))
}

fn layer(name: &str, error: impl std::fmt::Display) -> String {
    format!("the `{name}` layer could not be applied: {error}")
}

/// Reaps exited children; returns the exit code to pass on once `main`
/// has exited (128 + signal for a signal death, as shells report it).
fn reap(main: Pid) -> Option<i32> {
    let mut result = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main => result = Some(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == main => {
                result = Some(128 + signal as i32);
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return result,
            Ok(_) => {}
        }
    }
}

/// PID 1 of the spinlet's namespace.
fn init(plan: &Plan) -> Result<Never, String> {
    // If the helper dies (SIGKILL from the supervisor), so does the init,
    // and with it the whole namespace.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("pdeathsig: {e}"))?;
    // Its own session: a stop signal to the helper's process group reaches
    // the helper only, which forwards it here exactly once.
    let _ = nix::unistd::setsid();

    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .map_err(|e| layer("mount/IPC/UTS/cgroup namespaces", e))?;
    nix::unistd::sethostname(hostname(&plan.site)).map_err(|e| layer("UTS namespace", e))?;
    fs::enter_root(plan).map_err(|e| layer("file system", e))?;

    mirror_pid(plan.helper_pid);
    set_rlimits(plan).map_err(|e| layer("rlimits", e))?;
    drop_privileges(plan)?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| layer("no_new_privs", e))?;
    if plan.landlock {
        if let Err(e) = landlock() {
            degrade(plan, "landlock", &e)?;
        }
    }
    let mut site_filters = Vec::new();
    if plan.seccomp {
        seccomp::install().map_err(|e| layer("seccomp", e))?;
        if let Some(json) = &plan.seccomp_profile {
            // The hub checked it; a profile that no longer compiles (a
            // newer SpinForge is stricter) stops the start, never runs
            // the app without it.
            site_filters = Profile::parse(json)
                .map_err(|e| e.to_string())
                .and_then(|p| p.compile())
                .map_err(|e| layer("site seccomp profile", e))?;
        }
    }

    let signals = handled();
    let app = match sys::fork_single_threaded().map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => run_app(plan, &site_filters),
        ForkResult::Parent { child } => child,
    };
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(code) = reap(app) {
                    std::process::exit(code);
                }
            }
            // Everything in the namespace but the init itself.
            Ok(signal) => {
                let _ = kill(Pid::from_raw(-1), signal);
            }
            Err(_) => {}
        }
    }
}

/// Makes the app's pid inside the namespace equal the helper's pid on the
/// host, so the pid an app logs or reports is the one `status` shows and
/// the one an operator signals (the helper passes signals on). Only
/// cosmetic: if it fails, the app is simply pid 2.
fn mirror_pid(helper_pid: u32) {
    if helper_pid > 1 {
        let last = (helper_pid - 1).to_string();
        if let Err(e) = std::fs::write("/proc/sys/kernel/ns_last_pid", last) {
            eprintln!("spinlet sandbox: note: the app's pid is not mirrored: {e}");
        }
    }
}

/// Refuses the start unless the operator allowed degraded sandboxes.
fn degrade(plan: &Plan, name: &str, error: &str) -> Result<(), String> {
    if plan.allow_degraded {
        eprintln!(
            "spinlet sandbox: warning: {}; continuing (allow_degraded)",
            layer(name, error)
        );
        Ok(())
    } else {
        Err(layer(name, error))
    }
}

fn hostname(site: &str) -> String {
    site.chars().take(64).collect()
}

fn set_rlimits(plan: &Plan) -> Result<(), nix::Error> {
    use nix::sys::resource::{setrlimit, Resource};
    setrlimit(Resource::RLIMIT_NOFILE, plan.open_files, plan.open_files)?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0)
}

/// Leaves root for the site's own uid and gid, with no supplementary
/// groups and every capability set empty.
fn drop_privileges(plan: &Plan) -> Result<(), String> {
    use caps::CapSet;
    // The bounding set can only shrink while we still hold CAP_SETPCAP.
    caps::clear(None, CapSet::Bounding).map_err(|e| layer("capabilities", e))?;
    nix::unistd::setgroups(&[]).map_err(|e| layer("identity", e))?;
    let gid = Gid::from_raw(plan.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| layer("identity", e))?;
    let uid = Uid::from_raw(plan.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| layer("identity", e))?;
    // Leaving uid 0 empties permitted, effective and ambient; inheritable
    // is cleared by hand. Then every set is checked, not assumed.
    caps::clear(None, CapSet::Inheritable).map_err(|e| layer("capabilities", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| layer("capabilities", e))?;
    for set in [
        CapSet::Bounding,
        CapSet::Permitted,
        CapSet::Effective,
        CapSet::Inheritable,
        CapSet::Ambient,
    ] {
        let held = caps::read(None, set).map_err(|e| layer("capabilities", e))?;
        if !held.is_empty() {
            return Err(layer(
                "capabilities",
                format!("{set:?} still holds {held:?}"),
            ));
        }
    }
    if nix::unistd::geteuid().is_root() || nix::unistd::getegid().as_raw() == 0 {
        return Err(layer("identity", "still root"));
    }
    Ok(())
}

/// Landlock: read and execute anywhere in the (already minimal) root,
/// write only in the writable folders and device nodes.
fn landlock() -> Result<(), String> {
    use landlock::{
        path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr,
        RulesetStatus, ABI,
    };
    let abi = ABI::V5;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(["/"], AccessFs::from_read(abi))))
        .and_then(|r| {
            r.add_rules(path_beneath_rules(
                fs::writable_paths(),
                AccessFs::from_all(abi),
            ))
        })
        .and_then(|r| r.restrict_self())
        .map_err(|e| e.to_string())?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err("the kernel does not enforce Landlock".into());
    }
    Ok(())
}

/// The app's process: default signal mask, `/app` as working folder, the
/// plan's environment only.
fn run_app(plan: &Plan, site_filters: &[seccompiler::BpfProgram]) -> ! {
    let _ = SigSet::empty().thread_set_mask();
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let failed = (|| -> Result<std::convert::Infallible, String> {
        nix::unistd::chdir("/app").map_err(|e| format!("cannot enter /app: {e}"))?;
        // Last, so that the init itself never runs under a site's rules.
        profile::install(site_filters)?;
        let program = cstring(&plan.program)?;
        let mut argv = vec![program.clone()];
        for arg in &plan.args {
            argv.push(cstring(arg)?);
        }
        let env = plan
            .env
            .iter()
            .map(|(k, v)| cstring(&format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()?;
        nix::unistd::execve(&program, &argv, &env)
            .map_err(|e| format!("cannot run {}: {e}", plan.program))
    })();
    let Err(message) = failed;
    eprintln!("spinlet sandbox: {message}");
    std::process::exit(EXEC_FAILED)
}

fn cstring(text: &str) -> Result<CString, String> {
    CString::new(text).map_err(|_| format!("`{text}` contains a NUL byte"))
}
