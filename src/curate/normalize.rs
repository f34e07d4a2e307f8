//! The normal form used to find exact duplicates, and its stable hash.
//!
//! Two texts are exact duplicates when their normal forms are equal: case and the amount or kind
//! of whitespace do not count, anything else does (punctuation, digits, accents). NFKC is not
//! applied: it would fold full-width letters and ligatures, which are rare in the English-heavy
//! corpora kiln fine-tunes on, and it would need a Unicode-table crate for that alone.

use crate::curate::hash::fnv1a64;

/// Lowercases (Unicode-aware), turns every run of whitespace into one space and trims both ends.
///
/// - Lowercasing is per character, with final sigma `ς` folded to `σ` so that `ΟΔΟΣ` and `οδος`
///   meet (str::to_lowercase would give `οδος` for the first only by context).
/// - Whitespace is Unicode `White_Space` (includes no-break space and the ideographic space) plus
///   the zero-width space U+200B, which some scripts (Thai, Khmer) use between words.
/// - The byte-order mark U+FEFF and the soft hyphen U+00AD are dropped: both are invisible and
///   commonly differ between two copies of the same text.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut gap = false;
    for c in text.chars() {
        if is_space(c) {
            gap = true;
            continue;
        }
        if is_invisible(c) {
            continue;
        }
        if gap && !out.is_empty() {
            out.push(' ');
        }
        gap = false;
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else if c == 'ς' {
            out.push('σ');
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// Whitespace for [`normalize`]: Unicode `White_Space` and the zero-width space.
pub(crate) fn is_space(c: char) -> bool {
    c.is_whitespace() || c == '\u{200B}'
}

/// Characters [`normalize`] drops: the byte-order mark and the soft hyphen.
pub(crate) fn is_invisible(c: char) -> bool {
    c == '\u{FEFF}' || c == '\u{00AD}'
}

/// A stable 64-bit hash (FNV-1a) of a normalized text: equal normal forms give equal hashes on
/// every run and machine, so the value can be stored. Distinct texts collide with probability
/// about n²/2⁶⁵ among n texts; [`exact_duplicates`](crate::curate::exact_duplicates) compares
/// the texts themselves when hashes are equal, so a collision never merges two texts.
pub fn content_hash(normalized: &str) -> u64 {
    fnv1a64(normalized.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_whitespace_do_not_count() {
        let a = normalize("  Hello,\tWORLD!\n\nHow  are you? ");
        assert_eq!(a, "hello, world! how are you?");
        assert_eq!(normalize("hello,  world!\r\nhow are YOU?"), a);
        assert_eq!(content_hash(&a), content_hash(&normalize("HELLO, World! How are you?")));
    }

    #[test]
    fn punctuation_and_accents_still_count() {
        assert_ne!(normalize("hello world"), normalize("hello, world"));
        assert_ne!(normalize("cafe"), normalize("café"));
        assert_ne!(content_hash("hello world"), content_hash("hello, world"));
    }

    #[test]
    fn unicode_case_and_spaces() {
        assert_eq!(normalize("ÉCOLE Straße"), "école straße");
        assert_eq!(normalize("ПРИВЕТ Мир"), "привет мир");
        // Final sigma folds, so the capitalised and the lowercase spelling meet.
        assert_eq!(normalize("ΟΔΟΣ"), normalize("οδος"));
        // No-break space, ideographic space and zero-width space are whitespace; BOM is dropped.
        assert_eq!(normalize("\u{FEFF}a\u{00A0}b\u{3000}c\u{200B}d"), "a b c d");
        // Scripts without case pass through unchanged.
        assert_eq!(normalize("你好，世界 🙂"), "你好，世界 🙂");
    }

    #[test]
    fn blank_text_normalizes_to_empty() {
        assert_eq!(normalize(""), "");
        assert_eq!(normalize(" \t\n\u{00A0} "), "");
    }

    #[test]
    fn content_hash_is_pinned() {
        // FNV-1a of "hello world"; a change here would make stored hashes unreadable.
        assert_eq!(content_hash("hello world"), 0x779a_65e7_023c_d2e7);
    }
}
