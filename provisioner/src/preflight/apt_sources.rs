//! The deb-src entry `apt-get source kubernetes` needs, derived from the host's own
//! apt sources: the mirror (and keyring) the host already installs Debian 12's
//! packages from. A host behind a local mirror or a caching proxy then fetches the
//! Kubernetes source from there too, and a host whose only way out is that mirror
//! can build at all. Debian's default sources name no deb-src, which is why the
//! entry is needed; the lab writes it once and never removes it (the user may).

use std::path::{Path, PathBuf};

use crate::debian::RELEASE;

/// The host's apt configuration.
const SOURCES_LIST: &str = "/etc/apt/sources.list";
const SOURCES_DIR: &str = "/etc/apt/sources.list.d";

/// One binary-package source of Debian 12's main component.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MainSource {
    uri: String,
    signed_by: Option<String>,
}

/// The deb-src entry (deb822 format) for the first source of `bookworm main` in
/// `files` (path and contents, in apt's reading order), or why there is none.
pub(super) fn deb_src_entry(files: &[(PathBuf, String)]) -> Result<String, String> {
    let source = files
        .iter()
        .flat_map(|(path, text)| {
            if path.extension().is_some_and(|extension| extension == "sources") {
                deb822_sources(text)
            } else {
                one_line_sources(text)
            }
        })
        .next()
        .ok_or_else(|| {
            format!(
                "no apt source of Debian 12 (`{RELEASE}` with `main`) in {SOURCES_LIST} or {SOURCES_DIR}; add the \
                 Debian mirror this host uses, then run `apt-get update`"
            )
        })?;
    let mut entry = format!("Types: deb-src\nURIs: {}\nSuites: {RELEASE}\nComponents: main\n", source.uri);
    if let Some(keyring) = source.signed_by {
        entry.push_str(&format!("Signed-By: {keyring}\n"));
    }
    Ok(entry)
}

/// The deb-src entry for this host's own apt sources, leaving out the file the lab
/// itself writes there.
pub(super) fn host_deb_src_entry(own_file: &Path) -> Result<String, String> {
    let mut paths = vec![PathBuf::from(SOURCES_LIST)];
    if let Ok(entries) = std::fs::read_dir(SOURCES_DIR) {
        let mut listed: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|extension| extension == "list" || extension == "sources"))
            .filter(|path| path != own_file)
            .collect();
        // apt reads sources.list.d in the order of the file names.
        listed.sort();
        paths.extend(listed);
    }
    let files: Vec<(PathBuf, String)> =
        paths.into_iter().filter_map(|path| std::fs::read_to_string(&path).ok().map(|text| (path, text))).collect();
    deb_src_entry(&files)
}

/// The `main` sources of Debian 12 among the stanzas of a deb822 `.sources` file.
fn deb822_sources(text: &str) -> Vec<MainSource> {
    let mut sources = Vec::new();
    // Stanzas are separated by blank lines; comment lines may sit anywhere.
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .filter(|line| !line.trim_start().starts_with('#'))
                .filter_map(|line| line.split_once(':'))
                .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
                .map(|(_, value)| value.trim().to_string())
        };
        let has =
            |name: &str, wanted: &str| field(name).is_some_and(|value| value.split_whitespace().any(|v| v == wanted));
        let disabled = field("Enabled").is_some_and(|value| value.eq_ignore_ascii_case("no"));
        if disabled || !has("Types", "deb") || !has("Suites", RELEASE) || !has("Components", "main") {
            continue;
        }
        if let Some(uri) = field("URIs").and_then(|uris| uris.split_whitespace().next().map(str::to_string)) {
            sources.push(MainSource { uri, signed_by: field("Signed-By") });
        }
    }
    sources
}

/// The `main` sources of Debian 12 among the lines of a one-line `.list` file:
/// `deb [option=value ...] URI SUITE COMPONENT...`.
fn one_line_sources(text: &str) -> Vec<MainSource> {
    let mut sources = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("deb ") else { continue };
        let (options, rest) = match rest.trim_start().strip_prefix('[') {
            Some(bracketed) => match bracketed.split_once(']') {
                Some((options, rest)) => (options, rest),
                None => continue,
            },
            None => ("", rest),
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.len() < 3 || words[1] != RELEASE || !words[2..].contains(&"main") {
            continue;
        }
        let signed_by =
            options.split_whitespace().find_map(|option| option.strip_prefix("signed-by=")).map(str::to_string);
        sources.push(MainSource { uri: words[0].to_string(), signed_by });
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 12's default sources, as this workplace's machines have them, with a
    /// comment inside the stanza.
    const DEBIAN_SOURCES: &str = "Types: deb\n\
        # http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
        URIs: http://deb.debian.org/debian\n\
        Suites: bookworm bookworm-updates\n\
        Components: main\n\
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
        \n\
        Types: deb\n\
        URIs: http://deb.debian.org/debian-security\n\
        Suites: bookworm-security\n\
        Components: main\n";

    fn file(path: &str, text: &str) -> (PathBuf, String) {
        (PathBuf::from(path), text.to_string())
    }

    #[test]
    fn the_entry_follows_the_hosts_own_mirror_and_keyring() {
        let files = [
            file("/etc/apt/sources.list", "# nothing here\n"),
            file("/etc/apt/sources.list.d/debian.sources", DEBIAN_SOURCES),
        ];
        assert_eq!(
            deb_src_entry(&files).expect("entry"),
            "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
        let local_mirror = [file(
            "/etc/apt/sources.list",
            "deb-src http://old.example/debian bookworm main\n\
             deb http://mirror.local/debian bookworm-updates main\n\
             deb [arch=amd64 signed-by=/etc/apt/keyrings/local.gpg] http://mirror.local/debian bookworm main contrib\n",
        )];
        assert_eq!(
            deb_src_entry(&local_mirror).expect("entry"),
            "Types: deb-src\nURIs: http://mirror.local/debian\nSuites: bookworm\nComponents: main\n\
             Signed-By: /etc/apt/keyrings/local.gpg\n"
        );
    }

    #[test]
    fn sources_of_other_releases_components_or_disabled_ones_are_not_used() {
        let files = [
            file("/etc/apt/sources.list", "deb http://deb.debian.org/debian trixie main\n"),
            file(
                "/etc/apt/sources.list.d/a.sources",
                "Types: deb\nURIs: http://a/\nSuites: bookworm\nComponents: contrib\n\n\
                 Enabled: no\nTypes: deb\nURIs: http://b/\nSuites: bookworm\nComponents: main\n",
            ),
            file(
                "/etc/apt/sources.list.d/nodesource.sources",
                "Types: deb\nURIs: https://deb.nodesource.com/\nSuites: nodistro\nComponents: main\n",
            ),
        ];
        let error = deb_src_entry(&files).expect_err("no Debian 12 main source");
        assert!(error.starts_with("no apt source of Debian 12 (`bookworm` with `main`)"), "{error}");
    }
}
