//! Name validation and the pub/sub pattern grammar (DESIGN §3 "Names", P4).
//!
//! A name is 1–200 bytes of `A–Z a–z 0–9 _ - .`, does not start or end with `.`, and has no
//! empty `.`-separated token. A pattern is a name whose tokens may also be `*` (exactly one
//! token) and whose last token may be `>` (one or more trailing tokens).

use crate::error::{Error, Result};

/// The longest name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// Check a queue, channel, topic or group name. `what` names it in the error
/// (`"queue"`, `"channel"`, …).
///
/// # Errors
/// [`crate::ErrorKind::InvalidInput`] saying exactly what is wrong.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    check(what, name, false)
}

fn check(what: &str, name: &str, pattern: bool) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(format!("{what} name is empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "{what} name is {} bytes; the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    let tokens: Vec<&str> = name.split('.').collect();
    let last = tokens.len() - 1;
    for (i, tok) in tokens.iter().enumerate() {
        if tok.is_empty() {
            return Err(Error::invalid(format!(
                "{what} name {name:?} has an empty token (leading, trailing or double '.')"
            )));
        }
        if pattern && *tok == "*" {
            continue;
        }
        if pattern && *tok == ">" {
            if i != last {
                return Err(Error::invalid(format!(
                    "{what} pattern {name:?}: '>' may only be the last token"
                )));
            }
            continue;
        }
        if let Some(bad) = tok
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(Error::invalid(format!(
                "{what} name {name:?} contains {bad:?}; allowed are A-Z a-z 0-9 _ - and '.' between tokens{}",
                if pattern { ", '*' and a final '>'" } else { "" }
            )));
        }
    }
    Ok(())
}

/// The longest deduplication key accepted, in bytes (Q11).
pub const MAX_DEDUP_KEY_LEN: usize = 200;

/// Check a deduplication key (Q11): 1–200 bytes of UTF-8 without control characters. Unlike
/// names, any other character is allowed (keys are often made of user ids, urls, hashes).
///
/// # Errors
/// [`crate::ErrorKind::InvalidInput`] saying what is wrong.
pub fn check_dedup_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("dedup key is empty"));
    }
    if key.len() > MAX_DEDUP_KEY_LEN {
        return Err(Error::invalid(format!(
            "dedup key is {} bytes; the limit is {MAX_DEDUP_KEY_LEN}",
            key.len()
        )));
    }
    if let Some(bad) = key.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(format!(
            "dedup key {key:?} contains the control character {bad:?}"
        )));
    }
    Ok(())
}

/// A parsed subscription pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    raw: String,
    literal: bool,
}

impl Pattern {
    /// Parse and validate a pattern (a plain channel name is a pattern that matches itself).
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for a malformed pattern.
    pub fn parse(pattern: &str) -> Result<Pattern> {
        check("pattern", pattern, true)?;
        let literal = !pattern.split('.').any(|t| t == "*" || t == ">");
        Ok(Pattern {
            raw: pattern.to_string(),
            literal,
        })
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether the pattern has no wildcard.
    pub fn is_literal(&self) -> bool {
        self.literal
    }

    /// Whether `channel` (a valid name) matches.
    pub fn matches(&self, channel: &str) -> bool {
        if self.literal {
            return self.raw == channel;
        }
        let mut pat = self.raw.split('.');
        let mut chan = channel.split('.');
        loop {
            match (pat.next(), chan.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(c)) if p == c => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for n in ["a", "tasks", "meeting.created", "A-b_c.9", &"x".repeat(200)] {
            validate_name("queue", n).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
    }

    #[test]
    fn invalid_names() {
        for n in [
            "",
            ".a",
            "a.",
            "a..b",
            "a b",
            "a/b",
            "ä",
            "a*",
            "a.>",
            &"x".repeat(201),
        ] {
            let e = validate_name("queue", n).expect_err(n);
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn pattern_grammar() {
        let p = |s: &str| Pattern::parse(s).expect(s);
        assert!(p("a.*").matches("a.b"));
        assert!(!p("a.*").matches("a.b.c"));
        assert!(!p("a.*").matches("a"));
        assert!(p("a.>").matches("a.b"));
        assert!(p("a.>").matches("a.b.c"));
        assert!(!p("a.>").matches("a"));
        assert!(p("*.created").matches("meeting.created"));
        assert!(!p("*.created").matches("meeting.ended"));
        assert!(p(">").matches("x"));
        assert!(p(">").matches("x.y"));
        assert!(p("a.b").matches("a.b"));
        assert!(!p("a.b").matches("a.bc"));
        assert!(p("*.*").matches("a.b"));
        assert!(p("a.*.c.>").matches("a.x.c.d.e"));
        assert!(!p("a.*.c.>").matches("a.x.c"));
        assert!(Pattern::parse("a.>.b").is_err());
        assert!(Pattern::parse("a.*b").is_err());
        assert!(Pattern::parse("").is_err());
    }
}
