//! Applying a mutant to the working tree and putting the file back, through a journal on disk
//! so that even a harness killed outright (SIGKILL, a lost terminal) is undone by the next run.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::catalogue::Mutant;

/// The journal: at most one mutated file at a time.
pub(crate) struct Tree {
    root: PathBuf,
    /// Holds `path` (the mutated file, relative to `root`) and `original` (its bytes).
    journal: PathBuf,
}

impl Tree {
    pub(crate) fn new(root: &Path, journal: PathBuf) -> Self {
        Tree {
            root: root.to_path_buf(),
            journal,
        }
    }

    /// Put back a file an earlier, interrupted run left mutated. Returns its path if it did.
    pub(crate) fn recover(&self) -> io::Result<Option<PathBuf>> {
        let path_file = self.journal.join("path");
        let rel = match fs::read_to_string(&path_file) {
            Ok(rel) => PathBuf::from(rel),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let original = fs::read(self.journal.join("original"))?;
        fs::write(self.root.join(&rel), original)?;
        fs::remove_file(path_file)?;
        Ok(Some(rel))
    }

    /// Replace the mutant's `find` with its `replace`, recording the original first.
    pub(crate) fn apply(&self, m: &Mutant) -> io::Result<()> {
        let path = self.root.join(&m.file);
        let original = fs::read_to_string(&path)?;
        if original.matches(m.find.as_str()).count() != 1 {
            return Err(io::Error::other(format!(
                "{}: the text to mutate no longer occurs exactly once",
                m.file.display()
            )));
        }
        fs::create_dir_all(&self.journal)?;
        fs::write(self.journal.join("original"), &original)?;
        let rel = m
            .file
            .to_str()
            .ok_or_else(|| io::Error::other("mutated file path is not UTF-8"))?;
        fs::write(self.journal.join("path"), rel)?;
        fs::write(&path, original.replacen(m.find.as_str(), &m.replace, 1))
    }

    /// Undo [`Tree::apply`]; a no-op when nothing is mutated.
    pub(crate) fn restore(&self) -> io::Result<()> {
        self.recover().map(|_| ())
    }
}
