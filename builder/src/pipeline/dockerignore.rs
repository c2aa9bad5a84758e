//! `.dockerignore` patterns, matched the way the Docker CLI matches them.
//!
//! Each non-empty, non-comment line is a pattern; a leading `!` makes it an exception. Patterns
//! are cleaned (leading `/` and `./` dropped) and matched against `/`-separated paths relative to
//! the build context with Go's `filepath.Match` syntax (`*`, `?`, `[...]`, `\` escapes) plus `**`
//! for any number of directories. A pattern that matches a directory also matches everything
//! below it. The last matching pattern decides.
//!
//! The matching is globset's (one [`GlobSet`] of every pattern, `*` not crossing `/`, so a
//! pattern costs a regex match, never a search exponential in its `*`s: a pushed
//! `.dockerignore` is untrusted). A pattern globset rejects (an unclosed `[`) matches nothing.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// A parsed `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    /// Every usable pattern's glob (a pattern ending in `/**` has a second one without it).
    globs: GlobSet,
    /// For each glob, whether its pattern is an exception (`!`), in file order.
    negate: Vec<bool>,
}

impl Ignore {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Ignore {
        let mut globs = GlobSetBuilder::new();
        let mut negate = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negated, pat) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let segs: Vec<String> = pat
                .split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .map(go_segment)
                .collect();
            if segs.is_empty() {
                continue;
            }
            let mut variants = vec![segs.join("/")];
            // `dir/**` also matches `dir` itself (`**` is any number of directories, zero too).
            if segs.len() > 1 && segs.last().is_some_and(|s| s == "**") {
                variants.push(segs[..segs.len() - 1].join("/"));
            }
            let compiled: Result<Vec<_>, _> = variants
                .iter()
                .map(|v| {
                    GlobBuilder::new(v)
                        .literal_separator(true)
                        .backslash_escape(true)
                        .build()
                })
                .collect();
            for glob in compiled.into_iter().flatten() {
                globs.add(glob);
                negate.push(negated);
            }
        }
        Ignore {
            globs: globs.build().unwrap_or_default(),
            negate,
        }
    }

    /// Whether `path` (relative, `/`-separated) is excluded from the context.
    pub fn excluded(&self, path: &str) -> bool {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        // The last pattern matching the path itself or any of its parent directories.
        let mut last = None;
        let mut hits = Vec::new();
        for n in 1..=segs.len() {
            self.globs.matches_into(segs[..n].join("/"), &mut hits);
            last = last.max(hits.iter().max().copied());
        }
        last.is_some_and(|i| !self.negate[i])
    }
}

/// A pattern segment in globset's syntax: Go's `filepath.Match` has no `{a,b}` alternation, so
/// braces outside a class are escaped, and so is a trailing lone `\`.
fn go_segment(seg: &str) -> String {
    let mut out = String::with_capacity(seg.len());
    let mut chars = seg.chars();
    let mut class: Option<usize> = None; // characters seen inside an open `[`
    while let Some(c) = chars.next() {
        match (c, class) {
            ('\\', None) => match chars.next() {
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push_str("\\\\"),
            },
            ('[', None) => {
                class = Some(0);
                out.push(c);
            }
            ('{' | '}', None) => {
                out.push('\\');
                out.push(c);
            }
            (']', Some(n)) if n > 0 => {
                class = None;
                out.push(c);
            }
            ('!' | '^', Some(0)) => out.push(c),
            (_, Some(n)) => {
                class = Some(n + 1);
                out.push(c);
            }
            (_, None) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One segment pattern alone, compiled as [`Ignore`] compiles it; `None` if globset rejects
    /// it (then it matches nothing).
    fn matcher(p: &str) -> Option<globset::GlobMatcher> {
        GlobBuilder::new(&go_segment(p))
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .ok()
            .map(|g| g.compile_matcher())
    }

    /// One segment pattern matched alone, as [`Ignore`] matches it.
    fn glob(p: &[u8], s: &[u8]) -> bool {
        let (Ok(p), Ok(s)) = (std::str::from_utf8(p), std::str::from_utf8(s)) else {
            return false;
        };
        matcher(p).is_some_and(|m| m.is_match(s))
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

    /// The hand-written matcher this module had before globset (exponential in the number of
    /// `*`), kept as the reference for the semantics.
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
            // Compiled once per pattern: a regex per (pattern, name) takes minutes.
            let m = matcher(p);
            for s in &names {
                assert_eq!(
                    m.as_ref().is_some_and(|m| m.is_match(s)),
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
