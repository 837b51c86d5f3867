//! Why a `criu` command failed. Every variant's message alone tells the user what to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line does not parse (clap's message, already formatted).
    #[error("{0}")]
    Usage(String),

    /// Options that parse but contradict each other or the command.
    #[error("{0}")]
    Invalid(String),

    /// A configuration file line that does not parse or names an unknown option.
    #[error("configuration file {}, line {line}: {msg}", path.display())]
    Config {
        path: PathBuf,
        line: usize,
        msg: String,
    },

    /// `criu check --feature NAME` with a name neither CRIU nor we know.
    #[error("unknown feature '{name}'; known features: {known}")]
    UnknownFeature { name: String, known: String },

    /// An option this build parses but cannot honour yet.
    #[error("option --{0} is not supported yet")]
    NotSupported(String),

    /// A command this build does not implement yet.
    #[error("'criu {0}' is not supported yet")]
    CommandNotSupported(&'static str),

    /// `criu check` (or a feature check) found something missing; the report says what.
    #[error("{0}")]
    CheckFailed(String),

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Engine(#[from] crate::Error),
}

impl CliError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        CliError::Io {
            what: what.into(),
            source,
        }
    }
}
