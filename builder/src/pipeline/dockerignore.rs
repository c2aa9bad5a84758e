//! `.dockerignore` patterns, matched the way the Docker CLI matches them.
//!
//! Each non-empty, non-comment line is a pattern; a leading `!` makes it an exception. Patterns
//! are cleaned (leading `/` and `./` dropped) and matched against `/`-separated paths relative to
//! the build context with Go's `filepath.Match` syntax (`*`, `?`, `[...]`, `\` escapes) plus `**`
//! for any number of directories. A pattern that matches a directory also matches everything
//! below it. The last matching pattern decides.

/// A parsed `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    patterns: Vec<(bool, Vec<String>)>,
}

impl Ignore {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Ignore {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negate, pat) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let segs: Vec<String> = pat
                .split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .map(str::to_string)
                .collect();
            if segs.is_empty() {
                continue;
            }
            patterns.push((negate, segs));
        }
        Ignore { patterns }
    }

    /// Whether `path` (relative, `/`-separated) is excluded from the context.
    pub fn excluded(&self, path: &str) -> bool {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut excluded = false;
        for (negate, pat) in &self.patterns {
            // The path itself or any of its parent directories.
            let hit = (1..=segs.len()).any(|n| match_segments(pat, &segs[..n]));
            if hit {
                excluded = !negate;
            }
        }
        excluded
    }
}

/// Whether the pattern's segments match the path's, `**` standing for any number of segments.
/// Dynamic programming over (pattern segment, path segment), so a pattern of many `**` costs
/// O(pattern × path) glob calls, never an exponential search (a pushed `.dockerignore` is
/// untrusted input).
fn match_segments(pat: &[String], path: &[&str]) -> bool {
    let m = path.len();
    // `next[j]`: pat[i + 1..] matches path[j..].
    let mut next = vec![false; m + 1];
    next[m] = true;
    for p in pat.iter().rev() {
        let mut cur = vec![false; m + 1];
        for j in (0..=m).rev() {
            cur[j] = if p == "**" {
                next[j] || (j < m && cur[j + 1])
            } else {
                j < m && next[j + 1] && glob(p.as_bytes(), path[j].as_bytes())
            };
        }
        next = cur;
    }
    next[0]
}

/// One element of a segment pattern.
#[derive(Debug, Clone, Copy)]
enum Tok<'a> {
    /// `*`: any run of bytes.
    Star,
    /// `?`: any one byte.
    Any,
    /// `[...]`, `[^...]`, `[!...]`: one byte in (or not in) the class.
    Class { negate: bool, body: &'a [u8] },
    /// A byte, possibly `\`-escaped.
    Lit(u8),
}

impl Tok<'_> {
    fn matches(&self, c: u8) -> bool {
        match *self {
            Tok::Star => true,
            Tok::Any => true,
            Tok::Lit(l) => l == c,
            Tok::Class { negate, body } => {
                let mut hit = false;
                let mut i = 0;
                while i < body.len() {
                    if i + 2 < body.len() && body[i + 1] == b'-' {
                        if body[i] <= c && c <= body[i + 2] {
                            hit = true;
                        }
                        i += 3;
                    } else {
                        if body[i] == c {
                            hit = true;
                        }
                        i += 1;
                    }
                }
                hit != negate
            }
        }
    }
}

/// The pattern's tokens; `None` for an unclosed `[`, which matches nothing.
fn tokens(p: &[u8]) -> Option<Vec<Tok<'_>>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'*' => {
                out.push(Tok::Star);
                i += 1;
            }
            b'?' => {
                out.push(Tok::Any);
                i += 1;
            }
            b'[' => {
                let close = p[i + 1..].iter().position(|&b| b == b']')? + i + 1;
                let class = &p[i + 1..close];
                let (negate, body) = match class.first() {
                    Some(b'^') | Some(b'!') => (true, &class[1..]),
                    _ => (false, class),
                };
                out.push(Tok::Class { negate, body });
                i = close + 1;
            }
            b'\\' if i + 1 < p.len() => {
                out.push(Tok::Lit(p[i + 1]));
                i += 2;
            }
            c => {
                out.push(Tok::Lit(c));
                i += 1;
            }
        }
    }
    Some(out)
}

/// Go `filepath.Match` within one path segment. Greedy with one backtrack point (the last
/// `*`), so it runs in O(pattern × segment) whatever the pattern (a recursive matcher is
/// exponential in the number of `*`).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let Some(toks) = tokens(p) else {
        return false;
    };
    let (mut ti, mut si) = (0, 0);
    // After the last `*` seen: the token after it, and where in `s` it started matching.
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if let Some(t) = toks.get(ti) {
            if matches!(t, Tok::Star) {
                star = Some((ti + 1, si));
                ti += 1;
                continue;
            }
            if t.matches(s[si]) {
                ti += 1;
                si += 1;
                continue;
            }
        }
        match star {
            Some((t, from)) => {
                ti = t;
                si = from + 1;
                star = Some((t, from + 1));
            }
            None => return false,
        }
    }
    toks[ti..].iter().all(|t| matches!(t, Tok::Star))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_semantics() {
        let ig = Ignore::parse(
            "# comment\n*.log\n/node_modules\nsecret/**\n!secret/keep.txt\n**/tmp\ndocs/[a-c]*.md\n",
        );
        assert!(ig.excluded("app.log"));
        assert!(!ig.excluded("sub/app.log"), "*.log is anchored at the root");
        assert!(ig.excluded("node_modules/x/y.js"));
        assert!(ig.excluded("secret/a"));
        assert!(!ig.excluded("secret/keep.txt"));
        assert!(ig.excluded("a/b/tmp/c"));
        assert!(ig.excluded("docs/b1.md"));
        assert!(!ig.excluded("docs/d1.md"));
        assert!(!ig.excluded("src/main.rs"));
    }

    /// The matcher before it was made linear: exponential in the number of `*`, kept as the
    /// reference for the semantics.
    fn glob_reference(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') => (0..=s.len()).any(|i| glob_reference(&p[1..], &s[i..])),
            Some(b'?') => !s.is_empty() && glob_reference(&p[1..], &s[1..]),
            Some(b'[') => {
                let Some(&c) = s.first() else { return false };
                let Some(close) = p.iter().skip(1).position(|&b| b == b']').map(|i| i + 1) else {
                    return false;
                };
                let tok = tokens(&p[..=close]).unwrap()[0];
                tok.matches(c) && glob_reference(&p[close + 1..], &s[1..])
            }
            Some(b'\\') if p.len() > 1 => {
                s.first() == Some(&p[1]) && glob_reference(&p[2..], &s[1..])
            }
            Some(&c) => s.first() == Some(&c) && glob_reference(&p[1..], &s[1..]),
        }
    }

    fn words(alphabet: &[&str], max: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..max {
            last = last
                .iter()
                .flat_map(|w| alphabet.iter().map(move |a| format!("{w}{a}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn the_linear_glob_matches_as_the_recursive_one_did() {
        let patterns = words(&["a", "b", "*", "?", "[ab]", "[!a]", "\\*", "["], 4);
        let names = words(&["a", "b", "*", "["], 4);
        for p in &patterns {
            for s in &names {
                assert_eq!(
                    glob(p.as_bytes(), s.as_bytes()),
                    glob_reference(p.as_bytes(), s.as_bytes()),
                    "pattern {p:?} on {s:?}"
                );
            }
        }
    }

    #[test]
    fn many_stars_and_double_stars_do_not_run_away() {
        // Found by the `dockerignore` fuzz target: `**?**?` against a long segment took
        // exponential time. Both answers are known without search.
        let long = "a".repeat(200);
        let stars = format!("{}b", "*?".repeat(40));
        assert!(!glob(stars.as_bytes(), long.as_bytes()));
        assert!(glob("*?".repeat(40).as_bytes(), long.as_bytes()));
        let ig = Ignore::parse(&format!("{}/x\n", vec!["**"; 40].join("/")));
        let deep = vec!["d"; 60].join("/");
        assert!(!ig.excluded(&deep));
        assert!(ig.excluded(&format!("{deep}/x")));
    }
}
