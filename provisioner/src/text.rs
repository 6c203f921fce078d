//! The ends of texts and files that error messages and progress lines quote: a
//! failing command's last lines, a console log's last lines, a log's latest line.

use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

/// The last `count` lines of `text`, one per line.
pub fn tail(text: &str, count: usize) -> String {
    last(text.lines(), count).join("\n")
}

/// The last `count` of `lines`, joined into one line for an error message.
pub fn one_line_tail<'a>(lines: impl Iterator<Item = &'a str>, count: usize) -> String {
    last(lines, count).join(" | ")
}

fn last<'a>(lines: impl Iterator<Item = &'a str>, count: usize) -> Vec<&'a str> {
    let all: Vec<&str> = lines.collect();
    all[all.len().saturating_sub(count)..].to_vec()
}

/// The last `bytes` bytes of a file, as text (a character cut at the start, or any
/// other byte that is not UTF-8, becomes U+FFFD); `None` when it cannot be read.
pub fn file_tail(path: &Path, bytes: u64) -> Option<String> {
    let mut file = fs::File::open(path).ok()?;
    let length = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(bytes))).ok()?;
    let mut raw = Vec::new();
    file.read_to_end(&mut raw).ok()?;
    Some(String::from_utf8_lossy(&raw).into_owned())
}

/// `line` without ANSI escape sequences (systemd colours its status lines) and
/// other control characters.
pub fn strip_control(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters... final byte in @..~
            if chars.peek() == Some(&'[') {
                chars.next();
                for next in chars.by_ref() {
                    if ('@'..='~').contains(&next) {
                        break;
                    }
                }
            }
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_last_lines_in_order() {
        assert_eq!(tail("one\ntwo\n\nthree\n", 2), "\nthree");
        assert_eq!(tail("one\r\ntwo", 5), "one\ntwo");
        assert_eq!(tail("", 3), "");
        assert_eq!(one_line_tail(["a", "b", "c"].into_iter(), 2), "b | c");
        assert_eq!(one_line_tail(std::iter::empty(), 2), "");
    }

    #[test]
    fn a_file_tail_reads_only_the_end() {
        let scratch = tempfile::tempdir().expect("temporary directory");
        let file = scratch.path().join("log");
        fs::write(&file, "first line\nlast line\n").unwrap();
        assert_eq!(file_tail(&file, 10).as_deref(), Some("last line\n"));
        assert_eq!(file_tail(&file, 1000).as_deref(), Some("first line\nlast line\n"));
        // A character cut in half at the start is replaced, not an error.
        fs::write(&file, "é\n").unwrap();
        assert_eq!(file_tail(&file, 2).as_deref(), Some("\u{fffd}\n"));
        assert_eq!(file_tail(&scratch.path().join("absent"), 10), None);
    }

    #[test]
    fn control_sequences_and_characters_are_stripped() {
        assert_eq!(
            strip_control("[\u{1b}[0;32m  OK  \u{1b}[0m] Started ssh.service\r"),
            "[  OK  ] Started ssh.service"
        );
        assert_eq!(strip_control("Progress: 42%\u{1b}[K"), "Progress: 42%");
        assert_eq!(strip_control("plain"), "plain");
    }
}
