//! `envoy-smc config FILE`: validate a configuration and show what it means on this host.

use std::path::PathBuf;

use envoy_smc_core::policy::{Environment, Policy};

use crate::exit;

#[derive(clap::Args)]
pub struct Args {
    /// The configuration file (YAML or JSON); `-` reads standard input.
    file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> u8 {
    // The same bounds as every other loader: a regular file (or standard input) of at most
    // 1 MiB, nesting and list lengths checked before parsing (envoy_smc_core::config::limits).
    let loaded = if args.file.as_os_str() == "-" {
        envoy_smc_core::config::limits::read_config_stream(std::io::stdin().lock())
            .and_then(|text| envoy_smc_core::config::from_yaml(&text))
    } else {
        envoy_smc_core::config::from_file(&args.file)
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) if e.field.is_empty() && e.message.starts_with("cannot read") => {
            eprintln!("envoy-smc: {e}");
            return exit::USAGE;
        }
        Err(e) => {
            eprintln!(
                "envoy-smc: invalid configuration {}: {e}",
                args.file.display()
            );
            return exit::USAGE;
        }
    };
    let policy = Policy::new(&config, &Environment::of_this_host());
    let availability = match policy.smc_kind() {
        Ok(kind) => format!("SMC sockets of kind {}", kind.name()),
        Err(reason) => format!("every socket stays TCP: {}", reason.describe()),
    };
    if args.json {
        let out = serde_json::json!({
            "valid": true,
            "config": envoy_smc_core::config::to_json(config.proto()),
            "on_this_host": availability,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!("configuration is valid");
        println!("on this host: {availability}");
        println!(
            "{}",
            serde_yaml::to_string(&envoy_smc_core::config::to_json(config.proto()))
                .unwrap_or_default()
        );
    }
    exit::OK
}
