//! Request/reply between actors (and from the control socket to actors) with a timeout, and
//! failures turned into API errors that say which actor did not answer.

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};

use crate::api::{ApiError, ErrorKind};

/// How long a caller waits for an actor before it reports the actor as unresponsive.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn ask<M, T>(
    actor: &ActorRef<M>,
    what: &str,
    msg: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T, ApiError>
where
    M: ractor::Message,
    T: Send + 'static,
{
    match actor.call(msg, Some(CALL_TIMEOUT)).await {
        Ok(CallResult::Success(v)) => Ok(v),
        Ok(CallResult::Timeout) => Err(ApiError::new(
            ErrorKind::Internal,
            format!("{what} did not answer within {}s", CALL_TIMEOUT.as_secs()),
        )),
        Ok(CallResult::SenderError) => Err(ApiError::new(
            ErrorKind::Internal,
            format!("{what} stopped before answering (it is being restarted); try again"),
        )),
        Err(e) => Err(ApiError::new(
            ErrorKind::Internal,
            format!("{what} is not running ({e}); try again in a moment"),
        )),
    }
}
