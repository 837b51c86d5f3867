//! CRIU configuration files: one option per line, written without the leading dashes (we also
//! accept them), its value after whitespace, optionally in double quotes with `\"` for a literal
//! quote; `#` starts a comment. Each line becomes one `--name[=value]` word for the same parser
//! as the command line.

use std::path::Path;

/// One option read from a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigOption {
    /// 1-based line number, for error messages.
    pub line: usize,
    pub name: String,
    pub value: Option<String>,
}

impl ConfigOption {
    /// The command-line word for this option.
    pub fn to_arg(&self) -> String {
        match &self.value {
            Some(v) => format!("--{}={v}", self.name),
            None => format!("--{}", self.name),
        }
    }
}

/// A line that is not `name [value]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub msg: String,
}

/// Parses the text of a configuration file.
pub fn parse(text: &str) -> Result<Vec<ConfigOption>, SyntaxError> {
    let mut options = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        if let Some((name, value)) = parse_line(raw).map_err(|msg| SyntaxError { line, msg })? {
            options.push(ConfigOption { line, name, value });
        }
    }
    Ok(options)
}

/// Reads and parses a configuration file.
pub fn read(path: &Path) -> std::io::Result<Result<Vec<ConfigOption>, SyntaxError>> {
    Ok(parse(&std::fs::read_to_string(path)?))
}

type Line = Option<(String, Option<String>)>;

fn parse_line(raw: &str) -> Result<Line, String> {
    let text = raw.trim_start();
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }
    let (name, rest) = match text.find([' ', '\t']) {
        Some(at) => (&text[..at], &text[at..]),
        None => (text, ""),
    };
    // "name#comment" with no space: the comment still ends the option name.
    let (name, rest) = match name.split_once('#') {
        Some((n, _)) => (n, ""),
        None => (name, rest),
    };
    let name = name.trim_start_matches('-');
    if name.is_empty() {
        return Err("expected an option name".into());
    }
    let rest = rest.trim_start();
    let value = if rest.is_empty() || rest.starts_with('#') {
        None
    } else if let Some(quoted) = rest.strip_prefix('"') {
        Some(parse_quoted(quoted)?)
    } else {
        let value = rest.split('#').next().unwrap_or("").trim_end();
        if value.contains(char::is_whitespace) {
            return Err(format!(
                "more than one value for '{name}': put a value with spaces in double quotes"
            ));
        }
        Some(value.to_string())
    };
    Ok(Some((name.to_string(), value)))
}

/// The inside of a `"..."` value (after the opening quote); only a comment may follow it.
fn parse_quoted(s: &str) -> Result<String, String> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if s[i + 1..].starts_with('"') => {
                value.push('"');
                chars.next();
            }
            '"' => {
                let after = s[i + 1..].trim_start();
                if !after.is_empty() && !after.starts_with('#') {
                    return Err(format!("unexpected text after the quoted value: '{after}'"));
                }
                return Ok(value);
            }
            c => value.push(c),
        }
    }
    Err("missing closing double quote".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(text: &str) -> Vec<(String, Option<String>)> {
        parse(text)
            .unwrap()
            .into_iter()
            .map(|o| (o.name, o.value))
            .collect()
    }

    fn o(name: &str, value: Option<&str>) -> (String, Option<String>) {
        (name.to_string(), value.map(str::to_string))
    }

    #[test]
    fn criu_manual_example() {
        let text = "tcp-established\n\
                    work-dir \"/home/USERNAME/criu/my \\\"work\\\" directory\"\n\
                    #this is a comment\n\
                    no-restore-sibling   # this is another comment\n";
        assert_eq!(
            opts(text),
            [
                o("tcp-established", None),
                o(
                    "work-dir",
                    Some("/home/USERNAME/criu/my \"work\" directory")
                ),
                o("no-restore-sibling", None),
            ]
        );
    }

    #[test]
    fn values_blanks_and_dashes() {
        let text = "\n   \n  verbosity 4\n--log-file\tdump.log  # where\n\tlink-remap#x\nlsm-profile \"\"\n";
        assert_eq!(
            opts(text),
            [
                o("verbosity", Some("4")),
                o("log-file", Some("dump.log")),
                o("link-remap", None),
                o("lsm-profile", Some("")),
            ]
        );
    }

    #[test]
    fn to_arg_forms() {
        let v = &parse("tree 42\nshell-job\n").unwrap();
        assert_eq!(v[0].to_arg(), "--tree=42");
        assert_eq!(v[1].to_arg(), "--shell-job");
    }

    #[test]
    fn bad_lines_name_their_line() {
        assert_eq!(parse("shell-job\nwork-dir a b\n").unwrap_err().line, 2);
        assert!(parse("work-dir \"unterminated\n").is_err());
        assert!(parse("work-dir \"a\" b\n").is_err());
        assert!(parse("-- value\n").is_err());
        assert!(parse("work-dir \"a\"  # fine\n").is_ok());
    }
}
