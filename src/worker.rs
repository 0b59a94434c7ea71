//! `spawn_turn`: one thread per user message, which runs the turn's agent loop and turns a
//! panic or a failed spawn into an `error` event. Depends on `session` and `bot`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread;

use crate::bot::TurnOutcome;
use crate::protocol::ErrorCode;
use crate::session::TurnStart;

/// Stack of a turn thread. Turns are few (one per session at most, plus cancelled ones that
/// are finishing), so they get room for model clients and deep JSON.
const TURN_STACK_BYTES: usize = 1 << 20;

/// Starts the turn on a thread of its own and returns at once. The thread is detached: it ends
/// when the turn is answered, fails or notices its cancel flag, and the session never waits for
/// it (a newer turn starts while a cancelled one is still winding down).
///
/// When no thread can be started, the turn is closed with a `server_busy` error instead.
pub fn spawn_turn(start: TurnStart) {
    let events = start.events.clone();
    let name = format!("turn-{}", events.turn_id());
    let spawned = thread::Builder::new()
        .name(name)
        .stack_size(TURN_STACK_BYTES)
        .spawn(move || {
            let TurnStart {
                turn,
                events,
                cancel,
                knowledge,
            } = start;
            let outcome = catch_unwind(AssertUnwindSafe(|| turn.run(&events, &cancel, &knowledge)));
            match outcome {
                Ok(TurnOutcome::Answered | TurnOutcome::Failed | TurnOutcome::Cancelled) => {}
                Err(_) => {
                    log::error!("turn {}: panicked", events.turn_id());
                    events.fail(ErrorCode::Internal, "the turn crashed inside the server");
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("turn {}: no thread could be started: {e}", events.turn_id());
        events.fail(
            ErrorCode::ServerBusy,
            "the server could not start a worker for this turn",
        );
    }
}
