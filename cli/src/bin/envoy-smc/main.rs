//! `envoy-smc`: node readiness, live SMC status with fallback reasons, path checks, config
//! rendering. Every command takes `--json`; exit codes are for scripts (see `ExitStatus`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod agent_support;
mod check;
mod config_cmd;
mod doctor;
mod exporter;
mod held;
mod render;
mod status;
mod ueid;

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
    /// `check`: the path drops SYNs carrying TCP option 254 (black hole), or the SMC connect
    /// failed while a plain TCP connect works.
    pub const PATH_BROKEN: u8 = 4;
    /// `check`: not even a plain TCP connect gets through.
    pub const UNREACHABLE: u8 = 5;
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
    /// Node readiness for SMC-R: kernel, modules, RDMA devices, UEID, sysctls; what to fix.
    Doctor(doctor::Args),
    /// Live SMC connections with mode, fallback reason and process; kernel counters.
    Status(status::Args),
    /// Serve Prometheus metrics about every network namespace of the node on /metrics.
    Exporter(exporter::Args),
    /// Connect once over SMC to HOST:PORT and report SMC-R / SMC-D / fallback / black hole.
    Check(check::Args),
    /// List, add or remove the UEIDs that SMC-Rv2 needs.
    Ueid(ueid::Args),
    /// Validate an envoy-smc configuration file (YAML/JSON) and print it with its defaults.
    Config(config_cmd::Args),
    /// Write the Istio EnvoyFilters, pod annotations and Envoy bootstrap fragments for SMC.
    Render(render::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Doctor(args) => doctor::run(args),
        Command::Status(args) => status::run(args),
        Command::Exporter(args) => exporter::run(args),
        Command::Check(args) => check::run(args),
        Command::Ueid(args) => ueid::run(args),
        Command::Config(args) => config_cmd::run(args),
        Command::Render(args) => render::run(args),
    };
    ExitCode::from(code)
}
