//! The environment variables Kubernetes injects for every Service in a namespace: not config
//! keys, skipped by `load` (see the module doc of `config`).

/// True for the shapes the kubelet gives a Service's variables (`rest` follows `EVENTPIPE_`):
/// `[<NAME>_]SERVICE_HOST`, `[<NAME>_]SERVICE_PORT[_<PORTNAME>]`, `[<NAME>_]PORT` and
/// `[<NAME>_]PORT_<number>_<TCP|UDP|SCTP>[_PROTO|_PORT|_ADDR]`, all upper case. No config key
/// has these shapes (keys nest with `__` and none is named `port` or `service_*`).
pub(super) fn is_service_link(rest: &str) -> bool {
    if rest.is_empty()
        || !rest
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return false;
    }
    let tokens: Vec<&str> = rest.split('_').collect();
    (0..tokens.len()).any(|i| {
        // The tokens before `i` are the rest of the Service's name (may be none).
        if tokens[..i].iter().any(|t| t.is_empty()) {
            return false;
        }
        match &tokens[i..] {
            ["SERVICE", "HOST"] | ["SERVICE", "PORT"] | ["PORT"] => true,
            ["SERVICE", "PORT", name @ ..] => name.iter().all(|t| !t.is_empty()),
            ["PORT", number, proto, suffix @ ..] => {
                !number.is_empty()
                    && number.bytes().all(|b| b.is_ascii_digit())
                    && matches!(*proto, "TCP" | "UDP" | "SCTP")
                    && matches!(suffix, [] | ["PROTO"] | ["PORT"] | ["ADDR"])
            }
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::load;
    use super::super::tests::env;

    #[test]
    fn kubernetes_service_links_are_skipped_and_typos_still_fail() {
        let injected = [
            ("EVENTPIPE_SERVICE_HOST", "10.96.0.12"),
            ("EVENTPIPE_SERVICE_PORT", "8080"),
            ("EVENTPIPE_SERVICE_PORT_HTTP", "8080"),
            ("EVENTPIPE_PORT", "tcp://10.96.0.12:8080"),
            ("EVENTPIPE_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
            ("EVENTPIPE_PORT_8080_TCP_PROTO", "tcp"),
            ("EVENTPIPE_PORT_8080_TCP_PORT", "8080"),
            ("EVENTPIPE_PORT_8080_TCP_ADDR", "10.96.0.12"),
            // A Service named `eventpipe-admin`.
            ("EVENTPIPE_ADMIN_SERVICE_HOST", "10.96.0.13"),
            ("EVENTPIPE_ADMIN_SERVICE_PORT_METRICS_HTTP", "9100"),
            ("EVENTPIPE_ADMIN_PORT_9100_UDP_ADDR", "10.96.0.13"),
        ];
        let mut vars = env(&injected);
        vars.extend(env(&[("EVENTPIPE_LIMITS__MAX_EVENTS", "9")]));
        let c = load(None, vars, vec![]).unwrap();
        assert_eq!(c.limits.max_events, 9);

        // Near misses are still errors (unknown keys).
        for var in [
            "EVENTPIPE_LISTN",
            "EVENTPIPE_SERVICE_HOSTS",
            "EVENTPIPE_service_host",
            "EVENTPIPE_PORT_8080_HTTP",
            "EVENTPIPE_PORT_X_TCP",
            "EVENTPIPE_KAFKA__PORT",
            "EVENTPIPE__SERVICE_HOST",
        ] {
            let loaded = load(None, env(&[(var, "1")]), vec![]);
            assert!(loaded.is_err(), "{var} was accepted");
        }
    }
}
