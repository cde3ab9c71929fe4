//! Continuation-token decoding: any string a caller (or a tampered pipeline) sends as
//! `continuationToken`. Invariants: never panics; a foreign token is a ConfigurationError;
//! whatever decodes re-encodes to a token that decodes to the same state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapstage::FailureKind;
use snapstage::job::continuation::Continuation;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    for function in ["snapshot-production", "restore-to-staging"] {
        match Continuation::decode(token, function) {
            Ok(c) => {
                assert_eq!(c.function, function);
                if let Ok(again) = c.encode() {
                    let back = Continuation::decode(&again, function);
                    assert!(matches!(back, Ok(ref b) if *b == c), "round trip: {token:?}");
                }
            }
            Err(e) => assert_eq!(e.failure_kind(), FailureKind::ConfigurationError, "{e}"),
        }
    }
});
