//! `spawn_turn`: every user message runs on a thread of its own, which runs the turn's agent
//! loop and turns a panic or a failed spawn into an `error` event. Depends on `session` and
//! `bot`.
//!
//! Threads are kept for reuse: a thread whose turn ended parks for a while, and the next turn
//! takes it instead of starting a new one. Starting a thread maps and unmaps its stack, which
//! flushes the TLB of every core and takes the kernel's memory-map lock; at thousands of turns
//! a second that cost more than the rest of the turn. A parked thread still runs one turn at a
//! time, so a turn never waits for another.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::bot::TurnOutcome;
use crate::protocol::ErrorCode;
use crate::session::TurnStart;

/// Stack of a turn thread. Turns are few (one per session at most, plus cancelled ones that
/// are finishing), so they get room for model clients and deep JSON.
const TURN_STACK_BYTES: usize = 1 << 20;

/// Threads parked waiting for a turn, at most.
const MAX_PARKED: usize = 64;

/// How long a parked thread waits for a turn before it ends.
const PARK_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a parked thread waits for its next turn. A mutex and condvar rather than a channel:
/// channels spin and yield before they sleep, which costs a core's worth of scheduling on a
/// small machine.
#[derive(Default)]
struct Slot {
    turn: Mutex<Option<TurnStart>>,
    filled: Condvar,
}

/// The parked threads' slots. Locked only to push, pop or remove, never while holding a slot.
static PARKED: Mutex<Vec<Arc<Slot>>> = Mutex::new(Vec::new());

/// Starts the turn on a thread of its own (a parked one if there is one) and returns at once.
/// The session never waits for the thread: a newer turn starts while a cancelled one is still
/// winding down.
///
/// When no thread can be started, the turn is closed with a `server_busy` error instead.
pub fn spawn_turn(start: TurnStart) {
    let parked = PARKED.lock().pop();
    if let Some(slot) = parked {
        *slot.turn.lock() = Some(start);
        slot.filled.notify_one();
        return;
    }
    let events = start.events.clone();
    let spawned = thread::Builder::new()
        .name("turn".into())
        .stack_size(TURN_STACK_BYTES)
        .spawn(move || work(start));
    if let Err(e) = spawned {
        log::warn!("turn {}: no thread could be started: {e}", events.turn_id());
        events.fail(
            ErrorCode::ServerBusy,
            "the server could not start a worker for this turn",
        );
    }
}

/// A turn thread's life: run a turn, park, run the next, until nothing comes for a while.
fn work(first: TurnStart) {
    run(first);
    let slot = Arc::new(Slot::default());
    loop {
        {
            let mut parked = PARKED.lock();
            if parked.len() >= MAX_PARKED {
                return;
            }
            parked.push(slot.clone());
        }
        let mut turn = slot.turn.lock();
        let next = loop {
            if let Some(next) = turn.take() {
                break next;
            }
            if slot.filled.wait_for(&mut turn, PARK_TIMEOUT).timed_out() {
                let mut parked = PARKED.lock();
                if let Some(at) = parked.iter().position(|other| Arc::ptr_eq(other, &slot)) {
                    parked.remove(at);
                    return;
                }
                // Someone took the slot just now: the turn is on its way, so wait for it.
            }
        };
        drop(turn);
        run(next);
    }
}

fn run(start: TurnStart) {
    let TurnStart {
        turn,
        events,
        cancel,
        knowledge,
        permit,
    } = start;
    let outcome = catch_unwind(AssertUnwindSafe(|| turn.run(&events, &cancel, &knowledge)));
    drop(permit);
    match outcome {
        Ok(TurnOutcome::Answered | TurnOutcome::Failed | TurnOutcome::Cancelled) => {}
        Err(_) => {
            log::error!("turn {}: panicked", events.turn_id());
            events.fail(ErrorCode::Internal, "the turn crashed inside the server");
        }
    }
}
