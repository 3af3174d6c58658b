//! `envoy-smc`: node readiness, live SMC status with fallback reasons, path checks, config
//! rendering. Every command takes `--json`; exit codes are for scripts (see `ExitStatus`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config_cmd;
mod render;

/// Exit codes shared by every subcommand.
#[allow(dead_code)]
pub mod exit {
    /// Success / ready / SMC negotiated.
    pub const OK: u8 = 0;
    /// The command ran but the answer is "no" (not ready, fallback, black hole).
    pub const NEGATIVE: u8 = 1;
    /// Bad usage or input (unreadable config, bad address).
    pub const USAGE: u8 = 2;
    /// The command could not run (no netlink, no permission, kernel without SMC where required).
    pub const UNAVAILABLE: u8 = 3;
}

#[derive(Parser)]
#[command(
    name = "envoy-smc",
    version,
    about = "SMC-R for Envoy/Istio sidecars: readiness, status, checks, config"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate an envoy-smc configuration file (YAML/JSON) and print it with its defaults.
    Config(config_cmd::Args),
    /// Write the Istio EnvoyFilters, pod annotations and Envoy bootstrap fragments for SMC.
    Render(render::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Config(args) => config_cmd::run(args),
        Command::Render(args) => render::run(args),
    };
    ExitCode::from(code)
}
