//! Typed errors of the library. The CLI wraps them in `anyhow` with context.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `supported`: the `model_type`s edit reads (`config::SUPPORTED_MODEL_TYPES`).
    #[error("unsupported architecture `{model_type}` in {path}: edit supports {supported} checkpoints")]
    UnsupportedArchitecture { model_type: String, path: PathBuf, supported: &'static str },

    #[error("invalid config {path}: {reason}")]
    Config { path: PathBuf, reason: String },

    #[error("tensor `{name}` is missing from the checkpoint ({files}); the file may belong to a different model family or be incomplete")]
    MissingTensor { name: String, files: String },

    #[error("tensor `{name}` in {file} has shape {found:?}, but the config implies {expected:?}; the weights and config.json do not belong together")]
    ShapeMismatch { name: String, file: String, expected: Vec<usize>, found: Vec<usize> },

    #[error("tensor `{name}` in {file} has dtype {dtype}, only f32, f16 and bf16 weights are supported")]
    UnsupportedDtype { name: String, file: String, dtype: String },

    #[error("cannot read safetensors file {path}: {reason} (the file may be truncated or not a safetensors file; download it again)")]
    BadSafetensors { path: PathBuf, reason: String },

    #[error("no weights found in {dir}: expected model.safetensors or model.safetensors.index.json (pytorch_model.bin is not supported; convert it to safetensors first)")]
    NoWeights { dir: PathBuf },

    #[error("{0}")]
    Hub(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("{0}")]
    Input(String),

    /// A computation failed on valid input: a matrix not positive definite, NaN/Inf, an
    /// update that diverged. An evaluation loop records it and goes on.
    #[error("{0}")]
    Numerical(String),

    /// The user asked the job to stop (Ctrl-C, SIGTERM); its progress was saved.
    #[error("{0}")]
    Interrupted(String),

    /// A bug in edit: an invariant that should hold did not.
    #[error("internal error (a bug in edit; please report it): {0}")]
    Internal(String),

    #[error("i/o error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// `source`, with what was being done when it happened (printed as `context: source`
    /// through the error chain, as anyhow's context is).
    #[error("{context}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// What kind of failure an [`Error`] is, for callers that handle them differently (an
/// evaluation loop records a numerical failure and goes on; bad input stops everything).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The user's input (files, config, requests, options) is wrong; the message says how.
    BadInput,
    /// A computation failed on valid input (not positive definite, NaN/Inf, diverged).
    Numerical,
    /// Stopped on request.
    Interrupted,
    /// The file system or the network failed.
    Io,
    /// A bug, or a tensor-library failure with no better explanation.
    Internal,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Numerical(_) => ErrorKind::Numerical,
            Error::Interrupted(_) => ErrorKind::Interrupted,
            Error::Io { .. } | Error::Hub(_) => ErrorKind::Io,
            Error::Internal(_) | Error::Candle(_) => ErrorKind::Internal,
            Error::Context { source, .. } => source.kind(),
            _ => ErrorKind::BadInput,
        }
    }

    /// This error, said to have happened while doing `context`.
    pub fn context(self, context: impl Into<String>) -> Self {
        Error::Context { context: context.into(), source: Box::new(self) }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
