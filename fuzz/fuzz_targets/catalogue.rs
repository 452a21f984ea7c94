//! The catalogue loader (`Catalogue::from_sources`, what `Catalogue::load` calls after reading
//! the `*.toml` files of a folder) on any text.
//!
//! NUL bytes (which no TOML file holds) split the input into files, so that the checks across
//! files (duplicate ids, bundles naming services of another file) are reached too. Bytes that
//! are not UTF-8 are replaced, as `load` would refuse them before parsing. The property: no
//! panic; a catalogue whose every service is found again by its id, or a non-empty list of
//! problems that each name one of the files.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tongban_features::catalogue::{Catalogue, CatalogueError};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let files: Vec<(String, String)> =
        text.split('\0').enumerate().map(|(i, t)| (format!("catalogue/f{i}.toml"), t.to_owned())).collect();
    match Catalogue::from_sources(&files) {
        Ok(cat) => {
            for (i, s) in cat.services().iter().enumerate() {
                assert_eq!(cat.lookup(&s.id), Some(i as u32), "{}", s.id);
            }
        }
        Err(CatalogueError::Invalid(problems)) => {
            assert!(!problems.is_empty());
            for p in &problems {
                assert!(files.iter().any(|(name, _)| *name == p.file), "a problem naming no file: {p}");
            }
        }
        Err(e) => panic!("from_sources reads no file, yet: {e}"),
    }
});
