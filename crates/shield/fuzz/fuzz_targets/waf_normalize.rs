//! Feeds arbitrary bytes to the normaliser from every source and checks
//! that normalising the result again changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shield::waf::normalize::{normalize, path_fold, sql_fold, Source};

fuzz_target!(|data: &[u8]| {
    for source in [Source::Form, Source::Url, Source::Decoded] {
        let once = normalize(data, source);
        let twice = normalize(once.text.as_bytes(), Source::Decoded);
        assert_eq!(once.text, twice.text);
        let _ = sql_fold(&once.lower);
        let _ = path_fold(&once.lower);
    }
});
