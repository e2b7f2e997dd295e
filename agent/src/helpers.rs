//! Helper processes the agent runs for itself (the archive child of the export channel),
//! and their exit codes.
//!
//! The agent reaps every child on SIGCHLD (it is PID 1 in a guest and must collect
//! orphans), so `Child::wait` on a helper can lose the race and fail with ECHILD. Helpers
//! are registered here under the same lock the reaper takes, so an exit the reaper
//! collects is handed to the helper's waiter instead of being dropped.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
pub struct Helpers {
    /// pid → exit code once reaped.
    exits: Mutex<HashMap<i32, Option<i32>>>,
    reaped: Condvar,
}

impl Helpers {
    /// Spawns `cmd` as a registered helper.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<Child> {
        // Held across fork+exec: the reaper cannot look the pid up before it is known.
        let mut exits = self.exits.lock().unwrap();
        let child = cmd.spawn()?;
        exits.insert(child.id() as i32, None);
        Ok(child)
    }

    /// The reaper collected `pid`: true if it was a helper (its code is kept for `wait`).
    pub fn reaped(&self, pid: i32, code: i32) -> bool {
        let mut exits = self.exits.lock().unwrap();
        match exits.get_mut(&pid) {
            Some(slot) => {
                *slot = Some(code);
                self.reaped.notify_all();
                true
            }
            None => false,
        }
    }

    /// Waits for a helper to exit, whoever reaps it; its exit code (128+N for signal N).
    pub fn wait(&self, child: &mut Child) -> i32 {
        let pid = child.id() as i32;
        let mut exits = self.exits.lock().unwrap();
        loop {
            if let Some(Some(code)) = exits.get(&pid) {
                let code = *code;
                exits.remove(&pid);
                return code;
            }
            // Reaped here rather than by the reaper (it had not run yet).
            if let Ok(Some(status)) = child.try_wait() {
                exits.remove(&pid);
                return exit_code(status);
            }
            // The reaper may collect it between try_wait and this wait: a timeout, not
            // a missed wakeup, bounds that.
            exits = self
                .reaped
                .wait_timeout(exits, Duration::from_millis(50))
                .unwrap()
                .0;
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_survives_a_reaper_that_wins_the_race() {
        let helpers = Helpers::default();
        let mut child = helpers
            .spawn(Command::new("sh").args(["-c", "exit 7"]))
            .unwrap();
        let pid = child.id() as i32;
        // Play the reaper: collect the child before the helper's own wait does.
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        let got = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(got, pid);
        assert!(helpers.reaped(pid, libc::WEXITSTATUS(status)));
        assert_eq!(helpers.wait(&mut child), 7);
        assert!(!helpers.reaped(pid, 0), "forgotten once waited for");
    }

    #[test]
    fn exit_code_when_the_helper_reaps_it_itself() {
        let helpers = Helpers::default();
        let mut child = helpers
            .spawn(Command::new("sh").args(["-c", "kill -9 $$"]))
            .unwrap();
        assert_eq!(helpers.wait(&mut child), 137);
    }
}
