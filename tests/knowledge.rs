//! The shared knowledge graph: facts cross sessions, notes do not, and remembered facts reach
//! the model's context.

mod support;

use sparky::common::protocol::{ServerFrame, ToolStatus};
use support::{TestServer, kinds, tool_result};

#[test]
fn a_fact_remembered_in_one_session_is_recalled_in_another() {
    let server = TestServer::start();
    let mut alice = server.client();
    alice.say("/remember Bob's birthday is on the ninth of May");
    let frames = alice.finish_turn(1);
    assert_eq!(
        kinds(&frames),
        [
            "user_message",
            "thought",
            "tool_use",
            "tool_result",
            "message"
        ]
    );
    assert_eq!(
        tool_result(&frames),
        (ToolStatus::Success, "Remembered as #1.".into())
    );
    alice.say("/remember Bob's birthday is on the ninth of May");
    assert_eq!(tool_result(&alice.finish_turn(2)).1, "Already known as #1.");

    let mut carol = server.client();
    carol.say("/recall when is Bob's birthday");
    let (status, text) = tool_result(&carol.finish_turn(1));
    assert_eq!(status, ToolStatus::Success);
    assert!(text.contains("ninth of May"), "{text}");
    carol.say("/recall quantum chromodynamics");
    assert!(
        tool_result(&carol.finish_turn(2))
            .1
            .starts_with("Nothing found")
    );
}

#[test]
fn notes_do_not_leak_between_sessions() {
    let server = TestServer::start();
    let mut first = server.client();
    let mut second = server.client();
    first.ask("/note the door code is 4711");
    second.say("/notes");
    assert_eq!(
        tool_result(&second.finish_turn(1)).1,
        "This session has no notes."
    );
    second.say("/recall door code");
    assert!(
        tool_result(&second.finish_turn(2))
            .1
            .starts_with("Nothing found")
    );
}

#[test]
fn remembered_facts_shape_the_next_turn_and_the_thought_says_which() {
    let server = TestServer::start();
    let mut client = server.client();
    client.ask("/remember penguins live in the southern hemisphere");
    client.ask("/remember volcanoes erupt lava");
    client.say("tell me about penguins");
    let frames = client.finish_turn(3);
    assert_eq!(kinds(&frames), ["user_message", "thought", "message"]);
    let ServerFrame::Thought { text, .. } = &frames[1].frame else {
        unreachable!()
    };
    assert!(
        text.contains("#1 penguins live in the southern hemisphere"),
        "{text}"
    );
    assert!(!text.contains("volcanoes"), "{text}");
}

#[test]
fn graph_tools_build_nodes_and_edges_and_explain_bad_arguments() {
    let server = TestServer::start();
    let mut client = server.client();
    client.say(
        r#"/tool graph_add_node {"kind": "person", "label": "Ada", "properties": {"born": 1815}}"#,
    );
    assert_eq!(tool_result(&client.finish_turn(1)).0, ToolStatus::Success);
    client.say(r#"/tool graph_add_node {"kind": "thing", "label": "Analytical Engine"}"#);
    client.finish_turn(2);
    client.say(r#"/tool graph_add_edge {"source": 1, "target": 2, "kind": "programmed"}"#);
    assert_eq!(tool_result(&client.finish_turn(3)).0, ToolStatus::Success);
    client.say(r#"/tool graph_get {"id": 2}"#);
    let (_, text) = tool_result(&client.finish_turn(4));
    assert!(text.contains("<-programmed- #1 [person] Ada"), "{text}");
    client.say(r#"/tool graph_add_edge {"source": 1, "target": 99, "kind": "x"}"#);
    let (status, text) = tool_result(&client.finish_turn(5));
    assert_eq!(status, ToolStatus::Error);
    assert!(text.contains("no node #99"), "{text}");
    client.say(r#"/tool graph_delete {"id": 1}"#);
    assert_eq!(tool_result(&client.finish_turn(6)).0, ToolStatus::Success);
    client.say(r#"/tool graph_get {"id": 2}"#);
    assert!(!tool_result(&client.finish_turn(7)).1.contains("Ada"));
}
