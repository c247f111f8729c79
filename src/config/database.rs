//! `DATABASE_URL`: the one place it is read.
//!
//! The URL is the `mysql` crate's (`mysql://user:password@host:3306/db?...`,
//! with the crate's own parameters such as `prefer_socket`), plus two
//! parameters spelled as MySQL's own clients spell the options:
//!
//! - `ssl-mode`: `DISABLED`, `PREFERRED`, `REQUIRED`, `VERIFY_CA` or
//!   `VERIFY_IDENTITY` (any case);
//! - `ssl-ca`: the path to a PEM bundle of the CA certificates the server's
//!   certificate is checked against.
//!
//! What each mode does (see [`SslMode`]) follows MySQL's clients, except
//! where said. They are taken out of the URL before the crate reads the rest,
//! and turned into the crate's `SslOpts` here; the crate's own TLS
//! parameters are refused, so there is one way to say it. Everything is
//! checked when the configuration is read, the CA file included, so a typo
//! stops start-up naming the parameter before any database work.

use std::path::{Path, PathBuf};

use mysql::{Opts, OptsBuilder, SslOpts};

/// How a connection uses TLS (`ssl-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP. The default without `ssl-ca` (MySQL's clients default to
    /// `PREFERRED`: here TLS is asked for, never fallen back from in
    /// silence).
    Disabled,
    /// TLS when the server offers it, plain otherwise; the certificate is
    /// not checked (checked against `ssl-ca` when one is given).
    Preferred,
    /// TLS or no connection. As with MySQL's clients the certificate is not
    /// checked: it keeps the password and the rows from eavesdroppers, not
    /// from a server in the middle. Given `ssl-ca`, the chain is checked
    /// against it (MySQL's clients only warn that they do not).
    Required,
    /// TLS, and the server's certificate must chain to `ssl-ca` (the host
    /// name is not checked). The default when `ssl-ca` is given.
    VerifyCa,
    /// `VerifyCa`, and the certificate must be for the host in the URL.
    VerifyIdentity,
}

impl SslMode {
    /// Every mode, as written in the URL.
    pub const NAMES: &'static str = "DISABLED, PREFERRED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY";

    fn parse(value: &str) -> Option<SslMode> {
        Some(match value.to_ascii_uppercase().as_str() {
            "DISABLED" => SslMode::Disabled,
            "PREFERRED" => SslMode::Preferred,
            "REQUIRED" => SslMode::Required,
            "VERIFY_CA" => SslMode::VerifyCa,
            "VERIFY_IDENTITY" => SslMode::VerifyIdentity,
            _ => return None,
        })
    }

    /// The name, as written in the URL.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disabled => "DISABLED",
            SslMode::Preferred => "PREFERRED",
            SslMode::Required => "REQUIRED",
            SslMode::VerifyCa => "VERIFY_CA",
            SslMode::VerifyIdentity => "VERIFY_IDENTITY",
        }
    }

    /// Whether a connection without TLS is refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Required | SslMode::VerifyCa | SslMode::VerifyIdentity
        )
    }
}

/// The crate's own TLS parameters: refused, `ssl-mode` and `ssl-ca` say it.
const CRATE_TLS_PARAMS: &[&str] = &[
    "root_cert_path",
    "danger_accept_invalid_certs",
    "danger_skip_domain_validation",
    "cert_chain_path",
    "priv_key_path",
    "cipher_suites",
    "pkcs12_path",
    "pkcs12_pass",
];

/// A parsed `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseUrl {
    /// The connection options the URL gives, without TLS.
    plain: Opts,
    ssl_mode: SslMode,
    ssl_ca: Option<PathBuf>,
}

impl DatabaseUrl {
    /// Parses `url`; the error says what a valid one looks like.
    pub fn parse(url: &str) -> Result<DatabaseUrl, String> {
        if !url.starts_with("mysql://") {
            return Err("a URL like mysql://user:password@host:3306/database".into());
        }
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let mut ssl_mode = None;
        let mut ssl_ca = None;
        let mut rest = form_urlencoded::Serializer::new(String::new());
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "ssl-mode" | "ssl_mode" => {
                    ssl_mode = Some(SslMode::parse(&value).ok_or_else(|| {
                        format!("ssl-mode={value:?} to be one of {}", SslMode::NAMES)
                    })?);
                }
                "ssl-ca" | "ssl_ca" => ssl_ca = Some(PathBuf::from(value.as_ref())),
                k if CRATE_TLS_PARAMS.contains(&k) => {
                    return Err(format!(
                        "ssl-mode and ssl-ca instead of {k} (TLS is configured by MySQL's \
                         option names)"
                    ));
                }
                k => {
                    rest.append_pair(k, &value);
                }
            }
        }
        let rest = rest.finish();
        let crate_url = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{rest}")
        };
        let plain =
            Opts::from_url(&crate_url).map_err(|e| format!("a valid mysql:// URL ({e})"))?;
        if plain.get_db_name().is_none_or(|db| db.is_empty()) {
            return Err(
                "a URL that names a database, like mysql://host:3306/background_processing".into(),
            );
        }
        let ssl_mode = ssl_mode.unwrap_or(if ssl_ca.is_some() {
            SslMode::VerifyCa
        } else {
            SslMode::Disabled
        });
        if let Some(path) = &ssl_ca {
            check_ca(path)?;
        } else if matches!(ssl_mode, SslMode::VerifyCa) {
            return Err(
                "ssl-ca=/path/to/ca.pem with ssl-mode=VERIFY_CA: the CA to check the server's \
                 certificate against"
                    .into(),
            );
        }
        if ssl_mode.requires_tls() && plain.get_socket().is_some() {
            return Err(format!(
                "no socket parameter with ssl-mode={}: the driver sends nothing over a Unix \
                 socket encrypted",
                ssl_mode.name()
            ));
        }
        Ok(DatabaseUrl {
            plain,
            ssl_mode,
            ssl_ca,
        })
    }

    /// The TLS mode.
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// The CA bundle, if one was given.
    pub fn ssl_ca(&self) -> Option<&Path> {
        self.ssl_ca.as_deref()
    }

    /// The database the URL names.
    pub fn db_name(&self) -> &str {
        self.plain.get_db_name().unwrap_or_default()
    }

    /// Connection options as the URL asks: with TLS unless `ssl-mode` is
    /// `DISABLED`. With TLS the crate's `prefer_socket` is off: on
    /// loopback it would otherwise move to the Unix socket, where the
    /// driver sends in the clear.
    pub fn opts(&self) -> OptsBuilder {
        let builder = OptsBuilder::from_opts(self.plain.clone());
        if self.ssl_mode == SslMode::Disabled {
            return builder;
        }
        let verify_chain = self.ssl_mode == SslMode::VerifyCa
            || self.ssl_mode == SslMode::VerifyIdentity
            || self.ssl_ca.is_some();
        let ssl = SslOpts::default()
            .with_root_cert_path(self.ssl_ca.clone())
            .with_danger_accept_invalid_certs(!verify_chain)
            .with_danger_skip_domain_validation(self.ssl_mode != SslMode::VerifyIdentity);
        builder.prefer_socket(false).ssl_opts(Some(ssl))
    }

    /// Connection options without TLS: what `PREFERRED` falls back to when
    /// the server offers none.
    pub fn plain_opts(&self) -> OptsBuilder {
        OptsBuilder::from_opts(self.plain.clone())
    }
}

/// The CA bundle must be a readable file holding a PEM certificate.
fn check_ca(path: &Path) -> Result<(), String> {
    let text = std::fs::read(path).map_err(|e| {
        format!(
            "ssl-ca={} to be a readable PEM file of CA certificates ({e})",
            path.display()
        )
    })?;
    if !String::from_utf8_lossy(&text).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "ssl-ca={} to be a PEM file of CA certificates (it holds no \
             -----BEGIN CERTIFICATE----- block)",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_file() -> PathBuf {
        let path = std::env::temp_dir().join(format!("bp-test-ca-{}.pem", std::process::id()));
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        path
    }

    #[test]
    fn without_tls_parameters_nothing_changes() {
        let url =
            DatabaseUrl::parse("mysql://root@127.0.0.1:3306/jobs?prefer_socket=false").unwrap();
        assert_eq!(url.ssl_mode(), SslMode::Disabled);
        let opts: Opts = url.opts().into();
        assert!(opts.get_ssl_opts().is_none());
        assert!(!opts.get_prefer_socket());
        assert_eq!(url.db_name(), "jobs");
    }

    #[test]
    fn verify_identity_checks_chain_and_host_and_never_takes_the_socket() {
        let ca = ca_file();
        let url = DatabaseUrl::parse(&format!(
            "mysql://app:pw@localhost:3306/jobs?ssl-mode=verify_identity&ssl-ca={}",
            ca.display()
        ))
        .unwrap();
        assert_eq!(url.ssl_mode(), SslMode::VerifyIdentity);
        let opts: Opts = url.opts().into();
        let ssl = opts.get_ssl_opts().expect("TLS");
        assert!(!ssl.accept_invalid_certs());
        assert!(!ssl.skip_domain_validation());
        assert_eq!(ssl.root_cert_path(), Some(ca.as_path()));
        assert!(!opts.get_prefer_socket(), "loopback must not bypass TLS");
        assert_eq!(opts.get_pass(), Some("pw"));
    }

    #[test]
    fn what_each_mode_verifies() {
        let ca = ca_file();
        let check = |query: &str| {
            let url = DatabaseUrl::parse(&format!("mysql://h/jobs?{query}")).unwrap();
            let opts: Opts = url.opts().into();
            let ssl = opts.get_ssl_opts().cloned().expect("TLS");
            (
                url.ssl_mode(),
                ssl.accept_invalid_certs(),
                ssl.skip_domain_validation(),
            )
        };
        // (mode, chain unchecked, host unchecked)
        assert_eq!(check("ssl-mode=REQUIRED"), (SslMode::Required, true, true));
        assert_eq!(
            check("ssl-mode=PREFERRED"),
            (SslMode::Preferred, true, true)
        );
        let with_ca = format!("ssl-ca={}", ca.display());
        assert_eq!(check(&with_ca), (SslMode::VerifyCa, false, true));
        assert_eq!(
            check(&format!("ssl-mode=REQUIRED&{with_ca}")),
            (SslMode::Required, false, true)
        );
        assert_eq!(
            check(&format!("ssl-mode=VERIFY_CA&{with_ca}")),
            (SslMode::VerifyCa, false, true)
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        let err = |url: &str| DatabaseUrl::parse(url).unwrap_err();
        assert!(err("mysql://h/jobs?ssl-mode=ON").contains("ssl-mode=\"ON\""));
        let missing = err("mysql://h/jobs?ssl-mode=VERIFY_IDENTITY&ssl-ca=/nonexistent/ca.pem");
        assert!(missing.contains("ssl-ca=/nonexistent/ca.pem"), "{missing}");
        assert!(missing.contains("No such file"), "{missing}");
        assert!(err("mysql://h/jobs?ssl-mode=VERIFY_CA").contains("ssl-ca"));
        assert!(err("mysql://h/jobs?danger_accept_invalid_certs=true").contains("ssl-mode"));
        assert!(err("mysql://h/jobs?ssl-mode=REQUIRED&socket=/tmp/s").contains("socket"));
        assert!(err("mysql://h/?ssl-mode=REQUIRED").contains("names a database"));
        let not_pem = std::env::temp_dir().join(format!("bp-test-notpem-{}", std::process::id()));
        std::fs::write(&not_pem, "hello").unwrap();
        assert!(err(&format!("mysql://h/jobs?ssl-ca={}", not_pem.display())).contains("PEM"));
    }
}
