//! FallbackActor: the mode policy. A driver-mode attach the interface refuses degrades at
//! attach, in the InterfaceSupervisor (`enable_dynamic_fallback`). This actor degrades, every
//! `interval`, a driver-mode attachment whose interface sees more XDP_ABORTED returns a second
//! than `abort_rate` (counted by `xdp_exceptions` on the tracepoint `xdp/xdp_exception`), and
//! looks for attachments running in another mode than requested: when each one's turn comes,
//! it probes the requested mode again; when the driver takes it, the attachment is upgraded
//! back.
//!
//! Hysteresis: a refused probe doubles the wait before the next (up to `MAX_BACKOFF` times
//! the interval); an attachment that degrades again soon after an upgrade (within
//! `FLAP_WINDOW` intervals) keeps the wait it had reached instead of starting over, so a
//! flapping driver is not swapped back and forth. A probe swaps links (the kernel does not
//! let native and generic XDP run together), so the interface has no program for the
//! moment between the two: probes are rare by design.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use crate::api::AttachMode;
use crate::interfaces::InterfacesMsg;
use crate::rpc::ask;

/// The longest wait between probes, in intervals.
pub const MAX_BACKOFF: u32 = 32;
/// A degrade this soon (in intervals) after an upgrade counts as flapping.
pub const FLAP_WINDOW: u32 = 20;

pub struct FallbackArgs {
    /// Registry names of the InterfaceSupervisor and the LoaderActor, looked up at every tick.
    pub interfaces: String,
    pub loader: String,
    pub interval: Duration,
    /// XDP_ABORTED returns a second on an interface above which its driver-mode attachment
    /// degrades; 0 turns the watch off.
    pub abort_rate: f64,
}

pub enum FallbackMsg {
    Tick,
    /// Probe every degraded attachment now, whatever its backoff (the MAPE-K loop's
    /// `probe_upgrade`); answers what each probe found.
    ProbeNow {
        reply: RpcReplyPort<Vec<String>>,
    },
    /// Mode changes and probes so far: (interface, "upgraded" | "probe_refused" |
    /// "degraded_aborting") → count.
    Events {
        reply: RpcReplyPort<BTreeMap<(String, String), u64>>,
    },
}

/// What the actor knows of one degraded attachment (program id, interface).
struct Degraded {
    /// Probes refused in a row; the wait before the next is `interval × 2^refused`.
    refused: u32,
    next_probe: Instant,
}

pub struct FallbackState {
    args: FallbackArgs,
    degraded: BTreeMap<(String, String), Degraded>,
    /// When each attachment was last upgraded, and the backoff it had reached.
    upgraded: BTreeMap<(String, String), (Instant, u32)>,
    probes: BTreeMap<(String, String), u64>,
    /// XDP_ABORTED counts per ifindex at the previous tick, and when.
    aborts: Option<(Instant, BTreeMap<u32, u64>)>,
}

pub struct FallbackActor;

/// The wait before the next probe after `refused` refusals in a row.
pub fn backoff(interval: Duration, refused: u32) -> Duration {
    interval * 2u32.saturating_pow(refused).min(MAX_BACKOFF)
}

impl Actor for FallbackActor {
    type Msg = FallbackMsg;
    type State = FallbackState;
    type Arguments = FallbackArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<FallbackMsg>,
        args: FallbackArgs,
    ) -> Result<FallbackState, ActorProcessingErr> {
        // Probes wait their backoff; the abort watch looks every second at the most.
        myself.send_interval(args.interval.min(Duration::from_secs(1)), || {
            FallbackMsg::Tick
        });
        Ok(FallbackState {
            args,
            degraded: BTreeMap::new(),
            upgraded: BTreeMap::new(),
            probes: BTreeMap::new(),
            aborts: None,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<FallbackMsg>,
        msg: FallbackMsg,
        state: &mut FallbackState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FallbackMsg::Tick => {
                state.tick(false).await;
            }
            FallbackMsg::ProbeNow { reply } => {
                let _ = reply.send(state.tick(true).await);
            }
            FallbackMsg::Events { reply } => {
                let _ = reply.send(state.probes.clone());
            }
        }
        Ok(())
    }
}

impl FallbackState {
    /// Degrades driver-mode attachments on interfaces aborting faster than `abort_rate`;
    /// `true` when it degraded one.
    async fn watch_aborts(
        &mut self,
        interfaces: &ActorRef<InterfacesMsg>,
        attachments: &[crate::api::Attachment],
    ) -> bool {
        let mut degraded = false;
        let Some(loader) = ActorRef::<crate::loader::LoaderMsg>::where_is(self.args.loader.clone())
        else {
            return degraded;
        };
        let Ok(now_counts) = ask(&loader, "LoaderActor", |reply| {
            crate::loader::LoaderMsg::XdpAborts { reply }
        })
        .await
        else {
            return degraded;
        };
        let now = Instant::now();
        let Some((then, before)) = self.aborts.replace((now, now_counts.clone())) else {
            return degraded;
        };
        let secs = now.duration_since(then).as_secs_f64();
        if secs <= 0.0 {
            return degraded;
        }
        for (ifindex, count) in now_counts {
            let rate =
                count.saturating_sub(before.get(&ifindex).copied().unwrap_or(0)) as f64 / secs;
            if rate <= self.args.abort_rate {
                continue;
            }
            let interface = crate::sys::interface_name(ifindex);
            for a in attachments.iter().filter(|a| {
                a.interface == interface
                    && a.mode == AttachMode::Drv
                    && a.requested_mode == AttachMode::Drv
            }) {
                let why = format!(
                    "{rate:.0} XDP_ABORTED a second on {interface} in driver mode (over fallback_abort_rate {})",
                    self.args.abort_rate
                );
                match ask(interfaces, "InterfaceSupervisor", |reply| {
                    InterfacesMsg::Degrade {
                        program_id: a.program_id.clone(),
                        interface: interface.clone(),
                        why: why.clone(),
                        reply,
                    }
                })
                .await
                {
                    Ok(Ok(())) => {
                        degraded = true;
                        *self
                            .probes
                            .entry((interface.clone(), "degraded_aborting".into()))
                            .or_default() += 1;
                    }
                    Ok(Err(e)) | Err(e) => {
                        warn!(program_id = %a.program_id, %interface, error = %e, "degrading an aborting attachment failed")
                    }
                }
            }
        }
        degraded
    }

    /// Watches aborts and probes the degraded attachments whose turn has come (all of them
    /// with `now`); returns what the probes found.
    async fn tick(&mut self, force: bool) -> Vec<String> {
        let mut found = Vec::new();
        let Some(interfaces) = ActorRef::<InterfacesMsg>::where_is(self.args.interfaces.clone())
        else {
            return found;
        };
        let list = || {
            ask(&interfaces, "InterfaceSupervisor", |reply| {
                InterfacesMsg::List { reply }
            })
        };
        let Ok(mut attachments) = list().await else {
            return found;
        };
        let interval = self.args.interval;
        let now = Instant::now();
        // Degrading changes modes: then the list is read again.
        if self.args.abort_rate > 0.0 && self.watch_aborts(&interfaces, &attachments).await {
            let Ok(now_attached) = list().await else {
                return found;
            };
            attachments = now_attached;
        }
        let degraded: Vec<(String, String, AttachMode)> = attachments
            .iter()
            .filter(|a| a.mode != a.requested_mode)
            .map(|a| (a.program_id.clone(), a.interface.clone(), a.requested_mode))
            .collect();
        self.degraded
            .retain(|key, _| degraded.iter().any(|(p, i, _)| (p, i) == (&key.0, &key.1)));
        for (program_id, interface, requested) in degraded {
            let key = (program_id.clone(), interface.clone());
            let upgraded = self.upgraded.get(&key).copied();
            let entry = self.degraded.entry(key.clone()).or_insert_with(|| {
                // Degraded again soon after an upgrade: keep the backoff reached.
                let refused = match upgraded {
                    Some((at, refused)) if now.duration_since(at) < interval * FLAP_WINDOW => {
                        refused + 1
                    }
                    _ => 0,
                };
                Degraded {
                    refused,
                    next_probe: now + backoff(interval, refused),
                }
            });
            if now < entry.next_probe && !force {
                continue;
            }
            let probe = ask(&interfaces, "InterfaceSupervisor", |reply| {
                InterfacesMsg::ProbeUpgrade {
                    program_id: program_id.clone(),
                    interface: interface.clone(),
                    reply,
                }
            })
            .await;
            match probe {
                Ok(Ok(Ok(mode))) => {
                    info!(%program_id, %interface, %mode, probes_refused = entry.refused, "upgrade probe: the requested mode works again");
                    found.push(format!(
                        "{program_id} on {interface}: upgraded back to {mode} mode"
                    ));
                    self.upgraded.insert(key.clone(), (now, entry.refused));
                    self.degraded.remove(&key);
                    *self
                        .probes
                        .entry((interface, "upgraded".into()))
                        .or_default() += 1;
                }
                Ok(Ok(Err(why))) => {
                    entry.refused += 1;
                    let wait = backoff(interval, entry.refused);
                    entry.next_probe = Instant::now() + wait;
                    warn!(%program_id, %interface, %requested, %why, next_probe_in = ?wait, "upgrade probe: the requested mode is still refused; staying in skb mode");
                    found.push(format!(
                        "{program_id} on {interface}: {requested} mode still refused ({why})"
                    ));
                    *self
                        .probes
                        .entry((interface, "probe_refused".into()))
                        .or_default() += 1;
                }
                Ok(Err(e)) | Err(e) => {
                    warn!(%program_id, %interface, error = %e, "upgrade probe failed");
                    entry.next_probe = Instant::now() + backoff(interval, entry.refused);
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_and_is_capped() {
        let i = Duration::from_secs(1);
        let waits: Vec<u64> = (0..8).map(|n| backoff(i, n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 32, 32]);
        assert_eq!(backoff(i, 40).as_secs(), 32, "no overflow");
    }
}
