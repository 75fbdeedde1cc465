//! The skeleton against a scripted in-process backend.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cable_core::pubsub::Delivery;
use cable_core::PubSubError;

use crate::{async_trait, Backend, Incoming, Op, Session, Subscriber};

#[derive(Default)]
struct Script {
    down: AtomicBool,
    /// Every batch applied, in order.
    batches: Mutex<Vec<Vec<(Op, String)>>>,
    /// The current session's incoming handle.
    incoming: Mutex<Option<Incoming>>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Script>);
struct FakeSession(Arc<Script>);

#[async_trait]
impl Backend for Fake {
    type Session = FakeSession;
    const NAME: &'static str = "fake";
    async fn connect(&self, incoming: Incoming) -> Result<FakeSession, String> {
        if self.0.down.load(Ordering::SeqCst) {
            return Err("down".into());
        }
        *self.0.incoming.lock().unwrap() = Some(incoming);
        Ok(FakeSession(self.0.clone()))
    }
}

#[async_trait]
impl Session for FakeSession {
    async fn apply(&mut self, ops: &[(Op, &str)]) -> Result<Vec<Result<(), PubSubError>>, String> {
        if self.0.down.load(Ordering::SeqCst) {
            return Err("down".into());
        }
        self.0
            .batches
            .lock()
            .unwrap()
            .push(ops.iter().map(|(op, c)| (*op, c.to_string())).collect());
        Ok(ops
            .iter()
            .map(|(_, c)| match *c {
                "refused" => Err(PubSubError::Backend("no".into())),
                _ => Ok(()),
            })
            .collect())
    }
    async fn ping(&mut self) -> Result<(), String> {
        Ok(())
    }
    async fn subscriptions(&mut self) -> Result<Vec<String>, (PubSubError, Option<String>)> {
        Ok(vec!["listed".into()])
    }
}

fn batches(f: &Fake) -> Vec<Vec<(Op, String)>> {
    f.0.batches.lock().unwrap().clone()
}

async fn until(what: &str, check: impl Fn() -> bool) {
    for _ in 0..250 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn commands_apply_in_call_order_and_a_burst_is_one_batch() {
    let fake = Fake::default();
    let sub = Subscriber::spawn(fake.clone(), Delivery::detached(), "fake://".into()).unwrap();
    until("connected", || sub.status().is_connected()).await;
    // Queued before the task runs again: one batch, in call order; the
    // unsubscribe of a channel another stream still uses sends nothing.
    let acks = vec![
        sub.subscribe("a", "c:a".into()),
        sub.subscribe("b", "c:shared".into()),
        sub.subscribe("b2", "c:shared".into()),
        sub.unsubscribe("b", "c:shared".into()),
        sub.unsubscribe("a", "c:a".into()),
        sub.subscribe("r", "refused".into()),
    ];
    let mut results = Vec::new();
    for ack in acks {
        results.push(ack.await);
    }
    assert!(results[..5].iter().all(Result::is_ok), "{results:?}");
    assert!(matches!(results[5], Err(PubSubError::Backend(_))));
    let sent = batches(&fake);
    assert_eq!(
        sent.last().unwrap(),
        &vec![
            (Op::Subscribe, "c:a".to_owned()),
            (Op::Subscribe, "c:shared".to_owned()),
            (Op::Subscribe, "c:shared".to_owned()),
            (Op::Unsubscribe, "c:a".to_owned()),
            (Op::Subscribe, "refused".to_owned()),
        ]
    );
    assert_eq!(
        sub.status().subscriptions().await,
        Ok(vec!["listed".into()])
    );
    drop(sub);
}

#[tokio::test]
async fn an_outage_is_survived_and_everything_is_subscribed_again() {
    let fake = Fake::default();
    let sub = Subscriber::spawn(fake.clone(), Delivery::detached(), "fake://".into()).unwrap();
    let status = sub.status();
    sub.subscribe("a", "c:a".into()).await.unwrap();
    sub.subscribe("b", "c:b".into()).await.unwrap();

    fake.0.down.store(true, Ordering::SeqCst);
    let incoming = fake.0.incoming.lock().unwrap().clone().unwrap();
    incoming.lost("killed");
    incoming.lost("a second reason is ignored");
    until("outage noticed", || !status.is_connected()).await;
    assert!(matches!(
        status.subscriptions().await,
        Err(PubSubError::Unavailable(_))
    ));
    // Recorded while down: answered once the connection is back.
    let late = sub.subscribe("late", "c:late".into());
    assert_eq!(sub.unsubscribe("b", "c:b".into()).await, Ok(()));
    fake.0.down.store(false, Ordering::SeqCst);
    late.await.expect("subscribed after the outage");
    assert_eq!(status.reconnects(), 1);
    assert!(status.is_connected());
    let mut again: Vec<String> = batches(&fake)
        .last()
        .unwrap()
        .iter()
        .map(|(_, c)| c.clone())
        .collect();
    again.sort();
    assert_eq!(again, ["c:a", "c:late"]);
}

#[tokio::test(start_paused = true)]
async fn acks_fail_after_the_deadline_while_down_and_the_task_ends_with_the_handle() {
    let fake = Fake::default();
    fake.0.down.store(true, Ordering::SeqCst);
    let sub = Subscriber::spawn(fake.clone(), Delivery::detached(), "fake://".into()).unwrap();
    let err = sub.subscribe("a", "c:a".into()).await.unwrap_err();
    assert!(matches!(err, PubSubError::Unavailable(_)), "{err}");
    assert!(
        err.to_string()
            .contains("fake did not acknowledge SUBSCRIBE within 5s"),
        "{err}"
    );
    let status = sub.status();
    drop(sub);
    until("closed", || true).await;
    assert_eq!(status.subscriptions().await, Err(PubSubError::Closed));
}
