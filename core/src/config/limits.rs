//! Bounds on configuration input, checked before anything expensive happens to it.
//!
//! The configuration is read inside the first `socket()` of a proxy (preload library), at Envoy's
//! start (native extension) and by `envoy-smc config`: a file that never ends (a FIFO,
//! `/dev/zero`), a huge file, or a deeply nested document must be refused at once with a message
//! that says what was wrong, not hang the process or burn seconds of CPU. In order:
//!
//! 1. [`read_config_file`]: opened without blocking (`O_NONBLOCK`, so a FIFO does not wait for a
//!    writer), accepted only if it is a regular file (`fstat` on the opened file), at most
//!    [`MAX_CONFIG_BYTES`]. Symlinks in the path are followed: the path comes from the operator
//!    (Kubernetes mounts ConfigMaps through symlinks), and the checks apply to what it points at.
//! 2. [`check_text`]: one linear pass over the text bounding the nesting depth
//!    ([`MAX_DEPTH`]) before the YAML parser sees it; the reader (`yaml.rs`) bounds it again
//!    while it builds the value and refuses aliases, so no small text expands into a large value.
//! 3. [`check_value`]: after parsing, every list and mapping has at most [`MAX_ITEMS`] entries
//!    and the depth is bounded again, before the values are converted and validated. Per-field
//!    limits (shorter lists, numeric ranges) are checked where the configuration is compiled
//!    (`validate.rs`).

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::Value as Json;

use super::ConfigError;

pub use super::validate::{
    DETECT_MS, HOLD_DOWN_MS, MAX_ANNOTATIONS, MAX_CIDRS, MAX_DESTINATIONS, MAX_HOLD_DOWN_MS,
    MAX_LISTENER_PORTS, MAX_PORT_RANGES,
};

/// Largest configuration accepted, in bytes (YAML, JSON or Envoy's serialized message).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
/// Largest annotations file (`opt_in.annotations_file`) read; Kubernetes caps all annotations of
/// an object at 256 KiB.
pub const MAX_ANNOTATIONS_FILE_BYTES: usize = 256 << 10;
/// Deepest nesting of mappings and lists (the configuration itself needs 4).
pub const MAX_DEPTH: usize = 32;
/// Most entries in any one list or mapping (field-specific limits are lower).
pub const MAX_ITEMS: usize = 4096;

/// What the file at `path` is, for a message ("a FIFO", "a character device").
fn kind_of(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFIFO => "a FIFO",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFDIR => "a directory",
        libc::S_IFSOCK => "a socket",
        libc::S_IFLNK => "a symbolic link",
        _ => "not a regular file",
    }
}

/// Reads a regular file of at most `cap` bytes: never blocks on a FIFO or device, never reads
/// more than `cap + 1` bytes. `what` names the file in errors ("configuration file").
pub fn read_regular_file(path: &Path, cap: usize, what: &str) -> Result<Vec<u8>, ConfigError> {
    let fail = |msg: String| ConfigError::new("", format!("cannot read {}: {msg}", path.display()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| fail(e.to_string()))?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    use std::os::unix::fs::MetadataExt;
    if meta.mode() & libc::S_IFMT != libc::S_IFREG {
        return Err(fail(format!(
            "the {what} is {}, not a regular file",
            kind_of(meta.mode())
        )));
    }
    if meta.len() > cap as u64 {
        return Err(fail(format!(
            "the {what} is {} bytes, more than the limit of {cap}",
            meta.len()
        )));
    }
    // A file that grows while it is read (or a /proc file reporting size 0) is still capped.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() > cap {
        return Err(fail(format!(
            "the {what} is more than the limit of {cap} bytes"
        )));
    }
    Ok(bytes)
}

/// Reads a configuration file (YAML or JSON text) within [`MAX_CONFIG_BYTES`].
pub fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    let bytes = read_regular_file(path, MAX_CONFIG_BYTES, "configuration file")?;
    String::from_utf8(bytes).map_err(|_| {
        ConfigError::new(
            "",
            format!("cannot read {}: not UTF-8 text", path.display()),
        )
    })
}

/// Reads at most [`MAX_CONFIG_BYTES`] from a stream (`envoy-smc config -`).
pub fn read_config_stream(r: impl Read) -> Result<String, ConfigError> {
    let mut bytes = Vec::new();
    r.take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ConfigError::new("", format!("cannot read the configuration: {e}")))?;
    check_size(bytes.len())?;
    String::from_utf8(bytes)
        .map_err(|_| ConfigError::new("", "the configuration is not UTF-8 text"))
}

/// The configuration is at most [`MAX_CONFIG_BYTES`] long.
pub fn check_size(len: usize) -> Result<(), ConfigError> {
    if len > MAX_CONFIG_BYTES {
        return Err(ConfigError::new(
            "",
            format!("the configuration is more than the limit of {MAX_CONFIG_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn too_deep(line: usize) -> ConfigError {
    ConfigError::new(
        "",
        format!("the document is nested more than {MAX_DEPTH} levels deep (line {line})"),
    )
}

/// Bounds the nesting depth of YAML/JSON text in one pass, before it is parsed. It counts
/// block levels by indentation (plus `- ` entries opening nested lists on one line) and flow
/// levels by brackets outside quoted strings and comments; it may count a level too many (a `[`
/// inside a plain scalar), never too few, and the configuration needs far fewer than the limit.
pub fn check_text(text: &str) -> Result<(), ConfigError> {
    check_size(text.len())?;
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    // Inside a quoted scalar that may continue over lines (in flow context).
    let mut quote: Option<u8> = None;
    // Inside a block scalar (`|`, `>`): lines indented more than this belong to it.
    let mut block_scalar: Option<usize> = None;
    for (n, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line).as_bytes();
        let col = line.iter().take_while(|&&b| b == b' ').count();
        let blank = line[col..].iter().all(|b| b.is_ascii_whitespace());
        if let Some(parent) = block_scalar {
            if blank || col > parent {
                continue;
            }
            block_scalar = None;
        }
        if blank && quote.is_none() {
            continue;
        }
        let mut i = col;
        let mut dashes = 0;
        if flow == 0 && quote.is_none() {
            if line[col] == b'#' {
                continue;
            }
            while indents.last().is_some_and(|&top| top > col) {
                indents.pop();
            }
            if indents.last().is_none_or(|&top| top < col) {
                indents.push(col);
            }
            // `- - x`, `? x`: each indicator opens one more level on this line.
            while i < line.len()
                && matches!(line[i], b'-' | b'?')
                && line.get(i + 1).is_none_or(|b| *b == b' ' || *b == b'\t')
            {
                dashes += 1;
                i += 1;
                while i < line.len() && line[i] == b' ' {
                    i += 1;
                }
            }
            if indents.len() + dashes > MAX_DEPTH {
                return Err(too_deep(n + 1));
            }
        }
        let base = indents.len() + dashes;
        let mut prev = b' ';
        let mut end = line.len();
        while i < line.len() {
            let b = line[i];
            match quote {
                Some(q) => {
                    if b == b'\\' && q == b'"' {
                        i += 1; // the escaped character
                    } else if b == q {
                        quote = None;
                    }
                }
                None => match b {
                    b'#' if prev == b' ' || prev == b'\t' => {
                        end = i;
                        break;
                    }
                    b'"' | b'\''
                        if i == col || matches!(prev, b' ' | b'\t' | b':' | b',' | b'[' | b'{') =>
                    {
                        quote = Some(b)
                    }
                    b'[' | b'{' => {
                        flow += 1;
                        if base + flow > MAX_DEPTH {
                            return Err(too_deep(n + 1));
                        }
                    }
                    b']' | b'}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            prev = b;
            i += 1;
        }
        // `key: |`, `- >-`: the lines after a block scalar's header are text, not structure.
        if flow == 0 && quote.is_none() && is_block_scalar_header(&line[col..end]) {
            block_scalar = Some(col);
        }
    }
    Ok(())
}

/// The line (without its comment) ends in a block scalar header: `|` or `>` after a space or at
/// the start, with optional chomping/indentation indicators.
fn is_block_scalar_header(line: &[u8]) -> bool {
    let mut t = line.trim_ascii_end();
    for _ in 0..2 {
        if let [rest @ .., b'+' | b'-' | b'1'..=b'9'] = t {
            t = rest;
        }
    }
    matches!(t, [b'|' | b'>'] | [.., b' ' | b'\t', b'|' | b'>'])
}

/// Bounds a parsed document: depth at most [`MAX_DEPTH`], at most [`MAX_ITEMS`] entries in any
/// list or mapping. `path` names where a violation is.
pub fn check_value(v: &Json) -> Result<(), ConfigError> {
    fn walk(v: &Json, path: &str, depth: usize) -> Result<(), ConfigError> {
        if depth > MAX_DEPTH {
            return Err(ConfigError::new(
                path,
                format!("nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        let at = |name: &str| {
            if path.is_empty() {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            }
        };
        match v {
            Json::Array(items) => {
                if items.len() > MAX_ITEMS {
                    return Err(ConfigError::new(
                        path,
                        format!("{} entries, more than {MAX_ITEMS}", items.len()),
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"), depth + 1)?;
                }
            }
            Json::Object(map) => {
                if map.len() > MAX_ITEMS {
                    return Err(ConfigError::new(
                        path,
                        format!("{} entries, more than {MAX_ITEMS}", map.len()),
                    ));
                }
                for (k, item) in map {
                    walk(item, &at(k), depth + 1)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    walk(v, "", 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_documents_pass() {
        for text in [
            "",
            "mode: MODE_AUTO\nupstream:\n  allow:\n    - 10.0.0.0/8\n    - \"fd00::/8\"\n",
            "{\"upstream\": {\"allow\": [\"10.0.0.0/8\"]}, \"listeners\": {\"ports\": [1, 2]}}",
            "opt_in:\n  annotations: {a: \"x[[[[\", b: 'y{{{'}\n# [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n",
            "note: |\n                                                      deep text\n  [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\nmode: MODE_AUTO\n",
        ] {
            check_text(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        }
    }

    #[test]
    fn deep_nesting_is_refused_in_every_style() {
        let flow = "[".repeat(10_000);
        let block: String = (0..40)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        let dashes = format!("{}x\n", "- ".repeat(40));
        for text in [flow, block, dashes] {
            let e = check_text(&text).unwrap_err();
            assert!(e.message.contains("nested more than 32 levels"), "{e}");
        }
    }
}
