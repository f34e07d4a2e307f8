//! Texts that are not worth training on, by cheap rules: empty, binary, encoded blobs, markup
//! without text, and mojibake. Each rule is one pass over the text; the thresholds are named
//! constants with the reasoning beside them. The rules aim to flag only what is plainly not
//! prose: an ordinary e-mail, a URL, a code snippet with a few tags or text in any script is kept.

use crate::curate::normalize::{is_invisible, is_space};

/// Why a text is junk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Junk {
    /// Empty or whitespace only: exactly the texts that
    /// [`normalize`](crate::curate::normalize::normalize) turns into `""`, which also get no
    /// MinHash signature.
    Empty,
    /// Control characters or U+FFFD replacement characters above a small fraction: bytes that
    /// were never text, decoded anyway.
    Binary,
    /// Long base64 or hex runs make up most of the text (an attachment, an inline image, a key).
    Base64,
    /// HTML/XML tags and entities with almost no visible text once they are stripped.
    MarkupOnly,
    /// UTF-8 decoded as Latin-1 or Windows-1252 (`Ã©` for `é`, `â€™` for `’`), at a density that
    /// is not chance.
    Mojibake,
}

impl Junk {
    /// The snake_case name used in reports and on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Junk::Empty => "empty",
            Junk::Binary => "binary",
            Junk::Base64 => "base64",
            Junk::MarkupOnly => "markup_only",
            Junk::Mojibake => "mojibake",
        }
    }
}

impl std::fmt::Display for Junk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The first rule the text breaks, in the order Empty, Binary, Base64, MarkupOnly, Mojibake, or
/// `None` for a text worth keeping.
pub fn detect_junk(text: &str) -> Option<Junk> {
    if text.chars().all(|c| is_space(c) || is_invisible(c)) {
        Some(Junk::Empty)
    } else if is_binary(text) {
        Some(Junk::Binary)
    } else if is_base64(text) {
        Some(Junk::Base64)
    } else if is_markup_only(text) {
        Some(Junk::MarkupOnly)
    } else if is_mojibake(text) {
        Some(Junk::Mojibake)
    } else {
        None
    }
}

// ---- binary ----

/// Fraction of characters that are binary-looking (see `is_binary_char`) from which a text is
/// binary. Text has none; random bytes decoded as UTF-8 with replacement give about half, and
/// decoded as Latin-1 about 11% C0 controls. 5% sits well between, and a log line with a couple
/// of ANSI colour escapes (ESC is a control) stays under it.
const BINARY_MIN_FRACTION: f64 = 0.05;
/// A few stray characters (one lost emoji turned U+FFFD in a short chat line) are damage, not
/// binary; a text needs at least this many unless it has nothing else.
const BINARY_MIN_COUNT: usize = 3;

/// C0 controls other than whitespace, DEL, and U+FFFD. C1 controls (U+0080–U+009F) are left to
/// the mojibake rule: they come from UTF-8 text decoded as Latin-1, not from binary data.
fn is_binary_char(c: char) -> bool {
    c == '\u{FFFD}' || ((c as u32) < 0x80 && c.is_control() && !c.is_whitespace())
}

fn is_binary(text: &str) -> bool {
    let (mut total, mut visible, mut bad) = (0usize, 0usize, 0usize);
    for c in text.chars() {
        total += 1;
        visible += !c.is_whitespace() as usize;
        bad += is_binary_char(c) as usize;
    }
    (bad >= BINARY_MIN_COUNT && bad as f64 >= BINARY_MIN_FRACTION * total as f64) || (bad > 0 && bad == visible)
}

// ---- base64 / hex ----

/// Shortest run counted as base64. Real words and identifiers are shorter; 40 characters are 30
/// bytes of data, and a random run that long lacks a digit, an upper- or a lowercase letter
/// (required below) with probability under 0.1%.
const BASE64_MIN_RUN: usize = 40;
/// Shortest run counted as hex: 32 digits are a 128-bit hash, the smallest blob worth flagging.
const HEX_MIN_RUN: usize = 32;
/// Share of the non-space characters the runs must cover: well over half means the blob, not the
/// words around it, is the text. Not just half: one sentence quoting a commit id can be half hash
/// (tested), while a real attachment or inline image is nearly all blob.
const BASE64_MIN_FRACTION: f64 = 0.6;

fn is_base64_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_')
}

/// A run long enough and mixed enough to be encoded data rather than a word: all hex with a digit
/// and a letter, or base64 with a digit, an uppercase and a lowercase letter.
fn is_encoded_run(run: &str) -> bool {
    let has = |f: fn(&u8) -> bool| run.as_bytes().iter().any(f);
    let digit = has(u8::is_ascii_digit);
    if run.len() >= HEX_MIN_RUN && run.bytes().all(|b| b.is_ascii_hexdigit()) && digit && has(u8::is_ascii_alphabetic) {
        return true;
    }
    run.len() >= BASE64_MIN_RUN && digit && has(u8::is_ascii_uppercase) && has(u8::is_ascii_lowercase)
}

/// A URL's path and query are in the base64 alphabet and can be long and mixed (a file id, a
/// token); a token that is a URL is not an encoded blob.
fn is_url(token: &str) -> bool {
    token.contains("://") || token.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("www."))
}

fn is_base64(text: &str) -> bool {
    let (mut visible, mut encoded) = (0usize, 0usize);
    for token in text.split_whitespace() {
        visible += token.chars().count();
        if is_url(token) {
            continue;
        }
        // Runs are ASCII, so bytes are characters.
        encoded += token.split(|c| !is_base64_char(c)).filter(|run| is_encoded_run(run)).map(str::len).sum::<usize>();
    }
    encoded > 0 && encoded as f64 >= BASE64_MIN_FRACTION * visible as f64
}

// ---- markup ----

/// Letters and digits left outside tags below which a text has "almost no visible words": about
/// a short sentence (eight English words). Counting characters, not space-separated words, treats
/// Chinese or Japanese text, which has no spaces, like any other.
const MARKUP_MIN_VISIBLE_ALNUM: usize = 40;
/// Longest tag looked for. A `<` with no `>` within this many bytes is a less-than sign, not a
/// tag; long enough for tags with inline styles or data URIs.
const MAX_TAG_BYTES: usize = 4096;

/// The end (exclusive) of a tag, comment or declaration starting at `b[i] == b'<'`.
fn tag_end(b: &[u8], i: usize) -> Option<usize> {
    if b[i..].starts_with(b"<!--") {
        return find(b, i + 4, b"-->").map(|k| k + 3);
    }
    let mut j = i + 1;
    if matches!(b.get(j), Some(b'/' | b'!' | b'?')) {
        j += 1;
    }
    if !b.get(j).is_some_and(u8::is_ascii_alphabetic) {
        return None; // "a < b", "<3", "<-"
    }
    let limit = (i + MAX_TAG_BYTES).min(b.len());
    for (k, &c) in b.iter().enumerate().take(limit).skip(j) {
        match c {
            b'>' => return Some(k + 1),
            b'<' => return None,
            _ => {}
        }
    }
    None
}

/// The end of a character reference starting at `b[i] == b'&'`: `&name;`, `&#123;`, `&#x1F600;`.
fn entity_end(b: &[u8], i: usize) -> Option<usize> {
    let rest = &b[i + 1..];
    let (digits, valid, max): (usize, fn(&u8) -> bool, usize) = match rest {
        [b'#', b'x' | b'X', ..] => (2, u8::is_ascii_hexdigit, 6),
        [b'#', ..] => (1, u8::is_ascii_digit, 7),
        [c, ..] if c.is_ascii_alphabetic() => (0, u8::is_ascii_alphanumeric, 32),
        _ => return None,
    };
    let len = rest[digits..].iter().take(max + 1).take_while(|c| valid(c)).count();
    (len >= 1 && len <= max && rest.get(digits + len) == Some(&b';')).then_some(i + 1 + digits + len + 1)
}

/// The first `needle` at or after `from`, ignoring ASCII case.
fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    b.get(from..)?.windows(needle.len()).position(|w| w.eq_ignore_ascii_case(needle)).map(|k| from + k)
}

/// The content of `<script>` and `<style>` is not visible text either: where an opening tag
/// `b[start..end]` is one of them, the position of its closing tag (or the end of the text).
fn raw_text_end(b: &[u8], start: usize, end: usize) -> Option<usize> {
    for name in [&b"script"[..], b"style"] {
        let tag = &b[start + 1..end];
        let named = tag.len() > name.len()
            && tag[..name.len()].eq_ignore_ascii_case(name)
            && !tag[name.len()].is_ascii_alphanumeric();
        if named {
            let mut close = b"</".to_vec();
            close.extend_from_slice(name);
            return Some(find(b, end, &close).unwrap_or(b.len()));
        }
    }
    None
}

/// Counts of `(markup chars, visible non-space chars, visible letters and digits)`.
fn markup_counts(text: &str) -> (usize, usize, usize) {
    let b = text.as_bytes();
    let (mut markup, mut visible, mut alnum) = (0, 0, 0);
    let mut count_visible = |s: &str| {
        for c in s.chars().filter(|c| !c.is_whitespace()) {
            visible += 1;
            alnum += c.is_alphanumeric() as usize;
        }
    };
    let (mut i, mut last) = (0, 0);
    while i < b.len() {
        // '<', '>', '&' and ';' are ASCII and never inside a multi-byte character, so every
        // index used to slice below is a character boundary.
        let end = match b[i] {
            b'<' => tag_end(b, i).map(|e| raw_text_end(b, i, e).unwrap_or(e)),
            b'&' => entity_end(b, i),
            _ => None,
        };
        match end {
            Some(e) => {
                count_visible(&text[last..i]);
                markup += text[i..e].chars().count();
                i = e;
                last = e;
            }
            None => i += 1,
        }
    }
    count_visible(&text[last..]);
    (markup, visible, alnum)
}

/// Markup outweighs the visible text, and what is visible is less than a short sentence.
fn is_markup_only(text: &str) -> bool {
    let (markup, visible, alnum) = markup_counts(text);
    markup > visible && alnum < MARKUP_MIN_VISIBLE_ALNUM
}

// ---- mojibake ----

/// Mojibake sequences per character from which a text is mojibake: 2 per 1000. A text with
/// accented words or curly quotes, once mis-decoded, has one in every few dozen characters; a
/// long document with one stray sequence is mostly fine text.
const MOJIBAKE_MIN_RATE: f64 = 0.002;
/// One sequence can be a real pair of characters (`Ö°`); two are a decoding error.
const MOJIBAKE_MIN_COUNT: usize = 2;

/// Windows-1252's characters for the bytes 0x80–0x9F; a UTF-8 continuation byte in that range
/// shows as one of these when the text is decoded as Windows-1252.
const CP1252_HIGH: &[char] = &[
    '€', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', 'Ž', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š',
    '›', 'œ', 'ž', 'Ÿ',
];

/// Characters that legitimately follow a word in Latin scripts (no-break space before French
/// punctuation, guillemets, curly quotes). They are continuation look-alikes too, so after a lead
/// other than `Ã`/`Â` (which never end a real word before them) they do not count, or `ÉTÉ »` and
/// `Straße“` would be mojibake.
const WORD_FOLLOWERS: &[char] = &['\u{A0}', '«', '»', '‘', '’', '“', '”'];

/// A character that a UTF-8 continuation byte (0x80–0xBF) turns into under Latin-1 or
/// Windows-1252.
fn is_continuation_lookalike(c: char, lead: char) -> bool {
    let byte_like = ('\u{80}'..='\u{BF}').contains(&c) || CP1252_HIGH.contains(&c);
    byte_like && (matches!(lead, 'Ã' | 'Â') || !WORD_FOLLOWERS.contains(&c))
}

/// How many continuation bytes a UTF-8 lead byte announces, read as a Latin-1 character.
fn continuations(lead: char) -> usize {
    match lead as u32 {
        0xC2..=0xDF => 1,
        0xE0..=0xEF => 2,
        0xF0..=0xF4 => 3,
        _ => 0,
    }
}

/// Counts lead + continuation look-alike sequences: `Ã©` (é), `â€™` (’), `Ã¢â‚¬` (’ encoded
/// twice), `ðŸ˜€` (an emoji). `â€` alone counts too: it begins every mis-decoded curly quote and
/// dash, and Windows-1252 drops the third byte of some (0x9D has no character).
fn mojibake_count(text: &str) -> (usize, usize) {
    let chars: Vec<char> = text.chars().collect();
    let (mut hits, mut i) = (0, 0);
    while i < chars.len() {
        let lead = chars[i];
        let need = continuations(lead);
        let got = chars[i + 1..].iter().take(need).take_while(|&&c| is_continuation_lookalike(c, lead)).count();
        if need > 0 && (got == need || (lead == 'â' && chars.get(i + 1) == Some(&'€'))) {
            hits += 1;
            i += 1 + got;
        } else {
            i += 1;
        }
    }
    (hits, chars.len())
}

fn is_mojibake(text: &str) -> bool {
    let (hits, chars) = mojibake_count(text);
    hits >= MOJIBAKE_MIN_COUNT && hits as f64 >= MOJIBAKE_MIN_RATE * chars as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::SplitMix64;

    fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| rng.next_u64() as u8).collect()
    }

    /// Standard base64 with padding, lines of 76 characters as MIME writes them.
    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let v = chunk.iter().enumerate().fold(0u32, |v, (k, &b)| v | (b as u32) << (16 - 8 * k));
            for k in 0..4 {
                out.push(if k <= chunk.len() { ALPHABET[(v >> (18 - 6 * k) & 63) as usize] as char } else { '=' });
            }
        }
        out.as_bytes().chunks(76).map(|l| std::str::from_utf8(l).unwrap()).collect::<Vec<_>>().join("\n")
    }

    /// What a program shows when it decodes UTF-8 text as Windows-1252 (the bytes 0x81, 0x8D,
    /// 0x8F, 0x90 and 0x9D have no character there; tools commonly pass them through as C1
    /// controls) or as Latin-1.
    fn misdecode(s: &str, cp1252: bool) -> String {
        const HIGH: &str = "€\u{81}‚ƒ„…†‡ˆ‰Š‹Œ\u{8D}Ž\u{8F}\u{90}‘’“”•–—˜™š›œ\u{9D}žŸ";
        let high: Vec<char> = HIGH.chars().collect();
        s.bytes()
            .map(|b| if cp1252 && (0x80..0xA0).contains(&b) { high[b as usize - 0x80] } else { b as char })
            .collect()
    }

    fn assert_junk(text: &str, want: Option<Junk>) {
        assert_eq!(detect_junk(text), want, "{text:?}");
    }

    #[test]
    fn names_are_snake_case() {
        let all = [Junk::Empty, Junk::Binary, Junk::Base64, Junk::MarkupOnly, Junk::Mojibake];
        let names: Vec<&str> = all.iter().map(Junk::name).collect();
        assert_eq!(names, ["empty", "binary", "base64", "markup_only", "mojibake"]);
        assert_eq!(Junk::MarkupOnly.to_string(), "markup_only");
    }

    #[test]
    fn empty() {
        for t in ["", "   ", "\n\t\r\n", "\u{A0}\u{3000}", "\u{FEFF}\u{200B} "] {
            assert_junk(t, Some(Junk::Empty));
            assert_eq!(crate::curate::normalize(t), "");
        }
    }

    #[test]
    fn binary() {
        let lossy = String::from_utf8_lossy(&random_bytes(2000, 1)).into_owned();
        assert_junk(&lossy, Some(Junk::Binary));
        // Random bytes read as Latin-1: only the C0 controls (~11%) give it away.
        let latin1: String = random_bytes(2000, 2).iter().map(|&b| b as char).collect();
        assert_junk(&latin1, Some(Junk::Binary));
        assert_junk("PK\u{3}\u{4}\u{14}\u{0}\u{6}\u{0}\u{8}\u{0}\u{0}\u{0}!\u{0}word/document.xml", Some(Junk::Binary));
        assert_junk("\u{0}", Some(Junk::Binary));
        assert_junk("\u{FFFD}\u{FFFD} \u{FFFD}", Some(Junk::Binary));
    }

    #[test]
    fn not_binary() {
        assert_junk("The caf\u{FFFD} was closed when we arrived, so we walked home instead.", None);
        assert_junk("thanks for the ride \u{FFFD}", None);
        assert_junk("\u{1b}[31mERROR\u{1b}[0m: disk full on /dev/sda1, retrying in 5 seconds", None);
        assert_junk("name\tage\tcity\nAda\t36\tLondon\r\nAlan\t41\tWilmslow\u{c}", None);
    }

    #[test]
    fn base64_and_hex() {
        let blob = base64(&random_bytes(3000, 3));
        assert_junk(&blob, Some(Junk::Base64));
        assert_junk(&format!("Attachment follows:\n{blob}\n"), Some(Junk::Base64));
        let png = format!("<img src=\"data:image/png;base64,{}\">", base64(&random_bytes(300, 4)).replace('\n', ""));
        assert_junk(&png, Some(Junk::Base64));
        let hex: String = random_bytes(640, 5).iter().map(|b| format!("{b:02x}")).collect();
        let hex_lines: Vec<&str> = (0..hex.len()).step_by(64).map(|i| &hex[i..i + 64]).collect();
        assert_junk(&hex_lines.join("\n"), Some(Junk::Base64));
    }

    #[test]
    fn not_base64() {
        assert_junk("Fixed in commit 3f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39 yesterday, please pull.", None);
        assert_junk("https://drive.google.com/file/d/1A2b3C4d5E6f7G8h9I0jKlMnOpQrStUvWxYz/view?usp=sharing", None);
        assert_junk("aGVsbG8gd29ybGQ= is \"hello world\" in base64.", None);
        assert_junk("Ticket numbers 1234567890123456789012345678901234567890 and ============ lines.", None);
        assert_junk("antidisestablishmentarianism-supercalifragilisticexpialidocious-words", None);
    }

    #[test]
    fn markup_only() {
        assert_junk("<br>", Some(Junk::MarkupOnly));
        assert_junk("<p>Hi</p>", Some(Junk::MarkupOnly));
        assert_junk("&nbsp;&nbsp;&copy;&#169;&#xA9;", Some(Junk::MarkupOnly));
        assert_junk(
            "<div class=\"nav\"><ul><li><a href=\"/\">Home</a></li><li><a href=\"/about\">About us</a></li>\
             <li><a href=\"/contact\">Contact</a></li></ul></div><!-- generated by a CMS, page 4 of 9 -->",
            Some(Junk::MarkupOnly),
        );
        // Script and style content is not visible text.
        let page = "<html><head><style>body { font-family: Helvetica, Arial, sans-serif; margin: 0 }</style>\
                    <script type=\"text/javascript\">var tracker = initialiseTrackingPixel('account-12345');\
                    window.onload = function () { tracker.send('pageview') };</script></head>\
                    <body><p>Loading&hellip;</p></body></html>";
        assert_junk(page, Some(Junk::MarkupOnly));
    }

    #[test]
    fn not_markup_only() {
        assert_junk(
            "To center it, wrap the element: <div style=\"text-align:center\"><img src=\"logo.png\"></div> \
             and it works in every browser.",
            None,
        );
        assert_junk("fn max<T: Ord>(a: T, b: T) -> T { if a > b { a } else { b } }", None);
        assert_junk("Use <b>bold</b> and <i>italic</i> sparingly; x < y && y > z holds. AT&T, Q&A.", None);
        assert_junk(
            "<p>这是一个很长的中文段落，用来说明没有空格的文字也算作可见文字，而不是标记。我们今天去公园散步吧。</p>",
            None,
        );
    }

    #[test]
    fn mojibake() {
        let text = "It’s a lovely café — don’t miss the crème brûlée or the “special” tarte.";
        assert_junk(&misdecode(text, true), Some(Junk::Mojibake));
        assert_junk(&misdecode(text, false), Some(Junk::Mojibake));
        assert_junk(&misdecode("Привет, мир! Как дела?", true), Some(Junk::Mojibake));
        assert_junk(&misdecode("Great job 😀 see you 🎉", true), Some(Junk::Mojibake));
        // Encoded twice: ’ → â€™ → Ã¢â‚¬â„¢.
        assert_junk(&misdecode(&misdecode("We’re done. It’s late.", true), true), Some(Junk::Mojibake));
        assert!(misdecode(text, true).contains("â€™") && misdecode(text, true).contains("Ã©"));
    }

    #[test]
    fn real_text_is_not_junk() {
        let email = "From: Alice Smith <alice@example.com>\nTo: Bob <bob@example.org>\nSubject: Re: Q3 numbers\n\n\
                     Hi Bob,\n\nThanks for sending these over. I've looked at the spreadsheet and the totals in \
                     rows 14-20 don't add up (they're off by $1,250). Could you check before Friday's meeting?\n\n\
                     Best,\nAlice\n--\nAlice Smith | Finance | +1 (555) 010-0199";
        let texts = [
            email,
            "Slides are at https://example.com/talks/2024/curation.pdf?download=1&lang=en#page=3 — see p. 3.",
            "你好，世界！今天天气很好，我们去公园散步吧。",
            "مرحبا بالعالم، كيف حالك اليوم؟ أتمنى أن تكون بخير.",
            "Привет, мир! Как дела? Всё хорошо, спасибо.",
            "Γειά σου Κόσμε! ΟΔΟΣ ΑΘΗΝΑΣ.",
            "नमस्ते दुनिया, आप कैसे हैं?",
            "Great job 🎉🎉🔥👍 see you soon 😀 👨‍👩‍👧",
            "«\u{A0}Voilà\u{A0}», dit-elle. «\u{A0}C’est l’ÉTÉ\u{A0}!\u{A0}» Le café était très bon — n’est-ce pas\u{A0}?",
            "„Grüße aus München“, schrieb er. »Straße« ist ein Wort. GRÜẞE, Gruß“",
            "¿Qué tal? ¡ESPAÑA “olé”! São Paulo, SÃO PAULO. Ça va, À BIENTÔT.",
            "x",
        ];
        for t in texts {
            assert_junk(t, None);
        }
    }
}
