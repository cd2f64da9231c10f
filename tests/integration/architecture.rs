//! ARCHITECTURE.md stays true: every library module sits in exactly one row of its
//! `## Layers` table, a module imports only from its own layer or the ones below, and
//! no files of `src/` import each other around a circle.
//!
//! The scanner reads source text, not the compiler's view of it: it finds every path
//! that starts with `crate::` or `super::` (grouped `use` trees included) outside
//! comments, string and char literals and `#[cfg(test)]` items, and follows it through
//! the module files as far as they go. What it does not see: a module brought into
//! scope by a `use` and named later by a bare path (`use super::epoch;` counts as
//! `epoch`, `epoch::run` is not followed further), macros that build paths.
//! `src/main.rs` and the modules it declares are the binary: they reach the library as
//! `tlcap::` and may import anything.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

// ---- reading one file ------------------------------------------------------------

/// Where a path starts: `crate::`, or `super::` so many times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Crate,
    Super(usize),
}

/// One path a file names: `crate::train::events::Event`, `super::cache::Cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Import {
    /// The inline modules (`mod x { ... }`) the path sits in, outermost first.
    scope: Vec<String>,
    root: Root,
    segments: Vec<String>,
}

impl fmt::Display for Import {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.root {
            Root::Crate => write!(f, "crate::")?,
            Root::Super(n) => write!(f, "{}", "super::".repeat(n))?,
        }
        write!(f, "{}", self.segments.join("::"))
    }
}

/// What one file says: the paths it names and the modules it declares (`mod x;`).
#[derive(Debug, Default)]
struct Scan {
    imports: Vec<Import>,
    /// `(name, public)` for each `mod x;`, `pub mod x;` or `pub(crate) mod x;`.
    children: Vec<(String, bool)>,
}

/// The source with comments (doc comments too), string and char literals replaced by
/// spaces; line breaks are kept.
fn blank_comments_and_literals(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        let end = if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            Some(
                c[i..]
                    .iter()
                    .position(|&ch| ch == '\n')
                    .map_or(c.len(), |p| i + p),
            )
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            Some(block_comment_end(&c, i))
        } else if c[i] == '\'' {
            char_literal_end(&c, i)
        } else {
            string_end(&c, i)
        };
        match end {
            Some(end) => {
                out.extend(
                    c[i..end]
                        .iter()
                        .map(|&ch| if ch == '\n' { '\n' } else { ' ' }),
                );
                i = end;
            }
            None => {
                out.push(c[i]);
                i += 1;
            }
        }
    }
    out
}

fn is_ident_char(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// The end of a `/* */` comment starting at `i`, nested ones included.
fn block_comment_end(c: &[char], i: usize) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j < c.len() {
        if c[j] == '/' && c.get(j + 1) == Some(&'*') {
            depth += 1;
            j += 2;
        } else if c[j] == '*' && c.get(j + 1) == Some(&'/') {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return j;
            }
        } else {
            j += 1;
        }
    }
    c.len()
}

/// The end of a char literal (`'x'`, `'\''`, `'\u{1F600}'`) starting at `i`; `None`
/// for a lifetime or a label (`'a`, `'static`).
fn char_literal_end(c: &[char], i: usize) -> Option<usize> {
    if c.get(i + 1) == Some(&'\\') {
        let close = c.get(i + 3..)?.iter().position(|&ch| ch == '\'')?;
        Some(i + 3 + close + 1)
    } else if c.get(i + 2) == Some(&'\'') {
        Some(i + 3)
    } else {
        None
    }
}

/// The end of a string literal starting at `i`: `"..."` with escapes, or a raw
/// `r"..."` / `r#"..."#` (a `b` before either stays as code, which is harmless).
fn string_end(c: &[char], i: usize) -> Option<usize> {
    if c[i] == '"' {
        let mut j = i + 1;
        while j < c.len() && c[j] != '"' {
            j += if c[j] == '\\' { 2 } else { 1 };
        }
        return Some((j + 1).min(c.len()));
    }
    let starts_word = i == 0
        || !is_ident_char(c[i - 1])
        || (c[i - 1] == 'b' && (i < 2 || !is_ident_char(c[i - 2])));
    if c[i] != 'r' || !starts_word {
        return None;
    }
    let hashes = c[i + 1..].iter().take_while(|&&ch| ch == '#').count();
    let open = i + 1 + hashes;
    if c.get(open) != Some(&'"') {
        return None; // `r#ident` or an identifier starting with r
    }
    let mut j = open + 1;
    while j < c.len() {
        if c[j] == '"'
            && c[j + 1..]
                .iter()
                .take(hashes)
                .filter(|&&ch| ch == '#')
                .count()
                == hashes
        {
            return Some((j + 1 + hashes).min(c.len()));
        }
        j += 1;
    }
    Some(c.len())
}

/// Identifiers, `::`, and every other character on its own.
fn tokens(code: &str) -> Vec<String> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_whitespace() {
            i += 1;
            continue;
        }
        let len = if is_ident_char(c[i]) {
            c[i..].iter().take_while(|&&ch| is_ident_char(ch)).count()
        } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
            2
        } else {
            1
        };
        out.push(c[i..i + len].iter().collect());
        i += len;
    }
    out
}

fn is_ident(token: &str) -> bool {
    token.starts_with(|ch: char| ch.is_alphabetic() || ch == '_')
}

/// The index of the token closing the bracket opened at `open` (`t.len()` if none).
fn closing(t: &[String], open: usize) -> usize {
    let (opener, closer) = match t[open].as_str() {
        "[" => ("[", "]"),
        "(" => ("(", ")"),
        _ => ("{", "}"),
    };
    let mut depth = 0;
    for (j, token) in t.iter().enumerate().skip(open) {
        if token == opener {
            depth += 1;
        } else if token == closer {
            depth -= 1;
            if depth == 0 {
                return j;
            }
        }
    }
    t.len()
}

/// Reads one use tree at `t[i..]` (`a::b`, `a::{b, c::{d, e}}`, `a::*`,
/// `a::{self, b}`, `a as b`), adding each whole path to `out`; returns the index after
/// it. A path in an expression (`crate::text::word(x)`) reads the same way.
fn use_tree(
    t: &[String],
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    loop {
        match t.get(i).map_or("", String::as_str) {
            "{" => {
                i += 1;
                while i < t.len() && t[i] != "}" {
                    let before = i;
                    i = use_tree(t, i, prefix.clone(), out);
                    if t.get(i).is_some_and(|s| s == ",") || i == before {
                        i += 1;
                    }
                }
                return i + 1;
            }
            "*" => {
                out.push(prefix);
                return i + 1;
            }
            "self" => {
                out.push(prefix);
                i += 1;
                break;
            }
            word if is_ident(word) => {
                prefix.push(word.to_string());
                i += 1;
                if t.get(i).is_some_and(|s| s == "::") {
                    i += 1;
                    continue;
                }
                out.push(prefix);
                break;
            }
            _ => {
                out.push(prefix);
                return i;
            }
        }
    }
    if t.get(i).is_some_and(|s| s == "as") {
        i += 2;
    }
    i
}

/// Is this attribute (the tokens inside `#[...]`) `cfg(test)` or a `cfg` that needs it?
fn is_cfg_test(attribute: &[String]) -> bool {
    attribute.first().is_some_and(|s| s == "cfg")
        && attribute.iter().any(|s| s == "test")
        && !attribute.iter().any(|s| s == "not")
}

/// The index after the item starting at `i`: its `;` or its `{ ... }` block.
fn item_end(t: &[String], i: usize) -> usize {
    match (i..t.len()).find(|&j| t[j] == ";" || t[j] == "{") {
        Some(j) if t[j] == "{" => closing(t, j) + 1,
        Some(j) => j + 1,
        None => t.len(),
    }
}

/// The paths a file names and the modules it declares; `#[cfg(test)]` items skipped.
fn scan(src: &str) -> Scan {
    let t = tokens(&blank_comments_and_literals(src));
    let at = |i: usize| t.get(i).map_or("", String::as_str);
    let mut result = Scan::default();
    let mut depth = 0;
    // Inline modules we are in, with the brace depth inside each.
    let mut scope: Vec<(String, usize)> = Vec::new();
    let mut i = 0;
    while i < t.len() {
        match at(i) {
            "#" if at(i + 1) == "[" => {
                let end = closing(&t, i + 1);
                let test_only = is_cfg_test(&t[(i + 2).min(end)..end]);
                i = if test_only {
                    item_end(&t, end + 1)
                } else {
                    end + 1
                };
            }
            "{" => {
                depth += 1;
                i += 1;
            }
            "}" => {
                depth -= 1;
                while scope.last().is_some_and(|(_, inside)| *inside > depth) {
                    scope.pop();
                }
                i += 1;
            }
            "mod" if is_ident(at(i + 1)) && at(i + 2) == "{" => {
                scope.push((t[i + 1].clone(), depth + 1));
                i += 2; // the `{` is counted next
            }
            "mod" if is_ident(at(i + 1)) && at(i + 2) == ";" => {
                if scope.is_empty() {
                    let public = i > 0 && (at(i - 1) == "pub" || at(i - 1) == ")");
                    result.children.push((t[i + 1].clone(), public));
                }
                i += 3;
            }
            word @ ("crate" | "super")
                if at(i + 1) == "::" && !(i > 0 && matches!(at(i - 1), "::" | "$")) =>
            {
                let (root, start) = if word == "crate" {
                    (Root::Crate, i + 2)
                } else {
                    let mut j = i;
                    while at(j) == "super" && at(j + 1) == "::" {
                        j += 2;
                    }
                    (Root::Super((j - i) / 2), j)
                };
                let mut paths = Vec::new();
                i = use_tree(&t, start, Vec::new(), &mut paths);
                let scope: Vec<String> = scope.iter().map(|(name, _)| name.clone()).collect();
                result
                    .imports
                    .extend(paths.into_iter().map(|segments| Import {
                        scope: scope.clone(),
                        root,
                        segments,
                    }));
            }
            _ => i += 1,
        }
    }
    result
}

// ---- the library as files --------------------------------------------------------

/// `lib.rs` -> `[]`, `watch.rs` -> `["watch"]`, `train/mod.rs` -> `["train"]`,
/// `train/epoch.rs` -> `["train", "epoch"]`.
fn module_path(relative: &str) -> Vec<String> {
    let mut path: Vec<String> = relative
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_string)
        .collect();
    if path
        .last()
        .is_some_and(|last| last == "mod" || last == "lib")
    {
        path.pop();
    }
    path
}

struct Module {
    /// `src/train/epoch.rs`
    file: String,
    scan: Scan,
}

/// The library's files by module path, and which modules are public.
struct Crate {
    modules: BTreeMap<Vec<String>, Module>,
    public: BTreeSet<Vec<String>>,
}

impl Crate {
    /// From `(path relative to src/, source)` pairs.
    fn from_sources(sources: Vec<(String, String)>) -> Crate {
        let mut modules = BTreeMap::new();
        let mut public = BTreeSet::new();
        for (relative, source) in sources {
            let path = module_path(&relative);
            let scan = scan(&source);
            for (child, is_public) in &scan.children {
                if *is_public {
                    let mut child_path = path.clone();
                    child_path.push(child.clone());
                    public.insert(child_path);
                }
            }
            let file = format!("src/{relative}");
            modules.insert(path, Module { file, scan });
        }
        Crate { modules, public }
    }

    /// The library under src/, without the binary (`main.rs` and the modules it declares).
    fn load() -> Crate {
        let src = Path::new(ROOT).join("src");
        let binary = binary_modules();
        let mut sources = Vec::new();
        for entry in walkdir::WalkDir::new(&src).sort_by_file_name() {
            let entry = entry.unwrap();
            let path = entry.path();
            if !entry.file_type().is_file()
                || path.extension().and_then(|e| e.to_str()) != Some("rs")
            {
                continue;
            }
            let relative = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let top = module_path(&relative).first().cloned();
            if top.is_some_and(|top| binary.contains(&top)) {
                continue;
            }
            sources.push((relative, read(path)));
        }
        let krate = Crate::from_sources(sources);
        assert!(
            krate.modules.len() > 10 && krate.modules.contains_key(&Vec::new()),
            "src/ read wrong: {:?}",
            krate.modules.keys().collect::<Vec<_>>()
        );
        krate
    }

    /// The module a path leads to, from a file's module `from`: it follows module
    /// files as far as they go (`crate::train::events::Event` -> `train::events`); an
    /// item, a re-export included, stays in the module that names it
    /// (`crate::train::Event` -> `train`). A private module is seen only from inside
    /// its parent, so `crate::data::scan` from outside `data` is `data`'s re-export.
    fn resolve(&self, from: &[String], import: &Import) -> Vec<String> {
        let mut module: Vec<String> = match import.root {
            Root::Crate => Vec::new(),
            Root::Super(n) => {
                let mut here: Vec<String> = from.iter().chain(&import.scope).cloned().collect();
                here.truncate(here.len().saturating_sub(n));
                here
            }
        };
        for segment in &import.segments {
            let mut child = module.clone();
            child.push(segment.clone());
            let visible = self.public.contains(&child) || from.starts_with(&module);
            if !(visible && self.modules.contains_key(&child)) {
                break;
            }
            module = child;
        }
        // `super::` from an inline module can end inside a file: up to that file.
        while !module.is_empty() && !self.modules.contains_key(&module) {
            module.pop();
        }
        module
    }

    /// Every import of every file, as `(file's module, target module, the import)`.
    fn imports(&self) -> impl Iterator<Item = (&Vec<String>, Vec<String>, &Import)> + '_ {
        self.modules.iter().flat_map(move |(from, module)| {
            module
                .scan
                .imports
                .iter()
                .map(move |import| (from, self.resolve(from, import), import))
        })
    }

    /// Files and the files they import from. A module's face (`mod.rs`) naming its own
    /// children is the parent-child relation, not an import: left out, so that a child
    /// using `super::` does not make a circle with its parent.
    fn file_graph(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut graph: BTreeMap<String, BTreeSet<String>> = self
            .modules
            .values()
            .map(|m| (m.file.clone(), BTreeSet::new()))
            .collect();
        for (from, target, _) in self.imports() {
            let own_child = target.len() > from.len() && target.starts_with(from);
            if target == *from || own_child {
                continue;
            }
            let (Some(a), Some(b)) = (self.modules.get(from), self.modules.get(&target)) else {
                continue;
            };
            graph.get_mut(&a.file).unwrap().insert(b.file.clone());
        }
        graph
    }

    /// `file: imports crate::X (layer a) from layer b` for each import from a higher
    /// layer. Modules without a layer are left to `layer_table_matches_the_modules`.
    fn layer_violations(&self, layers: &BTreeMap<String, u32>) -> Vec<String> {
        let mut found = BTreeSet::new();
        for (from, target, import) in self.imports() {
            let (Some(own), Some(other)) = (from.first(), target.first()) else {
                continue;
            };
            let (Some(&b), Some(&a)) = (layers.get(own), layers.get(other)) else {
                continue;
            };
            if own != other && a > b {
                let file = &self.modules[from].file;
                found.insert(format!(
                    "{file}: imports crate::{other} (layer {a}) from layer {b} (`{import}`)"
                ));
            }
        }
        found.into_iter().collect()
    }
}

/// `main` and the modules src/main.rs declares (`cli`): the binary.
fn binary_modules() -> BTreeSet<String> {
    let main = scan(&read(&Path::new(ROOT).join("src/main.rs")));
    main.children
        .into_iter()
        .map(|(name, _)| name)
        .chain(["main".to_string()])
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---- circles ---------------------------------------------------------------------

/// The shortest way from `from` to `to`, both included.
fn shortest_path(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
) -> Option<Vec<String>> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([from]);
    while let Some(node) = queue.pop_front() {
        if node == to {
            let mut path = vec![to.to_string()];
            let mut at = to;
            while at != from {
                at = came_from[at];
                path.push(at.to_string());
            }
            path.reverse();
            return Some(path);
        }
        for next in graph.get(node).into_iter().flatten() {
            if next != from && !came_from.contains_key(next.as_str()) {
                came_from.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    None
}

/// A circle through each import that lies on one (for an edge a -> b, the shortest
/// way back from b to a), each circle once, starting at its smallest file.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let mut found = BTreeSet::new();
    for (a, targets) in graph {
        for b in targets.iter().filter(|b| *b != a) {
            if let Some(back) = shortest_path(graph, b, a) {
                let mut circle = vec![a.clone()];
                circle.extend(back);
                circle.pop(); // a again
                let smallest = (0..circle.len()).min_by_key(|&i| &circle[i]).unwrap();
                circle.rotate_left(smallest);
                found.insert(circle);
            }
        }
    }
    found.into_iter().collect()
}

fn show_circle(circle: &[String]) -> String {
    format!("{} -> {}", circle.join(" -> "), circle[0])
}

// ---- the layer table -------------------------------------------------------------

/// The rows of the `## Layers` table: its layer number and the backticked names in
/// its modules column.
fn layer_rows(markdown: &str) -> Vec<(u32, Vec<String>)> {
    let section = markdown
        .split("\n## ")
        .find(|s| s.starts_with("Layers"))
        .expect("ARCHITECTURE.md has a `## Layers` section");
    section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            let layer = cells.first()?.parse().ok()?;
            let names = cells
                .get(1)?
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect();
            Some((layer, names))
        })
        .collect()
}

fn architecture() -> String {
    read(&Path::new(ROOT).join("ARCHITECTURE.md"))
}

/// Module (or binary file, `main.rs`) -> its layer.
fn layers() -> BTreeMap<String, u32> {
    let mut layers = BTreeMap::new();
    for (layer, names) in layer_rows(&architecture()) {
        for name in names {
            layers.entry(name).or_insert(layer);
        }
    }
    layers
}

// ---- the checks on the real tree -------------------------------------------------

#[test]
fn layer_table_matches_the_modules() {
    let rows = layer_rows(&architecture());
    assert!(rows.len() > 5, "no layer table read: {rows:?}");
    let lib = scan(&read(&Path::new(ROOT).join("src/lib.rs")));
    let library: BTreeSet<String> = lib.children.into_iter().map(|(name, _)| name).collect();
    let binary: BTreeSet<String> = binary_modules()
        .into_iter()
        .map(|m| format!("{m}.rs"))
        .collect();
    let mut rows_of: BTreeMap<&String, Vec<u32>> = BTreeMap::new();
    for (layer, names) in &rows {
        for name in names {
            rows_of.entry(name).or_default().push(*layer);
        }
    }
    let mut problems = Vec::new();
    for module in library.iter().chain(&binary) {
        match rows_of.get(module).map_or(0, Vec::len) {
            0 => problems.push(format!("`{module}` is in no row")),
            1 => {}
            _ => problems.push(format!("`{module}` is in rows {:?}", rows_of[module])),
        }
    }
    for (name, layers) in &rows_of {
        if !library.contains(*name) && !binary.contains(*name) {
            problems.push(format!(
                "row {layers:?} lists `{name}`, which is neither a module of src/lib.rs nor a file of the binary"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "ARCHITECTURE.md's `## Layers` table and src/lib.rs disagree:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn modules_import_only_from_their_layer_or_below() {
    let violations = Crate::load().layer_violations(&layers());
    assert!(
        violations.is_empty(),
        "imports from a higher layer (ARCHITECTURE.md, `## Layers`):\n  {}",
        violations.join("\n  ")
    );
}

#[test]
fn no_import_circles_between_files() {
    let found = circles(&Crate::load().file_graph());
    assert!(
        found.is_empty(),
        "files importing each other around a circle:\n  {}",
        found
            .iter()
            .map(|c| show_circle(c))
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

// ---- the checks of the checker ---------------------------------------------------

fn named(src: &str) -> Vec<String> {
    scan(src).imports.iter().map(Import::to_string).collect()
}

fn krate(files: &[(&str, &str)]) -> Crate {
    Crate::from_sources(
        files
            .iter()
            .map(|(file, source)| (file.to_string(), source.to_string()))
            .collect(),
    )
}

fn path(p: &str) -> Vec<String> {
    p.split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn scanner_reads_grouped_and_nested_use_trees() {
    assert_eq!(
        named("use crate::{a::B, c::{d, e as f}};\nuse super::{x::A, y::*};"),
        [
            "crate::a::B",
            "crate::c::d",
            "crate::c::e",
            "super::x::A",
            "super::y"
        ]
    );
    assert_eq!(
        named("use crate::model::{self, Backbone};\nuse super::super::x::Y;"),
        [
            "crate::model",
            "crate::model::Backbone",
            "super::super::x::Y"
        ]
    );
    assert_eq!(
        named("use crate::{\n    config::Experiment,\n    train::{self, Event},\n};"),
        [
            "crate::config::Experiment",
            "crate::train",
            "crate::train::Event"
        ]
    );
    // Paths in code, not only in `use`.
    assert_eq!(
        named("fn f() -> crate::data::Dataset<u8> { crate::text::word::<u8>(&x); Self::g() }"),
        ["crate::data::Dataset", "crate::text::word"]
    );
}

#[test]
fn scanner_skips_comments_literals_visibility_and_tests() {
    let src = r##"
//! Uses crate::ui::draw in a doc comment.
/// crate::app::App
/* crate::x::Y /* nested crate::q */ */
pub(crate) fn f<'a>(s: &'a str) -> char {
    let _ = "crate::y \" crate::yy";
    let _ = r#"crate::z " crate::zz"#;
    let _ = '"'; let _ = '\''; // crate::after_char
    macro_rules! m { () => { $crate::macro_path }; }
    crate::real::one(s)
}
pub(super) fn g() {}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::X;
}
#[cfg(test)]
use crate::only_in_tests::T;
fn h() { crate::real::two() }
"##;
    assert_eq!(named(src), ["crate::real::one", "crate::real::two"]);
}

#[test]
fn scanner_knows_inline_modules_and_declared_children() {
    let s = scan(
        "pub mod a;\nmod b;\npub(crate) mod c;\nmod inner {\n    use super::Z;\n}\nuse super::W;",
    );
    assert_eq!(
        s.children,
        [
            ("a".to_string(), true),
            ("b".to_string(), false),
            ("c".to_string(), true)
        ]
    );
    let scopes: Vec<(Vec<String>, String)> = s
        .imports
        .iter()
        .map(|i| (i.scope.clone(), i.to_string()))
        .collect();
    assert_eq!(
        scopes,
        [
            (vec!["inner".to_string()], "super::Z".to_string()),
            (vec![], "super::W".to_string())
        ]
    );
}

#[test]
fn paths_resolve_to_files_as_far_as_modules_go() {
    let k = krate(&[
        (
            "lib.rs",
            "pub mod train;\npub mod data;\npub mod app;\npub mod config;",
        ),
        (
            "train/mod.rs",
            "pub mod cache;\nmod epoch;\npub use cache::Cache;",
        ),
        ("train/cache.rs", ""),
        ("train/epoch.rs", ""),
        ("data/mod.rs", "mod scan;\npub use scan::scan;"),
        ("data/scan.rs", ""),
        ("data/split.rs", ""),
        ("app.rs", ""),
        ("config/mod.rs", "mod inner { use super::Kind; }"),
    ]);
    let resolve = |from: &str, src: &str| {
        let import = scan(src).imports.remove(0);
        k.resolve(&path(from), &import).join("::")
    };
    assert_eq!(
        resolve("train::epoch", "use super::cache::Cache;"),
        "train::cache"
    );
    assert_eq!(resolve("train::epoch", "use super::Cache;"), "train");
    assert_eq!(resolve("train::epoch", "use super::super::app::X;"), "app");
    assert_eq!(
        resolve("app", "use crate::train::cache::Cache;"),
        "train::cache"
    );
    assert_eq!(resolve("app", "use crate::train::Cache;"), "train");
    assert_eq!(resolve("app", "use crate::train::{self};"), "train");
    // A private module is only seen from inside its parent: from outside it is the
    // re-exported function of the same name.
    assert_eq!(resolve("app", "use crate::data::scan;"), "data");
    assert_eq!(
        resolve("data::split", "use super::scan::Scan;"),
        "data::scan"
    );
    assert_eq!(resolve("app", "use crate::train::epoch::run;"), "train");
    // `super::` in an inline module of config/mod.rs is config itself.
    assert_eq!(
        resolve("config", "mod inner { use super::Kind; }"),
        "config"
    );
}

#[test]
fn circles_are_found_and_parent_child_is_not_one() {
    let k = krate(&[
        (
            "lib.rs",
            "pub mod train;\npub mod export;\npub mod predict;",
        ),
        (
            "train/mod.rs",
            "mod a;\nmod b;\nmod c;\npub use a::A;\nuse c::C;",
        ),
        ("train/a.rs", "use super::b::B;\nuse super::Phase;"),
        ("train/b.rs", "use super::a::A;"),
        ("train/c.rs", "use super::A; use crate::train::Phase;"),
        ("export.rs", "use crate::predict::Predictor;"),
        ("predict.rs", "pub fn p() { crate::export::card() }"),
    ]);
    let found: Vec<String> = circles(&k.file_graph())
        .iter()
        .map(|c| show_circle(c))
        .collect();
    assert_eq!(
        found,
        [
            "src/export.rs -> src/predict.rs -> src/export.rs",
            "src/train/a.rs -> src/train/b.rs -> src/train/a.rs",
        ]
    );
    // Three files around one circle, and two circles sharing a file.
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("x", vec!["y"]),
        ("y", vec!["z", "x"]),
        ("z", vec!["x"]),
        ("w", vec!["x"]),
    ]
    .into_iter()
    .map(|(a, bs)| (a.to_string(), bs.into_iter().map(str::to_string).collect()))
    .collect();
    let found: Vec<String> = circles(&graph).iter().map(|c| show_circle(c)).collect();
    assert_eq!(found, ["x -> y -> x", "x -> y -> z -> x"]);
}

#[test]
fn layer_table_and_violations_read_as_intended() {
    let md = "# A\n\n## Layers\n\n| layer | modules | job |\n|---|---|---|\n\
              | 1 | `config`, `fsutil` | files (`FileEvent`) |\n| 2 | `train` | the trainer |\n\
              | 3 | `text` | words |\n| 9 | `main.rs`, `cli.rs` (binary) | clap |\n\n## Next\n\n| 4 | `no` | x |\n";
    let rows = layer_rows(md);
    assert_eq!(
        rows,
        [
            (1, vec!["config".to_string(), "fsutil".to_string()]),
            (2, vec!["train".to_string()]),
            (3, vec!["text".to_string()]),
            (9, vec!["main.rs".to_string(), "cli.rs".to_string()]),
        ]
    );
    let layers: BTreeMap<String, u32> = rows
        .into_iter()
        .flat_map(|(layer, names)| names.into_iter().map(move |n| (n, layer)))
        .collect();
    let k = krate(&[
        ("lib.rs", "pub mod config;\npub mod train;\npub mod text;"),
        ("config.rs", ""),
        ("text.rs", "use crate::train::Event;"),
        ("train/mod.rs", "mod controller;"),
        (
            "train/controller.rs",
            "use crate::config::X;\nfn f() { crate::text::short(1) }",
        ),
    ]);
    assert_eq!(
        k.layer_violations(&layers),
        ["src/train/controller.rs: imports crate::text (layer 3) from layer 2 (`crate::text::short`)"]
    );
}
