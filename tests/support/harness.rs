//! The test harness: a mock Zuora over real TLS and the proxy started in-process on
//! `127.0.0.1:0`, wired to it, with as many tenants as a test names.
//!
//! Settings are TOML `key = value` lines per section, kept as a [`Settings`] value so that a
//! test can render the running configuration again with a change (a reload, a binary).
//! Needs `support::fixtures`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zuora_auth_proxy::mock::{ExpiresIn, MockBuilder, MockZuora, CLIENT_ID, CLIENT_SECRET};
use zuora_auth_proxy::{Config, Running};

use super::fixtures::ROUTES;

/// The tenant every harness has; the one [`HarnessBuilder::tenant`] sets keys on.
pub const DEFAULT_TENANT: &str = "default";

/// One tenant's keys. Unless a key says otherwise, a tenant uses the harness's mock for its
/// REST calls and its tokens, trusts the mock's CA and reads the harness's secret file.
#[derive(Clone, Debug)]
pub struct TenantSettings {
    keys: BTreeMap<String, String>,
    rest_at: Option<SocketAddr>,
}

impl Default for TenantSettings {
    fn default() -> Self {
        let mut keys = BTreeMap::new();
        keys.insert("client_id".into(), format!("\"{CLIENT_ID}\""));
        keys.insert("token_wait".into(), "\"3s\"".into());
        TenantSettings { keys, rest_at: None }
    }
}

impl TenantSettings {
    /// Sets `key = toml_value` in the tenant's table.
    pub fn key(mut self, key: &str, toml_value: &str) -> Self {
        self.keys.insert(key.into(), toml_value.into());
        self
    }

    /// Sends the tenant's REST calls to `https://{addr}` while its tokens still come from
    /// the harness's mock.
    pub fn rest_at(mut self, addr: SocketAddr) -> Self {
        self.rest_at = Some(addr);
        self
    }

    fn render(&self, name: &str, files: &Files) -> String {
        let mut keys = self.keys.clone();
        let mock = files.mock_url.clone();
        if let Some(addr) = self.rest_at {
            keys.entry("base_url".into()).or_insert(format!("\"https://{addr}\""));
            keys.entry("token_url".into())
                .or_insert(format!("\"{mock}/oauth/token\""));
        }
        keys.entry("base_url".into()).or_insert(format!("\"{mock}\""));
        keys.entry("ca_file".into()).or_insert(quoted(&files.ca_file));
        if !keys.contains_key("client_secret") {
            keys.entry("client_secret_file".into())
                .or_insert(quoted(&files.secret_file));
        }
        format!("[tenants.{name}]\n{}", lines(&keys))
    }
}

/// Everything the proxy's configuration is made of, but the mock's address and files.
#[derive(Clone, Debug)]
pub struct Settings {
    server: BTreeMap<String, String>,
    admin: BTreeMap<String, String>,
    tenants: BTreeMap<String, TenantSettings>,
    routes: String,
    rules: String,
}

impl Default for Settings {
    fn default() -> Self {
        let mut server = BTreeMap::new();
        server.insert("listen".into(), "\"127.0.0.1:0\"".into());
        server.insert("request_timeout".into(), "\"10s\"".into());
        server.insert("shutdown_grace".into(), "\"5s\"".into());
        let mut admin = BTreeMap::new();
        admin.insert("listen".into(), "\"127.0.0.1:0\"".into());
        admin.insert("ready_min_ttl".into(), "\"1s\"".into());
        let mut tenants = BTreeMap::new();
        tenants.insert(DEFAULT_TENANT.into(), TenantSettings::default());
        Settings {
            server,
            admin,
            tenants,
            routes: ROUTES.into(),
            rules: String::new(),
        }
    }
}

// Options: each test file sets the few it needs, so each binary leaves some unused.
#[allow(dead_code)]
impl Settings {
    pub fn server(mut self, key: &str, toml_value: &str) -> Self {
        self.server.insert(key.into(), toml_value.into());
        self
    }
    pub fn admin(mut self, key: &str, toml_value: &str) -> Self {
        self.admin.insert(key.into(), toml_value.into());
        self
    }
    /// Sets a key on the `default` tenant.
    pub fn tenant(self, key: &str, toml_value: &str) -> Self {
        self.tenant_with(DEFAULT_TENANT, |t| t.key(key, toml_value))
    }
    /// Changes tenant `name`, adding it (with the defaults every tenant starts from) if it is
    /// not there yet.
    pub fn tenant_with(mut self, name: &str, f: impl FnOnce(TenantSettings) -> TenantSettings) -> Self {
        let tenant = self.tenants.remove(name).unwrap_or_default();
        self.tenants.insert(name.into(), f(tenant));
        self
    }
    /// `[[routes]]` tables, instead of [`ROUTES`].
    pub fn routes(mut self, text: &str) -> Self {
        self.routes = text.into();
        self
    }
    /// `[[rules]]` tables, verbatim.
    pub fn rules(mut self, text: &str) -> Self {
        self.rules = text.into();
        self
    }
    /// An inline client secret on the `default` tenant instead of the secret file.
    pub fn inline_secret(self) -> Self {
        self.tenant("client_secret", &format!("\"{CLIENT_SECRET}\""))
    }

    fn render(&self, files: &Files) -> String {
        let tenants: String = self
            .tenants
            .iter()
            .map(|(name, t)| t.render(name, files) + "\n")
            .collect();
        format!(
            "[server]\n{}\n[admin]\n{}\n[log]\nformat = \"json\"\n\n{tenants}{}\n{}",
            lines(&self.server),
            lines(&self.admin),
            self.routes,
            self.rules
        )
    }
}

/// Where the harness's tenants find the mock and their files.
#[derive(Debug)]
struct Files {
    mock_url: String,
    ca_file: PathBuf,
    secret_file: PathBuf,
}

/// Builds a [`Harness`]: [`Settings`] for the proxy and a [`MockBuilder`] for Zuora.
#[derive(Default)]
pub struct HarnessBuilder {
    settings: Settings,
    mock: Option<MockBuilder>,
}

// Options: each test file sets the few it needs, so each binary leaves some unused.
#[allow(dead_code)]
impl HarnessBuilder {
    pub fn server(self, key: &str, toml_value: &str) -> Self {
        self.with(|s| s.server(key, toml_value))
    }
    pub fn admin(self, key: &str, toml_value: &str) -> Self {
        self.with(|s| s.admin(key, toml_value))
    }
    /// Sets a key on the `default` tenant.
    pub fn tenant(self, key: &str, toml_value: &str) -> Self {
        self.with(|s| s.tenant(key, toml_value))
    }
    /// Adds tenant `name` (or changes one), e.g. `.extra_tenant("eu", |t| t.key("max_concurrency", "1"))`.
    pub fn extra_tenant(self, name: &str, f: impl FnOnce(TenantSettings) -> TenantSettings) -> Self {
        self.with(|s| s.tenant_with(name, f))
    }
    /// The `default` tenant's REST calls go to `https://{addr}`; its tokens still come from the mock.
    pub fn rest_at(self, addr: SocketAddr) -> Self {
        self.with(|s| s.tenant_with(DEFAULT_TENANT, |t| t.rest_at(addr)))
    }
    pub fn routes(self, text: &str) -> Self {
        self.with(|s| s.routes(text))
    }
    pub fn rules(self, text: &str) -> Self {
        self.with(|s| s.rules(text))
    }
    pub fn inline_secret(self) -> Self {
        self.with(Settings::inline_secret)
    }
    pub fn mock(mut self, f: impl FnOnce(MockBuilder) -> MockBuilder) -> Self {
        self.mock = Some(f(self.mock.take().unwrap_or_else(MockZuora::builder)));
        self
    }

    /// Short-lived tokens: Zuora's last `expires_in_secs` seconds, and the tenant refreshes
    /// them `refresh_margin` (a TOML duration such as `1s`) before they expire.
    #[allow(dead_code)] // for the test files about token lifetimes
    pub fn token_lifetime(self, expires_in_secs: u64, refresh_margin: &str) -> Self {
        self.tenant("refresh_margin", &format!("\"{refresh_margin}\""))
            .mock(|m| m.expires_in(ExpiresIn::Int(expires_in_secs as _)))
    }
}

impl HarnessBuilder {
    fn with(mut self, f: impl FnOnce(Settings) -> Settings) -> Self {
        self.settings = f(self.settings);
        self
    }

    pub async fn start(self) -> Harness {
        let mock = self
            .mock
            .unwrap_or_else(MockZuora::builder)
            .start()
            .await
            .expect("mock starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let files = Files {
            mock_url: mock.base_url(),
            ca_file: mock.write_ca(dir.path()).expect("CA written"),
            secret_file: dir.path().join("client-secret"),
        };
        std::fs::write(&files.secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
        let config = parse(&self.settings.render(&files));
        let proxy = zuora_auth_proxy::start(config).await.expect("proxy starts");
        Harness {
            mock,
            proxy,
            settings: self.settings,
            files,
            _dir: dir,
        }
    }

    /// [`HarnessBuilder::start`], then the first token fetch, whatever Zuora answers to it.
    #[allow(dead_code)] // for the test files whose Zuora refuses tokens
    pub async fn first_fetch_made(self) -> Harness {
        let h = self.start().await;
        assert!(
            h.mock.wait_token_calls(1, Duration::from_secs(5)).await,
            "no token fetch"
        );
        h
    }

    // Each test file uses the few of these it needs, so each binary leaves some unused.
    #[allow(dead_code)]
    /// [`HarnessBuilder::start`], then [`Harness::wait_for_token`]: a proxy ready to forward.
    pub async fn ready(self) -> Harness {
        let h = self.start().await;
        h.wait_for_token().await;
        h
    }
}

/// A running mock Zuora and a proxy wired to it.
pub struct Harness {
    pub mock: MockZuora,
    pub proxy: Running,
    settings: Settings,
    files: Files,
    // Holds the CA and secret files for as long as the harness lives.
    _dir: tempfile::TempDir,
}

impl Harness {
    pub fn builder() -> HarnessBuilder {
        HarnessBuilder::default()
    }
}

// Each test file uses the few of these it needs, so each binary leaves some unused.
#[allow(dead_code)]
impl Harness {
    /// A URL on the proxy's (plain HTTP) listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.admin_addr.expect("admin listener"))
    }

    /// Waits until the proxy holds a token (the first fetch is in the background).
    pub async fn wait_for_token(&self) {
        assert!(
            self.mock.wait_token_calls(1, Duration::from_secs(10)).await,
            "no token fetch"
        );
        self.proxy
            .probe()
            .wait_for_token(DEFAULT_TENANT, Duration::from_secs(10))
            .await
            .expect("token in time");
    }

    /// The `default` tenant's usable token, as the proxy shows it.
    pub fn token(&self) -> Option<zuora_auth_proxy::TokenView> {
        self.proxy.probe().token(DEFAULT_TENANT)
    }

    /// The harness's temp dir, which holds the CA and secret files.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The file every tenant reads its client secret from.
    pub fn secret_file(&self) -> &Path {
        &self.files.secret_file
    }

    /// The configuration the proxy started with.
    pub fn config_text(&self) -> String {
        self.settings.render(&self.files)
    }

    /// The configuration the proxy started with, changed by `f`.
    pub fn config_text_with(&self, f: impl FnOnce(Settings) -> Settings) -> String {
        f(self.settings.clone()).render(&self.files)
    }

    /// [`Harness::config_text_with`], parsed.
    pub fn config_with(&self, f: impl FnOnce(Settings) -> Settings) -> Config {
        parse(&self.config_text_with(f))
    }

    /// Stops the in-process proxy (it drains at once: nothing is in flight) so that a binary can
    /// take its place; hands back the mock and the temp dir.
    /// For the binary to serve in the proxy's place: this proxy's configuration without an
    /// admin listener, written to `binary.toml` beside its files, then [`Harness::stop_proxy`].
    pub async fn config_for_binary(self) -> (MockZuora, tempfile::TempDir, PathBuf) {
        let text = self.config_text_with(|s| s.admin("listen", "\"\""));
        // Only the binary serves; this proxy steps aside.
        let (mock, dir) = self.stop_proxy().await;
        let config = dir.path().join("binary.toml");
        std::fs::write(&config, text).unwrap();
        (mock, dir, config)
    }

    pub async fn stop_proxy(self) -> (MockZuora, tempfile::TempDir) {
        let Harness { mock, proxy, _dir, .. } = self;
        proxy.begin_shutdown();
        proxy.wait().await;
        (mock, _dir)
    }
}

fn parse(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"))
}

fn lines(map: &BTreeMap<String, String>) -> String {
    map.iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
}

/// A path as a TOML string.
fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}
