//! Helpers to write JSON by hand.
//!
//! Server messages are written field by field into a byte buffer rather than through a
//! `Serialize` struct, because their `data` is already-validated JSON text that must be
//! copied verbatim (a publication's payload is parsed once, where it enters the server, and
//! never re-serialised). Strings still go through `serde_json` so escaping is always right.

/// Append `s` as a JSON string literal, with quotes and escapes.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail, and a &str always serialises.
    serde_json::to_writer(&mut *out, s).expect("serialising a str into a Vec cannot fail");
}

/// Append `n` as a JSON number.
pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Append an optional string: a literal, or `null`.
pub fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Whether `text` is one complete, valid JSON value.
pub fn is_valid(text: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_strings() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\n\u{1}é");
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#""a\"b\\c\n\u0001é""#
        );
        assert!(is_valid(&out));
        assert!(!is_valid(b"{"));
        assert!(!is_valid(b"{} {}"));
    }
}
