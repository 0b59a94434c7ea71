//! One file descriptor per WebSocket: the socket. Nothing else (no eventfd, no pipe) is opened
//! for a connection, so 10,000 connections fit in a 20,000 open-file limit with room to spare.
//! This file holds one test only: it counts the descriptors of the whole process.

mod support;

use serde_json::json;
use support::{Client, TestServer, wait_until};

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_connection_uses_exactly_one_descriptor() {
    let server = TestServer::start();
    // Warm up: whatever the server opens once (store readers, the first turn thread) is open
    // before counting.
    let mut warm = Client::connect(server.addr, json!({}));
    assert_eq!(warm.ask("warm up"), "You said: warm up");
    drop(warm);
    // And as many connections as below, so that whatever the server opens once for that many
    // (the store's readers, opened as they are needed, among it) is open before counting.
    let warm: Vec<Client> = (0..100)
        .map(|_| Client::connect(server.addr, json!({})))
        .collect();
    drop(warm);
    wait_until("the warm-up connections to close", || {
        server.handle.connection_count() == 0
    });
    let before = open_descriptors();
    let clients: Vec<Client> = (0..100)
        .map(|_| Client::connect(server.addr, json!({})))
        .collect();
    assert_eq!(server.handle.connection_count(), 100);
    // Each connection is two sockets in this process: the client's and the server's.
    assert_eq!(open_descriptors() - before, 2 * 100);
    drop(clients);
    wait_until("every connection to close", || {
        server.handle.connection_count() == 0
    });
    // The connection count may reach zero a moment before the last sockets are closed.
    wait_until("every descriptor to be given back", || {
        open_descriptors() == before
    });
}
