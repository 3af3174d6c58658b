//! `envoy-smc ueid add|list|remove`: the User Defined EIDs of this host. The kernel proposes
//! SMC-Rv2 (the only version RoCE v2 devices such as eRDMA and Soft-RoCE carry) only when a UEID
//! (or a SEID) is set, and both ends must share one. Adding and removing need CAP_NET_ADMIN.
//!
//! Exit codes: 0 done (also: `add` of a UEID that is already there, `remove` of one that is not —
//! the end state is what was asked); 2 invalid UEID; 3 no SMC_GEN_NETLINK, no permission, or the
//! kernel's table is full.

use envoy_smc_cli::diag::genl::ueid_entry;
use envoy_smc_cli::diag::{DiagError, SmcGenl};
use serde_json::json;

use crate::exit;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Add a UEID (1-32 characters: letters, digits, '.', '-'; upper-cased).
    Add { ueid: String },
    /// List the UEIDs.
    List,
    /// Remove a UEID, or every UEID with --all.
    Remove {
        #[arg(required_unless_present = "all")]
        ueid: Option<String>,
        #[arg(long, conflicts_with = "ueid")]
        all: bool,
    },
}

fn fail(json: bool, e: &DiagError) -> u8 {
    if json {
        println!("{}", json!({"ok": false, "error": e.to_string()}));
    } else {
        eprintln!("envoy-smc ueid: {e}");
    }
    match e {
        DiagError::Invalid(_) => exit::USAGE,
        _ => exit::UNAVAILABLE,
    }
}

pub fn run(args: Args) -> u8 {
    // Check the argument before touching the kernel, so a typo is a usage error everywhere.
    let arg = match &args.cmd {
        Cmd::Add { ueid }
        | Cmd::Remove {
            ueid: Some(ueid), ..
        } => Some(ueid.clone()),
        _ => None,
    };
    if let Some(u) = &arg {
        if let Err(e) = ueid_entry(u) {
            return fail(
                args.json,
                &DiagError::Invalid(format!("invalid UEID {u:?}: {e}")),
            );
        }
    }
    let normalized = arg.map(|u| u.trim().to_ascii_uppercase());
    let mut g = match SmcGenl::open() {
        Ok(g) => g,
        Err(e) => return fail(args.json, &e),
    };
    let (result, note) = match &args.cmd {
        Cmd::List => match g.ueids() {
            Ok(list) => {
                if args.json {
                    println!("{}", json!({"ok": true, "ueids": list}));
                } else if list.is_empty() {
                    println!("no UEIDs (SMC-Rv2 will not be proposed)");
                } else {
                    for u in &list {
                        println!("{u}");
                    }
                }
                return exit::OK;
            }
            Err(e) => return fail(args.json, &e),
        },
        Cmd::Add { .. } => {
            let u = normalized.clone().unwrap_or_default();
            match g.add_ueid(&u) {
                Ok(()) => (Ok(()), format!("added UEID {u}")),
                Err(e) if e.errno() == Some(libc::EEXIST) => {
                    (Ok(()), format!("UEID {u} is already set"))
                }
                Err(e) if e.errno() == Some(libc::ERANGE) => (
                    Err(DiagError::Invalid(format!(
                        "the kernel already holds {} UEIDs, its maximum: remove one first",
                        envoy_smc_cli::diag::genl::SMC_MAX_UEID
                    ))),
                    String::new(),
                ),
                Err(e) => (Err(e), String::new()),
            }
        }
        Cmd::Remove { all: true, .. } => match g.flush_ueids() {
            Ok(()) => (Ok(()), "removed every UEID".to_string()),
            Err(e) => (Err(e), String::new()),
        },
        Cmd::Remove { .. } => {
            let u = normalized.clone().unwrap_or_default();
            match g.remove_ueid(&u) {
                Ok(()) => (Ok(()), format!("removed UEID {u}")),
                Err(e) if e.errno() == Some(libc::ENOENT) => {
                    (Ok(()), format!("UEID {u} was not set"))
                }
                Err(e) => (Err(e), String::new()),
            }
        }
    };
    match result {
        Ok(()) => {
            let list = g.ueids().unwrap_or_default();
            if args.json {
                println!("{}", json!({"ok": true, "message": note, "ueids": list}));
            } else {
                println!("{note}");
            }
            exit::OK
        }
        // A full table is the kernel's state, not bad input: report it as "could not".
        Err(DiagError::Invalid(m)) => fail(
            args.json,
            &DiagError::Unavailable {
                what: "ADD_UEID",
                why: m,
            },
        ),
        Err(e) => fail(args.json, &e),
    }
}
