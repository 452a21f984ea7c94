//! The push template parser and its checks (`Templates::from_texts`, what `Templates::load`
//! calls after reading `zh-CN.toml` and `en.toml`) on any text, against the built-in catalogue
//! (the SMS length check renders every message the catalogue can produce).
//!
//! A NUL byte splits the input into the two files; without one, both locales get the same
//! text. The property: no panic; templates that render, or an error naming the file.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tongban_features::catalogue::Catalogue;
use tongban_server::templates::Templates;

fn catalogue() -> &'static Catalogue {
    static C: OnceLock<Catalogue> = OnceLock::new();
    C.get_or_init(Catalogue::builtin)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (zh, en) = text.split_once('\0').unwrap_or((&text, &text));
    match Templates::from_texts(Path::new("fuzz"), [zh, en], catalogue()) {
        Ok(t) => t.check(catalogue()).expect("templates that loaded pass the same checks again"),
        Err(e) => assert!(e.starts_with("fuzz/"), "an error that does not name the file: {e}"),
    }
});
