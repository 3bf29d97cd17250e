//! A string that must never reach a log line, an error message or a metric label.

use std::fmt;

use serde::{Serialize, Serializer};

/// What a secret prints as everywhere: in `Debug`, `Display` and serialized settings.
pub const MASK: &str = "********";

/// A credential read from the configuration: an API key or a bearer token.
///
/// `Debug`, `Display` and `Serialize` all print [`MASK`], so a secret can sit inside any config
/// struct that gets logged or printed by `check-config`; only [`Secret::expose`] gives the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value, which may be empty.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// Wraps a non-empty value; an empty string means "not configured" and yields `None`.
    pub fn non_empty(value: String) -> Option<Self> {
        if value.is_empty() {
            None
        } else {
            Some(Self(value))
        }
    }

    /// The plain value, for the one place that sends it (an HTTP header or a comparison).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(MASK)
    }
}

/// Masks the password and every query value of a URL such as
/// `postgres://user:pass@host/db?key=value`, leaving the rest readable.
pub fn mask_url_password(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut masked = mask_userinfo(base);
    if let Some(query) = query {
        let (query, fragment) = match query.split_once('#') {
            Some((query, fragment)) => (query, Some(fragment)),
            None => (query, None),
        };
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}={MASK}"),
                None => pair.to_owned(),
            })
            .collect();
        masked.push('?');
        masked.push_str(&pairs.join("&"));
        if let Some(fragment) = fragment {
            masked.push('#');
            masked.push_str(fragment);
        }
    }
    masked
}

fn mask_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:{MASK}{}",
        &url[..scheme_end + 3],
        &userinfo[..colon],
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_value() {
        let secret = Secret::non_empty("sk-live-123".into()).unwrap();
        assert_eq!(format!("{secret:?}"), MASK);
        assert_eq!(format!("{secret}"), MASK);
        assert_eq!(
            serde_json::to_string(&secret).unwrap(),
            format!("\"{MASK}\"")
        );
    }

    #[test]
    fn empty_value_is_not_configured() {
        assert!(Secret::non_empty(String::new()).is_none());
    }

    #[test]
    fn url_password_is_masked() {
        assert_eq!(
            mask_url_password("postgres://app:hunter2@db:5432/x?sslmode=disable"),
            format!("postgres://app:{MASK}@db:5432/x?sslmode={MASK}")
        );
        assert_eq!(
            mask_url_password("http://h/mcp?api_key=abc&v=2#top"),
            format!("http://h/mcp?api_key={MASK}&v={MASK}#top")
        );
        assert_eq!(
            mask_url_password("sqlite://xiaomaolv.db"),
            "sqlite://xiaomaolv.db"
        );
        assert_eq!(
            mask_url_password("postgres://app@db/x"),
            "postgres://app@db/x"
        );
    }
}
