//! YAML (or JSON) text to a JSON value, for the proto3 JSON loader.
//!
//! Built on yaml-rust2's event parser rather than a YAML-to-serde bridge, so what the core accepts
//! stays small and bounded:
//!
//! - Plain scalars are typed by the YAML 1.2 core schema, as the previous loader (serde_yaml 0.9)
//!   typed them: `null`/`~`/empty, `true`/`false` (three spellings each), integers (decimal,
//!   `0x`, `0o`, `0b`; a leading zero makes a string, as `0755` in YAML 1.2), finite floats.
//!   Quoted and block scalars are always strings.
//! - Mapping keys are scalars, taken as written; a key given twice is an error.
//! - Aliases (`*name`) are refused: one alias can stand for a whole subtree, so a few hundred
//!   bytes could expand to gigabytes ("billion laughs"). Anchors alone are harmless and ignored.
//! - Tags (`!!str`, `!custom`) are refused rather than half-understood.
//! - At most one document; nesting at most [`MAX_DEPTH`] (also bounded before parsing, by
//!   [`super::limits::check_text`]).
//!
//! Every error names the line and column.

use serde_json::{Map, Number, Value as Json};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::limits::MAX_DEPTH;

/// Where in the text, for messages: `line 3 column 7` (both from 1).
fn at(mark: &Marker) -> String {
    // yaml-rust2 counts lines from 1 and columns from 0.
    format!("line {} column {}", mark.line(), mark.col() + 1)
}

/// A collection being built, with where it started (for messages).
enum Open {
    Seq(Vec<Json>),
    /// The mapping, and the key read whose value is still to come.
    Map(Map<String, Json>, Option<String>),
}

/// Parses one YAML document into a JSON value; no document (empty text, only comments) is `null`.
pub fn to_json(text: &str) -> Result<Json, String> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Open> = Vec::new();
    let mut document: Option<Json> = None;
    let mut documents = 0;
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|e| format!("{}: {}", at(e.marker()), e.info()))?;
        let done = match event {
            Event::StreamEnd => break,
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => continue,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(format!(
                        "{}: a second document; the configuration is one document",
                        at(&mark)
                    ));
                }
                continue;
            }
            Event::Alias(_) => {
                return Err(format!(
                    "{}: aliases (*name) are not supported; write the value out",
                    at(&mark)
                ))
            }
            Event::Scalar(text, style, _anchor, tag) => {
                refuse_tag(tag.as_ref(), &mark)?;
                // A scalar in key position is taken as written (`1: x` has the key "1").
                if let Some(Open::Map(map, key @ None)) = stack.last_mut() {
                    if map.contains_key(&text) {
                        return Err(format!("{}: duplicate key {text:?}", at(&mark)));
                    }
                    *key = Some(text);
                    continue;
                }
                scalar(text, style, &mark)?
            }
            Event::SequenceStart(_anchor, ref tag) | Event::MappingStart(_anchor, ref tag) => {
                refuse_tag(tag.as_ref(), &mark)?;
                if let Some(Open::Map(_, None)) = stack.last() {
                    return Err(format!(
                        "{}: a mapping key must be a scalar, not a list or mapping",
                        at(&mark)
                    ));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(format!(
                        "{}: nested more than {MAX_DEPTH} levels deep",
                        at(&mark)
                    ));
                }
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Open::Seq(Vec::new())
                } else {
                    Open::Map(Map::new(), None)
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Open::Seq(items)) => Json::Array(items),
                Some(Open::Map(map, None)) => Json::Object(map),
                // The parser pairs keys with values (an omitted value is an empty scalar).
                Some(Open::Map(_, Some(key))) => {
                    return Err(format!("{}: no value for key {key:?}", at(&mark)))
                }
                None => return Err(format!("{}: unbalanced end of collection", at(&mark))),
            },
        };
        // A finished value goes into its parent, or is the document.
        match stack.last_mut() {
            Some(Open::Seq(items)) => items.push(done),
            Some(Open::Map(map, key)) => {
                let key = key
                    .take()
                    .ok_or_else(|| format!("{}: a value without a key", at(&mark)))?;
                map.insert(key, done);
            }
            None => document = Some(done),
        }
    }
    Ok(document.unwrap_or(Json::Null))
}

fn refuse_tag(tag: Option<&Tag>, mark: &Marker) -> Result<(), String> {
    match tag {
        None => Ok(()),
        Some(t) => Err(format!(
            "{}: tags ({}{}) are not supported; write the value without one",
            at(mark),
            t.handle,
            t.suffix
        )),
    }
}

/// The JSON value of a scalar: quoted and block scalars are strings, plain ones are typed.
fn scalar(text: String, style: TScalarStyle, mark: &Marker) -> Result<Json, String> {
    if style != TScalarStyle::Plain {
        return Ok(Json::String(text));
    }
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Json::Null),
        "true" | "True" | "TRUE" => return Ok(Json::Bool(true)),
        "false" | "False" | "FALSE" => return Ok(Json::Bool(false)),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF"
        | ".nan" | ".NaN" | ".NAN" => {
            return Err(format!("{}: {text} is not a finite number", at(mark)))
        }
        _ => {}
    }
    if let Some(n) = integer(&text) {
        return n.ok_or_else(|| format!("{}: integer {text} is out of range", at(mark)));
    }
    if let Some(f) = float(&text) {
        return Ok(Json::Number(f));
    }
    Ok(Json::String(text))
}

/// `Some(Some(n))` for an integer in range, `Some(None)` for an integer that fits no 64-bit
/// type, `None` if the text is not an integer. A decimal with a leading zero (`0755`) is a string.
fn integer(text: &str) -> Option<Option<Json>> {
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(d) = unsigned.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = unsigned.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = unsigned.strip_prefix("0b") {
        (2, d)
    } else {
        if unsigned.len() > 1 && unsigned.starts_with('0') {
            return None;
        }
        (10, unsigned)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = match u128::from_str_radix(digits, radix) {
        Ok(m) => m,
        Err(_) => return Some(None),
    };
    let n = if negative {
        i64::try_from(-i128::try_from(magnitude).ok()?)
            .ok()
            .map(Number::from)
    } else {
        u64::try_from(magnitude).ok().map(Number::from)
    };
    Some(n.map(Json::Number))
}

/// A finite float in Rust's (and YAML 1.2's) decimal syntax; `inf`/`nan` spelled any other way
/// than the YAML forms are strings.
fn float(text: &str) -> Option<Number> {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    // A second sign is not a number; neither is a leading zero before digits only (`0755`).
    let leading_zero_digits = unsigned.len() > 1
        && unsigned.starts_with('0')
        && unsigned.bytes().all(|b| b.is_ascii_digit());
    if unsigned.starts_with(['+', '-']) || leading_zero_digits {
        return None;
    }
    let f: f64 = text.strip_prefix('+').unwrap_or(text).parse().ok()?;
    if !f.is_finite() {
        return None;
    }
    Number::from_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_scalars_are_typed_and_quoted_ones_stay_strings() {
        let v = to_json(
            "a: 1\nb: -2\nc: 0x1f\nd: 0o17\ne: 1.5\nf: 1e3\ng: true\nh: ~\ni:\nj: \"1\"\nk: '~'\n\
             l: 0755\nm: yes\nn: 10.0.0.0/8\no: |\n  text\np: nan\nq: 18446744073709551615\n",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"a": 1, "b": -2, "c": 31, "d": 15, "e": 1.5, "f": 1000.0, "g": true,
                   "h": null, "i": null, "j": "1", "k": "~", "l": "0755", "m": "yes",
                   "n": "10.0.0.0/8", "o": "text\n", "p": "nan", "q": 18446744073709551615u64})
        );
    }

    #[test]
    fn json_text_is_read_as_yaml() {
        let v = to_json(r#"{"mode": "MODE_AUTO", "ports": [1, 2], "x": {"y": "a\tb"}}"#).unwrap();
        assert_eq!(
            v,
            json!({"mode": "MODE_AUTO", "ports": [1, 2], "x": {"y": "a\tb"}})
        );
    }

    #[test]
    fn no_document_is_null() {
        assert_eq!(to_json("").unwrap(), Json::Null);
        assert_eq!(to_json("# only a comment\n").unwrap(), Json::Null);
    }

    /// Each error names the line and column and what was wrong.
    #[test]
    fn errors_name_where_and_what() {
        for (text, want) in [
            (
                "a: &x [1, 2]\nb: *x\n",
                "line 2 column 4: aliases (*name) are not supported",
            ),
            ("a: 1\na: 2\n", "line 2 column 1: duplicate key \"a\""),
            (
                "a: !!str 1\n",
                "line 1 column 10: tags (tag:yaml.org,2002:str) are not supported",
            ),
            ("a: 1\n---\nb: 2\n", "line 2 column 1: a second document"),
            (
                "[1]: x\n",
                "line 1 column 1: a mapping key must be a scalar",
            ),
            ("a: .inf\n", "line 1 column 4: .inf is not a finite number"),
            (
                "a: 99999999999999999999\n",
                "line 1 column 4: integer 99999999999999999999 is out of range",
            ),
            (
                "a: -9223372036854775809\n",
                "integer -9223372036854775809 is out of range",
            ),
            (
                "mode: [unclosed",
                "while parsing a flow sequence, expected ',' or ']'",
            ),
            ("a:\n  b: 1\n c: 2\n", "line 3 column"),
        ] {
            let err = to_json(text).expect_err(text);
            assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn depth_is_bounded_while_parsing() {
        let deep = format!(
            "{}1{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        let err = to_json(&deep).unwrap_err();
        assert!(err.contains("nested more than 32 levels deep"), "{err}");
        let ok = format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        to_json(&ok).unwrap();
    }
}
