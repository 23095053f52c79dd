//! The documentation holds together: every relative link in the README and the pages beside the
//! code resolves inside the repository, and the generated pages match what generates them.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use pulldown_cmark::{Event, Parser, Tag};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown pages a reader of the repository lands on (not vendored or generated trees).
fn pages() -> Vec<PathBuf> {
    let mut pages = Vec::new();
    let mut dirs = vec![root().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries.map_while(Result::ok) {
            let path = entry.path();
            let name = entry.file_name();
            let skip = [
                "target",
                "node_modules",
                ".git",
                ".ordermesh",
                "gen",
                "dist",
            ];
            if path.is_dir() && !skip.iter().any(|s| name == *s) {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
    }
    pages.sort();
    pages
}

/// The link targets of one page that point into the repository (no scheme, no pure anchor),
/// without their `#anchor`.
fn relative_links(markdown: &str) -> Vec<String> {
    Parser::new(markdown)
        .filter_map(|event| match event {
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                Some(dest_url.to_string())
            }
            _ => None,
        })
        .filter(|url| !url.contains("://") && !url.starts_with("mailto:") && !url.starts_with('#'))
        .map(|url| url.split('#').next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn the_link_scanner_finds_relative_links_and_leaves_out_urls_and_anchors() {
    let page = "[a](docs/a.md#x) [b](https://example.com) [c](#top) ![d](../img.png) `[e](f.md)`";
    assert_eq!(relative_links(page), ["docs/a.md", "../img.png"]);
}

#[test]
fn every_relative_link_in_the_documentation_resolves_inside_the_repository() {
    let pages = pages();
    assert!(pages.iter().any(|p| p.ends_with("README.md")));
    assert!(pages.iter().any(|p| p.ends_with("docs/design.md")));
    let root = root().canonicalize().expect("repository root");
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("read page");
        let dir = page.parent().expect("a page's directory");
        for link in relative_links(&text) {
            let target = dir.join(&link);
            match target.canonicalize() {
                Ok(resolved) if resolved.starts_with(&root) => {}
                Ok(resolved) => broken.push(format!(
                    "{}: {link} leaves the repository ({})",
                    page.display(),
                    resolved.display()
                )),
                Err(_) => broken.push(format!("{}: {link} does not exist", page.display())),
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_capacity_page_is_generated_from_the_bench_run_it_names() {
    let output = Command::new("python3")
        .args(["scripts/capacity.py", "--check"])
        .current_dir(root())
        .output()
        .expect("run python3 scripts/capacity.py --check");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The tables of docs/configuration.md, each between `<!-- begin: NAME -->` and
/// `<!-- end: NAME -->`, are written from the settings types and their doc comments (see
/// `ordermesh::config_reference`). To change one, change the doc comment or the default, then
/// `ORDERMESH_BLESS=1 cargo test --test e2e configuration_page` rewrites the page.
#[test]
fn the_configuration_page_is_generated_from_the_settings_types() {
    use ordermesh::{config::Section, config_reference::table};

    let path = root().join("docs/configuration.md");
    let page = std::fs::read_to_string(&path).expect("docs/configuration.md");
    let tables = [
        ("platform", table(&ordermesh::config::Settings::reference())),
        ("saga", table(&ordermesh_order::SagaSettings::reference())),
        (
            "payment",
            table(&ordermesh_payment::PaymentSettings::reference()),
        ),
    ];
    let mut written = page.clone();
    for (name, table) in &tables {
        let begin = format!("<!-- begin: {name} -->\n");
        let end = format!("<!-- end: {name} -->");
        let start = written
            .find(&begin)
            .unwrap_or_else(|| panic!("docs/configuration.md lacks {begin:?}"))
            + begin.len();
        let stop = start
            + written[start..]
                .find(&end)
                .unwrap_or_else(|| panic!("docs/configuration.md lacks {end:?}"));
        written.replace_range(start..stop, table);
    }
    if std::env::var_os("ORDERMESH_BLESS").is_some() {
        std::fs::write(&path, &written).expect("write docs/configuration.md");
        return;
    }
    assert!(
        written == page,
        "docs/configuration.md does not match the settings types; run \
         `ORDERMESH_BLESS=1 cargo test --test e2e configuration_page` and review the diff"
    );
}
