//! `[snowplow]`: Snowplow's tracker protocol on the public listener (`crate::protocol::snowplow`),
//! and `[pixel]`: the native `GET /v1/pixel.gif` (`crate::http::pixel`).

use serde::Deserialize;

use super::{Config, ConfigError};

/// Snowplow's tracker protocol: `POST /com.snowplowanalytics.snowplow/tp2` and `GET /i`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnowplowConfig {
    /// Serve the Snowplow routes. Off by default: they need the shipped `snowplow_*` schemas in
    /// the schema directory (checked at start-up when on).
    #[serde(default)]
    pub enabled: bool,
    /// Origins whose browsers may send with credentials (Snowplow's JS tracker sends cookies):
    /// each answer echoes the request's `Origin` with `Access-Control-Allow-Credentials: true`.
    /// Exact origins such as `"https://shop.example"`; `["*"]` echoes any origin (an explicit
    /// opt-in, as Snowplow's collector does). Default empty: no CORS headers for anyone (a
    /// browser on another origin cannot send). Never answered as a literal `*`.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// Preflight cache lifetime in seconds.
    #[serde(default = "default_cors_max_age")]
    pub cors_max_age_secs: u64,
    /// With `auth.keys_file` set, whether the Snowplow routes need a write key too (`X-Write-Key`
    /// header, or `key` query parameter). No default when auth is on: it must be written, `true`
    /// (only key holders send) or `false` (public, as Snowplow collectors are: anyone may send
    /// any event of any schema, limited only by `rate_limit.ip_requests_per_sec` if set); start-up fails
    /// naming this field when it is missing. Without auth it changes nothing.
    #[serde(default)]
    pub require_write_key: Option<bool>,
    /// `GET /i`: the query string at most, in bytes; longer: 400 (the GIF, not retried).
    #[serde(default = "default_max_get_bytes")]
    pub max_get_bytes: usize,
    /// A context (`co`/`cx`) whose Iglu schema is not in the registry: `keep` it unvalidated
    /// (default: the JS tracker adds Snowplow's own, e.g. `web_page`), or `reject` the event
    /// (`unknown_schema`, dead-lettered).
    #[serde(default)]
    pub unknown_contexts: UnknownContexts,
}

/// What to do with a context whose schema the registry does not know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownContexts {
    #[default]
    Keep,
    Reject,
}

impl Default for SnowplowConfig {
    fn default() -> Self {
        SnowplowConfig {
            enabled: false,
            cors_origins: Vec::new(),
            cors_max_age_secs: default_cors_max_age(),
            require_write_key: None,
            max_get_bytes: default_max_get_bytes(),
            unknown_contexts: UnknownContexts::Keep,
        }
    }
}

/// The native pixel, `GET /v1/pixel.gif?e=<base64url JSON event>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PixelConfig {
    /// Serve `GET /v1/pixel.gif` (write keys apply as on `POST /v1/events`, via `key=`).
    #[serde(default = "super::default_true")]
    pub enabled: bool,
    /// The query string at most, in bytes; longer: 414.
    #[serde(default = "default_pixel_max_query_bytes")]
    pub max_query_bytes: usize,
}

impl Default for PixelConfig {
    fn default() -> Self {
        PixelConfig {
            enabled: true,
            max_query_bytes: default_pixel_max_query_bytes(),
        }
    }
}

fn default_cors_max_age() -> u64 {
    3600
}
fn default_max_get_bytes() -> usize {
    16 << 10
}
fn default_pixel_max_query_bytes() -> usize {
    8 << 10
}

impl Config {
    pub(super) fn validate_snowplow(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message,
            })
        };
        let head = self.limits.max_header_bytes;
        let s = &self.snowplow;
        if s.enabled {
            if self.auth.keys_file.is_some() && s.require_write_key.is_none() {
                return invalid(
                    "snowplow.require_write_key",
                    "must be set when auth.keys_file is set: true makes the Snowplow routes take \
                     write keys like POST /v1/events (X-Write-Key or key=; most Snowplow trackers \
                     cannot send one); false keeps them public, as Snowplow collectors are: anyone \
                     may send any event of any schema, limited only by \
                     rate_limit.ip_requests_per_sec (off unless set)"
                        .into(),
                );
            }
            if s.cors_origins.len() > 1 && s.cors_origins.iter().any(|o| o == "*") {
                return invalid(
                    "snowplow.cors_origins",
                    "\"*\" (echo any origin) must be the only entry".into(),
                );
            }
            if let Some(bad) = s.cors_origins.iter().find(|o| *o != "*" && !is_origin(o)) {
                return invalid(
                    "snowplow.cors_origins",
                    format!("{bad:?} is not an origin like \"https://shop.example\" (scheme://host[:port], no path)"),
                );
            }
            if !(256..=head).contains(&s.max_get_bytes) {
                return invalid(
                    "snowplow.max_get_bytes",
                    format!("must be between 256 and limits.max_header_bytes ({head})"),
                );
            }
        }
        let p = &self.pixel;
        if p.enabled && !(256..=head).contains(&p.max_query_bytes) {
            return invalid(
                "pixel.max_query_bytes",
                format!("must be between 256 and limits.max_header_bytes ({head})"),
            );
        }
        Ok(())
    }
}

fn is_origin(o: &str) -> bool {
    let Some((scheme, host)) = o.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(toml: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        crate::config::load(Some(&path), vec![], vec![]).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_validation_name_the_field() {
        let c = load("[snowplow]\nenabled = true\n").unwrap();
        assert!(
            c.snowplow.cors_origins.is_empty(),
            "no CORS unless configured"
        );
        assert_eq!(c.snowplow.require_write_key, None);
        assert!(c.pixel.enabled);
        assert_eq!(c.pixel.max_query_bytes, 8192);
        let err =
            load("[snowplow]\nenabled = true\ncors_origins = [\"*\", \"https://a.example\"]\n")
                .unwrap_err();
        assert!(err.contains("snowplow.cors_origins"), "{err}");
        let err = load("[snowplow]\nenabled = true\ncors_origins = [\"https://a.example/x\"]\n")
            .unwrap_err();
        assert!(err.contains("snowplow.cors_origins"), "{err}");
        let err = load("[snowplow]\nenabled = true\nmax_get_bytes = 10\n").unwrap_err();
        assert!(err.contains("snowplow.max_get_bytes"), "{err}");
        let err = load("[pixel]\nmax_query_bytes = 1000000\n").unwrap_err();
        assert!(err.contains("pixel.max_query_bytes"), "{err}");
        let c = load("[snowplow]\nenabled = true\ncors_origins = [\"*\"]\n").unwrap();
        assert_eq!(c.snowplow.cors_origins, ["*"]);
        let err = load("[snowplow]\nenable = true\n").unwrap_err();
        assert!(err.contains("enable"), "{err}");
        let err = load("[snowplow]\nunknown_contexts = \"drop\"\n").unwrap_err();
        assert!(
            err.contains("unknown_contexts") || err.contains("snowplow"),
            "{err}"
        );
    }

    #[test]
    fn with_auth_on_require_write_key_must_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.toml");
        std::fs::write(&keys, "").unwrap();
        let auth = format!("[auth]\nkeys_file = {:?}\n", keys.display().to_string());
        let err = load(&format!("{auth}[snowplow]\nenabled = true\n")).unwrap_err();
        assert!(err.contains("snowplow.require_write_key"), "{err}");
        assert!(err.contains("anyone may send"), "the trade-off: {err}");
        for choice in [true, false] {
            let c = load(&format!(
                "{auth}[snowplow]\nenabled = true\nrequire_write_key = {choice}\n"
            ))
            .unwrap();
            assert_eq!(c.snowplow.require_write_key, Some(choice));
        }
        // Snowplow off, or auth off: nothing to decide.
        load(&auth).unwrap();
        load("[snowplow]\nenabled = true\n").unwrap();
    }
}
