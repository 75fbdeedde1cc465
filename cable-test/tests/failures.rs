//! The kit's assertions fail with what was expected and what came.

use cable_core::{Cable, Identifiers};
use cable_test::channels::RoomChannel;
use cable_test::{Request, Subscription, TestCable};
use serde_json::{json, Value};

async fn room(params: Value) -> (TestCable, Subscription) {
    let cable = TestCable::new(Cable::builder().channel("Room", RoomChannel::default));
    let conn = cable.stub_connection(Identifiers::new()).await;
    let sub = conn.subscribe("Room", params).await;
    (cable, sub)
}

#[tokio::test]
#[should_panic(expected = r#"to stream from "room_2"; its streams: ["room_1"]"#)]
async fn a_missing_stream_names_the_streams_there_are() {
    room(json!({"room": "1"}))
        .await
        .1
        .assert_has_stream("room_2");
}

#[tokio::test]
#[should_panic(expected = "to be confirmed; it was Rejected")]
async fn a_rejection_where_a_confirmation_was_expected() {
    room(json!({"room": "1", "reject": true}))
        .await
        .1
        .assert_confirmed();
}

#[tokio::test]
#[should_panic(
    expected = r#"expected a broadcast on "room_1" of {"body":2}; broadcast there: [{"body":1}]; everywhere: ["room_1": {"body":1}]"#
)]
async fn a_missing_broadcast_names_what_was_broadcast() {
    let (cable, sub) = room(json!({"room": "1"})).await;
    sub.perform("speak", json!({"body": 1})).await;
    cable.assert_broadcast_on("room_1", json!({"body": 2}));
}

#[tokio::test]
#[should_panic(expected = "expected the connection to be rejected")]
async fn an_accepted_connection_where_a_rejection_was_expected() {
    let cable = TestCable::new(Cable::builder());
    cable.assert_reject_connection(Request::new()).await;
}

#[tokio::test]
async fn the_identifier_keeps_the_order_of_the_params() {
    let (_, sub) = room(json!({"room": "1", "a": 1})).await;
    assert_eq!(sub.identifier(), r#"{"channel":"Room","room":"1","a":1}"#);
}
