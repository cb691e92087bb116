//! AWS profiles for `s3://` caches: the shared `credentials` and `config`
//! files, read the way the AWS CLI and SDKs read them, for static
//! credentials, the region and the endpoint.
//!
//! `AWS_PROFILE` selects the profile (`default` when unset).
//! `AWS_SHARED_CREDENTIALS_FILE` (default `~/.aws/credentials`) holds it as
//! `[NAME]`, `AWS_CONFIG_FILE` (default `~/.aws/config`) as
//! `[profile NAME]` (or `[default]`). Both files may hold a profile; for the
//! same setting the credentials file wins. The environment wins over both:
//!
//! - credentials: `AWS_ACCESS_KEY_ID` (with `AWS_SECRET_ACCESS_KEY` and
//!   `AWS_SESSION_TOKEN`) when set; otherwise the profile's
//!   `aws_access_key_id`, `aws_secret_access_key` and `aws_session_token`,
//!   taken together (an environment's session token never joins a
//!   profile's key, nor the other way round);
//! - region: `AWS_REGION`, then `AWS_DEFAULT_REGION`, then `region`;
//! - endpoint: `AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL`, then the
//!   profile's `services` section's `s3 = endpoint_url = …`, then
//!   `endpoint_url`.
//!
//! "The environment" is what the cache was opened with, `HOME` included,
//! so tests never read the files of whoever runs them. A profile named by
//! `AWS_PROFILE` must exist; the implicit `default` need not. Profiles that
//! get credentials another way (`role_arn`, `credential_process`, SSO, web
//! identity) are refused with a hint rather than silently ignored.
//!
//! Values are secrets: no error and no `Debug` output shows one. Errors
//! name files, lines, profiles and setting names only.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The settings that carry credentials, in the order they are reported.
const ACCESS_KEY_ID: &str = "aws_access_key_id";
const SECRET_ACCESS_KEY: &str = "aws_secret_access_key";
const SESSION_TOKEN: &str = "aws_session_token";

/// Where credentials come from when no profile supplies them.
pub(crate) const ENV_CREDENTIALS: &str =
    "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN";

/// Settings that get credentials in ways kiln does not implement.
const UNSUPPORTED: [&str; 6] = [
    "role_arn",
    "credential_process",
    "sso_session",
    "sso_start_url",
    "web_identity_token_file",
    "credential_source",
];

/// A profile that cannot be used. See the module documentation.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("AWS profile {profile:?} (AWS_PROFILE) not found: {looked}\n  hint: {hint}")]
    NotFound {
        profile: String,
        /// Which files were looked at, for which section.
        looked: String,
        hint: String,
    },
    #[error("cannot read the AWS {kind} file {}: {source}", path.display())]
    Read {
        kind: FileKind,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}:{line}: {reason} (AWS {kind} file)", path.display())]
    Syntax {
        kind: FileKind,
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(
        "AWS profile {profile:?} sets {present} ({}:{line}) but not {missing}\n  \
         hint: a profile's static credentials need both aws_access_key_id and aws_secret_access_key",
        path.display()
    )]
    Incomplete {
        profile: String,
        present: &'static str,
        missing: &'static str,
        path: PathBuf,
        line: usize,
    },
    #[error(
        "AWS profile {profile:?} gets its credentials through {setting} ({}:{line}), which \
         kiln does not support: it reads static credentials only (aws_access_key_id, \
         aws_secret_access_key, aws_session_token)\n  \
         hint: put credentials in the environment first, e.g. \
         eval \"$(aws configure export-credentials --profile {profile} --format env)\"",
        path.display()
    )]
    Unsupported {
        profile: String,
        setting: &'static str,
        path: PathBuf,
        line: usize,
    },
}

/// Which of the two shared files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `~/.aws/credentials`: profiles are `[NAME]`.
    Credentials,
    /// `~/.aws/config`: profiles are `[profile NAME]` and `[default]`.
    Config,
}

impl FileKind {
    fn variable(self) -> &'static str {
        match self {
            FileKind::Credentials => "AWS_SHARED_CREDENTIALS_FILE",
            FileKind::Config => "AWS_CONFIG_FILE",
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            FileKind::Credentials => "credentials",
            FileKind::Config => "config",
        }
    }

    /// The section header of profile `name` in this kind of file.
    fn header(self, name: &str) -> String {
        match self {
            FileKind::Config if name != "default" => format!("[profile {name}]"),
            _ => format!("[{name}]"),
        }
    }

    /// The profile a section of this kind of file holds, if any.
    fn profile_of(self, section: &str) -> Option<&str> {
        match self {
            FileKind::Credentials => Some(section),
            FileKind::Config if section == "default" => Some(section),
            FileKind::Config => {
                let rest = section.strip_prefix("profile")?;
                rest.starts_with([' ', '\t'])
                    .then(|| rest.trim_matches(WHITESPACE))
                    .filter(|name| !name.is_empty())
            }
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_name())
    }
}

/// What an `s3://` cache is configured with: the environment's `AWS_*`
/// variables, completed from the profile. Holds secrets, so it has no
/// `Debug`.
pub(crate) struct S3Settings {
    /// `AWS_*` names and values for object_store's builder.
    pub(crate) vars: Vec<(String, String)>,
    /// Where the credentials and the endpoint came from, for hints.
    pub(crate) sources: Sources,
}

/// Where the S3 credentials and endpoint came from, in words for a hint
/// ("check …"). Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sources {
    pub(crate) credentials: String,
    pub(crate) endpoint: String,
}

/// Complete the `AWS_*` variables in `env` from the profile it selects.
/// See the module documentation for the precedence.
pub(crate) fn resolve(env: Vec<(String, String)>) -> Result<S3Settings, ProfileError> {
    let home = var(&env, "HOME").map(PathBuf::from);
    let explicit = var(&env, "AWS_PROFILE");
    let name = explicit.unwrap_or("default").to_owned();
    let files = [FileKind::Credentials, FileKind::Config]
        .into_iter()
        .filter_map(|kind| {
            let path = match var(&env, kind.variable()) {
                Some(path) => expand_home(path, home.as_deref()),
                None => home.as_ref()?.join(".aws").join(kind.file_name()),
            };
            Some(read_file(kind, path))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let profile = Profile::select(&name, &files);
    if profile.is_none() && explicit.is_some() {
        return Err(not_found(&name, &files));
    }
    settings(env, profile.as_ref(), &files)
}

/// The settings for `env` and `profile` (if any).
fn settings(
    env: Vec<(String, String)>,
    profile: Option<&Profile>,
    files: &[IniFile],
) -> Result<S3Settings, ProfileError> {
    let mut added: Vec<(&str, String)> = Vec::new();
    let mut replaced: Vec<&str> = Vec::new();
    let mut sources = Sources {
        credentials: ENV_CREDENTIALS.to_owned(),
        endpoint: if var(&env, "AWS_ENDPOINT_URL_S3").is_some() {
            "AWS_ENDPOINT_URL_S3"
        } else if var(&env, "AWS_ENDPOINT_URL").is_some() {
            "AWS_ENDPOINT_URL"
        } else {
            "AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3"
        }
        .to_owned(),
    };
    if let Some(profile) = profile {
        if var(&env, "AWS_ACCESS_KEY_ID").is_none() {
            if let Some((setting, found)) = UNSUPPORTED
                .iter()
                .find_map(|setting| Some((*setting, profile.get(setting)?)))
            {
                return Err(ProfileError::Unsupported {
                    profile: profile.name.clone(),
                    setting,
                    path: found.path.clone(),
                    line: found.line,
                });
            }
            match (profile.get(ACCESS_KEY_ID), profile.get(SECRET_ACCESS_KEY)) {
                (Some(key), Some(secret)) => {
                    replaced.extend([
                        "AWS_ACCESS_KEY_ID",
                        "AWS_SECRET_ACCESS_KEY",
                        "AWS_SESSION_TOKEN",
                    ]);
                    added.push(("AWS_ACCESS_KEY_ID", key.value.clone()));
                    added.push(("AWS_SECRET_ACCESS_KEY", secret.value.clone()));
                    if let Some(token) = profile.get(SESSION_TOKEN) {
                        added.push(("AWS_SESSION_TOKEN", token.value.clone()));
                    }
                    sources.credentials = format!(
                        "aws_access_key_id, aws_secret_access_key and aws_session_token \
                         of AWS profile {:?} in {}",
                        profile.name,
                        key.path.display()
                    );
                }
                (Some(found), None) => {
                    return Err(incomplete(profile, ACCESS_KEY_ID, SECRET_ACCESS_KEY, found));
                }
                (None, Some(found)) => {
                    return Err(incomplete(profile, SECRET_ACCESS_KEY, ACCESS_KEY_ID, found));
                }
                (None, None) => {}
            }
        }
        if var(&env, "AWS_REGION").is_none()
            && var(&env, "AWS_DEFAULT_REGION").is_none()
            && let Some(region) = profile.get("region")
        {
            replaced.extend(["AWS_REGION", "AWS_DEFAULT_REGION"]);
            added.push(("AWS_REGION", region.value.clone()));
        }
        if var(&env, "AWS_ENDPOINT_URL_S3").is_none() && var(&env, "AWS_ENDPOINT_URL").is_none() {
            let endpoint = profile
                .services_endpoint(files)
                .map(|found| {
                    let what = format!(
                        "s3 endpoint_url of [{}]",
                        found.section.as_deref().unwrap_or("services")
                    );
                    (found, what)
                })
                .or_else(|| {
                    let found = profile.get("endpoint_url")?;
                    Some((found, "endpoint_url".to_owned()))
                });
            if let Some((found, what)) = endpoint {
                replaced.extend(["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]);
                added.push(("AWS_ENDPOINT_URL", found.value.clone()));
                sources.endpoint = format!(
                    "{what} for AWS profile {:?} ({}:{})",
                    profile.name,
                    found.path.display(),
                    found.line
                );
            }
        }
    }
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| !replaced.contains(&name.as_str()))
        .collect();
    vars.extend(
        added
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value)),
    );
    Ok(S3Settings { vars, sources })
}

fn incomplete(
    profile: &Profile,
    present: &'static str,
    missing: &'static str,
    found: Found,
) -> ProfileError {
    ProfileError::Incomplete {
        profile: profile.name.clone(),
        present,
        missing,
        path: found.path,
        line: found.line,
    }
}

/// The error for a profile named by `AWS_PROFILE` that no file holds.
fn not_found(name: &str, files: &[IniFile]) -> ProfileError {
    let looked: Vec<String> = files
        .iter()
        .map(|file| {
            let missing = if file.sections.is_none() {
                " (no such file)"
            } else {
                ""
            };
            format!(
                "{} in {}{missing}",
                file.kind.header(name),
                file.path.display()
            )
        })
        .collect();
    let looked = if looked.is_empty() {
        "no files to look in: HOME is not set, nor are AWS_SHARED_CREDENTIALS_FILE and \
         AWS_CONFIG_FILE"
            .to_owned()
    } else {
        format!("looked for {}", looked.join(" and "))
    };
    let mut hint = format!(
        "create it (`aws configure --profile {name}`), set AWS_PROFILE to a profile \
         that exists, or unset it"
    );
    // The one common mistake: each file's own header form in the other.
    for file in files {
        let wrong = match file.kind {
            FileKind::Credentials => format!("profile {name}"),
            FileKind::Config if name != "default" => name.to_owned(),
            FileKind::Config => continue,
        };
        if let Some(section) = file.section_named(&wrong) {
            hint.push_str(&format!(
                "; {}:{} has [{wrong}], but the {} file names it {}",
                file.path.display(),
                section.line,
                file.kind,
                file.kind.header(name)
            ));
        }
    }
    ProfileError::NotFound {
        profile: name.to_owned(),
        looked,
        hint,
    }
}

/// The value of `name` in `env` (the last one), unless empty.
fn var<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
        .filter(|value| !value.is_empty())
}

/// `~` and `~/…` under `home`, as the AWS tools expand them.
fn expand_home(path: &str, home: Option<&Path>) -> PathBuf {
    match (path.strip_prefix('~'), home) {
        (Some(""), Some(home)) => home.to_owned(),
        (Some(rest), Some(home)) if rest.starts_with('/') => home.join(&rest[1..]),
        _ => PathBuf::from(path),
    }
}

/// One setting of the selected profile, and where it was found.
struct Found {
    value: String,
    path: PathBuf,
    line: usize,
    /// For an endpoint from a `services` section: the section's header.
    section: Option<String>,
}

impl fmt::Debug for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Found")
            .field("value", &"<redacted>")
            .field("path", &self.path)
            .field("line", &self.line)
            .finish()
    }
}

/// The selected profile: its sections in both files.
#[derive(Debug)]
struct Profile<'a> {
    name: String,
    /// The profile's sections, credentials file first, each file's in order.
    sections: Vec<(&'a IniFile, &'a Section)>,
}

impl<'a> Profile<'a> {
    /// Profile `name`, if either file holds it.
    fn select(name: &str, files: &'a [IniFile]) -> Option<Profile<'a>> {
        let sections: Vec<_> = files
            .iter()
            .flat_map(|file| {
                file.sections
                    .iter()
                    .flatten()
                    .filter(|section| file.kind.profile_of(&section.name) == Some(name))
                    .map(move |section| (file, section))
            })
            .collect();
        (!sections.is_empty()).then(|| Profile {
            name: name.to_owned(),
            sections,
        })
    }

    /// Setting `key`: the credentials file's over the config file's, and
    /// within a file the last one.
    fn get(&self, key: &str) -> Option<Found> {
        let mut found = None;
        for kind in [FileKind::Config, FileKind::Credentials] {
            for (file, section) in self.sections.iter().filter(|(f, _)| f.kind == kind) {
                for property in section.properties.iter().filter(|p| p.key == key) {
                    found = Some(Found {
                        value: property.value.clone(),
                        path: file.path.clone(),
                        line: property.line,
                        section: None,
                    });
                }
            }
        }
        found
    }

    /// `endpoint_url` under `s3` in the config file's `[services NAME]`
    /// section, `NAME` being the profile's `services` setting.
    fn services_endpoint(&self, files: &[IniFile]) -> Option<Found> {
        let services = self.get("services")?;
        let header = format!("services {}", services.value);
        let config = files.iter().find(|f| f.kind == FileKind::Config)?;
        let mut found = None;
        for section in config.sections.iter().flatten() {
            if normalize_header(&section.name) != header {
                continue;
            }
            for property in section.properties.iter().filter(|p| p.key == "s3") {
                for (key, value, line) in &property.sub {
                    if key == "endpoint_url" {
                        found = Some(Found {
                            value: value.clone(),
                            path: config.path.clone(),
                            line: *line,
                            section: Some(header.clone()),
                        });
                    }
                }
            }
        }
        found
    }
}

/// `services   x` → `services x`.
fn normalize_header(name: &str) -> String {
    name.split([' ', '\t'])
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One shared file; `sections` is `None` when there is no such file.
#[derive(Debug)]
struct IniFile {
    kind: FileKind,
    path: PathBuf,
    sections: Option<Vec<Section>>,
}

impl IniFile {
    fn section_named(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .flatten()
            .find(|section| normalize_header(&section.name) == name)
    }
}

/// Read and parse `path`; a missing file is no error (and no profiles).
fn read_file(kind: FileKind, path: PathBuf) -> Result<IniFile, ProfileError> {
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(IniFile {
                kind,
                path,
                sections: None,
            });
        }
        Err(source) => return Err(ProfileError::Read { kind, path, source }),
    };
    let sections = parse(&bytes).map_err(|(line, reason)| ProfileError::Syntax {
        kind,
        path: path.clone(),
        line,
        reason: reason.to_owned(),
    })?;
    Ok(IniFile {
        kind,
        path,
        sections: Some(sections),
    })
}

/// A `[section]` and its settings.
#[derive(Debug, PartialEq, Eq)]
struct Section {
    /// What is between the brackets, trimmed.
    name: String,
    line: usize,
    properties: Vec<Property>,
}

/// A `key = value` line (with its continuation or sub-setting lines).
#[derive(PartialEq, Eq)]
struct Property {
    /// Lowercase, as the AWS CLI reads it.
    key: String,
    /// Possibly a secret.
    value: String,
    line: usize,
    /// `  key = value` lines under a setting with an empty value
    /// (`s3 =` then `  endpoint_url = …`): key, value, line.
    sub: Vec<(String, String, usize)>,
}

impl fmt::Debug for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sub: Vec<_> = self.sub.iter().map(|(key, _, line)| (key, line)).collect();
        f.debug_struct("Property")
            .field("key", &self.key)
            .field("value", &"<redacted>")
            .field("line", &self.line)
            .field("sub", &sub)
            .finish()
    }
}

/// What the format counts as whitespace (not Unicode's).
const WHITESPACE: [char; 2] = [' ', '\t'];

/// Parse a shared config or credentials file: `[section]` lines, `key =
/// value` lines, comment lines starting with `#` or `;`, blank lines. A
/// comment may also end a section line, or a setting line after
/// whitespace (`key = value # note`). An indented line continues the
/// setting above it, or is a sub-setting (`  key = value`) of one whose
/// value is empty. The error is a line number and a reason that quotes
/// nothing from the line (it may hold a secret).
fn parse(bytes: &[u8]) -> Result<Vec<Section>, (usize, &'static str)> {
    let mut sections: Vec<Section> = Vec::new();
    for (index, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let number = index + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = std::str::from_utf8(line).map_err(|_| (number, "not UTF-8 text"))?;
        let trimmed = line.trim_matches(WHITESPACE);
        if trimmed.is_empty() || trimmed.starts_with(['#', ';']) {
            continue;
        }
        if line.starts_with(WHITESPACE) {
            let property = sections
                .last_mut()
                .and_then(|section| section.properties.last_mut())
                .ok_or((
                    number,
                    "an indented line, but no setting above it to continue",
                ))?;
            if property.value.is_empty() {
                let (key, value) = key_value(trimmed).map_err(|reason| (number, reason))?;
                property.sub.push((key, value.to_owned(), number));
            } else {
                property.value.push('\n');
                property.value.push_str(trimmed);
            }
        } else if let Some(rest) = line.strip_prefix('[') {
            let end = rest.find(['#', ';']).unwrap_or(rest.len());
            let name = rest[..end]
                .trim_end_matches(WHITESPACE)
                .strip_suffix(']')
                .ok_or((number, "a section header must end with `]`"))?
                .trim_matches(WHITESPACE);
            if name.is_empty() {
                return Err((number, "a section header needs a name"));
            }
            sections.push(Section {
                name: name.to_owned(),
                line: number,
                properties: Vec::new(),
            });
        } else {
            let section = sections
                .last_mut()
                .ok_or((number, "a setting before any [section] header"))?;
            let (key, value) = key_value(trimmed).map_err(|reason| (number, reason))?;
            section.properties.push(Property {
                key,
                value: value.to_owned(),
                line: number,
                sub: Vec::new(),
            });
        }
    }
    Ok(sections)
}

/// `key = value # comment` → (`key`, `value`); the key lowercased.
fn key_value(line: &str) -> Result<(String, &str), &'static str> {
    let mut end = line.len();
    let mut after_space = false;
    for (index, c) in line.char_indices() {
        if after_space && (c == '#' || c == ';') {
            end = index;
            break;
        }
        after_space = WHITESPACE.contains(&c);
    }
    let (key, value) = line[..end]
        .split_once('=')
        .ok_or("expected `name = value`, a [section] header or a comment")?;
    let key = key.trim_matches(WHITESPACE);
    if key.is_empty() {
        return Err("a setting without a name (`= value`)");
    }
    Ok((key.to_ascii_lowercase(), value.trim_matches(WHITESPACE)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn props(section: &Section) -> Vec<(&str, &str, usize)> {
        section
            .properties
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str(), p.line))
            .collect()
    }

    #[test]
    fn parses_sections_settings_and_comments() {
        let text = "\
# a comment
; another
   # an indented comment

[default]
aws_access_key_id=AKIDEFAULT
[ profile  ci ]  # a comment after a header
Region = eu-west-1   # a comment after whitespace
endpoint_url = http://host/a#b;c
empty =
\ttoken = abc ; x
[services local]\r
s3 =
  endpoint_url = http://127.0.0.1:9000
  addressing_style = path
long = first
  [second]
[x]#y
";
        let sections = parse(text.as_bytes()).unwrap();
        let names: Vec<_> = sections.iter().map(|s| (s.name.as_str(), s.line)).collect();
        // An indented `[` line continues a setting; it is no header.
        assert_eq!(
            names,
            [
                ("default", 5),
                ("profile  ci", 7),
                ("services local", 12),
                ("x", 18)
            ]
        );
        assert_eq!(
            props(&sections[0]),
            [("aws_access_key_id", "AKIDEFAULT", 6)]
        );
        assert_eq!(
            props(&sections[1]),
            [
                ("region", "eu-west-1", 8),
                ("endpoint_url", "http://host/a#b;c", 9),
                ("empty", "", 10),
            ]
        );
        assert_eq!(
            sections[1].properties[2].sub,
            [("token".to_owned(), "abc".to_owned(), 11)]
        );
        assert_eq!(
            props(&sections[2]),
            [("s3", "", 13), ("long", "first\n[second]", 16)]
        );
        let sub: Vec<_> = sections[2].properties[0]
            .sub
            .iter()
            .map(|(k, v, l)| (k.as_str(), v.as_str(), *l))
            .collect();
        assert_eq!(
            sub,
            [
                ("endpoint_url", "http://127.0.0.1:9000", 14),
                ("addressing_style", "path", 15)
            ]
        );
        assert_eq!(parse(b"").unwrap(), []);
    }

    #[test]
    fn syntax_errors_name_the_line_and_never_the_value() {
        for (text, line, reason) in [
            ("key = v\n", 1, "before any [section]"),
            ("[default]\n\n[oops\n", 3, "must end with `]`"),
            ("[ ]\n", 1, "needs a name"),
            (
                "[default]\naws_secret_access_key: SECRETVALUE\n",
                2,
                "expected `name = value`",
            ),
            ("[default]\n= SECRETVALUE\n", 2, "without a name"),
            ("[default]\n  SECRETVALUE\n", 2, "no setting above"),
            (
                "[default]\ns3 =\n  SECRETVALUE\n",
                3,
                "expected `name = value`",
            ),
        ] {
            let (number, message) = parse(text.as_bytes()).err().unwrap();
            assert_eq!(number, line, "{text:?}");
            assert!(message.contains(reason), "{text:?}: {message}");
            assert!(!message.contains("SECRETVALUE"));
        }
        assert_eq!(
            parse(b"[a]\nk = \xff\n").err().unwrap(),
            (2, "not UTF-8 text")
        );
    }

    #[test]
    fn debug_output_hides_values() {
        let sections =
            parse(format!("[default]\naws_secret_access_key = {SECRET}\n").as_bytes()).unwrap();
        let debug = format!("{sections:?}");
        assert!(debug.contains("aws_secret_access_key"), "{debug}");
        assert!(!debug.contains(SECRET), "{debug}");
    }

    /// A home directory with the two files, and the environment to use it.
    struct Home {
        dir: tempfile::TempDir,
    }

    impl Home {
        fn new(credentials: Option<&str>, config: Option<&str>) -> Home {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join(".aws")).unwrap();
            for (name, text) in [("credentials", credentials), ("config", config)] {
                if let Some(text) = text {
                    std::fs::write(dir.path().join(".aws").join(name), text).unwrap();
                }
            }
            Home { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(".aws").join(name)
        }

        fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
            let mut env = vec![("HOME".to_owned(), self.dir.path().display().to_string())];
            env.extend(
                extra
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            );
            env
        }

        fn resolve(&self, extra: &[(&str, &str)]) -> Result<S3Settings, ProfileError> {
            resolve(self.env(extra))
        }
    }

    fn get<'a>(settings: &'a S3Settings, name: &str) -> Option<&'a str> {
        var(&settings.vars, name)
    }

    const CREDENTIALS: &str = "\
[default]
aws_access_key_id = AKIDEFAULT
aws_secret_access_key = default-secret

[ci]
aws_access_key_id = AKIDCI
aws_secret_access_key = ci-secret
aws_session_token = ci-token
region = eu-central-1
";

    const CONFIG: &str = "\
[default]
region = us-west-2

[profile ci]
region = eu-west-1
aws_access_key_id = AKIDFROMCONFIG
endpoint_url = http://config.example:9000

[profile only-config]
aws_access_key_id = AKIDCONFIG
aws_secret_access_key = config-secret
services = local

[services local]
s3 =
  endpoint_url = http://127.0.0.1:9000
";

    #[test]
    fn the_credentials_file_wins_over_the_config_file() {
        let home = Home::new(Some(CREDENTIALS), Some(CONFIG));
        let settings = home.resolve(&[("AWS_PROFILE", "ci")]).unwrap();
        assert_eq!(get(&settings, "AWS_ACCESS_KEY_ID"), Some("AKIDCI"));
        assert_eq!(get(&settings, "AWS_SECRET_ACCESS_KEY"), Some("ci-secret"));
        assert_eq!(get(&settings, "AWS_SESSION_TOKEN"), Some("ci-token"));
        assert_eq!(get(&settings, "AWS_REGION"), Some("eu-central-1"));
        // Only the config file sets it, so the config file's is used.
        assert_eq!(
            get(&settings, "AWS_ENDPOINT_URL"),
            Some("http://config.example:9000")
        );
        let credentials = home.path("credentials");
        assert_eq!(
            settings.sources.credentials,
            format!(
                "aws_access_key_id, aws_secret_access_key and aws_session_token of \
                 AWS profile \"ci\" in {}",
                credentials.display()
            )
        );
        assert_eq!(
            settings.sources.endpoint,
            format!(
                "endpoint_url for AWS profile \"ci\" ({}:7)",
                home.path("config").display()
            )
        );
    }

    #[test]
    fn the_environment_wins_over_the_files() {
        let home = Home::new(Some(CREDENTIALS), Some(CONFIG));
        let settings = home
            .resolve(&[
                ("AWS_PROFILE", "ci"),
                ("AWS_ACCESS_KEY_ID", "AKIDENV"),
                ("AWS_SECRET_ACCESS_KEY", "env-secret"),
                ("AWS_DEFAULT_REGION", "ap-south-1"),
                ("AWS_ENDPOINT_URL", "http://env.example"),
            ])
            .unwrap();
        assert_eq!(get(&settings, "AWS_ACCESS_KEY_ID"), Some("AKIDENV"));
        assert_eq!(get(&settings, "AWS_SECRET_ACCESS_KEY"), Some("env-secret"));
        // Credentials go together: the profile's token does not join the
        // environment's key.
        assert_eq!(get(&settings, "AWS_SESSION_TOKEN"), None);
        assert_eq!(get(&settings, "AWS_REGION"), None);
        assert_eq!(get(&settings, "AWS_DEFAULT_REGION"), Some("ap-south-1"));
        assert_eq!(
            get(&settings, "AWS_ENDPOINT_URL"),
            Some("http://env.example")
        );
        assert_eq!(settings.sources.credentials, ENV_CREDENTIALS);
        assert_eq!(settings.sources.endpoint, "AWS_ENDPOINT_URL");

        // And the environment's token does not join the profile's key.
        let settings = home
            .resolve(&[("AWS_PROFILE", "ci"), ("AWS_SESSION_TOKEN", "env-token")])
            .unwrap();
        assert_eq!(get(&settings, "AWS_ACCESS_KEY_ID"), Some("AKIDCI"));
        assert_eq!(get(&settings, "AWS_SESSION_TOKEN"), Some("ci-token"));
        let tokens = settings
            .vars
            .iter()
            .filter(|(k, _)| k == "AWS_SESSION_TOKEN")
            .count();
        assert_eq!(tokens, 1);
        // The S3-specific endpoint variable wins over the profile's too.
        let settings = home
            .resolve(&[
                ("AWS_PROFILE", "ci"),
                ("AWS_ENDPOINT_URL_S3", "http://s3.env"),
            ])
            .unwrap();
        assert_eq!(get(&settings, "AWS_ENDPOINT_URL"), None);
        assert_eq!(get(&settings, "AWS_ENDPOINT_URL_S3"), Some("http://s3.env"));
        assert_eq!(settings.sources.endpoint, "AWS_ENDPOINT_URL_S3");
    }

    #[test]
    fn the_default_profile_and_the_services_section() {
        let home = Home::new(Some(CREDENTIALS), Some(CONFIG));
        let settings = home.resolve(&[]).unwrap();
        assert_eq!(get(&settings, "AWS_ACCESS_KEY_ID"), Some("AKIDEFAULT"));
        assert_eq!(get(&settings, "AWS_REGION"), Some("us-west-2"));
        assert_eq!(get(&settings, "AWS_ENDPOINT_URL"), None);
        assert_eq!(
            settings.sources.endpoint,
            "AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3"
        );

        let settings = home.resolve(&[("AWS_PROFILE", "only-config")]).unwrap();
        assert_eq!(get(&settings, "AWS_ACCESS_KEY_ID"), Some("AKIDCONFIG"));
        assert_eq!(
            get(&settings, "AWS_SECRET_ACCESS_KEY"),
            Some("config-secret")
        );
        assert_eq!(
            get(&settings, "AWS_ENDPOINT_URL"),
            Some("http://127.0.0.1:9000")
        );
        assert!(
            settings
                .sources
                .endpoint
                .starts_with("s3 endpoint_url of [services local] for AWS profile"),
            "{}",
            settings.sources.endpoint
        );
    }

    #[test]
    fn no_files_or_no_home_change_nothing() {
        let env = vec![("AWS_ACCESS_KEY_ID".to_owned(), "AKIDENV".to_owned())];
        let settings = resolve(env.clone()).unwrap();
        assert_eq!(settings.vars, env);
        let home = Home::new(None, None);
        let settings = home.resolve(&[]).unwrap();
        assert_eq!(settings.vars, home.env(&[]));
    }

    #[test]
    fn the_file_variables_choose_the_files() {
        let home = Home::new(None, None);
        let elsewhere = home.dir.path().join("elsewhere");
        std::fs::write(
            &elsewhere,
            "[x]\naws_access_key_id = A\naws_secret_access_key = B\n",
        )
        .unwrap();
        let settings = home
            .resolve(&[
                ("AWS_PROFILE", "x"),
                ("AWS_SHARED_CREDENTIALS_FILE", "~/elsewhere"),
            ])
            .unwrap();
        assert_eq!(get(&settings, "AWS_ACCESS_KEY_ID"), Some("A"));
        let config = home.dir.path().join("conf");
        std::fs::write(&config, "[profile x]\nregion = r\n").unwrap();
        let settings = home
            .resolve(&[
                ("AWS_PROFILE", "x"),
                ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ])
            .unwrap();
        assert_eq!(get(&settings, "AWS_REGION"), Some("r"));
    }

    #[test]
    fn a_missing_profile_is_named_with_the_files() {
        let home = Home::new(Some(CREDENTIALS), None);
        let error = home.resolve(&[("AWS_PROFILE", "nope")]).err().unwrap();
        let message = error.to_string();
        assert_eq!(
            message,
            format!(
                "AWS profile \"nope\" (AWS_PROFILE) not found: looked for [nope] in {} and \
                 [profile nope] in {} (no such file)\n  hint: create it (`aws configure \
                 --profile nope`), set AWS_PROFILE to a profile that exists, or unset it",
                home.path("credentials").display(),
                home.path("config").display()
            )
        );
        // An explicit `default` must exist too; an implicit one need not.
        let error = Home::new(None, None)
            .resolve(&[("AWS_PROFILE", "default")])
            .err()
            .unwrap();
        assert!(matches!(error, ProfileError::NotFound { .. }), "{error}");
        let error = resolve(vec![("AWS_PROFILE".to_owned(), "x".to_owned())])
            .err()
            .unwrap();
        assert!(error.to_string().contains("HOME is not set"), "{error}");
    }

    #[test]
    fn a_header_in_the_wrong_files_form_is_pointed_out() {
        let home = Home::new(Some("[profile ci]\n"), Some("\n[ci]\n"));
        let message = home
            .resolve(&[("AWS_PROFILE", "ci")])
            .err()
            .unwrap()
            .to_string();
        assert!(
            message.contains(&format!(
                "{}:1 has [profile ci], but the credentials file names it [ci]",
                home.path("credentials").display()
            )),
            "{message}"
        );
        assert!(
            message.contains(&format!(
                "{}:2 has [ci], but the config file names it [profile ci]",
                home.path("config").display()
            )),
            "{message}"
        );
    }

    #[test]
    fn incomplete_and_unsupported_profiles_are_refused() {
        let home = Home::new(
            Some(&format!("[half]\n\naws_secret_access_key = {SECRET}\n")),
            Some("[profile role]\nsource_profile = x\nrole_arn = arn:aws:iam::1:role/r\n"),
        );
        let error = home.resolve(&[("AWS_PROFILE", "half")]).err().unwrap();
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "AWS profile \"half\" sets aws_secret_access_key ({}:3) but not aws_access_key_id",
                home.path("credentials").display()
            )),
            "{message}"
        );
        assert!(!message.contains(SECRET) && !format!("{error:?}").contains(SECRET));
        let message = home
            .resolve(&[("AWS_PROFILE", "role")])
            .err()
            .unwrap()
            .to_string();
        assert!(
            message.contains("through role_arn") && message.contains("--profile role"),
            "{message}"
        );
        // With credentials in the environment, the profile's way of
        // getting them does not matter.
        let settings = home
            .resolve(&[
                ("AWS_PROFILE", "role"),
                ("AWS_ACCESS_KEY_ID", "A"),
                ("AWS_SECRET_ACCESS_KEY", "B"),
            ])
            .unwrap();
        assert_eq!(get(&settings, "AWS_ACCESS_KEY_ID"), Some("A"));
    }

    #[test]
    fn unreadable_and_malformed_files_are_errors_with_file_and_line() {
        let home = Home::new(Some(&format!("[default]\n{SECRET}\n")), None);
        let error = home.resolve(&[]).err().unwrap();
        let message = error.to_string();
        assert_eq!(
            message,
            format!(
                "{}:2: expected `name = value`, a [section] header or a comment \
                 (AWS credentials file)",
                home.path("credentials").display()
            )
        );
        assert!(!format!("{error:?}").contains(SECRET));
        // A directory where the file should be.
        let home = Home::new(None, None);
        std::fs::create_dir(home.path("config")).unwrap();
        let message = home.resolve(&[]).err().unwrap().to_string();
        assert!(
            message.starts_with(&format!(
                "cannot read the AWS config file {}: ",
                home.path("config").display()
            )),
            "{message}"
        );
    }

    #[test]
    fn home_expansion() {
        let home = Path::new("/home/u");
        assert_eq!(expand_home("~", Some(home)), home);
        assert_eq!(expand_home("~/a/b", Some(home)), home.join("a/b"));
        assert_eq!(expand_home("~other/a", Some(home)), Path::new("~other/a"));
        assert_eq!(expand_home("~/a", None), Path::new("~/a"));
        assert_eq!(expand_home("/abs", Some(home)), Path::new("/abs"));
    }
}
