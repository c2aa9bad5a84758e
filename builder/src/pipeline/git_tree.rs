//! Reading a pushed commit's tree with gix, without a checkout.
//!
//! During a push, git keeps the new objects in a quarantine directory until the pre-receive hook
//! accepts them, so the objects of the pushed commit are looked up in an ordered list of object
//! directories (the quarantine first, then the repository's own). The whole tree is read into a
//! [`SourceTree`] (path → file), bounded by [`MAX_TREE_BYTES`] and [`MAX_TREE_FILES`] so a push
//! cannot make the builder allocate without limit.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gix::objs::Find;

/// Largest total size of the files of a pushed tree.
pub const MAX_TREE_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Most files in a pushed tree.
pub const MAX_TREE_FILES: usize = 200_000;
/// Deepest directory nesting followed.
const MAX_DEPTH: usize = 64;

/// One file of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file and whether it is executable.
    File {
        /// Its bytes.
        data: Vec<u8>,
        /// Mode 0755 rather than 0644.
        executable: bool,
    },
    /// A symbolic link and its target.
    Link(String),
}

/// A commit's files by `/`-separated path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceTree {
    /// Files by path.
    pub files: BTreeMap<String, Entry>,
}

impl SourceTree {
    /// The bytes of a regular file.
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        match self.files.get(path) {
            Some(Entry::File { data, .. }) => Some(data),
            _ => None,
        }
    }

    /// A file as UTF-8 text.
    pub fn text(&self, path: &str) -> Option<String> {
        self.file(path)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

/// Why a tree could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    /// An object store could not be opened.
    #[error("cannot open object store {path}: {source}")]
    Open {
        /// The objects directory.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
    /// An object is missing.
    #[error("object {0} not found")]
    Missing(String),
    /// An object could not be read or parsed.
    #[error("object {id}: {message}")]
    Bad {
        /// The object id.
        id: String,
        /// What went wrong.
        message: String,
    },
    /// The id is not a hex object id.
    #[error("not an object id: {0:?}")]
    BadId(String),
    /// Too large or too many files.
    #[error("the pushed tree is too large: {0}")]
    TooLarge(String),
}

/// Object lookup over several object directories, in order.
pub struct Objects {
    stores: Vec<gix::odb::Handle>,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Objects({} stores)", self.stores.len())
    }
}

impl Objects {
    /// Opens each directory as an object store.
    pub fn open(dirs: &[PathBuf]) -> Result<Objects, TreeError> {
        let mut stores = Vec::new();
        for d in dirs {
            let h = gix::odb::at(d, gix::hash::Kind::Sha1).map_err(|source| TreeError::Open {
                path: d.display().to_string(),
                source,
            })?;
            stores.push(h);
        }
        Ok(Objects { stores })
    }

    fn find(&self, id: &gix::hash::oid, buf: &mut Vec<u8>) -> Result<gix::objs::Kind, TreeError> {
        for s in &self.stores {
            match s.try_find(id, buf) {
                Ok(Some(data)) => return Ok(data.kind),
                Ok(None) => continue,
                Err(e) => {
                    return Err(TreeError::Bad {
                        id: id.to_string(),
                        message: e.to_string(),
                    });
                }
            }
        }
        Err(TreeError::Missing(id.to_string()))
    }

    /// Reads the whole tree of `commit` (hex id).
    pub fn read_commit(&self, commit: &str) -> Result<SourceTree, TreeError> {
        let id = gix::hash::ObjectId::from_hex(commit.as_bytes())
            .map_err(|_| TreeError::BadId(commit.to_string()))?;
        let mut buf = Vec::new();
        let kind = self.find(&id, &mut buf)?;
        if kind != gix::objs::Kind::Commit {
            return Err(TreeError::Bad {
                id: commit.to_string(),
                message: format!("is a {kind}, not a commit"),
            });
        }
        let c = gix::objs::CommitRef::from_bytes(&buf, gix::hash::Kind::Sha1).map_err(|e| {
            TreeError::Bad {
                id: commit.to_string(),
                message: e.to_string(),
            }
        })?;
        let tree = c.tree();
        let mut out = SourceTree::default();
        let mut total = 0u64;
        self.walk(&tree, "", 0, &mut out, &mut total)?;
        Ok(out)
    }

    fn walk(
        &self,
        tree: &gix::hash::oid,
        prefix: &str,
        depth: usize,
        out: &mut SourceTree,
        total: &mut u64,
    ) -> Result<(), TreeError> {
        if depth > MAX_DEPTH {
            return Err(TreeError::TooLarge(format!(
                "deeper than {MAX_DEPTH} directories"
            )));
        }
        let mut buf = Vec::new();
        self.find(tree, &mut buf)?;
        let parsed = gix::objs::TreeRef::from_bytes(&buf, gix::hash::Kind::Sha1).map_err(|e| {
            TreeError::Bad {
                id: tree.to_string(),
                message: e.to_string(),
            }
        })?;
        let entries: Vec<(gix::objs::tree::EntryMode, String, gix::hash::ObjectId)> = parsed
            .entries
            .iter()
            .map(|e| (e.mode, e.filename.to_string(), e.oid.to_owned()))
            .collect();
        for (mode, name, oid) in entries {
            if name.is_empty() || name == "." || name == ".." || name.contains('/') {
                return Err(TreeError::Bad {
                    id: tree.to_string(),
                    message: format!("bad entry name {name:?}"),
                });
            }
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if mode.is_tree() {
                self.walk(&oid, &path, depth + 1, out, total)?;
                continue;
            }
            if mode.is_commit() {
                // Submodules are not part of the build context.
                continue;
            }
            if out.files.len() >= MAX_TREE_FILES {
                return Err(TreeError::TooLarge(format!(
                    "more than {MAX_TREE_FILES} files"
                )));
            }
            let mut data = Vec::new();
            self.find(&oid, &mut data)?;
            *total += data.len() as u64;
            if *total > MAX_TREE_BYTES {
                return Err(TreeError::TooLarge(format!(
                    "more than {MAX_TREE_BYTES} bytes"
                )));
            }
            let entry = if mode.is_link() {
                Entry::Link(String::from_utf8_lossy(&data).into_owned())
            } else {
                Entry::File {
                    data,
                    executable: mode.is_executable(),
                }
            };
            out.files.insert(path, entry);
        }
        Ok(())
    }
}
