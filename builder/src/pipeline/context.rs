//! The build context of one service: the files under its context directory, minus what its
//! `.dockerignore` excludes and the build secrets (`.shoal/secrets/`, `.balena/secrets/`), as an
//! uncompressed tar with the resolved Dockerfile added at
//! [`DOCKERFILE_PATH`].

use crate::pipeline::dockerignore::Ignore;
use crate::pipeline::git_tree::{Entry, SourceTree};

/// Where the resolved Dockerfile is placed in the context.
pub const DOCKERFILE_PATH: &str = ".shoal-build/Dockerfile";

/// Whether a tree path is a build secret (never part of a context).
pub fn is_secret(path: &str) -> bool {
    path.starts_with(".shoal/secrets/") || path.starts_with(".balena/secrets/")
}

/// Builds the context tar of the directory `dir` (`""` for the root).
pub fn tar(tree: &SourceTree, dir: &str, dockerfile: &str) -> std::io::Result<Vec<u8>> {
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let ignore = Ignore::parse(
        &tree
            .text(&format!("{prefix}.dockerignore"))
            .unwrap_or_default(),
    );
    let mut b = tar::Builder::new(Vec::new());
    for (path, entry) in &tree.files {
        let Some(rel) = path.strip_prefix(&prefix) else {
            continue;
        };
        if rel.starts_with(".shoal-build/")
            || is_secret(path)
            || (ignore.excluded(rel) && rel != ".dockerignore")
        {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match entry {
            Entry::File { data, executable } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(if *executable { 0o755 } else { 0o644 });
                h.set_size(data.len() as u64);
                b.append_data(&mut h, rel, data.as_slice())?;
            }
            Entry::Link(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, rel, target)?;
            }
        }
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_size(dockerfile.len() as u64);
    b.append_data(&mut h, DOCKERFILE_PATH, dockerfile.as_bytes())?;
    b.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_honours_dockerignore_and_carries_the_dockerfile() {
        let mut t = SourceTree::default();
        for (p, d) in [
            ("web/app.js", "x"),
            ("web/secret.env", "y"),
            ("web/.dockerignore", "*.env\n"),
            ("other/z", "z"),
        ] {
            t.files.insert(
                p.into(),
                Entry::File {
                    data: d.into(),
                    executable: false,
                },
            );
        }
        let bytes = tar(&t, "web", "FROM busybox\n").unwrap();
        let mut a = tar::Archive::new(bytes.as_slice());
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, [".dockerignore", "app.js", DOCKERFILE_PATH]);
    }
}
