//! The import rule of the folders, checked by a plain unit test (`cargo test --lib layers`, no
//! PostgreSQL): `api -> engine -> store -> sync -> pg -> core`. A module uses its siblings and
//! the layers below it, never a layer above; `core` uses no pgrx at all. Every `crate::<layer>`
//! path in the code of src/<layer>/ (comments left out) is checked against that order.

/// The layers, lowest first.
pub const ORDER: [&str; 6] = ["core", "pg", "sync", "store", "engine", "api"];

/// The layer a path under src/ belongs to (None: lib.rs, this file, the pg_tests).
fn layer_of(path: &std::path::Path, src: &std::path::Path) -> Option<usize> {
    let first = path.strip_prefix(src).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?;
    ORDER.iter().position(|l| *l == name)
}

/// `text` without its `//` comments.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The layers a file's code names through `crate::<layer>`, with the line of each.
fn used_layers(code: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if let Some(layer) = ORDER.iter().position(|l| *l == name) {
                found.push((n + 1, layer));
            }
        }
    }
    found
}

fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading src/") {
        let path = entry.expect("reading src/").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every upward import: (file, line, its layer, the layer it names).
pub fn upward_imports(src: &std::path::Path) -> Vec<String> {
    let mut all = Vec::new();
    files(src, &mut all);
    all.sort();
    let mut wrong = Vec::new();
    for path in all {
        let Some(own) = layer_of(&path, src) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("reading a source file");
        let code = code_of(&text);
        for (line, used) in used_layers(&code) {
            if used > own {
                wrong.push(format!(
                    "{}:{line}: {} uses crate::{} (a layer above it)",
                    path.display(),
                    ORDER[own],
                    ORDER[used]
                ));
            }
        }
        if own == 0 && code.contains("pgrx") {
            wrong.push(format!("{}: core uses pgrx", path.display()));
        }
    }
    wrong
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    #[test]
    fn no_import_runs_upward() {
        let wrong = upward_imports(&src());
        assert!(
            wrong.is_empty(),
            "imports against api -> engine -> store -> sync -> pg -> core:\n{}",
            wrong.join("\n")
        );
    }

    #[test]
    fn every_folder_is_a_layer() {
        for entry in std::fs::read_dir(src()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.ends_with("pg_tests") {
                assert!(
                    layer_of(&path.join("mod.rs"), &src()).is_some(),
                    "{} is no layer",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn the_check_sees_an_upward_import() {
        let code = code_of(
            "use crate::engine::batch; // crate::api in a comment\nfn f() { crate::pg::raise(e) }",
        );
        assert_eq!(used_layers(&code), vec![(1, 4), (2, 1)]);
    }
}
