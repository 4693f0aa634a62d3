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
    /// Fault injection for the chaos harness and the supervision tests: panics in `handle`.
    Crash,
}

pub struct AttachState {
    interface: String,
    links: BTreeMap<String, HeldLink>,
}

pub struct AttachActor;

impl Actor for AttachActor {
    type Msg = AttachMsg;
    type State = AttachState;
    /// The interface name.
    type Arguments = String;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        interface: String,
    ) -> Result<AttachState, ActorProcessingErr> {
        Ok(AttachState {
            interface,
            links: BTreeMap::new(),
        })
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
            AttachMsg::Crash => panic!("fault injected into AttachActor[{}]", state.interface),
        }
        Ok(())
    }
}
