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
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::Mutex;

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

/// The parked threads, each reachable through its own one-slot channel. Locked only to push or
/// pop.
static PARKED: Mutex<Vec<Sender<TurnStart>>> = Mutex::new(Vec::new());

/// Starts the turn on a thread of its own (a parked one if there is one) and returns at once.
/// The session never waits for the thread: a newer turn starts while a cancelled one is still
/// winding down.
///
/// When no thread can be started, the turn is closed with a `server_busy` error instead.
pub fn spawn_turn(mut start: TurnStart) {
    loop {
        let Some(parked) = PARKED.lock().pop() else {
            break;
        };
        match parked.try_send(start) {
            Ok(()) => return,
            // The thread gave up waiting just now; try the next one.
            Err(TrySendError::Disconnected(back) | TrySendError::Full(back)) => start = back,
        }
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
    let (sender, parked) = crossbeam_channel::bounded(1);
    loop {
        {
            let mut all = PARKED.lock();
            if all.len() >= MAX_PARKED {
                return;
            }
            all.push(sender.clone());
        }
        match parked.recv_timeout(PARK_TIMEOUT) {
            Ok(start) => run(start),
            Err(_) => {
                PARKED.lock().retain(|other| !other.same_channel(&sender));
                // A turn may have been handed over between the timeout and the removal.
                match parked.try_recv() {
                    Ok(start) => run(start),
                    Err(_) => return,
                }
            }
        }
    }
}

fn run(start: TurnStart) {
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
}
