//! Configuration: one TOML file, `${VAR}` expansion, validation into typed settings.
//!
//! Loading runs in three steps. The raw text is deserialized once unexpanded, so structural
//! errors (unknown keys, wrong types) are reported with a line and a key path but without any
//! expanded secret in them. Then string values are expanded from the environment, and the
//! expanded document is deserialized into [`raw::RawConfig`] and validated into [`Config`].

mod code_mode;
mod error;
mod expand;
pub mod raw;
mod secret;
mod settings;
mod store_url;

use std::path::Path;

use toml_edit::DocumentMut;

pub use code_mode::CodeModeConfig;
pub use error::ConfigError;
pub use expand::{ExpandError, expand_str};
pub use raw::{Capability, ExecutionMode, LogFormat, McpTransport, ProgramDelivery, ProviderKind};
pub use secret::{MASK, Secret, mask_url_password};
pub use settings::{
    AgentConfig, AppConfig, ChannelsConfig, Config, HttpChannelConfig, McpConfig, McpServerConfig,
    McpServerTransport, ProviderConfig, StoreConfig, validate_mcp_server, validate_server_name,
};

/// The configuration used when `serve` gets no `--config`.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../../config/default.toml");

impl Config {
    /// Reads, expands and validates the file at `path` against the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), &|name| {
            std::env::var(name).ok()
        })
    }

    /// Loads the embedded defaults, expanded against the process environment.
    pub fn embedded() -> Result<Self, ConfigError> {
        Self::parse(EMBEDDED_DEFAULTS, "<embedded defaults>", &|name| {
            std::env::var(name).ok()
        })
    }

    /// Parses `text` (named `origin` in errors), expanding variables through `lookup`.
    pub fn parse(
        text: &str,
        origin: &str,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        toml::from_str::<raw::RawConfig>(text).map_err(|err| error::located(text, origin, &err))?;
        let mut doc: DocumentMut = text
            .parse()
            .map_err(|err: toml_edit::TomlError| error::syntax(text, origin, &err))?;
        expand::expand_document(&mut doc, lookup)?;
        let raw = toml::from_str::<raw::RawConfig>(&doc.to_string()).map_err(|err| {
            // The unexpanded text passed this step, so only an expanded value can fail here;
            // its message is left out because the value may be a secret.
            ConfigError::Invalid {
                key: error::key_at(text, err.span().map_or(0, |s| s.start)).unwrap_or_default(),
                message: "the value after variable expansion is invalid".to_owned(),
            }
        })?;
        Config::try_from(raw)
    }

    /// Renders the effective settings as TOML with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).expect("validated settings always serialize")
    }
}
