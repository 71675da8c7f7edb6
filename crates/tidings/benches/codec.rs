//! The codec: encoding a publication push once (the fan-out's only encode), and
//! decoding the commands clients send most (publish, and a batch of them).

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
    let publish = format!(
        "{{\"id\":7,\"publish\":{{\"channel\":\"bench\",\"data\":{{\"bt\":123456,\"p\":\"{}\"}}}}}}",
        "x".repeat(80)
    );
    c.bench_function("decode_publish_command", |b| {
        b.iter(|| serde_json::from_str::<Command>(std::hint::black_box(&publish)).expect("decodes"))
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

criterion_group!(benches, codec);
criterion_main!(benches);
