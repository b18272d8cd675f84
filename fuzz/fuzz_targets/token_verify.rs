//! Any token: verification never panics, and only a token signed with the
//! secret (impossible to forge here) could pass.
#![no_main]

use invitation_server::Authority;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let authority = Authority::new(b"fuzz-secret-0123456789abcdef", "invitation", None);
    assert!(authority.verify(token).is_err(), "a forged token passed: {token:?}");
});
