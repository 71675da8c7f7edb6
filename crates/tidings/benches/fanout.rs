//! Hub fan-out: one publication, encoded once, handed to 1,000 (and 10,000) live
//! subscribers' outboxes, then each outbox drained as its writer would. This is the
//! server's per-delivery work short of the socket write.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidings::connection::Connection;
use tidings::hub::{Hub, Subscriber, JSON_PUSHES};
use tidings::outbox::{join_batch, Drained};
use tidings::protocol::{Publication, RawJson};

fn live_hub(subscribers: usize) -> (Hub, Vec<Arc<Connection>>) {
    let hub = Hub::new();
    let mut conns = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let (conn, _control) = Connection::new("bench", 1 << 20);
        let sub = Subscriber::new(conn.clone(), false, &JSON_PUSHES);
        // Positioned at the empty stream, as a recovering client is: each
        // delivery checks the subscriber's own sequence.
        sub.go_live("bench", None, Some(0));
        hub.add("bench", sub);
        conns.push(conn);
    }
    (hub, conns)
}

fn fanout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let data = RawJson::parse(format!("{{\"p\":\"{}\"}}", "x".repeat(90))).expect("json");
    let publication = |offset| Publication {
        data: Some(data.clone()),
        offset,
        ..Default::default()
    };
    let mut group = c.benchmark_group("hub_publish");
    for n in [1_000usize, 10_000] {
        let (hub, conns) = live_hub(n);
        group.throughput(Throughput::Elements(n as u64));
        // Offsets must grow: the hub drops a repeated offset as a duplicate.
        let mut offset = 0u64;
        group.bench_with_input(BenchmarkId::new("publish_only", n), &n, |b, _| {
            b.iter(|| {
                offset += 1;
                hub.publish("bench", None, &publication(offset));
                // Keep the outboxes from filling up; not part of what is compared.
                for conn in &conns {
                    if conn.outbox.queued_bytes() > 512 * 1024 {
                        rt.block_on(conn.outbox.drain());
                    }
                }
            })
        });
        // 50 publications, then every outbox drained and joined into one frame as
        // the WebSocket writer does: the batched path.
        group.throughput(Throughput::Elements(50 * n as u64));
        group.bench_with_input(BenchmarkId::new("publish50_drain", n), &n, |b, _| {
            b.iter(|| {
                for _ in 0..50 {
                    offset += 1;
                    hub.publish("bench", None, &publication(offset));
                }
                for conn in &conns {
                    if let Drained::Batch(items) = rt.block_on(conn.outbox.drain()) {
                        std::hint::black_box(join_batch(&items));
                    }
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
