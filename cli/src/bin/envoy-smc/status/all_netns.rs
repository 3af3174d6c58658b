//! `envoy-smc status --all-netns`: the status of every network namespace on the node, one
//! section per namespace labelled with its inode, a process in it and its pod (hostname,
//! Kubernetes pod cgroup). Namespaces that cannot be entered are listed with the reason. With
//! `--prometheus` the page is the exporter's (`envoy-smc exporter`), scraped once.

use std::fmt::Write as _;
use std::path::Path;

use envoy_smc_cli::diag::netns::{self, Netns, PodLabels};
use envoy_smc_cli::diag::nsdump::{self, NsDump};
use envoy_smc_cli::diag::procs::{self, SocketOwners};
use envoy_smc_core::adaptive::publish::{state_dir, ProcessTable};
use serde::Serialize;

use super::{rows, table, Args, Report};
use crate::exit;

/// One namespace's section.
#[derive(Serialize)]
struct Section {
    netns: u64,
    #[serde(flatten)]
    pod: PodLabels,
    processes: usize,
    /// Why the namespace could not be entered, or why smc_diag did not answer there.
    error: Option<String>,
    #[serde(flatten)]
    report: Option<Report>,
}

fn report(
    args: &Args,
    dump: NsDump,
    owners: &SocketOwners,
    tables: Vec<ProcessTable>,
) -> Result<Report, String> {
    let socks = dump.sockets?;
    let (conns, summary) = rows(args, socks, owners);
    Ok(Report {
        available: true,
        error: None,
        connections: conns,
        summary,
        kernel_fallbacks: dump.kernel_fallbacks,
        kernel_stats: dump.kernel_stats,
        kernel_counters_error: dump.kernel_counters_error,
        black_holes: tables,
    })
}

fn header(ns: &Netns, pod: &PodLabels) -> String {
    let mut h = format!(
        "net:[{}]  {} process(es), e.g. {}/{}",
        ns.inode,
        ns.pids.len(),
        pod.comm,
        pod.pid
    );
    if let Some(host) = &pod.hostname {
        let _ = write!(h, "  hostname {host}");
    }
    if let Some(uid) = &pod.pod_uid {
        let _ = write!(h, "  pod uid {uid}");
    }
    if let Some(cg) = &pod.kube_cgroup {
        let _ = write!(h, "  cgroup {cg}");
    }
    h
}

pub fn run(args: &Args) -> u8 {
    if args.prometheus {
        return crate::exporter::print_once(args.state_dir.clone());
    }
    let proc_root = Path::new("/proc");
    let (nss, unreadable) = netns::list(proc_root);
    let owners = procs::socket_owners();
    let dir = args.state_dir.clone().unwrap_or_else(state_dir);
    let mut tables = netns::black_hole_tables(proc_root, &nss, &dir);
    let mut sections = Vec::new();
    let mut failed = 0;
    let dumps = netns::enter_each(proc_root, &nss, |_| nsdump::dump_here(true));
    for (ns, entered) in nss.iter().zip(dumps) {
        let t = tables.remove(&ns.inode).unwrap_or_default();
        let host = entered.as_ref().ok().and_then(|(_, h)| h.clone());
        let pod = netns::pod_labels(proc_root, ns, host);
        let (error, report) = match entered {
            Ok((dump, _)) => match report(args, dump, &owners, t) {
                Ok(r) => (None, Some(r)),
                Err(e) => (Some(e), None),
            },
            Err(e) => {
                failed += 1;
                (Some(format!("not entered: {e}")), None)
            }
        };
        // With a filter (--pid, --comm, --mode), namespaces with nothing to show stay quiet.
        let filtered = args.pid.is_some() || args.comm.is_some() || args.mode.is_some();
        if filtered && error.is_none() && report.as_ref().is_some_and(|r| r.connections.is_empty())
        {
            continue;
        }
        sections.push(Section {
            netns: ns.inode,
            pod,
            processes: ns.pids.len(),
            error,
            report,
        });
    }
    if args.json {
        #[derive(Serialize)]
        struct All {
            namespaces: Vec<Section>,
            not_entered: usize,
            processes_unreadable: usize,
        }
        let all = All {
            namespaces: sections,
            not_entered: failed,
            processes_unreadable: unreadable,
        };
        println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
    } else {
        let mut o = String::new();
        for s in &sections {
            let ns = Netns {
                inode: s.netns,
                pids: vec![0; s.processes],
            };
            let _ = writeln!(o, "=== {}", header(&ns, &s.pod));
            if let Some(e) = &s.error {
                let _ = writeln!(o, "    {e}");
            }
            if let Some(r) = &s.report {
                o.push_str(&table(r));
            }
            o.push('\n');
        }
        let _ = writeln!(
            o,
            "{} network namespace(s){}{}",
            nss.len(),
            if failed > 0 {
                format!(", {failed} could not be entered (see above)")
            } else {
                String::new()
            },
            if unreadable > 0 {
                format!("; {unreadable} process(es) whose namespace could not be read")
            } else {
                String::new()
            }
        );
        print!("{o}");
    }
    if failed > 0 && failed == nss.len() {
        exit::UNAVAILABLE
    } else {
        exit::OK
    }
}
