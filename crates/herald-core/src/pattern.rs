//! [`Pattern`]: a glob with `*` wildcards, for channel patterns in tokens and rules, and for
//! allowed origins.

use std::fmt;

/// A glob where `*` matches any run of characters (including none, and including `.`), and
/// every other character matches itself. `*` alone matches everything.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern(Box<str>);

impl Pattern {
    /// Wrap a pattern string. Every string is a valid pattern.
    pub fn new(pattern: &str) -> Self {
        Self(pattern.into())
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        glob(self.0.as_bytes(), text.as_bytes())
    }
}

/// Iterative glob matching with single-star backtracking: O(len(p) * len(t)) worst case,
/// no recursion, no allocation.
fn glob(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_globs() {
        let m = |p: &str, t: &str| Pattern::new(p).matches(t);
        assert!(m("*", ""));
        assert!(m("*", "anything.at.all"));
        assert!(m("private-orders.*", "private-orders.42"));
        assert!(m("private-orders.*", "private-orders."));
        assert!(!m("private-orders.*", "private-orders"));
        assert!(m("presence-*.room", "presence-a.b.room"));
        assert!(!m("presence-*.room", "presence-a.b.rooms"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exactly"));
        assert!(m("https://*.example.com", "https://app.example.com"));
        assert!(!m("https://*.example.com", "https://example.com"));
    }
}
