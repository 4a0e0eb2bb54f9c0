//! Start-up checks on the raw `kafka.librdkafka` overrides.

use super::{ConfigError, KafkaConfig};

impl KafkaConfig {
    /// Refuses raw librdkafka overrides that break "200 means every in-sync replica has it".
    /// `enable.gapless.guarantee` is allowed: it only turns an ordering gap into a fatal error,
    /// after which the producer is replaced and its unacknowledged records spooled.
    pub(super) fn validate_librdkafka(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                key: format!("kafka.librdkafka.{key}"),
                message,
            })
        };
        for (key, value) in &self.librdkafka {
            let v = value.trim().to_ascii_lowercase();
            match key.as_str() {
                "acks" | "request.required.acks" if v != "all" && v != "-1" => {
                    return invalid(
                        key,
                        format!("`{value}` breaks the ack promise; only `all` (-1) is allowed"),
                    );
                }
                "enable.idempotence" if v == "false" || v == "0" => {
                    return invalid(
                        key,
                        "must stay true: without it a retried send can duplicate or reorder \
                         records"
                            .into(),
                    );
                }
                "transactional.id" => {
                    return invalid(
                        key,
                        "transactions are not supported: a transactional producer refuses \
                         the gateway's plain sends"
                            .into(),
                    );
                }
                "message.timeout.ms" | "delivery.timeout.ms" => match v.parse::<u64>() {
                    Ok(0) => {
                        return invalid(
                            key,
                            "0 (retry forever) is not supported: spool replay waits this long \
                             for each record's fate"
                                .into(),
                        )
                    }
                    Ok(ms) if ms < self.ack_timeout_ms => {
                        return invalid(
                            key,
                            format!(
                                "{ms} is shorter than kafka.ack_timeout_ms ({}): records would \
                                 fail before a request stops waiting for them",
                                self.ack_timeout_ms
                            ),
                        )
                    }
                    // Unparsable values are refused by librdkafka itself, naming the property.
                    _ => {}
                },
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::load;
    use super::super::tests::env;

    #[test]
    fn overrides_that_break_the_ack_promise_are_refused() {
        let refused = |pairs: &[(&str, &str)], key: &str| {
            let err = load(None, env(pairs), vec![]).map(|_| ()).unwrap_err();
            assert!(err.to_string().contains(key), "{pairs:?}: {err}");
        };
        refused(
            &[("EVENTPIPE_KAFKA__LIBRDKAFKA__acks", "1")],
            "kafka.librdkafka.acks",
        );
        refused(
            &[("EVENTPIPE_KAFKA__LIBRDKAFKA__request.required.acks", "0")],
            "kafka.librdkafka.request.required.acks",
        );
        refused(
            &[("EVENTPIPE_KAFKA__LIBRDKAFKA__enable.idempotence", "false")],
            "kafka.librdkafka.enable.idempotence",
        );
        refused(
            &[("EVENTPIPE_KAFKA__LIBRDKAFKA__transactional.id", "x")],
            "kafka.librdkafka.transactional.id",
        );
        refused(
            &[("EVENTPIPE_KAFKA__LIBRDKAFKA__message.timeout.ms", "0")],
            "kafka.librdkafka.message.timeout.ms",
        );
        refused(
            &[
                ("EVENTPIPE_KAFKA__LIBRDKAFKA__delivery.timeout.ms", "2000"),
                ("EVENTPIPE_KAFKA__ACK_TIMEOUT_MS", "3000"),
            ],
            "kafka.librdkafka.delivery.timeout.ms",
        );
        refused(
            &[("EVENTPIPE_LIMITS__REQUEST_TIMEOUT_MS", "5000")],
            "limits.request_timeout_ms",
        );
        // What keeps the promise is accepted.
        let ok = load(
            None,
            env(&[
                ("EVENTPIPE_KAFKA__LIBRDKAFKA__acks", "all"),
                ("EVENTPIPE_KAFKA__LIBRDKAFKA__request.required.acks", "-1"),
                ("EVENTPIPE_KAFKA__LIBRDKAFKA__enable.idempotence", "true"),
                (
                    "EVENTPIPE_KAFKA__LIBRDKAFKA__enable.gapless.guarantee",
                    "true",
                ),
                ("EVENTPIPE_KAFKA__LIBRDKAFKA__message.timeout.ms", "5000"),
                ("EVENTPIPE_LIMITS__REQUEST_TIMEOUT_MS", "5001"),
            ]),
            vec![],
        );
        assert!(ok.is_ok(), "{:?}", ok.map(|_| ()));
    }
}
