//! The catalogue: one TOML file per backend in `conformance/mutants/catalogue/`, each a list of
//! semantic mutants of that backend's source (and, for memory, of the core it runs on).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One backend's catalogue file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// The crate whose tests judge the mutants, e.g. `courier-redis`.
    package: String,
    /// The test targets of `package` that run for every mutant; `["conformance"]` when absent.
    #[serde(default)]
    tests: Vec<String>,
    #[serde(default, rename = "mutant")]
    mutants: Vec<Mutant>,
}

/// One semantic change to one file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Mutant {
    /// Unique within its backend; says what is broken.
    pub(crate) id: String,
    /// The contract rule it breaks (`Q4`, `E2`…).
    pub(crate) rule: String,
    /// The conformance `<area>::<rule>` it aims at (`queue::lease`).
    pub(crate) area: String,
    /// The mutated file, relative to the repository root.
    pub(crate) file: PathBuf,
    /// Text that occurs exactly once in `file`.
    pub(crate) find: String,
    /// What replaces it.
    pub(crate) replace: String,
    /// The wrong behaviour a user would see.
    pub(crate) breaks: String,
    /// Set only for a change that cannot be observed: why. A survivor with this is accepted.
    #[serde(default)]
    pub(crate) equivalent: Option<String>,
}

/// A backend with its selected mutants.
#[derive(Debug)]
pub(crate) struct Backend {
    /// The catalogue's file stem: `memory`, `sqlite`, `redis`…
    pub(crate) name: String,
    /// See [`File::package`].
    pub(crate) package: String,
    /// See [`File::tests`].
    pub(crate) tests: Vec<String>,
    /// Every mutant of the catalogue (selection happens in `main`).
    pub(crate) mutants: Vec<Mutant>,
}

/// Load every catalogue under `dir`, sorted by backend name, or the ones named in `only`.
pub(crate) fn load(dir: &Path, only: &[String]) -> Result<Vec<Backend>, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut backends = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
            .path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| format!("{}: not a UTF-8 file name", path.display()))?
            .to_string();
        if !only.is_empty() && !only.contains(&name) {
            continue;
        }
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let tests = if file.tests.is_empty() {
            vec!["conformance".to_string()]
        } else {
            file.tests
        };
        backends.push(Backend {
            name,
            package: file.package,
            tests,
            mutants: file.mutants,
        });
    }
    for want in only {
        if !backends.iter().any(|b| &b.name == want) {
            return Err(format!(
                "no catalogue {}/{want}.toml (backends are named after their catalogue file)",
                dir.display()
            ));
        }
    }
    backends.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(backends)
}

/// Every problem with `backend`'s catalogue against the tree under `root`: duplicate ids,
/// missing files, a `find` that does not occur exactly once, a no-op replacement.
pub(crate) fn problems(root: &Path, backend: &Backend) -> Vec<String> {
    let mut out = Vec::new();
    let mut ids = HashSet::new();
    for m in &backend.mutants {
        let at = format!("{}/{}", backend.name, m.id);
        if !ids.insert(m.id.as_str()) {
            out.push(format!("{at}: duplicate id"));
        }
        if m.find == m.replace {
            out.push(format!("{at}: replace is the same as find"));
        }
        if m.find.is_empty() {
            out.push(format!("{at}: find is empty"));
        }
        match fs::read_to_string(root.join(&m.file)) {
            Ok(text) => {
                let n = text.matches(m.find.as_str()).count();
                if n != 1 {
                    out.push(format!(
                        "{at}: find occurs {n} times in {} (must be exactly once)",
                        m.file.display()
                    ));
                }
            }
            Err(e) => out.push(format!("{at}: cannot read {}: {e}", m.file.display())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every catalogued mutant still applies to the tree (its `find` occurs exactly once), so a
    /// change to a backend that moves the code a mutant targets fails here, in `cargo test`,
    /// rather than silently at the next mutation run.
    #[test]
    fn every_catalogue_fits_the_tree() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let backends =
            super::load(&root.join("conformance/mutants/catalogue"), &[]).expect("catalogues");
        assert!(!backends.is_empty(), "no catalogue found");
        let problems: Vec<String> = backends
            .iter()
            .flat_map(|b| super::problems(&root, b))
            .collect();
        assert!(
            problems.is_empty(),
            "mutants that no longer fit the tree (update their find/replace):\n  {}",
            problems.join("\n  ")
        );
    }
}
