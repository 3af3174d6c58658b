//! Black holes, watched from the node (nothing of ours runs in the proxy): a path that drops SYNs
//! carrying SMC's TCP option 254 leaves SMC connects in SYN_SENT with their SYN retried.
//!
//! Each round, in every network namespace where the agent's smc_hs_ctrl is selected, the SMC
//! sockets still connecting (smc_diag: INIT, not fallen back) are matched by their ports with
//! their internal TCP sockets (inet_diag): SYN_SENT with a retried SYN is the suspicion of the
//! adaptive fallback (`envoy_smc_core::adaptive::detect`). The proof is the same too: a plain TCP
//! connect to that destination, from the same namespace, succeeds. A proven destination is held
//! for the adaptive fallback's hold-down, growing with repeat offences
//! (`envoy_smc_core::adaptive::Breaker`): the BPF program stops offering SMC to it, its stalled
//! connects' next SYN retry goes out without the option (and gets through as TCP), new connects
//! are TCP from their first SYN. When the hold-down ends SMC is offered again; an SMC connection
//! that gets through to it clears its record, another stall holds it longer.
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use envoy_smc_cli::diag::inet_diag;
use envoy_smc_cli::diag::smc_diag::{self, Mode, SmcState};
use envoy_smc_core::adaptive::detect::{ProbeOutcome, TcpProbe, TCP_SYN_SENT};
use envoy_smc_core::adaptive::Breaker;
use envoy_smc_core::config::AdaptiveSettings;

use crate::hsctrl::{in_netns, HsCtrl};

/// At most this many plain TCP probes in flight.
const MAX_PROBES: usize = 64;

struct Probe {
    dest: SocketAddr,
    probe: TcpProbe,
    started: Instant,
}

/// A destination held on TCP, for the state file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Held {
    pub destination: String,
    /// Seconds the hold-down lasts in all.
    pub hold_down_s: f64,
    /// Seconds left.
    pub remaining_s: f64,
}

pub struct Watcher {
    settings: AdaptiveSettings,
    breaker: Breaker,
    probes: Vec<Probe>,
    /// Held destinations -> end of the hold-down (CLOCK_MONOTONIC) and its length.
    held: BTreeMap<SocketAddr, (Duration, Duration)>,
    /// Retried SYNs that prove nothing yet: the first retry comes at the 1 s initial RTO, the
    /// n-th after 2^n - 1 s; `detect_after` rounds up to the next retry.
    min_retransmits: u8,
}

/// CLOCK_MONOTONIC, the clock of the BPF program's `bpf_ktime_get_ns()`.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The fewest SYN retries that take at least `detect_after_ms` (at least one).
pub fn min_retransmits(detect_after_ms: u32) -> u8 {
    let mut r = 1u8;
    while r < 16 && ((1u64 << r) - 1) * 1000 < u64::from(detect_after_ms) {
        r += 1;
    }
    r
}

/// What one namespace shows: destinations with a stalled SMC connect, and destinations an SMC
/// connection reached.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub stalled: BTreeSet<SocketAddr>,
    pub through: BTreeSet<SocketAddr>,
}

/// Reads smc_diag and inet_diag of the namespace the calling thread is in.
pub fn look(min_retransmits: u8) -> Result<Seen, String> {
    let mut smc = smc_diag::dump_brief().map_err(|e| e.to_string())?;
    let tcp = inet_diag::tcp_dump().map_err(|e| e.to_string())?;
    Ok(classify(&mut smc, &tcp, min_retransmits))
}

/// [`look`]'s verdicts from the two dumps.
pub fn classify(
    smc: &mut [smc_diag::SmcSocket],
    tcp: &[inet_diag::TcpEndpoint],
    min_retransmits: u8,
) -> Seen {
    inet_diag::fill_addresses_from(smc, tcp);
    let mut seen = Seen::default();
    for s in smc.iter() {
        if s.state == SmcState::INIT && s.mode != Mode::Fallback {
            // Its internal TCP socket: same ports, same family.
            let stalled = tcp.iter().any(|t| {
                t.state == TCP_SYN_SENT
                    && t.retransmits >= min_retransmits
                    && t.local.port() == s.local.port()
                    && t.peer.port() == s.peer.port()
                    && (s.addresses_unknown() || t.peer == s.peer)
            });
            if stalled {
                if let Some(t) = tcp.iter().find(|t| {
                    t.state == TCP_SYN_SENT
                        && t.local.port() == s.local.port()
                        && t.peer.port() == s.peer.port()
                }) {
                    seen.stalled.insert(t.peer);
                }
            }
        } else if s.state == SmcState::ACTIVE
            && matches!(s.mode, Mode::SmcR | Mode::SmcD)
            && !s.addresses_unknown()
        {
            seen.through.insert(s.peer);
        }
    }
    seen
}

impl Watcher {
    pub fn new(settings: AdaptiveSettings) -> Watcher {
        Watcher {
            min_retransmits: min_retransmits(settings.detect_after_ms),
            breaker: Breaker::new(settings),
            settings,
            probes: Vec::new(),
            held: BTreeMap::new(),
        }
    }

    /// One round over the namespaces (inode -> a pid in it). Returns what happened, one line
    /// per event, for the log.
    pub fn round(
        &mut self,
        hs: &HsCtrl,
        proc: &Path,
        namespaces: &BTreeMap<u64, i32>,
    ) -> Vec<String> {
        let mut events = Vec::new();
        let now = monotonic_now();
        // Hold-downs that ended: offer SMC again (the breaker remembers the strikes).
        let ended: Vec<SocketAddr> = self
            .held
            .iter()
            .filter(|(_, (until, _))| *until <= now)
            .map(|(d, _)| *d)
            .collect();
        for dest in ended {
            self.held.remove(&dest);
            match hs.release(dest) {
                Ok(()) => events.push(format!("hold-down over: offering SMC to {dest} again")),
                Err(e) => events.push(e),
            }
        }
        for (&ns, &pid) in namespaces {
            let min = self.min_retransmits;
            let busy: BTreeSet<SocketAddr> = self
                .probes
                .iter()
                .map(|p| p.dest)
                .chain(self.held.keys().copied())
                .collect();
            let room = MAX_PROBES.saturating_sub(self.probes.len());
            // Looked at, and the probes started, from inside the namespace: the probe must take
            // the pod's path.
            let r = in_netns(proc, ns, pid, move || {
                let seen = look(min)?;
                let probes: Vec<(SocketAddr, Result<TcpProbe, ProbeOutcome>)> = seen
                    .stalled
                    .iter()
                    .filter(|d| !busy.contains(d))
                    .take(room)
                    .map(|&d| (d, TcpProbe::start(d)))
                    .collect();
                Ok((seen, probes))
            });
            let (seen, started) = match r {
                Ok(v) => v,
                Err(e) => {
                    events.push(format!("net:[{ns}]: {e}"));
                    continue;
                }
            };
            for (dest, p) in started {
                events.push(format!(
                    "stalled SMC connect to {dest} (SYN_SENT, SYN retried): probing plain TCP"
                ));
                match p {
                    Ok(probe) => self.probes.push(Probe {
                        dest,
                        probe,
                        started: Instant::now(),
                    }),
                    Err(ProbeOutcome::Connected) => events.push(self.prove(hs, dest)),
                    Err(ProbeOutcome::Failed) => events.push(format!(
                        "{dest}: plain TCP fails too: down, not a black hole"
                    )),
                }
            }
            for dest in &seen.through {
                if self.breaker.recovered(*dest, self.breaker.now_ms()) {
                    events.push(format!("{dest}: an SMC connection got through: recovered"));
                }
            }
        }
        // Probes that finished, and those that took too long (down, not a black hole).
        let done = {
            let refs: Vec<&TcpProbe> = self.probes.iter().map(|p| &p.probe).collect();
            TcpProbe::poll_many(&refs, Duration::ZERO)
        };
        let timeout = Duration::from_millis(u64::from(self.settings.probe_timeout_ms));
        let mut finished: BTreeMap<usize, ProbeOutcome> = done.into_iter().collect();
        for (i, p) in self.probes.iter().enumerate() {
            if !finished.contains_key(&i) && p.started.elapsed() >= timeout {
                finished.insert(i, ProbeOutcome::Failed);
            }
        }
        for (i, outcome) in finished.into_iter().rev() {
            let p = self.probes.remove(i);
            match outcome {
                ProbeOutcome::Connected => events.push(self.prove(hs, p.dest)),
                ProbeOutcome::Failed => events.push(format!(
                    "{}: plain TCP fails too: down, not a black hole",
                    p.dest
                )),
            }
        }
        events
    }

    /// `dest` is proven black-holed: hold it on TCP.
    fn prove(&mut self, hs: &HsCtrl, dest: SocketAddr) -> String {
        let hold = self.breaker.trip(dest, self.breaker.now_ms());
        let until = monotonic_now() + hold;
        match hs.hold(dest, until) {
            Ok(()) => {
                self.held.insert(dest, (until, hold));
                format!(
                    "black hole proven at {dest} (SMC SYNs unanswered, plain TCP connects): not offering SMC to it for {} s",
                    hold.as_secs_f64()
                )
            }
            Err(e) => e,
        }
    }

    /// The destinations held now.
    pub fn held(&self) -> Vec<Held> {
        let now = monotonic_now();
        self.held
            .iter()
            .map(|(d, (until, hold))| Held {
                destination: d.to_string(),
                hold_down_s: hold.as_secs_f64(),
                remaining_s: until.saturating_sub(now).as_secs_f64(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smc(state: SmcState, mode: Mode, local: &str, peer: &str) -> smc_diag::SmcSocket {
        smc_diag::SmcSocket {
            family: libc::AF_INET as u8,
            state,
            mode,
            local: local.parse().unwrap(),
            peer: peer.parse().unwrap(),
            ifindex: 0,
            cookie: 1,
            uid: 1337,
            inode: 7,
            shutdown: 0,
            fallback: None,
            conn: None,
            link: None,
            dmb: None,
        }
    }

    fn tcp(state: u8, retransmits: u8, local: &str, peer: &str) -> inet_diag::TcpEndpoint {
        inet_diag::TcpEndpoint {
            state,
            local: local.parse().unwrap(),
            peer: peer.parse().unwrap(),
            inode: 0,
            retransmits,
        }
    }

    #[test]
    fn a_connecting_smc_socket_whose_syn_was_retried_is_stalled() {
        // IPPROTO_SMC: smc_diag says zero addresses, the ports are right.
        let mut s = [smc(
            SmcState::INIT,
            Mode::SmcR,
            "0.0.0.0:40000",
            "0.0.0.0:8080",
        )];
        let t = [tcp(TCP_SYN_SENT, 1, "10.9.0.1:40000", "10.9.0.2:8080")];
        let seen = classify(&mut s, &t, 1);
        assert_eq!(
            seen.stalled,
            BTreeSet::from(["10.9.0.2:8080".parse().unwrap()])
        );
        assert!(seen.through.is_empty());
    }

    #[test]
    fn not_yet_retried_or_not_smc_is_not_stalled() {
        let mut s = [smc(
            SmcState::INIT,
            Mode::SmcR,
            "0.0.0.0:40000",
            "0.0.0.0:8080",
        )];
        let t = [tcp(TCP_SYN_SENT, 0, "10.9.0.1:40000", "10.9.0.2:8080")];
        assert_eq!(classify(&mut s, &t, 1), Seen::default());
        // detect_after asks for two retries
        let t = [tcp(TCP_SYN_SENT, 1, "10.9.0.1:40000", "10.9.0.2:8080")];
        assert_eq!(classify(&mut s, &t, 2), Seen::default());
        // a plain TCP connect in SYN_SENT (no SMC socket with its ports)
        let t = [tcp(TCP_SYN_SENT, 3, "10.9.0.1:40001", "10.9.0.2:8080")];
        assert_eq!(classify(&mut s, &t, 1), Seen::default());
        // an SMC socket that fell back is not connecting over SMC any more
        let mut f = [smc(
            SmcState::INIT,
            Mode::Fallback,
            "0.0.0.0:40000",
            "0.0.0.0:8080",
        )];
        let t = [tcp(TCP_SYN_SENT, 3, "10.9.0.1:40000", "10.9.0.2:8080")];
        assert_eq!(classify(&mut f, &t, 1), Seen::default());
    }

    #[test]
    fn an_active_smc_connection_shows_its_destination_got_through() {
        let mut s = [smc(
            SmcState::ACTIVE,
            Mode::SmcD,
            "0.0.0.0:40000",
            "0.0.0.0:8080",
        )];
        let t = [tcp(1, 0, "10.9.0.1:40000", "10.9.0.2:8080")];
        let seen = classify(&mut s, &t, 1);
        assert!(seen.stalled.is_empty());
        assert_eq!(
            seen.through,
            BTreeSet::from(["10.9.0.2:8080".parse().unwrap()])
        );
    }

    #[test]
    fn retries_needed_for_detect_after() {
        assert_eq!(min_retransmits(0), 1);
        assert_eq!(min_retransmits(1000), 1);
        assert_eq!(min_retransmits(1001), 2);
        assert_eq!(min_retransmits(3000), 2);
        assert_eq!(min_retransmits(5000), 3);
    }
}
