//! Text from outside pivault on its way to a person: Vault's error messages and warnings,
//! names read from certificates. A terminal acts on some characters instead of showing
//! them — ESC starts ANSI sequences that recolour, move the cursor, clear the screen or set
//! the window title; CR rewrites the line; Unicode bidi controls reorder what is shown
//! ("Trojan Source", CVE-2021-42574) — so a server could make an error say something it
//! does not. [`sanitize`] is the one place such text is made safe to show; the Vault client
//! applies it where Vault's text enters (so every `VaultError` and every warning is
//! already safe), and the CLI applies it to any other outside text it prints.

/// Longest piece of outside text kept for one message, in characters (Vault's own messages
/// are one line; a proxy's HTML error page is not worth more).
pub const MAX_CHARS: usize = 1000;

/// Bidi formatting characters (Unicode 15, UAX #9 "explicit formatting"), and the line and
/// paragraph separators, which break a line like LF does.
fn is_format_control(c: char) -> bool {
    matches!(c,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` made safe to print: every control character (C0, DEL, C1 — `char::is_control`) and
/// bidi formatting character is written as a visible escape (`\n`, `\r`, `\t`, `\x1b`,
/// `\u{202e}`); all other text, non-ASCII letters included, is unchanged. Text longer than
/// [`MAX_CHARS`] characters is cut there and ends in "…".
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_CHARS * 4));
    for (i, c) in s.chars().enumerate() {
        if i == MAX_CHARS {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() && (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() || is_format_control(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether `s` would print as it reads (nothing [`sanitize`] would escape).
pub fn is_clean(s: &str) -> bool {
    !s.chars().any(|c| c.is_control() || is_format_control(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_text_kept() {
        assert_eq!(sanitize("plain text, é ü 日本"), "plain text, é ü 日本");
        assert_eq!(
            sanitize("\u{1b}[31mred\r\n\t\u{7}\u{7f}"),
            "\\x1b[31mred\\r\\n\\t\\x07\\x7f"
        );
        // C1 CSI (0x9b) acts like ESC [ on some terminals; bidi overrides reorder text.
        assert_eq!(
            sanitize("a\u{9b}1m\u{202e}b\u{2066}"),
            "a\\x9b1m\\u{202e}b\\u{2066}"
        );
        assert!(is_clean(&sanitize("\u{1b}\u{202e}\u{2028}\u{0}")));
        assert!(!is_clean("\u{1b}"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 500,
            failure_persistence: None,
            ..Default::default()
        })]

        /// Whatever comes in prints clean; clean text of a normal length is left as it is.
        #[test]
        fn sanitized_text_is_clean_and_clean_text_unchanged(
            chars in proptest::collection::vec(proptest::prelude::any::<char>(), 0..300),
        ) {
            let s: String = chars.into_iter().collect();
            let out = sanitize(&s);
            proptest::prop_assert!(is_clean(&out), "{:?}", out);
            if is_clean(&s) {
                proptest::prop_assert_eq!(out, s);
            }
        }
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_CHARS + 10);
        let s = sanitize(&long);
        assert_eq!(s.chars().count(), MAX_CHARS + 1);
        assert!(s.ends_with('…'));
        assert_eq!(sanitize(&"x".repeat(MAX_CHARS)).len(), MAX_CHARS);
    }
}
