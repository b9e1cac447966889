//! Errors of the codecs: what is wrong with a file, never a panic.

use std::fmt;

/// Why a model file could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// The file is corrupt, truncated, or not what its name says.
    Invalid(String),
    /// The file is well formed but uses something dpc does not handle (yet).
    Unsupported(String),
    /// Reading or writing the file itself failed.
    Io(String),
}

impl FormatError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        FormatError::Invalid(msg.into())
    }

    pub fn unsupported(msg: impl Into<String>) -> Self {
        FormatError::Unsupported(msg.into())
    }

    /// Prefix the message with where it happened.
    pub fn context(self, what: &str) -> Self {
        match self {
            FormatError::Invalid(m) => FormatError::Invalid(format!("{what}: {m}")),
            FormatError::Unsupported(m) => FormatError::Unsupported(format!("{what}: {m}")),
            FormatError::Io(m) => FormatError::Io(format!("{what}: {m}")),
        }
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Invalid(m) => write!(f, "invalid model file: {m}"),
            FormatError::Unsupported(m) => write!(f, "not supported: {m}"),
            FormatError::Io(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for FormatError {}
