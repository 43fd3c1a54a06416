//! The spinlet sandbox from the binary's side: `spinforge sandbox check`,
//! and building the spawner `serve` hands to the supervisor from the
//! `[sandbox]` settings.

use crate::cli::SandboxCommand;
use crate::config::SandboxSettings;
use anyhow::{bail, Context};
use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::Table;
use spinlet::{PlainSpawner, SandboxConfig, SandboxSpawner, Spawner};
use std::path::Path;
use std::sync::Arc;

pub fn run(command: SandboxCommand) -> anyhow::Result<()> {
    let SandboxCommand::Check { json } = command;
    let layers = spinlet::sandbox::check();
    let missing: Vec<&str> = layers
        .iter()
        .filter(|l| l.required && !l.supported)
        .map(|l| l.layer)
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&layers)?);
    } else {
        let mut table = Table::new();
        table.load_preset(UTF8_BORDERS_ONLY);
        table.set_header(["LAYER", "SUPPORTED", "DETAIL"]);
        for layer in &layers {
            let supported = match (layer.supported, layer.required) {
                (true, _) => "yes",
                (false, true) => "NO",
                (false, false) => "no (optional)",
            };
            table.add_row([layer.layer, supported, layer.detail.as_str()]);
        }
        println!("{table}");
    }
    if !missing.is_empty() {
        bail!(
            "apps will not start on this host unless sandbox.allow_degraded = true; missing: {}",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The spawner for `serve`: the sandbox unless `[sandbox] enabled = false`.
pub fn spawner(settings: &SandboxSettings, data_dir: &Path) -> anyhow::Result<Arc<dyn Spawner>> {
    if !settings.enabled {
        tracing::warn!(target: "spinforge::audit", event = "sandbox.disabled",
            "sandbox.enabled = false: apps run as plain processes of serve");
        return Ok(Arc::new(PlainSpawner));
    }
    let helper = std::env::current_exe().context("cannot find the spinforge binary")?;
    let mut config = SandboxConfig::new(data_dir, helper);
    config.allow_degraded = settings.allow_degraded;
    let defaults = [
        (settings.memory_mb, &mut config.memory_mb),
        (settings.max_processes, &mut config.max_processes),
        (settings.cpu_percent, &mut config.cpu_percent),
        (settings.open_files, &mut config.open_files),
        (settings.tmp_mb, &mut config.tmp_mb),
        (settings.data_mb, &mut config.data_mb),
        (settings.uid_base, &mut config.uid_base),
    ];
    for (value, slot) in defaults {
        if let Some(value) = value {
            *slot = value;
        }
    }
    config.pretend_missing = settings.pretend_missing.clone();
    if let Some(weight) = settings.io_weight {
        config.io_weight = weight;
    }
    let spawner = SandboxSpawner::new(config).context("cannot prepare the spinlet sandbox")?;
    tracing::info!(isolation = %spawner.describe(), "spinlet sandbox ready");
    Ok(Arc::new(spawner))
}
