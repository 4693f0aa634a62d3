//! Restart intensity: how often a supervisor may restart a child before it gives up, the
//! `max N restarts in T` rule of Erlang/OTP supervisors.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RestartIntensity {
    max_restarts: usize,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartIntensity {
    pub fn new(max_restarts: usize, window: Duration) -> Self {
        RestartIntensity {
            max_restarts,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; `false` when it is one too many for the window, in which
    /// case the supervisor must stop restarting and escalate.
    pub fn allow(&mut self, now: Instant) -> bool {
        while let Some(&oldest) = self.recent.front() {
            if now.duration_since(oldest) > self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= self.max_restarts {
            return false;
        }
        self.recent.push_back(now);
        true
    }

    pub fn describe(&self) -> String {
        format!(
            "{} restarts in {}s",
            self.max_restarts,
            self.window.as_secs()
        )
    }
}

impl Default for RestartIntensity {
    fn default() -> Self {
        RestartIntensity::new(5, Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_max_restarts_then_refuses_until_the_window_passes() {
        let mut r = RestartIntensity::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(r.allow(t0));
        assert!(r.allow(t0 + Duration::from_secs(1)));
        assert!(r.allow(t0 + Duration::from_secs(2)));
        assert!(!r.allow(t0 + Duration::from_secs(3)));
        // The first restart leaves the window after 10 s: room for one more.
        assert!(r.allow(t0 + Duration::from_secs(11)));
        assert!(!r.allow(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn zero_means_never_restart() {
        let mut r = RestartIntensity::new(0, Duration::from_secs(10));
        assert!(!r.allow(Instant::now()));
    }
}
