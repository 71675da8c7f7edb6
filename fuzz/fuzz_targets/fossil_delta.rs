//! The fossil patch the hub sends delta subscribers: for any previous and next
//! payload, a patch is either absent (not shorter) or rebuilds the next payload
//! exactly from the previous one, as the SDKs apply it. The input is split in two
//! at its first byte's position.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::hub::fossil_patch;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let at = usize::from(cut).min(rest.len());
    let (prev, next) = rest.split_at(at);
    if let Some(patch) = fossil_patch(prev, next) {
        assert!(patch.len() < next.len());
        let rebuilt = fossil_delta::apply(prev, &patch).expect("a patch applies");
        assert_eq!(rebuilt, next);
    }
});
