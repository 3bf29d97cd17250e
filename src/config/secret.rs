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

/// Masks the password, every query value and the fragment of a URL such as
/// `postgres://user:pass@host/db?key=value`, leaving the rest readable. The value of `sslmode`
/// stays readable when it is one of libpq's modes, so the log shows which mode is in force.
///
/// Everything before the last `@` counts as the user part, so a password that contains an
/// unencoded `/`, `?` or `#` is still masked. A query item without `=` is masked whole, because it
/// may be the end of a password cut at a `&`.
pub fn mask_url_password(url: &str) -> String {
    let (scheme, rest) = match url.find(':') {
        Some(colon)
            if url[..colon]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            let after = &url[colon + 1..];
            let slashes = after.len() - after.trim_start_matches('/').len();
            url.split_at(colon + 1 + slashes)
        }
        _ => ("", url),
    };
    let mut masked = scheme.to_owned();
    let rest = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.find([':', '/', '?', '#', '&']) {
                Some(end) => {
                    masked.push_str(&userinfo[..end]);
                    masked.push(':');
                    masked.push_str(MASK);
                }
                None => masked.push_str(userinfo),
            }
            &rest[at..]
        }
        None => rest,
    };
    let (base, fragment) = match rest.split_once('#') {
        Some((base, _)) => (base, Some(MASK)),
        None => (rest, None),
    };
    match base.split_once('?') {
        Some((path, query)) => {
            masked.push_str(path);
            masked.push('?');
            let pairs: Vec<String> = query.split('&').map(mask_query_pair).collect();
            masked.push_str(&pairs.join("&"));
        }
        None => masked.push_str(base),
    }
    if let Some(fragment) = fragment {
        masked.push('#');
        masked.push_str(fragment);
    }
    masked
}

/// libpq's values of `sslmode`, which are never secret.
const SSL_MODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

fn mask_query_pair(pair: &str) -> String {
    match pair.split_once('=') {
        Some((key @ ("sslmode" | "ssl-mode"), value))
            if SSL_MODES.contains(&value.to_ascii_lowercase().as_str()) =>
        {
            format!("{key}={value}")
        }
        Some((key, _)) => format!("{key}={MASK}"),
        None if pair.is_empty() => String::new(),
        None => MASK.to_owned(),
    }
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
            mask_url_password("postgres://app:hunter2@db:5432/x?sslmode=disable&port=5"),
            format!("postgres://app:{MASK}@db:5432/x?sslmode=disable&port={MASK}")
        );
        assert_eq!(
            mask_url_password("http://h/mcp?api_key=abc&v=2#top"),
            format!("http://h/mcp?api_key={MASK}&v={MASK}#{MASK}")
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

    #[test]
    fn malformed_url_password_is_masked() {
        let cases = [
            "postgres://xm:?hunter2@db/x",
            "postgress://xm:hun/ter2@db/x",
            "mysql://xm:hunter2/@h/xm",
            "postgres:xm:hunter2@db/x",
            "pg://xm:pw@db/x?x=1#hunter2",
            "postgres://app:pw@db/x?password=abc&hunter2",
            "postgres://app:pw@db/x?sslmode=hunter2",
        ];
        for url in cases {
            let masked = mask_url_password(url);
            assert!(!masked.contains("hunter2"), "{url}: {masked}");
            assert!(!masked.contains("hun/ter2"), "{url}: {masked}");
            assert!(masked.contains(MASK), "{url}: {masked}");
        }
    }
}
