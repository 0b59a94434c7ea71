//! Several instances on one PostgreSQL database, whatever store the rest of the run uses: a
//! conversation resumed and carried on through another instance, two devices on two
//! instances, a cancel sent through the instance that does not run the turn, an MCP server's
//! form answered and its sampling allowed for good through the other instance, an instance
//! killed mid-turn, a deletion seen everywhere, and a bounded chaos run through a real HAProxy
//! that spreads connections over two instances.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sparky::common::protocol::{ServerFrame, SessionId, StatusCode, TurnId};
use support::{ChildServer, Client, Rng, TestServer, WAIT, events_seen, http, postgres};

fn instance(url: &str) -> TestServer {
    TestServer::with_config(|config| config.database_url = Some(url.to_owned()))
}

/// Two instances on a fresh database, a phone on the first that has had one turn, and a
/// laptop on the second, live on the same conversation.
fn phone_and_laptop() -> (TestServer, TestServer, Client, Client) {
    let url = postgres::fresh_database();
    let (a, b) = (instance(&url), instance(&url));
    let mut phone = a.client();
    phone.ask("hi");
    let id = phone.session_id.clone().unwrap();
    let laptop = Client::resume(b.addr, &id, phone.last_seq);
    (a, b, phone, laptop)
}

fn value(frame: &sparky::common::protocol::ServerEnvelope) -> Value {
    serde_json::to_value(frame).unwrap()
}

/// Reads until a numbered frame of `kind` for `turn`, and returns it.
fn read_until(client: &mut Client, kind: &str, turn: u64) -> Value {
    loop {
        let frame = client.next();
        if frame.seq.is_some()
            && frame.frame.turn_id() == Some(TurnId(turn))
            && support::kind(&frame) == kind
        {
            return value(&frame);
        }
    }
}

/// Every event of `id` as a new connection to `addr` replays it, up to the newest `seq`
/// that `expected_last` names.
fn stored_log(addr: SocketAddr, id: &SessionId, expected_last: u64) -> Vec<Value> {
    let mut reader = Client::resume(addr, id, 0);
    let mut events = Vec::new();
    while events.len() < expected_last as usize {
        let frame = reader.next();
        if frame.seq.is_some() {
            events.push(value(&frame));
        }
    }
    events
}

/// The `seq` of each event, which must run 1, 2, 3, … with nothing missing or repeated.
fn assert_contiguous(events: &[Value]) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{events:#?}"
    );
}

/// Every turn a `user_message` opened is closed by exactly one later event, and nothing of a
/// turn comes after its close.
fn assert_turns_closed_once(events: &[Value]) {
    let mut closed: HashMap<u64, usize> = HashMap::new();
    let mut opened = Vec::new();
    for event in events {
        let frame: ServerFrame = serde_json::from_value(event.clone()).unwrap();
        let Some(TurnId(turn)) = frame.turn_id() else {
            continue;
        };
        if matches!(frame, ServerFrame::UserMessage { .. }) {
            opened.push(turn);
        }
        assert!(
            !closed.contains_key(&turn),
            "an event after turn {turn} closed: {event}"
        );
        if frame.closes_turn() {
            *closed.entry(turn).or_default() += 1;
        }
    }
    for turn in opened {
        assert_eq!(closed.get(&turn), Some(&1), "turn {turn}: {events:#?}");
    }
}

#[test]
fn a_conversation_resumes_and_goes_on_through_another_instance() {
    let url = postgres::fresh_database();
    let (a, b) = (instance(&url), instance(&url));
    let mut first = a.client();
    first.ask("hello there");
    let id = first.session_id.clone().unwrap();
    let seen = events_seen(&first);
    drop(first);

    // Everything A wrote, replayed by B.
    let mut second = Client::resume(b.addr, &id, 0);
    let replayed: Vec<Value> = (0..seen.len()).map(|_| value(&second.next())).collect();
    assert_eq!(replayed, seen);

    // A message through B, while A holds the conversation: A lets go, B runs the turn with
    // the numbering and the conversation A left.
    second.say("and again");
    let frames = second.finish_turn(2);
    assert!(
        matches!(frames.last().unwrap().frame, ServerFrame::Message { .. }),
        "{frames:#?}"
    );
    // The replay, then the new turn.
    let all = events_seen(&second);
    assert_eq!(all[..seen.len()], seen[..]);
    assert_contiguous(&all);
    assert_turns_closed_once(&all);

    // A, asked now, has every event, B's included; and takes the conversation back.
    let last = all.len() as u64;
    assert_eq!(stored_log(a.addr, &id, last), all);
    let mut third = Client::resume(a.addr, &id, last);
    third.say("back on A");
    let frames = third.finish_turn(3);
    assert_eq!(frames.first().unwrap().seq, Some(last + 1));
}

#[test]
fn two_devices_on_two_instances_both_get_every_event_in_order() {
    let (_a, b, mut phone, mut laptop) = phone_and_laptop();
    let id = phone.session_id.clone().unwrap();

    phone.say("two, from the phone");
    phone.finish_turn(2);
    laptop.finish_turn(2);
    laptop.say("three, from the laptop");
    laptop.finish_turn(3);
    phone.finish_turn(3);
    phone.say("/tool calculator {\"expression\": \"6 * 7\"}");
    phone.finish_turn(4);
    laptop.finish_turn(4);

    let on_phone = events_seen(&phone);
    let on_laptop = events_seen(&laptop);
    assert_contiguous(&on_phone);
    assert_turns_closed_once(&on_phone);
    // The laptop joined after the first turn: it has the rest, the same, in the same order.
    assert_eq!(on_laptop[..], on_phone[on_phone.len() - on_laptop.len()..]);
    assert_eq!(
        on_laptop.first().unwrap()["seq"].as_u64(),
        Some(on_phone.len() as u64 - on_laptop.len() as u64 + 1)
    );
    assert_eq!(
        stored_log(b.addr, &id, on_phone.len() as u64),
        on_phone,
        "the store"
    );
    // B heard A's signals, and says how late they were.
    let (_, metrics) = http(b.addr, "GET", "/metrics", None, None);
    let figure = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert!(figure("sparky_cluster_signals_total") >= 2.0, "{metrics}");
    assert!(figure("sparky_cluster_signal_lag_seconds_count") >= 2.0);
    assert!(figure("sparky_cluster_signal_lag_seconds_sum") > 0.0);
    assert!(
        figure("sparky_cluster_leases_taken_total") >= 1.0,
        "B took it for turn 3"
    );
}

#[test]
fn a_cancel_through_another_instance_stops_the_turn_at_once() {
    let (_a, _b, mut phone, mut laptop) = phone_and_laptop();
    let mut took = Vec::new();
    for turn in 2..=6 {
        // A tool that would run for a minute, on A; the cancel goes through B.
        phone.say(r#"/tool wait {"ms": 60000}"#);
        read_until(&mut laptop, "tool_use", turn);
        let sent = Instant::now();
        laptop.cancel();
        let closing = read_until(&mut laptop, "status", turn);
        took.push(sent.elapsed());
        assert_eq!(closing["data"]["code"], "cancelled", "{closing}");
        let on_phone = phone.finish_turn(turn);
        assert_eq!(value(on_phone.last().unwrap()), closing);
    }
    took.sort();
    eprintln!(
        "cancel through the other instance, until its status arrived there: median {:?}, max {:?}",
        took[took.len() / 2],
        took.last().unwrap()
    );
    let events = events_seen(&phone);
    assert_contiguous(&events);
    assert_turns_closed_once(&events);
}

#[test]
fn a_newer_message_through_another_instance_cancels_the_turn_there_and_runs_here() {
    let (_a, b, mut phone, mut laptop) = phone_and_laptop();
    phone.say(r#"/tool wait {"ms": 60000}"#);
    read_until(&mut laptop, "tool_use", 2);
    // B's API knows the turn runs, on A.
    let path = format!(
        "/api/conversations/{}",
        phone.session_id.as_ref().unwrap().as_str()
    );
    let (status, body) = support::http_json(b.addr, "GET", &path, None, None);
    assert_eq!((status, &body["running"]), (200, &json!(true)), "{body}");
    // B asks A to let go: A's turn ends with `status cancelled`, written before B's message.
    laptop.say("never mind that");
    let cancelled = read_until(&mut laptop, "status", 2);
    assert_eq!(cancelled["data"]["code"], "cancelled", "{cancelled}");
    let frames = laptop.finish_turn(3);
    assert!(matches!(
        frames.last().unwrap().frame,
        ServerFrame::Message { .. }
    ));
    phone.finish_turn(3);
    let events = events_seen(&phone);
    assert_contiguous(&events);
    assert_turns_closed_once(&events);
    assert_eq!(
        events_seen(&laptop)[..],
        events[events.len() - events_seen(&laptop).len()..]
    );
}

/// An `edit`, a `switch` and a `client_id` through the instance that does not hold the
/// conversation work as a `message` does: it takes the conversation over with its tree, the
/// model sees the new path, the other device follows, and a retried `client_id` runs once.
#[test]
fn an_edit_and_a_switch_through_another_instance_work_like_a_message() {
    let (_a, b, mut phone, mut laptop) = phone_and_laptop();
    phone.say("second question");
    phone.finish_turn(2);
    read_until(&mut laptop, "message", 2);
    // The edit of turn 2 goes through B while A holds the conversation.
    let edit = json!({"type": "edit",
                      "data": {"turn_id": 2, "text": "second, edited", "client_id": "e-1"}});
    laptop.send(edit.clone());
    let opened = read_until(&mut laptop, "user_message", 3);
    assert_eq!(opened["data"]["parent"], 1, "{opened}");
    assert_eq!(opened["data"]["edit_of"], 2, "{opened}");
    let answer = read_until(&mut laptop, "message", 3);
    assert_eq!(answer["data"]["text"], "You said: second, edited");
    read_until(&mut phone, "message", 3);
    // The same client_id again, through A this time: nothing runs.
    phone.send(edit);
    let duplicate = phone.expect("status");
    assert!(matches!(
        &duplicate.frame,
        ServerFrame::Status(s) if s.code == StatusCode::Duplicate && s.turn_id == Some(TurnId(3))
    ));
    // A switch back through A: both devices get the branch event, and a message follows it.
    phone.send(json!({"type": "switch", "data": {"turn_id": 2}}));
    for device in [&mut phone, &mut laptop] {
        let branch = device.expect("branch");
        assert_eq!(branch.frame, ServerFrame::Branch { leaf: TurnId(2) });
    }
    laptop.say("third");
    let third = read_until(&mut laptop, "user_message", 4);
    assert_eq!(third["data"]["parent"], 2, "{third}");
    read_until(&mut laptop, "message", 4);
    let (status, tree) = support::http_json(
        b.addr,
        "GET",
        &format!(
            "/api/conversations/{}/turns",
            phone.session_id.as_ref().unwrap().as_str()
        ),
        None,
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(tree["leaf"], 4, "{tree}");
    let events = events_seen(&phone);
    assert_contiguous(&events);
    assert_turns_closed_once(&events);
}

/// A model that streams its answer: for "fast", a hundred pieces at once; for "slow", one
/// piece, then (once the test releases it) the rest.
struct Streaming {
    release: parking_lot::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl sparky::model::ModelBackend for Streaming {
    fn name(&self) -> String {
        "streaming".into()
    }

    fn complete(
        &self,
        conversation: sparky::model::Conversation<'_>,
        _tools: &[sparky::model::ToolSpec],
        sink: &mut dyn sparky::model::ReplySink,
    ) -> sparky::common::error::Result<sparky::model::ModelReply> {
        let asked = conversation
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let mut text = String::new();
        let mut piece = |part: &str, sink: &mut dyn sparky::model::ReplySink| {
            sink.delta(part);
            text.push_str(part);
        };
        if asked == "slow" {
            piece("part one. ", sink);
            let _ = self.release.lock().recv_timeout(support::WAIT);
            piece("part two.", sink);
        } else {
            for n in 0..100 {
                piece(&format!("p{n} "), sink);
            }
        }
        Ok(sparky::model::ModelReply {
            text,
            ..sparky::model::ModelReply::default()
        })
    }
}

/// Reads until the turn's closing `message`, and returns the `message_delta` frames, the answer
/// they make up as a client builds it (appending each, or replacing it with one marked
/// `replace`: a connection that went live mid-answer gets one), and the closing answer. Fails
/// if a piece comes before the `user_message` (unless the client joined after it: `opened`).
fn deltas_and_answer(client: &mut Client, turn: u64, mut opened: bool) -> (usize, String, String) {
    let (mut frames, mut shown) = (0, String::new());
    loop {
        let frame = client.next();
        match frame.frame {
            ServerFrame::UserMessage { turn_id, .. } if turn_id.0 == turn => opened = true,
            ServerFrame::MessageDelta {
                turn_id,
                text,
                replace,
            } if turn_id.0 == turn => {
                assert!(opened, "a piece before its turn opened");
                frames += 1;
                if replace {
                    shown = text;
                } else {
                    shown.push_str(&text);
                }
            }
            ServerFrame::Message { turn_id, text, .. } if turn_id.0 == turn => {
                return (frames, shown, text);
            }
            _ => {}
        }
    }
}

/// `message_delta` reaches the connections on the other instance too, coalesced, in order,
/// never after the answer; one that attaches there mid-answer gets the answer so far.
#[test]
fn streamed_pieces_reach_the_other_instance_in_order() {
    let url = postgres::fresh_database();
    let (released, release) = std::sync::mpsc::channel();
    let model = Arc::new(Streaming {
        release: parking_lot::Mutex::new(release),
    });
    let on = |model: &Arc<Streaming>| {
        TestServer::with_model(
            |config| config.database_url = Some(url.clone()),
            model.clone(),
        )
    };
    let (a, b) = (on(&model), on(&model));
    let mut phone = a.client();
    phone.ask("hello");
    let id = phone.session_id.clone().unwrap();
    let mut laptop = Client::resume(b.addr, &id, phone.last_seq);

    phone.say("fast");
    let (pieces_a, on_a, answer) = deltas_and_answer(&mut phone, 2, false);
    let (pieces_b, on_b, answer_b) = deltas_and_answer(&mut laptop, 2, false);
    assert_eq!(answer, answer_b);
    assert_eq!(on_a, answer, "every piece on the instance running it");
    assert_eq!(on_b, answer, "every piece on the other, in order");
    assert!(
        pieces_b < pieces_a,
        "coalesced on the way: {pieces_a} pieces became {pieces_b}"
    );

    // Mid-answer: the first piece reaches B while the model waits, and a tablet attaching to
    // B then gets the answer so far.
    phone.say("slow");
    loop {
        if let ServerFrame::MessageDelta { text, .. } = laptop.next().frame {
            assert_eq!(text, "part one. ");
            break;
        }
    }
    let mut tablet = Client::open(b.addr);
    tablet.send(json!({"type": "connect", "data": {"session_id": id.as_str()}}));
    tablet.expect("session_info");
    tablet.expect("ready");
    let so_far = tablet.expect("message_delta");
    assert!(matches!(
        so_far.frame,
        ServerFrame::MessageDelta { replace: true, ref text, .. } if text == "part one. "
    ));
    released.send(()).unwrap();
    let (_, shown, answer) = deltas_and_answer(&mut laptop, 3, true);
    assert_eq!(format!("part one. {shown}"), answer);
    assert_eq!(deltas_and_answer(&mut tablet, 3, true).1, "part two.");
}

#[test]
fn the_turn_of_a_killed_instance_is_closed_by_another_and_the_conversation_goes_on() {
    let url = postgres::fresh_database();
    let a = ChildServer::start(&["--store", &url]);
    let b = instance(&url);
    let mut phone = Client::connect(a.addr, json!({}));
    phone.ask("hi");
    let id = phone.session_id.clone().unwrap();
    let mut laptop = Client::resume(b.addr, &id, phone.last_seq);
    phone.say(r#"/tool wait {"ms": 60000}"#);
    read_until(&mut laptop, "tool_use", 2);

    let killed = Instant::now();
    a.kill();
    let closing = read_until(&mut laptop, "error", 2);
    eprintln!(
        "turn of the killed instance closed after {:?}",
        killed.elapsed()
    );
    assert_eq!(closing["data"]["code"], "internal", "{closing}");

    // Resuming anywhere shows every event that was written, then that error; and the
    // conversation carries on, on B.
    let last = closing["seq"].as_u64().unwrap();
    let log = stored_log(b.addr, &id, last);
    assert_eq!(log.last().unwrap(), &closing);
    assert_contiguous(&log);
    assert_turns_closed_once(&log);
    laptop.say("still here?");
    let frames = laptop.finish_turn(3);
    assert!(matches!(
        frames.last().unwrap().frame,
        ServerFrame::Message { .. }
    ));
}

#[test]
fn a_deletion_is_seen_on_every_instance() {
    let (a, b, mut phone, mut laptop) = phone_and_laptop();
    let id = phone.session_id.clone().unwrap();
    phone.say(r#"/tool wait {"ms": 60000}"#);
    read_until(&mut laptop, "tool_use", 2);

    // Deleted through B, while its turn runs on A.
    let path = format!("/api/conversations/{}", id.as_str());
    assert_eq!(http(b.addr, "DELETE", &path, None, None).0, 204);
    for client in [&mut phone, &mut laptop] {
        loop {
            let frame = client.next();
            if let ServerFrame::Status(status) = &frame.frame
                && status.code == StatusCode::Deleted
            {
                break;
            }
        }
        client.expect_close();
    }
    assert_eq!(http(a.addr, "GET", &path, None, None).0, 404);
    assert_eq!(http(b.addr, "GET", &path, None, None).0, 404);
    // The id is gone everywhere: a resume gets a new conversation.
    let fresh = Client::resume(a.addr, &id, 0);
    assert_ne!(fresh.session_id.as_ref(), Some(&id));
}

/// A real HAProxy in front of `backends`, spreading connections round-robin; killed on drop.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
}

impl Haproxy {
    /// Starts HAProxy with the configuration the README shows, or `None` when it is not
    /// installed and the run is not CI's (`scripts/test` installs it).
    fn start(backends: &[SocketAddr]) -> Option<Self> {
        if Command::new("haproxy").arg("-v").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "haproxy is not installed (apt-get install -y haproxy; scripts/test does)"
            );
            eprintln!("haproxy is not installed; skipping the HAProxy test");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("    server sparky{i} {addr} check\n"))
            .collect();
        let config = format!(
            "global\n    maxconn 1000\n\
             defaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n    \
             timeout server 60s\n    timeout tunnel 1h\n\
             frontend chat\n    bind 127.0.0.1:{port}\n    default_backend sparky\n\
             backend sparky\n    balance roundrobin\n    option httpchk GET /healthz\n    \
             http-check send hdr Host localhost\n{servers}"
        );
        let dir = support::temp_dir("haproxy");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                panic!("haproxy exited with {status}: {stderr}");
            }
            assert!(Instant::now() < deadline, "haproxy did not start listening");
            std::thread::sleep(Duration::from_millis(10));
        }
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("haproxy: {line}");
            }
        });
        Some(Haproxy { child, addr })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One device in the chaos run: its conversation, its connection (through HAProxy, so on
/// either instance), and every event it has seen over all its connections.
struct Device {
    id: SessionId,
    client: Client,
    seen: BTreeMap<u64, Value>,
}

impl Device {
    /// Takes in what the connection has read so far, checking that it continues the events
    /// already seen.
    fn gather(&mut self) {
        for event in events_seen(&self.client) {
            let seq = event["seq"].as_u64().unwrap();
            if let Some(before) = self.seen.insert(seq, event.clone()) {
                assert_eq!(before, event, "event {seq} changed");
            }
        }
    }

    fn reconnect(&mut self, proxy: SocketAddr) {
        self.gather();
        let last = self.seen.keys().next_back().copied().unwrap_or(0);
        self.client = Client::resume(proxy, &self.id, last);
    }
}

#[test]
fn chaos_through_haproxy_over_two_instances_loses_and_repeats_nothing() {
    let url = postgres::fresh_database();
    let (a, b) = (instance(&url), instance(&url));
    let Some(proxy) = Haproxy::start(&[a.addr, b.addr]) else {
        return;
    };
    let mut dice = Rng(0x5eed_cafe_f00d_0001);
    let mut devices: Vec<Device> = (0..3)
        .map(|_| {
            let mut client = Client::connect(proxy.addr, json!({}));
            client.ask("start");
            let id = client.session_id.clone().unwrap();
            Device {
                id,
                client,
                seen: BTreeMap::new(),
            }
        })
        .collect();
    // A second device on each conversation, through the proxy too.
    for at in 0..devices.len() {
        let id = devices[at].id.clone();
        let client = Client::resume(proxy.addr, &id, 0);
        devices.push(Device {
            id,
            client,
            seen: BTreeMap::new(),
        });
    }
    let started = Instant::now();
    let mut actions: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..120 {
        let device = &mut devices[dice.below(6) as usize];
        let action = match dice.below(10) {
            0..=3 => {
                device.client.say("hello again");
                "message"
            }
            4 => {
                device.client.say(r#"/tool wait {"ms": 300}"#);
                "slow message"
            }
            5..=7 => {
                device.client.cancel();
                "cancel"
            }
            _ => {
                device.reconnect(proxy.addr);
                "reconnect"
            }
        };
        *actions.entry(action).or_default() += 1;
    }
    // Quiet down: a last message on each conversation, read to its close by both devices.
    for device in &mut devices[..3] {
        device.reconnect(proxy.addr);
        device.client.say("the end");
    }
    for device in &mut devices {
        let mut last_turn = None;
        loop {
            let frame = device.client.next();
            if let ServerFrame::UserMessage { turn_id, text, .. } = &frame.frame
                && text == "the end"
            {
                last_turn = Some(*turn_id);
            }
            if last_turn.is_some()
                && frame.frame.turn_id() == last_turn
                && frame.frame.closes_turn()
            {
                break;
            }
        }
        device.gather();
    }
    eprintln!("chaos: {actions:?} over {:?}", started.elapsed());
    // HAProxy spread the connections over both instances.
    for addr in [a.addr, b.addr] {
        let (_, metrics) = http(addr, "GET", "/metrics", None, None);
        let accepted: u64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix("sparky_connections_total "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap();
        assert!(accepted >= 5, "{addr}: {accepted} connections");
    }
    for device in &mut devices {
        device.reconnect(proxy.addr);
        let seen: Vec<Value> = device.seen.values().cloned().collect();
        let last = seen.last().unwrap()["seq"].as_u64().unwrap();
        for addr in [a.addr, b.addr] {
            let stored = stored_log(addr, &device.id, last);
            // A device sees every event from where it joined, the same as the store.
            assert_eq!(seen[..], stored[stored.len() - seen.len()..]);
            assert_contiguous(&stored);
            assert_turns_closed_once(&stored);
        }
    }
}

#[test]
fn an_mcp_form_and_sampling_are_answered_through_another_instance() {
    let (everything, node) = (support::mcp::EVERYTHING, support::mcp::NODE);
    if !std::path::Path::new(everything).exists() || !std::path::Path::new(node).exists() {
        let message = format!("{everything} is missing: run scripts/npm-fixtures.sh");
        assert!(std::env::var_os("CI").is_none(), "{message}");
        eprintln!("skipped: {message}");
        return;
    }
    let url = postgres::fresh_database();
    let dir = support::temp_dir("cluster-mcp");
    let entry = json!({"command": node, "args": [everything, "stdio"], "approve": "never"});
    let config = support::mcp::write_config(&dir, &json!({ "everything": entry }));
    let with_mcp = || {
        TestServer::with_config(|c| {
            c.database_url = Some(url.clone());
            c.mcp_config = Some(config.clone());
        })
    };
    let (a, b) = (with_mcp(), with_mcp());
    support::mcp::wait_for_tool(&a, "everything__trigger-elicitation-request");
    let mut phone = a.client();
    phone.ask("hi");
    let id = phone.session_id.clone().unwrap();
    let mut laptop = Client::resume(b.addr, &id, phone.last_seq);

    // The form waits on A; B answers it.
    phone.say("/tool everything__trigger-elicitation-request {}");
    let request = read_until(&mut laptop, "elicitation_request", 2);
    let request_id = request["data"]["request_id"].as_str().unwrap().to_owned();
    laptop.send(
        json!({"type": "elicit", "data": {"request_id": request_id, "action": "accept",
                                                   "content": {"name": "Via B"}}}),
    );
    let result = read_until(&mut phone, "tool_result", 2);
    assert!(
        result["data"]["result"]
            .as_str()
            .unwrap()
            .contains("- Name: Via B"),
        "{result}"
    );
    // An answer for no waiting request is refused on B itself, once B has seen the turn end
    // (before, B passes it on, and A, where it no longer waits, drops it).
    read_until(&mut laptop, "message", 2);
    laptop.send(json!({"type": "elicit", "data": {"request_id": request_id, "action": "cancel"}}));
    let refused = laptop.expect("error");
    assert_eq!(
        value(&refused)["data"]["code"],
        "not_waiting",
        "{refused:?}"
    );

    // Sampling allowed for good through B: A asks no more.
    let sample = r#"/tool everything__trigger-sampling-request {"prompt": "x"}"#;
    phone.say(sample);
    let request = read_until(&mut laptop, "sampling_request", 3);
    let request_id = request["data"]["request_id"].as_str().unwrap().to_owned();
    laptop.send(json!({"type": "approve",
                       "data": {"call_id": request_id, "allow": true, "always": true}}));
    let result = read_until(&mut phone, "tool_result", 3);
    assert_eq!(result["data"]["status"], "success", "{result}");
    phone.say(sample);
    let frames = phone.finish_turn(4);
    assert!(
        !support::kinds(&frames).contains(&"sampling_request".to_owned()),
        "{frames:#?}"
    );
    assert_eq!(
        support::tool_result(&frames).0,
        sparky::common::protocol::ToolStatus::Success
    );
}
