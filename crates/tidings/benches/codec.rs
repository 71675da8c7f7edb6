//! The codec: encoding a publication push once (the fan-out's only encode), as JSON
//! and as Protobuf, and decoding the commands clients send most (publish, and a batch
//! of them).

use criterion::{criterion_group, criterion_main, Criterion};
use tidings::protocol::{Command, Publication, Push, RawJson, Reply};

fn codec(c: &mut Criterion) {
    let data =
        RawJson::parse(format!("{{\"bt\":123456,\"p\":\"{}\"}}", "x".repeat(80)).into_bytes())
            .expect("JSON");
    let publication = Publication {
        data: Some(data),
        offset: 42,
        ..Default::default()
    };
    c.bench_function("encode_publication_push", |b| {
        b.iter(|| {
            Reply::push(Push {
                channel: "bench".to_string(),
                publication: Some(publication.clone()),
                ..Default::default()
            })
            .to_json()
        })
    });
    c.bench_function("encode_publication_push_protobuf", |b| {
        b.iter(|| tidings::protocol::proto::publication_push("bench", &publication))
    });
    let publish = format!(
        "{{\"id\":7,\"publish\":{{\"channel\":\"bench\",\"data\":{{\"bt\":123456,\"p\":\"{}\"}}}}}}",
        "x".repeat(80)
    );
    c.bench_function("decode_publish_command", |b| {
        b.iter(|| serde_json::from_str::<Command>(std::hint::black_box(&publish)).expect("decodes"))
    });
    let command: Command = serde_json::from_str(&publish).expect("decodes");
    let mut frame = Vec::new();
    tidings::protocol::proto::encode_command(&command, &mut frame);
    c.bench_function("decode_publish_command_protobuf", |b| {
        b.iter(|| {
            tidings::protocol::proto::decode_frame(
                std::hint::black_box(&frame),
                tidings::protocol::proto::FrameLimits::default(),
            )
            .expect("decodes")
        })
    });
    let batch: String = std::iter::repeat_n(publish.as_str(), 20)
        .collect::<Vec<_>>()
        .join("\n");
    c.bench_function("decode_batch_of_20", |b| {
        b.iter(|| {
            tidings::protocol::codec::split_frame(std::hint::black_box(&batch))
                .map(|line| serde_json::from_str::<Command>(line).expect("decodes"))
                .collect::<Vec<_>>()
        })
    });
}

/// The fossil patch of a delta publication: a ~10 KB JSON object against the
/// previous one with one field changed, worked out once per publication per channel.
fn delta(c: &mut Criterion) {
    let doc = |n: u32| {
        let fields: String = (0..400)
            .map(|i| format!("\"field{i}\":\"value-{i}-{}\",", (i * 7919) % 1000))
            .collect();
        format!("{{{fields}\"n\":{n}}}").into_bytes()
    };
    let (prev, next) = (doc(1), doc(2));
    c.bench_function("fossil_patch_10kb_one_field_changed", |b| {
        b.iter(|| tidings::hub::fossil_patch(std::hint::black_box(&prev), &next))
    });
}

criterion_group!(benches, codec, delta);
criterion_main!(benches);
