//! What the user hands vmthunder as text: files read only when they are regular files (a FIFO
//! or a device given as `-f` would block or never end), and messages kept readable when they
//! quote what a user gave (a 100,000-character value is cut, with its length said, instead of
//! being repeated in full).

use std::borrow::Cow;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The contents of the regular file at `path`. Anything else (a FIFO, a device, a directory,
/// a socket) is refused without blocking: it is opened non-blocking and checked before a
/// byte is read.
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            use std::os::unix::fs::FileTypeExt;
            let t = meta.file_type();
            if t.is_fifo() {
                "a FIFO"
            } else if t.is_socket() {
                "a socket"
            } else if t.is_block_device() || t.is_char_device() {
                "a device"
            } else {
                "not a regular file"
            }
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("it is {what}, not a regular file; give the path of a file"),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// `O_NONBLOCK` on Linux: opening a FIFO for reading then returns at once instead of waiting
/// for a writer (it does not change reads of a regular file).
const O_NONBLOCK: i32 = 0o4000;

/// Characters a quoted value keeps before it is cut.
const VALUE_KEEP: usize = 48;
/// A line longer than this is cut in its middle.
const LINE_MAX: usize = 1000;

/// `quoted` (a value as a message shows it, e.g. JSON) cut after [`VALUE_KEEP`] characters
/// when it is longer than that, with its length: `"aaaa…" (100002 characters)`.
pub fn cut_value(quoted: &str) -> String {
    let n = quoted.chars().count();
    if n <= VALUE_KEEP + 16 {
        return quoted.to_string();
    }
    let head: String = quoted.chars().take(VALUE_KEEP).collect();
    let close = if quoted.starts_with('"') { "\"" } else { "" };
    format!("{head}…{close} ({n} characters)")
}

/// `message` with every line longer than [`LINE_MAX`] characters cut in its middle, so both
/// what went wrong (the start) and what to do (the end) stay.
pub fn cut(message: &str) -> Cow<'_, str> {
    if message.lines().all(|l| l.len() <= LINE_MAX) {
        return Cow::Borrowed(message);
    }
    let lines: Vec<String> = message
        .split('\n')
        .map(|line| {
            let n = line.chars().count();
            if n <= LINE_MAX {
                return line.to_string();
            }
            let head: String = line.chars().take(LINE_MAX * 3 / 5).collect();
            let tail: String = line.chars().skip(n - LINE_MAX / 5).collect();
            format!(
                "{head} … ({} characters cut) … {tail}",
                n - head.chars().count() - tail.chars().count()
            )
        })
        .collect();
    Cow::Owned(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read_and_a_fifo_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spec.json");
        std::fs::write(&file, b"{}").unwrap();
        assert_eq!(read_regular(&file).unwrap(), b"{}");
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let e = read_regular(&fifo).unwrap_err();
        assert!(e.to_string().contains("a FIFO, not a regular file"), "{e}");
        let e = read_regular(dir.path()).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
    }

    #[test]
    fn long_values_and_lines_are_cut_and_say_how_long_they_were() {
        assert_eq!(cut_value("\"short\""), "\"short\"");
        let long = format!("\"{}\"", "é".repeat(100_000));
        let cut_v = cut_value(&long);
        assert!(cut_v.ends_with("…\" (100002 characters)"), "{cut_v}");
        assert!(cut_v.chars().count() < 80);
        let line = format!("start {} end: do this", "x".repeat(50_000));
        let m = format!("first line\n{line}");
        let c = cut(&m);
        assert!(c.starts_with("first line\nstart xxx"));
        assert!(c.ends_with("x end: do this"));
        assert!(c.contains("characters cut"));
        assert!(c.len() < 1200);
        assert!(matches!(cut("fine\nlines"), Cow::Borrowed(_)));
    }
}
