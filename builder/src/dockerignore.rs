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

fn match_segments(pat: &[String], path: &[&str]) -> bool {
    match pat.first() {
        None => path.is_empty(),
        Some(p) if p == "**" => {
            (0..=path.len()).any(|skip| match_segments(&pat[1..], &path[skip..]))
        }
        Some(p) => match path.first() {
            Some(seg) => {
                glob(p.as_bytes(), seg.as_bytes()) && match_segments(&pat[1..], &path[1..])
            }
            None => false,
        },
    }
}

/// Go `filepath.Match` within one path segment.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|i| glob(&p[1..], &s[i..])),
        Some(b'?') => !s.is_empty() && glob(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some(&c) = s.first() else { return false };
            let Some(close) = p.iter().skip(1).position(|&b| b == b']').map(|i| i + 1) else {
                return false;
            };
            let class = &p[1..close];
            let (negate, class) = match class.first() {
                Some(b'^') | Some(b'!') => (true, &class[1..]),
                _ => (false, class),
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    if class[i] <= c && c <= class[i + 2] {
                        hit = true;
                    }
                    i += 3;
                } else {
                    if class[i] == c {
                        hit = true;
                    }
                    i += 1;
                }
            }
            hit != negate && glob(&p[close + 1..], &s[1..])
        }
        Some(b'\\') if p.len() > 1 => s.first() == Some(&p[1]) && glob(&p[2..], &s[1..]),
        Some(&c) => s.first() == Some(&c) && glob(&p[1..], &s[1..]),
    }
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
}
