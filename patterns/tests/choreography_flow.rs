//! Choreography: services react to each other's events across topics. One flow is rebuilt
//! from its correlation id, both from the recorded flow and by scanning the topics, and the
//! events of other flows stay out of it.

use std::time::Duration;

use aqueduct::{Broker, Consumer, Message, TopicConfig};
use aqueduct_patterns::{
    Action, Choreography, ChoreographyError, FlowEvent, Saga, SagaOrchestrator, SagaRequest, Step,
    CORRELATION_ID_HEADER,
};

const TOPICS: [&str; 3] = ["orders", "payments", "shipments"];

fn broker_with_topics(dir: &std::path::Path) -> Broker {
    let broker = Broker::open(dir).expect("open broker");
    for topic in TOPICS {
        broker
            .create_topic(topic, TopicConfig::default().partitions(3))
            .expect("create topic");
    }
    broker
}

fn next(consumer: &mut Consumer) -> aqueduct::Delivery {
    consumer
        .recv_timeout(Duration::from_secs(5))
        .expect("receive")
        .expect("an event")
}

/// Places two orders; payment reacts to each order, shipping to each payment. Returns the two
/// correlation ids.
fn run_two_flows(broker: &Broker, flows: &Choreography) -> (String, String) {
    let (first, _) = flows
        .start("orders", Message::new("order 1").key("customer-1"))
        .expect("start flow");
    let (second, _) = flows
        .start(
            "orders",
            Message::new("order 2").key("customer-2").id("order-2"),
        )
        .expect("start flow");

    let mut orders = broker
        .subscribe("orders", "payment-service")
        .expect("subscribe");
    for _ in 0..2 {
        let order = next(&mut orders);
        let payment = Message::new("paid").key(order.key().expect("an order key").to_vec());
        flows
            .follow(&order, "payments", payment)
            .expect("publish payment");
        order.ack().expect("ack");
    }
    let mut payments = broker
        .subscribe("payments", "shipping-service")
        .expect("subscribe");
    for _ in 0..2 {
        let payment = next(&mut payments);
        flows
            .follow(&payment, "shipments", Message::new("shipped"))
            .expect("publish shipment");
        payment.ack().expect("ack");
    }
    (first, second)
}

fn topics_of(flow: &[FlowEvent]) -> Vec<&str> {
    flow.iter().map(|event| event.topic.as_str()).collect()
}

#[test]
fn recorded_flow_follows_causes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_topics(dir.path());
    let flows = Choreography::open(&broker, "shop").unwrap();
    let (first, second) = run_two_flows(&broker, &flows);

    for id in [&first, &second] {
        let flow = flows.flow(id).unwrap();
        assert_eq!(topics_of(&flow), TOPICS, "flow {id}");
        assert!(flow.iter().all(|event| &event.correlation_id == id));
        assert_eq!(flow[0].causation_id, None);
        assert_eq!(flow[1].causation_id, Some(flow[0].event_id()));
        assert_eq!(flow[2].causation_id, Some(flow[1].event_id()));
    }
    let second_flow = flows.flow(&second).unwrap();
    assert_eq!(second_flow[0].event_id(), "order-2");
    assert_ne!(first, second);
}

#[test]
fn trace_matches_recorded_flow() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_topics(dir.path());
    let flows = Choreography::open(&broker, "shop").unwrap();
    let (first, second) = run_two_flows(&broker, &flows);

    for id in [&first, &second] {
        let traced = Choreography::trace(&broker, &TOPICS, id).unwrap();
        let recorded = flows.flow(id).unwrap();
        let locations = |flow: &[FlowEvent]| -> Vec<(String, u32, u64)> {
            flow.iter()
                .map(|event| (event.topic.clone(), event.partition, event.offset))
                .collect()
        };
        assert_eq!(locations(&traced), locations(&recorded), "flow {id}");
        let causes: Vec<_> = traced
            .iter()
            .map(|event| event.causation_id.clone())
            .collect();
        let recorded_causes: Vec<_> = recorded.iter().map(|e| e.causation_id.clone()).collect();
        assert_eq!(causes, recorded_causes, "flow {id}");
    }
}

#[test]
fn trace_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let broker = broker_with_topics(dir.path());
        let flows = Choreography::open(&broker, "shop").unwrap();
        run_two_flows(&broker, &flows).0
    };

    let broker = broker_with_topics(dir.path());
    let flows = Choreography::open(&broker, "shop").unwrap();
    assert_eq!(topics_of(&flows.flow(&first).unwrap()), TOPICS);
    let traced = Choreography::trace(&broker, &TOPICS, &first).unwrap();
    assert_eq!(topics_of(&traced), TOPICS);
}

#[test]
fn cause_orders_events_before_time() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_topics(dir.path());
    let flows = Choreography::open(&broker, "shop").unwrap();

    // A refund caused by the order is published with an explicit correlation header, and
    // the order itself is published afterwards by code that does not use Choreography, so the
    // effect's offset and time come first.
    let cause_id = "order-7";
    broker
        .publish(
            "payments",
            Message::new("refund")
                .header(CORRELATION_ID_HEADER, "flow-7")
                .header(aqueduct_patterns::CAUSATION_ID_HEADER, cause_id),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(5));
    broker
        .publish(
            "orders",
            Message::new("order 7")
                .id(cause_id)
                .header(CORRELATION_ID_HEADER, "flow-7"),
        )
        .unwrap();

    let traced = Choreography::trace(&broker, &TOPICS, "flow-7").unwrap();
    assert_eq!(topics_of(&traced), ["orders", "payments"]);
    assert!(traced[0].timestamp_ms > traced[1].timestamp_ms);
    assert!(flows.flow("flow-7").unwrap().is_empty());
}

#[test]
fn follow_requires_correlation() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_topics(dir.path());
    let flows = Choreography::open(&broker, "shop").unwrap();
    broker.publish("orders", Message::new("no flow")).unwrap();
    let mut orders = broker.subscribe("orders", "payment-service").unwrap();
    let order = next(&mut orders);

    let missing = flows
        .follow(&order, "payments", Message::new("paid"))
        .unwrap_err();
    assert!(matches!(
        missing,
        ChoreographyError::MissingCorrelation { .. }
    ));

    let tagged = Message::new("paid").header(CORRELATION_ID_HEADER, "flow-a");
    let mismatch = flows.publish("payments", "flow-b", tagged).unwrap_err();
    assert!(matches!(
        mismatch,
        ChoreographyError::CorrelationMismatch { .. }
    ));
    let invalid = flows
        .publish("payments", "flow b", Message::new("paid"))
        .unwrap_err();
    assert!(matches!(invalid, ChoreographyError::InvalidName { .. }));
    let unknown_topic = Choreography::trace(&broker, &["refunds"], "flow-a").unwrap_err();
    assert!(matches!(unknown_topic, ChoreographyError::Trace { .. }));
}

#[test]
fn trace_finds_saga_messages() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_topics(dir.path());
    let saga = Saga::new("order").step(Step::new(
        "pay",
        Action::request("payments", |ctx| Ok(ctx.input().to_vec())),
    ));
    let orchestrator = SagaOrchestrator::open(&broker, "shop", vec![saga]).unwrap();
    orchestrator
        .start("order", "order-9", b"9".to_vec())
        .unwrap();
    orchestrator.poll().unwrap();
    let mut payments = broker.subscribe("payments", "payment-service").unwrap();
    let delivery = next(&mut payments);
    SagaRequest::parse(&delivery)
        .unwrap()
        .reply(&broker, Ok(Vec::new()))
        .unwrap();
    delivery.ack().unwrap();

    let topics = ["payments", orchestrator.reply_topic()];
    let traced = Choreography::trace(&broker, &topics, "order-9").unwrap();
    assert_eq!(topics_of(&traced), ["payments", "saga.shop.replies"]);
}
