//! Any input: decoding never panics; whatever decodes re-encodes to
//! something that decodes to the same value.
#![no_main]

use invitation_core::DecodeLimits;
use invitation_core::protocol::{ClientMessage, ServerMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = DecodeLimits::default();
    if let Ok(m) = ClientMessage::decode(text, &limits) {
        let again = ClientMessage::decode(&m.encode(), &limits).expect("re-decodes");
        assert_eq!(again, m);
    }
    if let Ok(m) = ServerMessage::decode(text, &limits) {
        let again = ServerMessage::decode(&m.encode(), &limits).expect("re-decodes");
        assert_eq!(again, m);
    }
});
