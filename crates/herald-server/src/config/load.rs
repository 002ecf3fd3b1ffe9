//! Merging the configuration sources and reporting problems by key.
//!
//! Sources, lowest precedence first: defaults, the TOML file, `HERALD_*` environment
//! variables, command-line flags. Each source is turned into a TOML table and laid over the
//! previous ones key by key, then the result is deserialised once.
//!
//! Environment variables map to keys by lowercasing and splitting on a double underscore:
//! `HERALD_LIMITS__MAX_CONNECTIONS=5000` sets `limits.max_connections`, and
//! `HERALD_APPS__0__SECRET=…` sets `apps[0].secret`. Values are read as TOML values when
//! they parse as one (`5000`, `true`, `["a","b"]`) and as strings otherwise; a value read as a
//! number or boolean where the key wants a string is retried as a string.
//! `HERALD_CONFIG` names the config file when `--config` is not given. `HERALD_HANDOVER` is
//! reserved (it marks a process started by a zero-downtime restart).

use std::fmt;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::{Config, Validated};

/// Values set by command-line flags, as `(dotted.key, value)`.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// The flag values, applied in order over the other sources.
    pub values: Vec<(String, Value)>,
}

impl Overrides {
    /// Set `key` (dotted path) to `value`.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.values.push((key.to_owned(), value.into()));
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug)]
pub enum ConfigError {
    /// The config file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The config file is not valid TOML.
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// One or more values are invalid: `(key, problem)`.
    Invalid(Vec<(String, String)>),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, error } => {
                write!(f, "config error: cannot read {}: {error}", path.display())
            }
            Self::Syntax { path, message } => {
                write!(
                    f,
                    "config error: {} is not valid TOML: {message}",
                    path.display()
                )
            }
            Self::Invalid(problems) => {
                for (i, (key, problem)) in problems.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "config error: {key}: {problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// One value laid over the table, remembered so errors can name where it came from.
struct Layered {
    path: Vec<String>,
    origin: String,
    /// The raw text, for environment values that may need a retry as a string.
    raw: Option<String>,
}

/// Load, merge and validate the configuration.
///
/// `file` is the `--config` path; `env` the process environment (passed in so tests can
/// supply their own); `overrides` the command-line flags.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Validated, ConfigError> {
    let env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("HERALD_"))
        .collect();
    let env_file = env
        .iter()
        .find(|(k, _)| k == "HERALD_CONFIG")
        .map(|(_, v)| PathBuf::from(v));
    let file = file.map(Path::to_path_buf).or(env_file);

    let mut table = match &file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                path: path.clone(),
                error,
            })?;
            text.parse::<Table>().map_err(|e| ConfigError::Syntax {
                path: path.clone(),
                message: e.to_string().trim().to_owned(),
            })?
        }
        None => Table::new(),
    };

    let mut layered = Vec::new();
    let mut problems = Vec::new();
    let mut ignored = Vec::new();
    for (name, raw) in &env {
        // Not configuration: the file's name, and the mark of a process started by a
        // handover (`crate::handover::ENV`).
        if name == "HERALD_CONFIG" || name == crate::handover::ENV {
            continue;
        }
        // Every key lives in a section, so a key path has a `__`. A name without one
        // (`HERALD_PORT`, `HERALD_SERVICE_HOST`: Kubernetes service links; `HERALD_BIN`)
        // names no key: it is ignored, and named in one warning.
        if !name.contains("__") {
            ignored.push(name.clone());
            continue;
        }
        let path: Vec<String> = name["HERALD_".len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            problems.push((name.clone(), "empty key segment".to_owned()));
            continue;
        }
        let value = infer(raw);
        if let Err(e) = set_path(&mut table, &path, value) {
            problems.push((name.clone(), e));
            continue;
        }
        layered.push(Layered {
            path,
            origin: format!("environment variable {name}"),
            raw: Some(raw.clone()),
        });
    }
    for (key, value) in &overrides.values {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        if let Err(e) = set_path(&mut table, &path, value.clone()) {
            problems.push((key.clone(), e));
            continue;
        }
        layered.push(Layered {
            path,
            origin: "a command-line flag".to_owned(),
            raw: None,
        });
    }
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }

    let config = deserialize(&mut table, &layered)?;
    let mut validated = config.validate().map_err(ConfigError::Invalid)?;
    ignored.sort();
    validated.ignored_env = ignored;
    Ok(validated)
}

/// Deserialise, retrying environment values as strings where a string was wanted.
fn deserialize(table: &mut Table, layered: &[Layered]) -> Result<Config, ConfigError> {
    let mut retried = Vec::new();
    loop {
        let result: Result<Config, _> =
            serde_path_to_error::deserialize(Value::Table(table.clone()));
        let err = match result {
            Ok(config) => return Ok(config),
            Err(err) => err,
        };
        let key = display_path(err.path());
        let message = err.inner().to_string();
        let source = layered
            .iter()
            .rev()
            .find(|l| key == dotted(&l.path) || key.starts_with(&format!("{}.", dotted(&l.path))));
        if let Some(l) = source
            && let Some(raw) = &l.raw
            && message.contains("expected a string")
            && !retried.contains(&key)
        {
            retried.push(key.clone());
            set_path(table, &l.path, Value::String(raw.clone())).ok();
            continue;
        }
        let message = match source {
            Some(l) => format!("{message} (set by {})", l.origin),
            None => message,
        };
        return Err(ConfigError::Invalid(vec![(key, message)]));
    }
}

/// `apps[0].id` style, from serde_path_to_error's path.
fn display_path(path: &serde_path_to_error::Path) -> String {
    let text = path.to_string();
    if text == "." {
        "(top level)".into()
    } else {
        text
    }
}

fn dotted(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// Read an environment value as a TOML value if it is one, else as a string.
fn infer(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

/// Set `path` in `table` to `value`, creating tables (and array slots for numeric segments).
fn set_path(table: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let (first, rest) = path.split_first().ok_or("empty key")?;
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return Ok(());
    }
    let next_is_index = rest[0].bytes().all(|b| b.is_ascii_digit());
    let entry = table.entry(first.clone()).or_insert_with(|| {
        if next_is_index {
            Value::Array(Vec::new())
        } else {
            Value::Table(Table::new())
        }
    });
    set_in_value(entry, first, rest, value)
}

fn set_in_value(
    target: &mut Value,
    name: &str,
    path: &[String],
    value: Value,
) -> Result<(), String> {
    match target {
        Value::Table(t) => set_path(t, path, value),
        Value::Array(items) => {
            let (index, rest) = path.split_first().ok_or("missing array index")?;
            let i: usize = index
                .parse()
                .map_err(|_| format!("{name} is a list; {index:?} is not an index"))?;
            if i > 1000 {
                return Err(format!("list index {i} is too large"));
            }
            while items.len() <= i {
                items.push(Value::Table(Table::new()));
            }
            if rest.is_empty() {
                items[i] = value;
                Ok(())
            } else {
                set_in_value(&mut items[i], index, rest, value)
            }
        }
        _ => Err(format!("{name} is not a table")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(text: &str) -> tempfile_path::TempFile {
        tempfile_path::TempFile::new(text)
    }

    /// A tiny temporary file helper (no extra dependency).
    mod tempfile_path {
        pub struct TempFile(pub std::path::PathBuf);
        impl TempFile {
            pub fn new(text: &str) -> Self {
                static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = std::env::temp_dir().join(format!(
                    "herald-config-test-{}-{n}.toml",
                    std::process::id()
                ));
                std::fs::write(&path, text).unwrap();
                Self(path)
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn defaults_give_the_development_app() {
        let c = load(None, env(&[]), &Overrides::default()).unwrap();
        assert!(c.uses_development_app());
        assert_eq!(c.server.listen.port(), 6001);
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let f = write(
            "[server]\nlisten = \"127.0.0.1:7000\"\n[limits]\nmax_connections = 10\n\
             [[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s3cr3t-long\"\n",
        );
        let c = load(Some(&f.0), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.server.listen.port(), 7000);
        assert_eq!(c.limits.max_connections, 10);
        let e = env(&[
            ("HERALD_SERVER__LISTEN", "127.0.0.1:7001"),
            ("HERALD_LIMITS__MAX_CONNECTIONS", "20"),
            ("HERALD_APPS__0__SECRET", "12345678"),
            ("PATH", "/usr/bin"),
        ]);
        let c = load(Some(&f.0), e.clone(), &Overrides::default()).unwrap();
        assert_eq!(c.server.listen.port(), 7001);
        assert_eq!(c.limits.max_connections, 20);
        // A numeric-looking secret is still a string.
        assert_eq!(c.apps[0].secret.expose(), "12345678");
        let mut flags = Overrides::default();
        flags.set("server.listen", "127.0.0.1:7002");
        let c = load(Some(&f.0), e, &flags).unwrap();
        assert_eq!(c.server.listen.port(), 7002);
    }

    #[test]
    fn an_acme_section_is_checked_before_anything_binds() {
        let f = write(
            "[server.tls]\ncert_file = \"/x.pem\"\n[server.tls.acme]\n\
             domains = [\"*.example.com\", \"ok.example.com\"]\ncontact = [\"nobody\"]\n\
             directory = \"http://ca.example/dir\"\n",
        );
        let err = load(Some(&f.0), env(&[]), &Overrides::default())
            .unwrap_err()
            .to_string();
        for expected in [
            "server.tls.acme.domains: \"*.example.com\" is not a DNS name",
            "server.tls.acme.contact: \"nobody\" is not an e-mail address",
            "server.tls.acme.directory",
            "server.tls.cert_file: leave cert_file and key_file out",
        ] {
            assert!(err.contains(expected), "{expected} in {err}");
        }
        assert!(!err.contains("ok.example.com"), "{err}");

        // A valid section needs no certificate yet: the cache fills at the first order.
        let dir = std::env::temp_dir().join(format!("herald-acme-test-{}", std::process::id()));
        let f = write(&format!(
            "[server.tls]\n[server.tls.acme]\ndomains = [\"realtime.example.com\"]\n\
             cache_dir = \"{}\"\ndirectory = \"letsencrypt-staging\"\n",
            dir.display()
        ));
        let c = load(Some(&f.0), env(&[]), &Overrides::default()).unwrap();
        let tls = c.server.tls.as_ref().unwrap();
        assert_eq!(tls.cert_file, dir.join("cert.pem"));
        assert_eq!(
            tls.acme.as_ref().unwrap().directory_url(),
            "https://acme-staging-v02.api.letsencrypt.org/directory"
        );
        assert!(c.tls_key.is_none());
    }

    #[test]
    fn variables_without_a_key_path_are_ignored_by_name() {
        let c = load(
            None,
            env(&[
                ("HERALD_PORT", "tcp://10.0.0.1:6001"),
                ("HERALD_BIN", "/usr/bin/herald"),
                ("HERALD_SERVER__LISTEN", "127.0.0.1:7100"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 7100);
        assert_eq!(c.ignored_env(), ["HERALD_BIN", "HERALD_PORT"]);
        let err = load(
            None,
            env(&[("HERALD_SERVER__LISTN", "x")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("listn"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        let f = write("[limits]\nmax_conections = 1\n");
        let err = load(Some(&f.0), env(&[]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("limits") && err.contains("max_conections"),
            "{err}"
        );

        let err = load(
            None,
            env(&[("HERALD_LIMITS__MAX_CONNECTIONS", "lots")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("limits.max_connections"), "{err}");
        assert!(err.contains("HERALD_LIMITS__MAX_CONNECTIONS"), "{err}");

        let f = write("[limits]\nactivity_timeout = \"5s\"\nping_interval = \"10s\"\n");
        let err = load(Some(&f.0), env(&[]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("limits.activity_timeout: must be longer than ping_interval"),
            "{err}"
        );

        let f = write("[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"short\"\n");
        let err = load(Some(&f.0), env(&[]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("apps[0].secret"), "{err}");

        let f = write("not = [valid");
        assert!(matches!(
            load(Some(&f.0), env(&[]), &Overrides::default()),
            Err(ConfigError::Syntax { .. })
        ));
        assert!(matches!(
            load(
                Some(Path::new("/nonexistent/herald.toml")),
                env(&[]),
                &Overrides::default()
            ),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../herald.example.toml"
        ));
        let c = load(Some(path), env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.apps[0].id, "my-app");
        assert_eq!(c.apps[0].channel_rules.len(), 2);
        // Its values are the defaults, apps aside.
        let d = Config::default();
        assert_eq!(c.server.listen, d.server.listen);
        assert_eq!(c.limits.max_connections, d.limits.max_connections);
        assert_eq!(c.limits.activity_timeout, d.limits.activity_timeout);
        assert_eq!(
            c.apps[0].limits.max_payload_bytes,
            herald_core::settings::AppLimits::default().max_payload_bytes
        );
    }
}
