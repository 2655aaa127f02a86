//! What a reload cannot apply: the keys of the start-time settings that differ between the
//! running configuration and a new one.

use super::{Config, FixedSettings, ListenerSettings, LogSettings, TlsSettings, TracingSettings};

impl Config {
    /// The keys of [`Config::fixed`] whose values differ in `next`, in file order. A reload
    /// logs them and keeps the running values; only a restart applies them.
    pub fn restart_needed(&self, next: &Config) -> Vec<&'static str> {
        // Destructured in full, so that a new start-time field cannot be forgotten here.
        let FixedSettings {
            listener:
                ListenerSettings {
                    listen,
                    shutdown_grace,
                    header_read_timeout,
                    max_header_bytes,
                    idle_timeout,
                    max_connections,
                    workers,
                    tls,
                },
            admin_listen,
            log: LogSettings { format, level },
            cluster,
            tracing: TracingSettings { sample_ratio, export },
        } = &self.fixed;
        let new = &next.fixed;
        let mut keys = Vec::new();
        let mut differ = |key, changed: bool| {
            if changed {
                keys.push(key);
            }
        };
        differ("server.listen", *listen != new.listener.listen);
        differ("server.shutdown_grace", *shutdown_grace != new.listener.shutdown_grace);
        differ(
            "server.header_read_timeout",
            *header_read_timeout != new.listener.header_read_timeout,
        );
        differ(
            "server.max_header_bytes",
            *max_header_bytes != new.listener.max_header_bytes,
        );
        differ("server.idle_timeout", *idle_timeout != new.listener.idle_timeout);
        differ(
            "server.max_connections",
            *max_connections != new.listener.max_connections,
        );
        differ("server.workers", *workers != new.listener.workers);
        match (tls, &new.listener.tls) {
            (None, None) => {}
            (Some(old), Some(new)) => {
                let TlsSettings {
                    cert_file,
                    key_file,
                    client_ca_file,
                    handshake_timeout,
                } = old;
                differ("server.tls.cert_file", *cert_file != new.cert_file);
                differ("server.tls.key_file", *key_file != new.key_file);
                differ("server.tls.client_ca_file", *client_ca_file != new.client_ca_file);
                differ(
                    "server.tls.handshake_timeout",
                    *handshake_timeout != new.handshake_timeout,
                );
            }
            // Turning TLS on or off changes the listener itself.
            _ => differ("server.tls", true),
        }
        differ("admin.listen", *admin_listen != new.admin_listen);
        differ("log.format", *format != new.log.format);
        differ("log.level", *level != new.log.level);
        // The connection to Redis and the replica's identity in it are made once, at start.
        differ("cluster", *cluster != new.cluster);
        // The export thread and its collector are set up once, at start.
        differ("tracing.sample_ratio", *sample_ratio != new.tracing.sample_ratio);
        let (old_export, new_export) = (export.as_ref(), new.tracing.export.as_ref());
        differ(
            "tracing.otlp_endpoint",
            old_export.map(|e| &e.endpoint) != new_export.map(|e| &e.endpoint),
        );
        if let (Some(old), Some(new)) = (old_export, new_export) {
            differ("tracing.service_name", old.service_name != new.service_name);
            differ("tracing.queue_size", old.queue_size != new.queue_size);
            differ("tracing.export_interval", old.export_interval != new.export_interval);
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::GOOD;
    use crate::config::Config;

    fn config(server: &str, rest: &str) -> Config {
        let text = GOOD.replace("listen = \"127.0.0.1:0\"", server) + rest;
        Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn every_changed_start_time_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, "pem").unwrap();
            format!("{:?}", path.display().to_string())
        };
        let tls = |cert: &str, key: &str, ca: &str, handshake: &str| {
            format!(
                "\n[server.tls]\ncert_file = {}\nkey_file = {}\nclient_ca_file = {}\nhandshake_timeout = {handshake:?}\n",
                file(cert),
                file(key),
                file(ca),
            )
        };
        let running = config(
            &format!("listen = \"127.0.0.1:0\"{}", tls("a.pem", "a.key", "ca.pem", "10s")),
            "\n[admin]\nlisten = \"127.0.0.1:9090\"\n[log]\nformat = \"json\"\nlevel = \"info\"\n",
        );
        assert_eq!(running.restart_needed(&running.clone()), Vec::<&str>::new());

        let next = config(
            &format!(
                "listen = \"127.0.0.1:8081\"\nshutdown_grace = \"1s\"\nheader_read_timeout = \"1s\"\n\
                 max_header_bytes = 9000\nidle_timeout = \"1s\"\nmax_connections = 2\n\
                 request_timeout = \"1s\"\nmax_body_bytes = 1{}",
                tls("b.pem", "b.key", "ca2.pem", "1s")
            ),
            "\n[admin]\nlisten = \"\"\nready_min_ttl = \"1s\"\n[log]\nformat = \"text\"\nlevel = \"debug\"\n",
        );
        assert_eq!(
            running.restart_needed(&next),
            [
                "server.listen",
                "server.shutdown_grace",
                "server.header_read_timeout",
                "server.max_header_bytes",
                "server.idle_timeout",
                "server.max_connections",
                "server.tls.cert_file",
                "server.tls.key_file",
                "server.tls.client_ca_file",
                "server.tls.handshake_timeout",
                "admin.listen",
                "log.format",
                "log.level",
            ]
        );
        let plain = config("listen = \"127.0.0.1:0\"", "\n[admin]\nlisten = \"127.0.0.1:9090\"\n");
        assert_eq!(running.restart_needed(&plain), ["server.tls"]);
    }

    #[test]
    fn tracing_keys_need_a_restart() {
        let on = "\n[tracing]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\n";
        let off = config("listen = \"127.0.0.1:0\"", "");
        let running = config("listen = \"127.0.0.1:0\"", on);
        assert_eq!(off.restart_needed(&running), ["tracing.otlp_endpoint"]);
        let next = config(
            "listen = \"127.0.0.1:0\"",
            &format!("{on}service_name = \"x\"\nqueue_size = 5\nexport_interval = \"1s\"\nsample_ratio = 0.5\n"),
        );
        assert_eq!(
            running.restart_needed(&next),
            [
                "tracing.sample_ratio",
                "tracing.service_name",
                "tracing.queue_size",
                "tracing.export_interval"
            ]
        );
    }

    #[test]
    fn reloadable_keys_need_no_restart() {
        let running = config("listen = \"127.0.0.1:0\"", "");
        let next = config(
            "listen = \"127.0.0.1:0\"\nrequest_timeout = \"1s\"\nmax_body_bytes = 1",
            "\n[admin]\nready_min_ttl = \"1s\"\n",
        );
        assert_ne!(running.live.requests.max_body_bytes, next.live.requests.max_body_bytes);
        assert_eq!(running.restart_needed(&next), Vec::<&str>::new());
    }
}
