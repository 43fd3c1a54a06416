//! A site's custom seccomp profile, in Docker's seccomp JSON format, set
//! by an admin.
//!
//! How it combines with the built-in allowlist: the profile is compiled
//! into extra filters installed on the app *after* the allowlist, and the
//! kernel answers every call with the strictest verdict of all filters.
//! So a profile can only take more away: what the allowlist denies stays
//! denied whatever the profile says. To keep a profile from pretending
//! otherwise, one that allows a call on the always-blocked list
//! ([`seccomp::ALWAYS_BLOCKED`]) is refused. Docker itself lets a profile
//! allow anything.
//!
//! What is read: `defaultAction`, `defaultErrnoRet`, `architectures`
//! (it must name this machine's), `archMap` (only checked for form), and
//! `syscalls[]` with `names` (or `name`), `action`, `errnoRet`, `args`
//! (`index`, `value`, `valueTwo`, `op`) and `includes`/`excludes` with
//! `caps`, `arches` and `minKernel`. A spinlet holds no capability, so a
//! rule that needs one never applies and one that excludes one always
//! does. Refused: `SCMP_ACT_TRACE` and `SCMP_ACT_NOTIFY` (no tracer or
//! listener exists for a spinlet), `listenerPath`, `flags`, unknown
//! actions, operators and fields.
//!
//! Where rules overlap, the strictest action wins (Docker: the first
//! match).
// Limitation: a name that is not on the built-in allowlist is accepted
// without a check that it is a Linux syscall at all (it is denied by the
// allowlist either way; a full syscall name table would catch typos).

use super::seccomp;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Why a profile was refused: `field` is the JSON path of the offending
/// part (`syscalls[2].action`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ProfileError {
    pub field: String,
    pub message: String,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> ProfileError {
    ProfileError {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DockerProfile {
    default_action: String,
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    syscalls: Vec<DockerRule>,
    #[serde(default)]
    flags: Vec<String>,
    listener_path: Option<String>,
    listener_metadata: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DockerRule {
    #[serde(default)]
    names: Vec<String>,
    name: Option<String>,
    action: String,
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<DockerArg>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
    #[serde(rename = "comment")]
    _comment: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    min_kernel: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DockerArg {
    index: u8,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

/// A checked profile, ready to compile.
#[derive(Debug)]
pub struct Profile {
    default: SeccompAction,
    /// Per action, the calls it applies to (an empty rule list: always).
    groups: Vec<(SeccompAction, BTreeMap<i64, Vec<SeccompRule>>)>,
    /// Every call some rule names, with that rule's conditions.
    named: BTreeMap<i64, Vec<SeccompRule>>,
}

/// This machine in Docker's names: the `SCMP_ARCH_*` and the `arches`
/// of `includes`/`excludes`.
fn native() -> (&'static str, &'static [&'static str]) {
    match std::env::consts::ARCH {
        "x86_64" => ("SCMP_ARCH_X86_64", &["amd64", "x86_64"]),
        "aarch64" => ("SCMP_ARCH_AARCH64", &["arm64", "aarch64"]),
        _ => ("", &[]),
    }
}

fn action(name: &str, errno: Option<u32>, default_errno: u32) -> Result<SeccompAction, String> {
    let errno = errno.unwrap_or(default_errno);
    Ok(match name {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_LOG" => SeccompAction::Log,
        "SCMP_ACT_TRACE" | "SCMP_ACT_NOTIFY" => {
            return Err(format!(
                "`{name}` is not supported: a spinlet has no tracer or seccomp listener"
            ))
        }
        other => return Err(format!("`{other}` is not a seccomp action")),
    })
}

fn operator(name: &str, value: u64, value_two: u64) -> Result<(SeccompCmpOp, u64), String> {
    Ok(match name {
        "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, value),
        "SCMP_CMP_NE" => (SeccompCmpOp::Ne, value),
        "SCMP_CMP_LT" => (SeccompCmpOp::Lt, value),
        "SCMP_CMP_LE" => (SeccompCmpOp::Le, value),
        "SCMP_CMP_GT" => (SeccompCmpOp::Gt, value),
        "SCMP_CMP_GE" => (SeccompCmpOp::Ge, value),
        // (arg & value) == valueTwo
        "SCMP_CMP_MASKED_EQ" => (SeccompCmpOp::MaskedEq(value), value_two),
        other => return Err(format!("`{other}` is not a comparison operator")),
    })
}

/// The running kernel's `major.minor`.
fn kernel() -> (u32, u32) {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    version(&release).unwrap_or((0, 0))
}

fn version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().unwrap_or("0").parse().ok()?;
    Some((major, minor))
}

/// Whether a rule applies to a spinlet on this machine.
fn applies(rule: &DockerRule, at: &str) -> Result<bool, ProfileError> {
    let (_, arches) = native();
    let on_this_arch = |list: &[String]| list.iter().any(|a| arches.contains(&a.as_str()));
    if !rule.includes.caps.is_empty() {
        return Ok(false);
    }
    if !rule.includes.arches.is_empty() && !on_this_arch(&rule.includes.arches) {
        return Ok(false);
    }
    if on_this_arch(&rule.excludes.arches) {
        return Ok(false);
    }
    for (part, filter) in [("includes", &rule.includes), ("excludes", &rule.excludes)] {
        if let Some(min) = &filter.min_kernel {
            let wanted = version(min).ok_or_else(|| {
                refuse(
                    format!("{at}.{part}.minKernel"),
                    format!("`{min}` is not a kernel version"),
                )
            })?;
            let newer = kernel() >= wanted;
            if (part == "includes" && !newer) || (part == "excludes" && newer) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

impl Profile {
    /// Reads and checks a profile; the error names the offending field.
    pub fn parse(json: &serde_json::Value) -> Result<Profile, ProfileError> {
        let docker: DockerProfile = serde_json::from_value(json.clone())
            .map_err(|e| refuse("seccomp_profile", e.to_string()))?;
        if docker.listener_path.is_some() || docker.listener_metadata.is_some() {
            return Err(refuse(
                "listenerPath",
                "seccomp listeners are not supported for spinlets",
            ));
        }
        if let Some(flag) = docker.flags.first() {
            return Err(refuse(
                "flags",
                format!("filter flags such as `{flag}` are not supported"),
            ));
        }
        let (arch, _) = native();
        for (i, name) in docker.architectures.iter().enumerate() {
            if !name.starts_with("SCMP_ARCH_") {
                return Err(refuse(
                    format!("architectures[{i}]"),
                    format!("`{name}` is not an SCMP_ARCH_* name"),
                ));
            }
        }
        for (i, map) in docker.arch_map.iter().enumerate() {
            let names = std::iter::once(&map.architecture).chain(&map.sub_architectures);
            if let Some(bad) = names.into_iter().find(|n| !n.starts_with("SCMP_ARCH_")) {
                return Err(refuse(
                    format!("archMap[{i}]"),
                    format!("`{bad}` is not an SCMP_ARCH_* name"),
                ));
            }
        }
        let listed = docker.architectures.iter().any(|a| a == arch)
            || docker.arch_map.iter().any(|m| m.architecture == arch);
        let any_arch = docker.architectures.is_empty() && docker.arch_map.is_empty();
        if !any_arch && !listed {
            return Err(refuse(
                "architectures",
                format!("the profile does not cover this machine ({arch})"),
            ));
        }
        let default_errno = docker.default_errno_ret.unwrap_or(libc::EPERM as u32);
        let default = action(&docker.default_action, None, default_errno)
            .map_err(|m| refuse("defaultAction", m))?;

        let mut groups: Vec<(SeccompAction, BTreeMap<i64, Vec<SeccompRule>>)> = Vec::new();
        let mut named: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (i, rule) in docker.syscalls.iter().enumerate() {
            let at = format!("syscalls[{i}]");
            let act = action(&rule.action, rule.errno_ret, default_errno)
                .map_err(|m| refuse(format!("{at}.action"), m))?;
            let names: Vec<&String> = rule.names.iter().chain(&rule.name).collect();
            if names.is_empty() {
                return Err(refuse(format!("{at}.names"), "names no syscall"));
            }
            let mut conditions = Vec::new();
            for (j, arg) in rule.args.iter().enumerate() {
                let field = format!("{at}.args[{j}]");
                if arg.index > 5 {
                    return Err(refuse(
                        format!("{field}.index"),
                        "a syscall has arguments 0 to 5",
                    ));
                }
                let (op, value) = operator(&arg.op, arg.value, arg.value_two)
                    .map_err(|m| refuse(format!("{field}.op"), m))?;
                let condition =
                    SeccompCondition::new(arg.index, SeccompCmpArgLen::Qword, op, value)
                        .map_err(|e| refuse(field, e.to_string()))?;
                conditions.push(condition);
            }
            if !applies(rule, &at)? {
                continue;
            }
            let lets_through = matches!(act, SeccompAction::Allow | SeccompAction::Log);
            for name in names {
                if lets_through && seccomp::always_blocked(name) {
                    return Err(refuse(
                        format!("{at}.names"),
                        format!(
                            "`{name}` is always blocked in a SpinForge sandbox; a profile may \
                             not allow it"
                        ),
                    ));
                }
                // Calls the allowlist denies stay denied: no rule needed.
                let Some(nr) = seccomp::allowed_number(name) else {
                    continue;
                };
                let rule = if conditions.is_empty() {
                    None
                } else {
                    Some(
                        SeccompRule::new(conditions.clone())
                            .map_err(|e| refuse(format!("{at}.args"), e.to_string()))?,
                    )
                };
                add(&mut named, nr, rule.clone());
                if act != SeccompAction::Allow {
                    let group = match groups.iter_mut().find(|(a, _)| *a == act) {
                        Some((_, group)) => group,
                        None => {
                            groups.push((act.clone(), BTreeMap::new()));
                            &mut groups.last_mut().expect("just pushed").1
                        }
                    };
                    add(group, nr, rule);
                }
            }
        }
        let profile = Profile {
            default,
            groups,
            named,
        };
        profile
            .compile()
            .map_err(|m| refuse("seccomp_profile", m))?;
        Ok(profile)
    }

    /// The filters to install after the built-in allowlist.
    pub(crate) fn compile(&self) -> Result<Vec<BpfProgram>, String> {
        let arch = seccomp::arch()?;
        let build = |rules: BTreeMap<i64, Vec<SeccompRule>>,
                     mismatch: SeccompAction,
                     matched: SeccompAction| {
            SeccompFilter::new(rules, mismatch, matched, arch)
                .and_then(BpfProgram::try_from)
                .map_err(|e| format!("seccomp profile: {e}"))
        };
        let mut programs = Vec::new();
        if self.default != SeccompAction::Allow {
            // Anything no rule names gets the default action.
            programs.push(build(
                self.named.clone(),
                self.default.clone(),
                SeccompAction::Allow,
            )?);
        }
        for (act, rules) in &self.groups {
            programs.push(build(rules.clone(), SeccompAction::Allow, act.clone())?);
        }
        Ok(programs)
    }
}

/// Adds a rule for `nr`; `None` (no conditions) matches every call and
/// so replaces any conditional rules.
fn add(map: &mut BTreeMap<i64, Vec<SeccompRule>>, nr: i64, rule: Option<SeccompRule>) {
    match rule {
        None => {
            map.insert(nr, Vec::new());
        }
        Some(rule) => match map.get_mut(&nr) {
            // An empty list already matches every call.
            Some(rules) if rules.is_empty() => {}
            Some(rules) => rules.push(rule),
            None => {
                map.insert(nr, vec![rule]);
            }
        },
    }
}

/// Installs a site profile's filters on the calling thread.
pub(crate) fn install(programs: &[BpfProgram]) -> Result<(), String> {
    for program in programs {
        seccompiler::apply_filter(program).map_err(|e| format!("seccomp profile: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(profile: serde_json::Value) -> String {
        Profile::parse(&profile).expect_err("refused").field
    }

    #[test]
    fn a_deny_list_profile_compiles_to_its_filters() {
        let profile = Profile::parse(&json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["uname", "getcwd"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                 "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]}
            ]
        }))
        .expect("valid");
        assert_eq!(profile.groups.len(), 2, "EPERM and EACCES");
        assert_eq!(profile.compile().expect("compiles").len(), 2);
    }

    #[test]
    fn an_allow_list_profile_gets_a_default_filter() {
        let profile = Profile::parse(&json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": [native().0, "SCMP_ARCH_X86"],
            "syscalls": [{"names": ["read", "write", "no_such_call"], "action": "SCMP_ACT_ALLOW"}]
        }))
        .expect("valid");
        assert_eq!(profile.named.len(), 2, "unknown names need no rule");
        assert_eq!(profile.compile().expect("compiles").len(), 1);
    }

    #[test]
    fn bad_profiles_are_refused_naming_the_field() {
        assert_eq!(field_of(json!({"syscalls": []})), "seccomp_profile");
        assert_eq!(
            field_of(json!({"defaultAction": "SCMP_ACT_MAYBE"})),
            "defaultAction"
        );
        assert_eq!(
            field_of(json!({"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]})),
            "syscalls[0].action"
        );
        assert_eq!(
            field_of(json!({"defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                             {"names": ["mount"], "action": "SCMP_ACT_ALLOW"}]})),
            "syscalls[1].names"
        );
        assert_eq!(
            field_of(json!({"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]})),
            "syscalls[0].args[0].index"
        );
        assert_eq!(
            field_of(json!({"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_SOMETIMES"}]}]})),
            "syscalls[0].args[0].op"
        );
        assert_eq!(
            field_of(
                json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_PPC"]})
            ),
            "architectures"
        );
        assert_eq!(
            field_of(json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/x"})),
            "listenerPath"
        );
        assert_eq!(
            field_of(
                json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]})
            ),
            "syscalls[0].names"
        );
    }

    #[test]
    fn rules_that_need_a_capability_never_apply() {
        // Docker's default profile allows mount only with CAP_SYS_ADMIN:
        // a spinlet never has it, so the rule is skipped, not refused.
        let profile = Profile::parse(&json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["write"], "action": "SCMP_ACT_ALLOW",
                 "excludes": {"caps": ["CAP_SYS_ADMIN"], "minKernel": "1.0"}}
            ]
        }))
        .expect("valid");
        assert_eq!(
            profile.named.len(),
            1,
            "only read: {:?}",
            profile.named.keys()
        );
    }
}
