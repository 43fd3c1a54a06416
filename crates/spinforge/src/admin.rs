//! `spinforge admin`: host-side commands that open the data directory
//! directly. Whoever can run them already controls the host's files.

use crate::cli::AdminCommand;
use anyhow::{bail, Context};
use identity::{Identity, IdentityConfig, UserSpec};
use std::sync::Arc;
use store::{Role, SqliteStore, Store};

pub async fn run(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Create {
            data_dir,
            email,
            password_stdin,
        } => {
            let password = read_password(password_stdin, true)?;
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("cannot create {}", data_dir.display()))?;
            let store = Arc::new(SqliteStore::open(&data_dir).await?);
            // Users only: signing keys stay with serve and its master key.
            let identity =
                Identity::without_signing(store.clone(), IdentityConfig::default()).await?;
            let spec = UserSpec {
                email,
                password,
                role: Role::Admin,
                customer: None,
                display_name: None,
            };
            let user = identity.create_user(spec).await?;
            store.close().await;
            println!("created admin {} (id {})", user.email, user.id);
            Ok(())
        }
        AdminCommand::Check { data_dir } => {
            if !data_dir.join(store::DB_FILE).exists() {
                bail!("{} holds no SpinForge store", data_dir.display());
            }
            let store = SqliteStore::open(&data_dir).await?;
            let result = store.integrity_check().await;
            store.close().await;
            match result {
                Ok(()) => {
                    println!("ok");
                    Ok(())
                }
                Err(problem) => bail!("store integrity check failed: {problem}"),
            }
        }
    }
}

/// Reads a password from stdin (first line) or prompts on the terminal,
/// asking twice when `confirm` is set.
pub fn read_password(from_stdin: bool, confirm: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        let password = line.trim_end_matches(['\r', '\n']).to_owned();
        if password.is_empty() {
            bail!("no password on standard input");
        }
        return Ok(password);
    }
    let password = rpassword::prompt_password("Password: ")
        .context("cannot prompt for a password (use --password-stdin)")?;
    if confirm {
        let again = rpassword::prompt_password("Password again: ")?;
        if again != password {
            bail!("the passwords do not match");
        }
    }
    Ok(password)
}
