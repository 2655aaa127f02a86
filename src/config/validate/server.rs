//! Validation of the sections bound at start and of readiness: `[server]`, `[server.tls]`,
//! `[log]`, `[admin]`.

use super::Issues;
use crate::config::raw::{Field, GroupRef, RawAdmin, RawLog, RawServer, RawServerTls};
use crate::config::*;
use crate::routes::Rule;

/// What a listen address names a Unix socket with.
const UNIX_PREFIX: &str = "unix:";

/// More serving threads than this is a typo, not a machine.
const MAX_WORKERS: u64 = 64;
/// hyper's HTTP/1 parser cannot work with a smaller read buffer.
const MIN_HEADER_BYTES: u64 = 8192;
/// Zuora's tokens live one hour: none can stay valid for longer than this.
const TOKEN_LIFETIME_SECS: u64 = 3600;
/// Levels a bare `log.level` directive may name (any case).
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
const LEVEL_FORMS: &str = "write a level (off, error, warn, info, debug, trace) or target=level directives, \
     comma-separated, e.g. \"warn,access=info\"";

pub(super) fn server(issues: &mut Issues, s: &RawServer) -> (ListenerSettings, RequestLimits) {
    let placeholder = Listen::Tcp(([127, 0, 0, 1], 0).into());
    let listen = issues
        .field("server.listen", &s.listen)
        .map_or(DEFAULT_LISTEN, String::as_str);
    let listen = match listen.strip_prefix(UNIX_PREFIX) {
        Some(path) => unix_socket(issues, s, path).map(Listen::Unix),
        None => {
            for (key, absent) in [
                ("server.socket_mode", matches!(s.socket_mode, Field::Absent)),
                ("server.socket_group", matches!(s.socket_group, Field::Absent)),
            ] {
                if !absent {
                    issues.push(key, "only for a Unix socket (server.listen = \"unix:/path\")");
                }
            }
            issues.socket_addr("server.listen", listen).map(Listen::Tcp)
        }
    }
    .unwrap_or(placeholder);
    let max_body_bytes = issues.number("server.max_body_bytes", &s.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    let max_header_bytes = issues.number("server.max_header_bytes", &s.max_header_bytes, DEFAULT_MAX_HEADER_BYTES);
    if max_header_bytes < MIN_HEADER_BYTES {
        issues.push(
            "server.max_header_bytes",
            format!("must be at least {MIN_HEADER_BYTES} (the HTTP parser's smallest buffer)"),
        );
    }
    let requests = RequestLimits {
        request_timeout: issues.duration(
            "server.request_timeout",
            &s.request_timeout,
            DEFAULT_REQUEST_TIMEOUT_SECS,
        ),
        max_body_bytes,
        upstream_body_timeout: issues.duration(
            "server.upstream_body_timeout",
            &s.upstream_body_timeout,
            DEFAULT_UPSTREAM_BODY_TIMEOUT_SECS,
        ),
        caller_token_endpoint: issues.number(
            "server.caller_token_endpoint",
            &s.caller_token_endpoint,
            DEFAULT_CALLER_TOKEN_ENDPOINT,
        ),
    };
    let listener = ListenerSettings {
        listen,
        shutdown_grace: issues.duration("server.shutdown_grace", &s.shutdown_grace, DEFAULT_SHUTDOWN_GRACE_SECS),
        header_read_timeout: issues.duration(
            "server.header_read_timeout",
            &s.header_read_timeout,
            DEFAULT_HEADER_READ_TIMEOUT_SECS,
        ),
        max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
        idle_timeout: issues.duration("server.idle_timeout", &s.idle_timeout, DEFAULT_IDLE_TIMEOUT_SECS),
        max_connections: match issues.number("server.max_connections", &s.max_connections, DEFAULT_MAX_CONNECTIONS) {
            0 => {
                issues.push("server.max_connections", "must be at least 1");
                1
            }
            n => usize::try_from(n).unwrap_or(usize::MAX),
        },
        workers: workers(issues, s, &listen),
        tls: issues.field("server.tls", &s.tls).and_then(|t| server_tls(issues, t)),
    };
    for (key, d) in [
        ("server.request_timeout", requests.request_timeout),
        ("server.upstream_body_timeout", requests.upstream_body_timeout),
        ("server.header_read_timeout", listener.header_read_timeout),
        ("server.idle_timeout", listener.idle_timeout),
    ] {
        if d.is_zero() {
            issues.push(key, "must be greater than zero");
        }
    }
    (listener, requests)
}

/// `server.workers`: 1 to [`MAX_WORKERS`], and 1 on a Unix socket (`SO_REUSEPORT`, which
/// spreads connections over the workers' sockets, is for TCP only).
fn workers(issues: &mut Issues, s: &RawServer, listen: &Listen) -> usize {
    let workers = issues.number("server.workers", &s.workers, DEFAULT_WORKERS);
    if !(1..=MAX_WORKERS).contains(&workers) {
        issues.push(
            "server.workers",
            format!("must be from 1 to {MAX_WORKERS} (one per core is the most that helps)"),
        );
        return 1;
    }
    if workers > 1 && matches!(listen, Listen::Unix(_)) {
        issues.push(
            "server.workers",
            "must be 1 on a Unix socket (several workers share a TCP port, not a socket file)",
        );
        return 1;
    }
    usize::try_from(workers).unwrap_or(1)
}

/// A `unix:` listener: its path, mode and group. TLS is refused there: the kernel already
/// says who the caller is (`when_peer_uid`), and nothing on the socket leaves the host.
fn unix_socket(issues: &mut Issues, s: &RawServer, path: &str) -> Option<UnixSocketSettings> {
    let before = issues.errors();
    let path = SocketPath::new(Path::new(path));
    if path.is_none() {
        issues.push(
            "server.listen",
            format!(
                "a Unix socket path must have 1 to {} bytes (the size of a socket address), e.g. \"unix:/run/zuora-auth-proxy.sock\"",
                SocketPath::MAX_LEN
            ),
        );
    }
    let mode = match issues.field("server.socket_mode", &s.socket_mode) {
        None => DEFAULT_SOCKET_MODE,
        Some(text) => match parse_mode(text) {
            Some(mode) => mode,
            None => {
                issues.push(
                    "server.socket_mode",
                    format!("{text:?} is not a permission mode; write octal digits, e.g. \"0660\""),
                );
                DEFAULT_SOCKET_MODE
            }
        },
    };
    let group = match issues.field("server.socket_group", &s.socket_group) {
        None => None,
        Some(GroupRef::Id(gid)) => Some(*gid),
        Some(GroupRef::Name(name)) => match name.trim().parse::<u32>().ok().or_else(|| group_id(name.trim())) {
            Some(gid) => Some(gid),
            None => {
                issues.push("server.socket_group", format!("no group named {name:?} on this host"));
                None
            }
        },
    };
    if !matches!(s.tls, Field::Absent) {
        issues.push(
            "server.tls",
            "is not served on a Unix socket: the kernel names each caller (when_peer_uid), and nothing on it leaves the host",
        );
    }
    if issues.errors() != before {
        return None;
    }
    Some(UnixSocketSettings {
        path: path?,
        mode,
        group,
    })
}

/// `"0660"`, `"660"` or `"0o660"`: permission bits only (no setuid, setgid or sticky bit).
fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.trim();
    let digits = digits.strip_prefix("0o").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|mode| *mode <= 0o777)
}

/// The gid of a group, through the host's name service (files, LDAP, ...), as `chgrp` does.
fn group_id(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    loop {
        // SAFETY: `group` and `buf` outlive the call, `buf.len()` is the buffer's size, and
        // getgrnam_r writes only into them; `found` is either null or points at `group`.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe { libc::getgrnam_r(name.as_ptr(), &mut group, buf.as_mut_ptr(), buf.len(), &mut found) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            // A group with many members needs a larger buffer.
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        return (rc == 0 && !found.is_null()).then_some(group.gr_gid);
    }
}

fn server_tls(issues: &mut Issues, t: &RawServerTls) -> Option<TlsSettings> {
    let before = issues.errors();
    let mut file = |key: &str, value: &Field<String>, required: bool| -> Option<PathBuf> {
        let absent = matches!(value, Field::Absent);
        match issues.field(key, value) {
            None if required && absent => {
                issues.push(key, "required when [server.tls] is set");
                None
            }
            None => None,
            Some(path) if !Path::new(path).is_file() => {
                issues.push(key, format!("no such file {path}"));
                None
            }
            Some(path) => Some(PathBuf::from(path)),
        }
    };
    let cert_file = file("server.tls.cert_file", &t.cert_file, true);
    let key_file = file("server.tls.key_file", &t.key_file, true);
    let client_ca_file = file("server.tls.client_ca_file", &t.client_ca_file, false);
    let handshake_timeout = issues.duration(
        "server.tls.handshake_timeout",
        &t.handshake_timeout,
        DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS,
    );
    if issues.errors() != before {
        return None;
    }
    Some(TlsSettings {
        cert_file: cert_file?,
        key_file: key_file?,
        client_ca_file,
        handshake_timeout,
    })
}

pub(super) fn log(issues: &mut Issues, l: &RawLog) -> LogSettings {
    let format = match issues.field("log.format", &l.format).map_or("json", String::as_str) {
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        other => {
            issues.push(
                "log.format",
                format!("unknown format {other:?}; use \"json\" or \"text\""),
            );
            LogFormat::Json
        }
    };
    let level = issues.field("log.level", &l.level).map_or("info", String::as_str);
    check_log_level(issues, level);
    LogSettings {
        format,
        level: level.to_string(),
    }
}

/// A tracing filter reads a bare word as a target, so `verbose` would log nothing at all:
/// a bare directive must be a level, and so must whatever follows `=`.
fn check_log_level(issues: &mut Issues, filter: &str) {
    let directives: Vec<&str> = filter.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    if directives.is_empty() {
        issues.push("log.level", format!("is empty: {LEVEL_FORMS}"));
        return;
    }
    for directive in directives {
        // `target[span{field=value}]` has an `=` inside braces: that is no level.
        let level = match directive.rsplit_once('=') {
            Some((_, level)) if !level.contains([']', '}']) => level.trim(),
            _ => directive,
        };
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            let what = if level == directive {
                format!("{level:?} is not a level")
            } else {
                format!("{level:?} in {directive:?} is not a level")
            };
            issues.push("log.level", format!("{what}: {LEVEL_FORMS}"));
            return;
        }
    }
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(filter) {
        issues.push("log.level", format!("invalid filter {filter:?}: {e}"));
    }
}

/// The admin listener and the readiness bar; `listen` is the caller-facing address.
pub(super) fn admin(issues: &mut Issues, a: &RawAdmin, listen: Listen) -> (Option<SocketAddr>, Duration) {
    let admin_listen = match issues
        .field("admin.listen", &a.listen)
        .map_or(DEFAULT_ADMIN_LISTEN, String::as_str)
    {
        text if text.trim().is_empty() => None,
        text => issues.socket_addr("admin.listen", text.trim()),
    };
    if let (Some(admin), Listen::Tcp(listen)) = (admin_listen, listen) {
        if same_socket(admin, listen) {
            issues.push(
                "admin.listen",
                format!("is the address of server.listen ({listen}); give the admin listener its own port"),
            );
        }
    }
    let ready_min_ttl = issues.duration("admin.ready_min_ttl", &a.ready_min_ttl, DEFAULT_READY_MIN_TTL_SECS);
    if ready_min_ttl >= Duration::from_secs(TOKEN_LIFETIME_SECS) {
        issues.push(
            "admin.ready_min_ttl",
            format!(
                "must be under {TOKEN_LIFETIME_SECS}s: Zuora's tokens live one hour, so the proxy could never be ready"
            ),
        );
    }
    (admin_listen, ready_min_ttl)
}

/// Two listeners that could not both bind: the same port (other than 0, which picks a free
/// one each time) on the same address, or on the wildcard address of the same family.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

/// A token is refreshed `refresh_margin` before it expires: a readiness bar above that margin
/// would turn `/readyz` 503 for a while before every refresh.
pub(super) fn readiness(
    issues: &mut Issues,
    ready_min_ttl: Duration,
    tenants: &BTreeMap<String, Arc<TenantSettings>>,
    rules: &[Arc<Rule>],
) {
    for (name, tenant) in tenants {
        if ready_min_ttl > tenant.refresh_margin && rules.iter().any(|r| &r.tenant == name) {
            issues.warn(
                "admin.ready_min_ttl",
                format!(
                    "{}s is longer than tenants.{name}.refresh_margin ({}s): /readyz would turn 503 before every token refresh",
                    ready_min_ttl.as_secs_f64(),
                    tenant.refresh_margin.as_secs_f64()
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{keys, GOOD};
    use crate::config::*;

    fn with(section: &str) -> String {
        format!("{GOOD}\n{section}\n")
    }

    fn message_at(text: &str, key: &str) -> Option<String> {
        let err = Config::from_toml(text).err()?;
        err.issues.into_iter().find(|i| i.key == key).map(|i| i.message)
    }

    #[test]
    fn a_bare_log_directive_must_be_a_level() {
        for ok in [
            "info",
            "WARN",
            "off",
            "warn,access=info",
            "zuora_auth_proxy=Debug,hyper=off",
            "trace",
        ] {
            let c = Config::from_toml(&with(&format!("[log]\nlevel = {ok:?}"))).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(c.fixed.log.level, ok);
        }
        for bad in ["verbose", "info,verbose", "access=loud", "", " , ", "target[span{a=1}]"] {
            let message = message_at(&with(&format!("[log]\nlevel = {bad:?}")), "log.level")
                .unwrap_or_else(|| panic!("{bad:?} was accepted"));
            assert!(message.contains("target=level"), "{bad:?}: {message}");
        }
    }

    #[test]
    fn the_admin_listener_needs_its_own_address() {
        let same = GOOD.replace("127.0.0.1:0", "127.0.0.1:8080") + "\n[admin]\nlisten = \"127.0.0.1:8080\"\n";
        assert!(message_at(&same, "admin.listen").unwrap().contains("server.listen"));
        let wildcard = GOOD.replace("127.0.0.1:0", "127.0.0.1:8080") + "\n[admin]\nlisten = \"0.0.0.0:8080\"\n";
        assert!(message_at(&wildcard, "admin.listen").is_some());
        // Port 0 on both: each listener gets its own free port.
        let c = Config::from_toml(&with("[admin]\nlisten = \"127.0.0.1:0\"")).unwrap();
        assert_eq!(c.fixed.listener.listen, Listen::Tcp(c.fixed.admin_listen.unwrap()));
        let other_port = GOOD.replace("127.0.0.1:0", "127.0.0.1:8080") + "\n[admin]\nlisten = \"127.0.0.1:8081\"\n";
        Config::from_toml(&other_port).unwrap();
    }

    #[test]
    fn a_readiness_bar_of_a_token_lifetime_is_refused() {
        assert!(message_at(&with("[admin]\nready_min_ttl = \"1h\""), "admin.ready_min_ttl").is_some());
        assert!(message_at(&with("[admin]\nready_min_ttl = \"3599s\""), "admin.ready_min_ttl").is_none());
    }

    #[test]
    fn a_readiness_bar_above_the_refresh_margin_is_a_warning() {
        let c = Config::from_toml(&with("[admin]\nready_min_ttl = \"301s\"")).unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert_eq!(c.warnings[0].key, "admin.ready_min_ttl");
        assert!(
            c.warnings[0].message.contains("tenants.default.refresh_margin"),
            "{}",
            c.warnings[0]
        );
        let c = Config::from_toml(&with("[admin]\nready_min_ttl = \"300s\"")).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // A tenant no rule routes to is not waited for, so it cannot hold readiness back.
        let text = GOOD.replace(
            "[[routes]]",
            "[tenants.idle]\nbase_url = \"https://rest.eu.zuora.com\"\nclient_id = \"i\"\nclient_secret = \"s\"\n\
             refresh_margin = \"10s\"\n[[rules]]\nname = \"r\"\ntenant = \"default\"\n[[routes]]",
        );
        let c = Config::from_toml(&text).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    fn unix(extra: &str) -> String {
        GOOD.replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"unix:/run/zuora-auth-proxy.sock\"\n{extra}"),
        )
    }

    #[test]
    fn a_unix_listener_takes_a_path_a_mode_and_a_group() {
        let c = Config::from_toml(&unix("")).unwrap();
        let Listen::Unix(socket) = c.fixed.listener.listen else {
            panic!("{:?}", c.fixed.listener.listen)
        };
        assert_eq!(socket.path.as_path(), Path::new("/run/zuora-auth-proxy.sock"));
        assert_eq!((socket.mode, socket.group), (0o660, None));
        assert_eq!(c.fixed.listener.listen.to_string(), "unix:/run/zuora-auth-proxy.sock");
        let json = c.to_redacted_json();
        assert_eq!(json["server"]["socket_mode"], "0660");

        let c = Config::from_toml(&unix("socket_mode = \"600\"\nsocket_group = 0")).unwrap();
        let Listen::Unix(socket) = c.fixed.listener.listen else {
            panic!()
        };
        assert_eq!((socket.mode, socket.group), (0o600, Some(0)));
        // Group names go through the host's group database; root's group is there everywhere.
        let c = Config::from_toml(&unix("socket_group = \"root\"")).unwrap();
        let Listen::Unix(socket) = c.fixed.listener.listen else {
            panic!()
        };
        assert_eq!(socket.group, Some(0));
        let c = Config::from_toml(&unix("socket_group = \"0\"")).unwrap();
        let Listen::Unix(socket) = c.fixed.listener.listen else {
            panic!()
        };
        assert_eq!(socket.group, Some(0), "a gid as the environment gives it");
    }

    #[test]
    fn unix_listener_mistakes_are_named() {
        for (extra, key, says) in [
            ("socket_mode = \"0966\"", "server.socket_mode", "octal"),
            ("socket_mode = \"4770\"", "server.socket_mode", "octal"),
            ("socket_mode = \"rw\"", "server.socket_mode", "octal"),
            (
                "socket_group = \"no-such-group-zap\"",
                "server.socket_group",
                "no group named",
            ),
            ("socket_group = [1]", "server.socket_group", "group name or gid"),
        ] {
            let message = message_at(&unix(extra), key).unwrap_or_else(|| panic!("{extra} accepted"));
            assert!(message.contains(says), "{extra}: {message}");
        }
        let long = format!("unix:/{}", "s".repeat(SocketPath::MAX_LEN));
        let text = GOOD.replace("127.0.0.1:0", &long);
        assert!(message_at(&text, "server.listen").unwrap().contains("107 bytes"));
        assert!(message_at(&GOOD.replace("127.0.0.1:0", "unix:"), "server.listen").is_some());
        // Socket keys on a TCP listener would be ignored: they are refused.
        let tcp = GOOD.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nsocket_mode = \"0600\"",
        );
        assert!(message_at(&tcp, "server.socket_mode").unwrap().contains("Unix socket"));
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("x.pem");
        std::fs::write(&pem, "pem").unwrap();
        let tls = format!("[server.tls]\ncert_file = {pem:?}\nkey_file = {pem:?}\n");
        let text = unix("").replace("[tenants.default]", &format!("{tls}[tenants.default]"));
        assert!(message_at(&text, "server.tls").unwrap().contains("Unix socket"));
    }

    #[test]
    fn tls_needs_cert_and_key() {
        let err = Config::from_toml(&GOOD.replace("[tenants.default]", "[server.tls]\n[tenants.default]")).unwrap_err();
        let keys = keys(&err);
        assert!(
            keys.contains(&"server.tls.cert_file") && keys.contains(&"server.tls.key_file"),
            "{keys:?}"
        );
    }

    #[test]
    fn the_caller_token_endpoint_is_on_unless_turned_off() {
        let c = Config::from_toml(GOOD).unwrap();
        assert!(c.live.requests.caller_token_endpoint);
        assert_eq!(c.to_redacted_json()["server"]["caller_token_endpoint"], true);
        let off = Config::from_toml(&GOOD.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\ncaller_token_endpoint = false",
        ))
        .unwrap();
        assert!(!off.live.requests.caller_token_endpoint);
        assert_eq!(off.to_redacted_json()["server"]["caller_token_endpoint"], false);
        // Environment values are text.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, GOOD).unwrap();
        let env = [(
            "ZUORA_PROXY__SERVER__CALLER_TOKEN_ENDPOINT".to_string(),
            "false".to_string(),
        )];
        assert!(
            !Config::load_with_env(&path, env)
                .unwrap()
                .live
                .requests
                .caller_token_endpoint
        );
        let bad = GOOD.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\ncaller_token_endpoint = \"maybe\"",
        );
        assert!(message_at(&bad, "server.caller_token_endpoint").is_some());
    }
}
