//! AttachActor: one per interface. Owns that interface's links (pinned, so that they outlive
//! the actor and the daemon; releasing one detaches the program) and checks that what it
//! holds is still there.

use std::collections::BTreeMap;
use std::path::PathBuf;

use aya::programs::links::FdLink;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::info;

use crate::sys;

/// An attachment the daemon holds: a bpf_link pinned in bpffs. Dropping the handle (a crash,
/// a restart) leaves the program attached, because the pin holds the link; `release`
/// removes the pin and drops the handle, which detaches.
pub struct HeldLink {
    pub fd: FdLink,
    pub pin: PathBuf,
}

impl HeldLink {
    pub fn release(self) {
        if let Err(e) = std::fs::remove_file(&self.pin) {
            tracing::warn!(pin = %self.pin.display(), error = %e, "removing a link pin");
        }
        drop(self.fd);
    }
}

pub enum AttachMsg {
    Adopt {
        program_id: String,
        link: HeldLink,
        reply: RpcReplyPort<()>,
    },
    /// Drops the program's link; replies whether there was one.
    Release {
        program_id: String,
        reply: RpcReplyPort<bool>,
    },
    /// `Err(why)` when the interface or the attachment is gone.
    Verify {
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// Is every held link still attached, is the interface up? Sent to itself every
    /// `CHECK_EVERY`, and by the supervisor when netlink announces a link change.
    Check,
    /// Fault injection for the chaos harness and the supervision tests: panics in `handle`.
    Crash,
}

/// How often an AttachActor checks that its links are still attached.
pub const CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

pub struct AttachArgs {
    pub interface: String,
    /// Told when a link is found detached behind the daemon's back.
    pub supervisor: ActorRef<crate::interfaces::InterfacesMsg>,
}

pub struct AttachState {
    interface: String,
    links: BTreeMap<String, HeldLink>,
    supervisor: ActorRef<crate::interfaces::InterfacesMsg>,
    /// Why the interface passes no traffic, as last told to the supervisor.
    down: Option<String>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

pub struct AttachActor;

impl Actor for AttachActor {
    type Msg = AttachMsg;
    type State = AttachState;
    type Arguments = AttachArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: AttachArgs,
    ) -> Result<AttachState, ActorProcessingErr> {
        Ok(AttachState {
            interface: args.interface,
            links: BTreeMap::new(),
            supervisor: args.supervisor,
            down: None,
            ticker: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut AttachState,
    ) -> Result<(), ActorProcessingErr> {
        state.ticker = Some(myself.send_interval(CHECK_EVERY, || AttachMsg::Check));
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut AttachState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: AttachMsg,
        state: &mut AttachState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AttachMsg::Adopt {
                program_id,
                link,
                reply,
            } => {
                state.links.insert(program_id, link);
                let _ = reply.send(());
            }
            AttachMsg::Release { program_id, reply } => {
                let held = state.links.remove(&program_id);
                let had = held.is_some();
                if let Some(link) = held {
                    link.release();
                    info!(interface = %state.interface, program_id = %program_id, "detached");
                }
                let _ = reply.send(had);
            }
            AttachMsg::Verify { reply } => {
                let result = if sys::interface_exists(&state.interface) {
                    Ok(())
                } else {
                    Err(format!(
                        "interface {} no longer exists; its programs were detached by the kernel",
                        state.interface
                    ))
                };
                let _ = reply.send(result);
            }
            AttachMsg::Check => {
                let down = sys::link_down_reason(&state.interface);
                if down != state.down {
                    state.down = down.clone();
                    let _ = state
                        .supervisor
                        .cast(crate::interfaces::InterfacesMsg::LinkState {
                            interface: state.interface.clone(),
                            down,
                        });
                }
                let lost: Vec<(String, String)> = state
                    .links
                    .iter()
                    .filter_map(|(program_id, link)| {
                        let why = match sys::pinned_xdp_link_ifindex(&link.pin) {
                            Ok(0) if !sys::interface_exists(&state.interface) => {
                                format!("interface {} was deleted", state.interface)
                            }
                            Ok(0) => "the link was detached behind the daemon's back".to_string(),
                            Ok(_) => return None,
                            Err(e) => format!("its pin {} is unreadable: {e}", link.pin.display()),
                        };
                        Some((program_id.clone(), why))
                    })
                    .collect();
                for (program_id, why) in lost {
                    if let Some(link) = state.links.remove(&program_id) {
                        // A dead link: drop it and its pin; the supervisor attaches anew.
                        link.release();
                    }
                    tracing::warn!(interface = %state.interface, %program_id, %why, "attachment lost");
                    let _ = state
                        .supervisor
                        .cast(crate::interfaces::InterfacesMsg::LinkLost {
                            interface: state.interface.clone(),
                            program_id,
                            why,
                        });
                }
            }
            AttachMsg::Crash => panic!("fault injected into AttachActor[{}]", state.interface),
        }
        Ok(())
    }
}
