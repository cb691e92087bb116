//! YAML output: the one place kiln turns data into YAML text (cloud-init
//! seeds now; Docker Compose and Kubernetes bundles later).
//!
//! Everything kiln emits as YAML goes through [`to_string`], never through
//! `format!`: a value that came from a user is then always quoted or
//! escaped as YAML needs it. The readers that matter are YAML 1.1 ones
//! (PyYAML in cloud-init, Go YAML in Docker Compose), which read an
//! unquoted `no`, `on`, `yes`, `0755`, `1_000` or `12:30` as a boolean or a
//! number. [serde-saphyr] quotes every string that a YAML 1.1 or 1.2
//! reader would take for anything but a string.
//!
//! The style, fixed here so every document looks alike:
//!
//! - block mappings and sequences, two-space indent, list items at their
//!   key's column (`- name: …` under `users:`), empty collections as `{}`
//!   and `[]`;
//! - a string with line breaks as a literal block (`|`, `|-`, `|+`, with an
//!   indentation indicator when its first line starts with a space) when
//!   that keeps it exact, else double-quoted with escapes; control
//!   characters are always escaped, so a reader never sees them raw;
//! - long single-line strings stay on one line: never folded (`>`), so
//!   what a reader sees is what was written (an SSH key, a base64 blob);
//! - no `---` or `%YAML` line; the text ends with one newline.
//!
//! Output is a function of the value alone. Struct fields come out in
//! declaration order and map entries in iteration order, so maps must be
//! ordered ones (`BTreeMap`), never `HashMap`.
//!
//! [serde-saphyr]: https://docs.rs/serde-saphyr

use serde::Serialize;

/// Why a value could not be written as YAML.
#[derive(Debug, thiserror::Error)]
#[error("cannot write YAML: {0}")]
pub struct YamlError(#[from] serde_saphyr::SerializeError);

/// `value` as a YAML document, in kiln's fixed style (see the module doc).
pub fn to_string<T: Serialize>(value: &T) -> Result<String, YamlError> {
    let options = serde_saphyr::ser_options! {
        indent_step: 2,
        compact_list_indent: true,
        prefer_block_scalars: true,
        // Long single-line strings are never folded: `>` would break an SSH
        // key or base64 text over lines that a reader joins again with
        // spaces, which is exact but hard to read and easy to get wrong.
        folded_wrap_chars: usize::MAX,
        quote_all: false,
        yaml_12: false,
        tagged_enums: false,
    };
    let mut text = serde_saphyr::to_string_with_options(value, options)?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::Deserialize;

    use super::*;

    fn round_trip<T>(value: &T) -> T
    where
        T: Serialize + for<'de> Deserialize<'de>,
    {
        let text = to_string(value).expect("serialise");
        serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("cannot read back\n{text}\nerror: {e}"))
    }

    #[test]
    fn yaml_1_1_scalars_are_quoted() {
        let words = [
            "no",
            "No",
            "NO",
            "yes",
            "on",
            "off",
            "y",
            "n",
            "true",
            "False",
            "null",
            "~",
            "",
            "12:30",
            "1:20:30",
            "0755",
            "0o755",
            "0x1F",
            "1_000",
            "1e3",
            ".inf",
            "-.NaN",
            "2024-01-02",
            "2001-12-14t21:59:43.10-05:00",
            "-",
            "?",
            ":",
            "#x",
            "- x",
            "a: b",
            "x #y",
            "@at",
            "`tick",
            "*alias",
            "&anchor",
            "!tag",
            "%dir",
            "|",
            ">",
            "'",
            "\"",
            "[a]",
            "{a}",
            ",",
            " lead",
            "trail ",
            "=",
        ];
        let list: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
        let text = to_string(&list).expect("serialise");
        let back: Vec<String> = serde_saphyr::from_str(&text).expect("read back");
        assert_eq!(back, list, "{text}");
        for word in [
            "no", "yes", "on", "off", "y", "n", "12:30", "0755", "1_000", "null",
        ] {
            assert!(
                !text.lines().any(|line| line == format!("- {word}")),
                "`{word}` must be quoted:\n{text}"
            );
        }
    }

    #[test]
    fn multi_line_strings_are_literal_blocks_and_round_trip() {
        let mut map = BTreeMap::new();
        map.insert("a".to_owned(), "line one\nline two\n".to_owned());
        map.insert("b".to_owned(), "  indented first\nsecond\n".to_owned());
        map.insert("c".to_owned(), "no trailing newline\nsecond".to_owned());
        map.insert("d".to_owned(), "two trailing\n\n".to_owned());
        map.insert(
            "e".to_owned(),
            "tab\there\nx: y # not a comment\n".to_owned(),
        );
        let text = to_string(&map).expect("serialise");
        assert!(text.contains("a: |\n  line one\n  line two\n"), "{text}");
        assert_eq!(round_trip(&map), map, "{text}");
    }

    #[test]
    fn long_lines_are_not_folded() {
        let key = format!("ssh-ed25519 {} someone@example.org", "A".repeat(200));
        let text = to_string(&vec![key.clone()]).expect("serialise");
        assert_eq!(text, format!("- {key}\n"));
    }

    #[test]
    fn control_characters_are_escaped() {
        let value = vec![
            "bell\u{7}".to_owned(),
            "cr\r\nlf".to_owned(),
            "nul\0".to_owned(),
        ];
        let text = to_string(&value).expect("serialise");
        assert!(
            text.chars().all(|c| c == '\n' || !c.is_control()),
            "{text:?}"
        );
        assert_eq!(round_trip(&value), value);
    }

    #[test]
    fn output_is_plain_and_ends_with_a_newline() {
        #[derive(Serialize)]
        struct Doc {
            b: u32,
            a: Vec<String>,
            empty: Vec<String>,
        }
        let text = to_string(&Doc {
            b: 1,
            a: vec!["x".into()],
            empty: vec![],
        })
        .expect("serialise");
        assert_eq!(text, "b: 1\na:\n- x\nempty: []\n");
    }

    proptest! {
        #[test]
        fn any_string_round_trips(value in any::<String>()) {
            let mut map = BTreeMap::new();
            map.insert("key".to_owned(), vec![value.clone(), format!("{value}\n{value}")]);
            let text = to_string(&map).expect("serialise");
            let back: BTreeMap<String, Vec<String>> = serde_saphyr::from_str(&text)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(back, map, "{}", text);
        }

        #[test]
        fn text_like_strings_round_trip(
            value in "([ \t]{0,3}[a-z:#\\-'\"|>{}\\[\\],&*!%@`]{0,6}[ \t]{0,2}\n{0,3}){0,6}"
        ) {
            let list = vec![value];
            let text = to_string(&list).expect("serialise");
            let back: Vec<String> = serde_saphyr::from_str(&text)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(back, list, "{}", text);
        }
    }
}
