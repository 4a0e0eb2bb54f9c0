//! Keys-file parsing, matching and redaction.

use super::*;

#[test]
fn glob_matches_runs_and_respects_the_star_class() {
    let any = |_| true;
    assert!(glob("web_*", "web_click", any));
    assert!(glob("web_*", "web_", any));
    assert!(!glob("web_*", "app_click", any));
    assert!(glob("*_view", "page_view", any));
    assert!(glob("a*b*c", "axxbyyc", any));
    assert!(!glob("a*b*c", "axxbyy", any));
    assert!(glob("exact", "exact", any));
    assert!(!glob("exact", "exactly", any));
    assert!(glob(
        "https://*.shop.example",
        "https://eu.shop.example",
        origin_star
    ));
    assert!(!glob(
        "https://*.shop.example",
        "https://evil.example/.shop.example",
        origin_star
    ));
    assert!(!glob(
        "https://*.shop.example",
        "https://x.shop.example:8443",
        origin_star
    ));
}

fn parse(text: &str) -> Result<KeySet, String> {
    KeySet::parse(
        text,
        false,
        &RateLimitConfig::default(),
        500,
        &KeySet::default(),
    )
}

#[test]
fn keys_file_errors_name_the_entry_never_the_key() {
    let secret = "wk_secret_value_123456";
    let cases = [
        (format!("[[keys]]\nkey = \"{secret}\"\nname = \"a b\""), "keys[0].name"),
        ("[[keys]]\nkey = \"short\"\nname = \"a\"".into(), "keys[0] (a).key"),
        (format!("[[keys]]\nkey = \"{secret}:x\"\nname = \"a\""), "keys[0] (a).key"),
        (
            format!("[[keys]]\nkey = \"{secret}\"\nname = \"a\"\nschemas = [\"x/y\"]"),
            "keys[0] (a).schemas",
        ),
        (
            format!("[[keys]]\nkey = \"{secret}\"\nname = \"a\"\norigins = [\"https://a.example/path\"]"),
            "keys[0] (a).origins",
        ),
        (
            format!("[[keys]]\nkey = \"{secret}\"\nname = \"a\"\nevents_per_sec = 1\nburst = 10"),
            "keys[0] (a).burst",
        ),
        (
            format!("[[keys]]\nkey = \"{secret}\"\nname = \"a\"\n[[keys]]\nkey = \"{secret}\"\nname = \"b\""),
            "keys[1] (b).key",
        ),
        (
            format!("[[keys]]\nkey = \"{secret}\"\nname = \"a\"\n[[keys]]\nkey = \"{secret}x\"\nname = \"a\""),
            "keys[1] (a): duplicate name",
        ),
        (format!("[[keys]]\nkey = \"{secret}\"\nname = \"a\"\nscopes = []"), "scopes"),
        // Parser errors on the key's own line, TOML and JSON: the message must not quote it.
        (format!("[[keys]]\nkey = \"{secret}\nname = \"a\"\n"), "line 2"),
        (format!("[[keys]]\nkey = \"{secret}\" x\nname = \"a\"\n"), "line 2"),
        (format!("[[keys]]\nname = \"a\"\nkey = [\"{secret}\"]\n"), "line 3"),
        (format!("[[keys]]\nname = \"a\"\nevents_per_sec = \"{secret}\"\n"), "line 3"),
    ];
    for (text, named) in cases {
        let err = parse(&text)
            .err()
            .unwrap_or_else(|| panic!("accepted: {text}"));
        assert!(err.contains(named), "{named}: {err}");
        assert!(!err.contains(secret), "the key leaked into: {err}");
    }
}

#[test]
fn json_parse_errors_do_not_quote_values() {
    let secret = "wk_secret_value_123456";
    for text in [
        format!(r#"{{"keys": [{{"key": "{secret}", "name": 5}}]}}"#),
        // A value in the wrong field is quoted by serde ("invalid type: string ...").
        format!(r#"{{"keys": [{{"key": "k", "name": "a", "events_per_sec": "{secret}"}}]}}"#),
        format!(r#"{{"keys": [{{"key": "{secret}" "name": "a"}}]}}"#),
    ] {
        let err = KeySet::parse(
            &text,
            true,
            &RateLimitConfig::default(),
            500,
            &KeySet::default(),
        )
        .err()
        .unwrap();
        assert!(!err.contains(secret), "the key leaked into: {err}");
    }
}

#[test]
fn json_and_toml_files_are_read_alike() {
    let toml = "[[keys]]\nkey = \"wk_0123456789abcdef\"\nname = \"web\"\nschemas = [\"page_view/1\"]\norigins = [\"https://a.example/\"]\n";
    let json = r#"{"keys": [{"key": "wk_0123456789abcdef", "name": "web", "schemas": ["page_view/1"], "origins": ["https://a.example/"]}]}"#;
    for (text, is_json) in [(toml, false), (json, true)] {
        let set = KeySet::parse(
            text,
            is_json,
            &RateLimitConfig::default(),
            500,
            &KeySet::default(),
        )
        .unwrap();
        let key = set.find("wk_0123456789abcdef").unwrap();
        assert_eq!(&*key.name, "web");
        assert!(key.allows_origin(Some("https://a.example")));
        assert!(key.allows_origin(Some("HTTPS://A.EXAMPLE")));
        assert!(!key.allows_origin(Some("https://b.example")));
        assert!(key.allows_origin(None));
        assert!(set.find("wk_0123456789abcdeF").is_none());
    }
}
